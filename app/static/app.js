// The cosmogan page: plain JS over the service's own HTTP API (no build step, no CDN).
"use strict";

const $ = (sel) => document.querySelector(sel);
const KEY_STORE = "cosmogan-api-key"; // sessionStorage only: gone when the tab closes
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const COLORS = ["#7aa2f7", "#f7768e", "#9ece6a", "#e0af68", "#bb9af7", "#7dcfff", "#ff9e64", "#c0caf5"];
const BAND_COLORS = { r: "#f7768e", i: "#e0af68", z: "#7aa2f7" };
const state = { config: null, models: {}, job: null, es: null, chart: null, emu: null, charts: {} };

// ------------------------------------------------------------------------------ helpers
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function toast(message, bad = false) {
  const t = $("#toast");
  t.textContent = message;
  t.className = bad ? "bad" : "";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (t.hidden = true), bad ? 8000 : 4000);
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

// fetch with JSON errors turned into exceptions that carry the server's message
async function api(method, url, { json, body, headers = {}, auth = false } = {}) {
  const h = { ...headers };
  if (json !== undefined) {
    h["content-type"] = "application/json";
    body = JSON.stringify(json);
  }
  if (auth) {
    if (!apiKey()) {
      $("#api-key").focus();
      throw new Error("enter the API key (top right) first");
    }
    h.authorization = `Bearer ${apiKey()}`;
  }
  const resp = await fetch(url, { method, body, headers: h });
  if (!resp.ok) {
    let detail = resp.statusText;
    try {
      const data = await resp.json();
      detail = data.detail || detail;
      if (data.problems && data.problems.length > 1) {
        detail += "\n" + data.problems.slice(0, 5).map((p) => `• ${p.row === null || p.row === undefined ? "" : `row ${p.row} (from 0) `}${p.column ?? ""}: ${p.message}`).join("\n");
      }
    } catch (_) { /* not JSON */ }
    if (resp.status === 401 || resp.status === 403) $("#api-key").focus();
    throw new Error(`${resp.status}: ${detail}`);
  }
  return resp;
}

const getJSON = async (url) => (await api("GET", url)).json();

function fmt(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "number") {
    if (Number.isInteger(v)) return String(v);
    const a = Math.abs(v);
    return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(3) : v.toPrecision(4);
  }
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

function fmtTime(ts) {
  if (!ts) return "—";
  const d = new Date(ts * 1000);
  return d.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

function fmtDuration(s) {
  if (s === null || s === undefined || !isFinite(s)) return "—";
  s = Math.round(s);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function download(blob, name) {
  const a = el("a", { href: URL.createObjectURL(blob), download: name });
  document.body.append(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
}

function fillSelect(select, options, value) {
  select.replaceChildren(...options.map(([v, label]) => el("option", { value: v }, label)));
  if (value !== undefined && options.some(([v]) => v === value)) select.value = value;
}

// a model name serves one family, recorded on its versions; the preset table is only the
// fallback for a name that has no version yet
function familyOf(name) {
  const m = state.models[name];
  if (m && m.family) return m.family;
  const p = state.config?.presets?.[name];
  return p ? p.family : "image";
}

function modelsOf(family) {
  return Object.keys(state.models).filter((n) => familyOf(n) === family);
}

// --------------------------------------------------------------------------------- tabs
function showTab() {
  const name = (location.hash || "#gallery").slice(1).split("?")[0];
  const tab = document.getElementById(name) ? name : "gallery";
  document.querySelectorAll("section.tab").forEach((s) => (s.hidden = s.id !== tab));
  document.querySelectorAll("#tabs a").forEach((a) => a.classList.toggle("active", a.dataset.tab === tab));
  if (tab === "gallery") {
    if (location.hash.includes("?")) applyGalleryLink();
    renderGallery();
  }
  if (tab === "training") refreshJobs();
  if (tab === "models") renderModels();
}

async function checkReady() {
  const badge = $("#ready");
  try {
    const r = await fetch("/readyz");
    const body = await r.json().catch(() => ({}));
    const degraded = r.ok && body.status === "degraded"; // some model cannot load
    badge.textContent = degraded ? "degraded" : r.ok ? "ready" : "not ready";
    badge.className = "badge " + (r.ok && !degraded ? "ok" : "bad");
    badge.title = r.ok && !degraded ? "" : body.detail || "";
  } catch (_) {
    badge.textContent = "offline";
    badge.className = "badge bad";
  }
}

async function loadModels() {
  state.models = (await getJSON("/models")).models;
  return state.models;
}

// ------------------------------------------------------------------------------ gallery
function versionOptions(name) {
  const m = state.models[name];
  if (!m) return [["", "active"]];
  const opts = [["", `active (${m.active || "none"})`]];
  for (const v of [...m.versions].reverse()) opts.push([v.version, v.version + (v.note ? ` — ${v.note}` : "")]);
  return opts;
}

function initGallery() {
  const names = modelsOf("image");
  fillSelect($("#g-model"), names.map((n) => [n, n]), names.includes("nebula") ? "nebula" : names[0]);
  const sizes = [1, 4, 9, 16, 25, 36, 49, 64, 100, 144, 256].filter((n) => n <= state.config.max_generate_n);
  fillSelect($("#g-n"), sizes.map((n) => [String(n), String(n)]), sizes.includes(16) ? "16" : String(sizes.at(-1)));
  applyGalleryLink();
  $("#g-model").addEventListener("change", () => { refreshVersionPickers(); renderGallery(); });
  $("#g-version").addEventListener("change", () => { refreshVersionPickers(); renderGallery(); });
  for (const id of ["#g-seed", "#g-n", "#g-version-b"]) $(id).addEventListener("change", renderGallery);
  $("#g-compare").addEventListener("change", () => {
    $("#g-version-b").disabled = !$("#g-compare").checked;
    renderGallery();
  });
  const step = (d) => { const v = BigInt(gallerySeed()) + BigInt(d); $("#g-seed").value = String(v < 0n ? 0n : v); renderGallery(); };
  $("#g-prev").addEventListener("click", () => step(-1));
  $("#g-next").addEventListener("click", () => step(1));
  $("#g-random").addEventListener("click", () => { $("#g-seed").value = Math.floor(Math.random() * 1e6); renderGallery(); });
  // ← and → browse seeds, as in an image viewer (not while typing in a field)
  document.addEventListener("keydown", (ev) => {
    if ($("#gallery").hidden || ev.target.closest("input, select, textarea")) return;
    if (ev.key === "ArrowLeft") step(-1);
    if (ev.key === "ArrowRight") step(1);
  });
}

// settings from a link such as #gallery?model=nebula&seed=9&n=4&version=v2
function applyGalleryLink() {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const has = (select, v) => [...select.options].some((o) => o.value === v);
  if (params.get("seed")) $("#g-seed").value = params.get("seed");
  if (has($("#g-model"), params.get("model"))) $("#g-model").value = params.get("model");
  if (has($("#g-n"), params.get("n"))) $("#g-n").value = params.get("n");
  refreshVersionPickers();
  if (has($("#g-version"), params.get("version"))) $("#g-version").value = params.get("version");
}

function refreshVersionPickers() {
  const model = $("#g-model").value;
  const opts = versionOptions(model);
  fillSelect($("#g-version"), opts, $("#g-version").value);
  // "compare with" starts on a version other than the one shown (the newest such)
  const shown = $("#g-version").value || state.models[model]?.active || "";
  const others = opts.filter(([v]) => v && v !== shown);
  const keep = others.some(([v]) => v === $("#g-version-b").value) ? $("#g-version-b").value : others[0]?.[0];
  fillSelect($("#g-version-b"), others.length ? others : [["", "no other version"]], keep);
  $("#g-compare").disabled = !others.length;
  if (!others.length) $("#g-compare").checked = false;
  $("#g-version-b").disabled = !$("#g-compare").checked;
  refreshEmulatorPickers();
}

// the seed as typed, digits only: a JS number would round seeds above 2^53
function gallerySeed() {
  const v = String($("#g-seed").value || "").trim();
  return /^[0-9]+$/.test(v) ? v.replace(/^0+(?=.)/, "") : "0";
}

function generateUrl(model, version, seed, n) {
  const q = new URLSearchParams({ seed, n, model });
  if (version) q.set("version", version);
  return `/generate?${q}`;
}

function renderGallery() {
  const model = $("#g-model").value;
  if (!model) {
    $("#g-panels").replaceChildren(el("p", { class: "hint" }, "No image model is registered."));
    return;
  }
  const seed = gallerySeed();
  const n = $("#g-n").value;
  const versions = [$("#g-version").value];
  if ($("#g-compare").checked && $("#g-version-b").value) versions.push($("#g-version-b").value);
  const active = state.models[model]?.active;
  if (!versions[0] && !active) {
    $("#g-panels").replaceChildren(el("p", { class: "hint" },
      `${model} has no active version: pick a version above, or activate one on the Models tab.`));
    return;
  }
  // the address bar holds the picture's settings: a link to the page shows the same grid
  const link = new URLSearchParams({ model, seed, n });
  if (versions[0]) link.set("version", versions[0]);
  if (!$("#gallery").hidden) history.replaceState(null, "", `#gallery?${link}`);
  $("#g-panels").replaceChildren(...versions.map((v) => {
    const url = generateUrl(model, v, seed, n);
    const label = `${model}@${v || active}`;
    const status = el("span", { class: "hint" }, "generating…");
    const img = el("img", { src: url, alt: `${label}, seed ${seed}`, "data-seed": seed });
    img.addEventListener("load", () => status.replaceChildren(`${n} images, seed ${seed}`));
    img.addEventListener("error", async () => {
      try { await api("GET", url); } catch (e) { status.replaceChildren(el("span", { class: "error" }, e.message)); }
    });
    return el("div", { class: "panel" },
      el("h3", {}, label + (v ? "" : " (active)")), img,
      el("div", { class: "meta" }, status, el("code", {}, url),
        el("a", { href: url, download: `${model}-${v || active}-seed${seed}-n${n}.png` }, "Download PNG")));
  }));
}

// ----------------------------------------------------------------------------- training
function initTraining() {
  const presets = Object.keys(state.config.presets);
  fillSelect($("#t-preset"), presets.map((p) => [p, `${p} (${state.config.presets[p].family})`]), "balrog");
  $("#t-preset").addEventListener("change", showPresetDefaults);
  showPresetDefaults();
  $("#t-form").addEventListener("submit", startJob);
  $("#t-refresh").addEventListener("click", refreshJobs);
  $("#t-cancel").addEventListener("click", cancelJob);
  $("#t-resume").addEventListener("click", resumeJob);
  $("#t-activate-btn").addEventListener("click", activateJobModel);
  $("#t-smooth").addEventListener("input", redrawLosses);
  $("#t-log").addEventListener("change", redrawLosses);
  $("#t-overlay").addEventListener("change", () => {
    const other = $("#t-overlay").value;
    $("#t-overlay").value = "";
    if (other) overlayJob(other).catch((e) => toast(e.message, true));
  });
  setInterval(() => { if (!$("#training").hidden) refreshJobs(); }, 3000);
}

function showPresetDefaults() {
  const preset = state.config.presets[$("#t-preset").value];
  const d = preset.defaults;
  // the default name of the preset's family; the names of that family already registered
  $("#t-model").placeholder = `default: ${state.config.default_models?.[preset.family] || ""}`;
  $("#t-model-names").replaceChildren(...modelsOf(preset.family).map((n) => el("option", { value: n })));
  $("#t-epochs").placeholder = d.epochs;
  $("#t-defaults").replaceChildren(...Object.entries(d).map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {}, fmt(v)))));
}

async function startJob(ev) {
  ev.preventDefault();
  let overrides;
  try {
    overrides = JSON.parse($("#t-overrides").value || "{}");
    if (typeof overrides !== "object" || Array.isArray(overrides)) throw new Error("an object");
  } catch (e) {
    toast(`Other overrides must be a JSON object: ${e.message}`, true);
    return;
  }
  const num = (id) => (($(id).value || "").trim() ? parseInt($(id).value, 10) : undefined);
  if (num("#t-epochs") !== undefined) overrides.epochs = num("#t-epochs");
  if (num("#t-max-steps") !== undefined) overrides.max_steps = num("#t-max-steps");
  if ($("#t-dry-run").checked) overrides.dry_run = true;
  const body = { preset: $("#t-preset").value, overrides, activate: $("#t-activate").checked };
  if ($("#t-model").value.trim()) body.model = $("#t-model").value.trim();
  if ($("#t-data").value.trim()) body.data = $("#t-data").value.trim();
  try {
    const r = await (await api("POST", "/train", { json: body, auth: true })).json();
    toast(`Job ${r.job_id.slice(0, 8)} ${r.state}`);
    await refreshJobs();
    openJob(r.job_id);
  } catch (e) {
    toast(e.message, true);
  }
}

async function refreshJobs() {
  let jobs;
  try {
    jobs = (await getJSON("/train?limit=50")).jobs;
  } catch (e) {
    return;
  }
  const rows = jobs.map((j) => {
    const pct = j.total_steps ? Math.round((100 * j.step) / j.total_steps) : null;
    const tr = el("tr", { "data-job": j.job_id, class: state.job === j.job_id ? "selected" : "", onclick: () => openJob(j.job_id) },
      el("td", {}, el("code", {}, j.job_id.slice(0, 8))),
      el("td", {}, j.preset),
      el("td", {}, el("span", { class: `state ${j.state}` }, j.state + (j.stalled ? " (stalled)" : ""))),
      el("td", {}, pct === null ? "—" : `${j.step}/${j.total_steps} (${pct}%)`),
      el("td", {}, fmtTime(j.started_at || j.created_at)),
      el("td", {}, j.model || ""));
    return tr;
  });
  $("#t-jobs tbody").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 6, class: "hint" }, "No jobs yet."))]));
  const done = jobs.filter((j) => TERMINAL.has(j.state) && j.job_id !== state.job);
  fillSelect($("#t-overlay"), [["", "—"], ...done.map((j) => [j.job_id, `${j.job_id.slice(0, 8)} ${j.preset} (${j.state})`])], "");
}

function newLossChart() {
  if (state.chart) state.chart.destroy();
  state.chart = new Chart($("#t-chart"), {
    type: "line",
    data: { datasets: [] },
    options: {
      animation: false, parsing: false, normalized: true, maintainAspectRatio: false,
      interaction: { mode: "nearest", intersect: false },
      elements: { point: { radius: 0 }, line: { borderWidth: 1.5 } },
      scales: {
        x: { type: "linear", title: { display: true, text: "step", color: "#8b949e" }, ticks: { color: "#8b949e" }, grid: { color: "#21262d" } },
        y: { title: { display: true, text: "loss", color: "#8b949e" }, ticks: { color: "#8b949e" }, grid: { color: "#21262d" } },
      },
      plugins: { legend: { labels: { color: "#e6edf3" } } },
    },
  });
}

// the curves an event carries: its losses, and the validation figures among its metrics
function curveValues(ev) {
  const out = {};
  for (const [k, v] of Object.entries(ev.losses || {})) if (typeof v === "number" && isFinite(v)) out[k] = v;
  for (const [k, v] of Object.entries(ev.metrics || {})) {
    if (k.startsWith("val_") && typeof v === "number" && isFinite(v)) out[`${k} (validation)`] = v;
  }
  return out;
}

function series(label, dashed = false) {
  const chart = state.chart;
  let ds = chart.data.datasets.find((d) => d.label === label);
  if (!ds) {
    const color = COLORS[chart.data.datasets.length % COLORS.length];
    ds = { label, data: [], raw: [], borderColor: color, backgroundColor: color };
    if (dashed) ds.borderDash = [5, 4];
    chart.data.datasets.push(ds);
  }
  return ds;
}

function addLosses(step, values) {
  const chart = state.chart;
  for (const [key, value] of Object.entries(values || {})) {
    if (typeof value !== "number" || !isFinite(value)) continue;
    const ds = series(key, key.endsWith("(validation)"));
    const last = ds.raw.at(-1);
    if (last && last.x === step) last.y = value;
    else ds.raw.push({ x: step, y: value });
  }
  clearTimeout(addLosses.timer); // many replayed events: draw once they stop coming
  addLosses.timer = setTimeout(redrawLosses, 50);
}

// another finished run's curves beside this one's (its whole event history, replayed)
async function overlayJob(jobId) {
  const text = await (await api("GET", `/train/${jobId}/events?last_event_id=0-0`)).text();
  const tag = jobId.slice(0, 8);
  let n = 0;
  for (const block of text.split(/\r?\n\r?\n/)) {
    const data = block.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
    if (!data) continue;
    const ev = JSON.parse(data);
    if (ev.step === undefined) continue;
    for (const [k, v] of Object.entries(curveValues(ev))) {
      const ds = series(`${tag} · ${k}`, true);
      const last = ds.raw.at(-1);
      if (last && last.x === ev.step) last.y = v;
      else ds.raw.push({ x: ev.step, y: v });
      n++;
    }
  }
  redrawLosses();
  toast(n ? `run ${tag} overlaid` : `run ${tag} recorded no curves`);
}

// the curves as drawn: each raw series through an exponential moving average
function redrawLosses() {
  const chart = state.chart;
  if (!chart) return;
  const w = Number($("#t-smooth").value);
  $("#t-smooth-value").textContent = w.toFixed(2);
  for (const ds of chart.data.datasets) {
    let avg = null;
    ds.data = ds.raw.map(({ x, y }) => {
      avg = avg === null ? y : w * avg + (1 - w) * y;
      return { x, y: avg };
    });
    // a series logged at one or two steps (the detection classifier's) shows as dots
    ds.pointRadius = ds.raw.length < 3 ? 3 : 0;
  }
  // a log scale drops the values at or below 0 (Chart.js cannot place them)
  chart.options.scales.y.type = $("#t-log").checked ? "logarithmic" : "linear";
  chart.update("none");
}

function showJob(rec) {
  $("#t-live-state").textContent = rec.state + (rec.cancel_requested && !TERMINAL.has(rec.state) ? " (cancelling)" : "");
  $("#t-live-state").className = `state ${rec.state}`;
  const pct = rec.total_steps ? (100 * (rec.step || 0)) / rec.total_steps : rec.state === "succeeded" ? 100 : 0;
  $("#t-bar").style.width = `${Math.min(100, pct)}%`;
  const parts = [];
  if (rec.total_steps) parts.push(`step ${rec.step || 0} of ${rec.total_steps} (${pct.toFixed(0)}%)`);
  if (rec.epochs) parts.push(`epoch ${rec.epoch || 0} of ${rec.epochs}`);
  if (!TERMINAL.has(rec.state) && rec.eta_s !== undefined && rec.eta_s !== null) parts.push(`ETA ${fmtDuration(rec.eta_s)}`);
  if (rec.model) parts.push(`model ${rec.model}`);
  $("#t-progress-text").textContent = parts.join(" · ") || rec.state;
  $("#t-cancel").disabled = TERMINAL.has(rec.state);
  $("#t-resume").disabled = !(rec.state === "cancelled" || rec.state === "failed");
  $("#t-activate-btn").disabled = !(rec.state === "succeeded" && rec.model);
  $("#t-error").hidden = !rec.error;
  $("#t-error").textContent = rec.error || "";
  if (rec.samples) showSamples(rec.samples.map((s) => (s.startsWith("/") ? s : `/train/${rec.job_id}/samples/${s}`)));
  const metrics = Object.entries(flatMetrics(rec.metrics));
  $("#t-metrics").replaceChildren(...metrics.map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {}, fmt(v)))));
  $("#t-metrics-all").hidden = !metrics.length;
  $("#t-results").replaceChildren(...(rec.results ? resultsView(rec.results) : []));
}

// ------------------------------------------------------------------------------ results
const RESULT_HINT = "Lower is better. Ratio = model / floor (1 = as close as two simulator draws); " +
  "the verdict compares the model with the Gaussian baseline beyond the bootstrap noise; c2st_auc is best at 0.5.";

function ratioText(r) {
  return r === null || r === undefined ? "—" : `${r.toFixed(2)}×`;
}

// one job's evaluation: a plain sentence, then figure | model | baseline | floor | ratio | verdict
function resultsView(results) {
  const out = [];
  // red when it loses to the Gaussian, green when it wins most figures, amber without a majority
  const tone = results.loses_to_baseline ? "" : results.beats_baseline === false ? " unclear" : " good";
  if (results.summary) out.push(el("p", { class: "verdict" + tone }, results.summary));
  const head = el("tr", {}, ["figure", "model", "Gaussian baseline", "floor", "ratio", "vs baseline"].map((h) => el("th", {}, h)));
  const rows = results.rows.map((r) => el("tr", { "data-figure": r.figure },
    el("td", {}, r.figure), el("td", { class: "num" }, fmt(r.model)), el("td", { class: "num" }, fmt(r.baseline)),
    el("td", { class: "num" }, fmt(r.floor)), el("td", { class: "num" }, ratioText(r.ratio)),
    el("td", { class: r.verdict || "" }, r.verdict || "—")));
  out.push(el("div", { class: "hscroll" }, el("table", { class: "grid results" }, el("thead", {}, head), el("tbody", {}, rows))));
  // where the floor column comes from, or why it is empty; and what one object costs
  const floor = results.floor_source ? `Floor: ${results.floor_source}.` : results.floor_missing ? `${results.floor_missing}.` : "";
  if (floor) out.push(el("p", { class: "hint floor-source" }, floor));
  if (results.us_per_object != null) out.push(el("p", { class: "hint cost" }, `${fmt(results.us_per_object)} µs per emulated object, measured by the evaluation.`));
  out.push(el("p", { class: "hint" }, RESULT_HINT));
  return out;
}

function showSamples(urls) {
  if (!urls.length) return;
  const img = $("#t-sample");
  const latest = urls.at(-1);
  if (img.getAttribute("src") !== latest) img.src = latest;
  img.hidden = false;
  $("#t-sample-list").replaceChildren(...urls.map((u) => el("a", { href: "#training", onclick: (e) => { e.preventDefault(); img.src = u; } },
    u.split("/").pop().replace(".png", ""))));
}

async function openJob(jobId) {
  if (state.es) state.es.close();
  state.job = jobId;
  state.rec = null;
  document.querySelectorAll("#t-jobs tbody tr").forEach((tr) => tr.classList.toggle("selected", tr.dataset.job === jobId));
  $("#t-live").hidden = false;
  $("#t-live-id").textContent = jobId;
  $("#t-sample").hidden = true;
  $("#t-sample").removeAttribute("src");
  $("#t-sample-list").replaceChildren();
  newLossChart();
  try {
    state.rec = await getJSON(`/train/${jobId}`);
    showJob(state.rec);
  } catch (e) {
    toast(e.message, true);
    return;
  }
  follow(jobId, "0-0"); // replay the whole history for the loss curves, then go on live
}

function follow(jobId, cursor) {
  const es = new EventSource(`/train/${jobId}/events?last_event_id=${encodeURIComponent(cursor)}`);
  state.es = es;
  let last = cursor;
  const handle = (ev) => {
    if (state.job !== jobId) return;
    last = ev.lastEventId || last;
    const data = JSON.parse(ev.data);
    const rec = (state.rec = { ...state.rec, ...data });
    if (data.step !== undefined) addLosses(data.step, curveValues(data));
    if (data.samples) rec.samples = data.samples;
    showJob(rec);
    if (ev.type === "state" && TERMINAL.has(data.state)) finishJob(jobId);
  };
  for (const type of ["snapshot", "progress", "state"]) es.addEventListener(type, handle);
  // the server ends the stream when the job ends; EventSource would reconnect and replay
  // the history, so stop here and reopen from the last event only if the job goes on
  es.onerror = async () => {
    es.close();
    if (state.job !== jobId) return;
    try {
      const rec = await getJSON(`/train/${jobId}`);
      if (!TERMINAL.has(rec.state)) setTimeout(() => state.job === jobId && follow(jobId, last), 1000);
    } catch (_) { /* the job is gone */ }
  };
}

async function finishJob(jobId) {
  const rec = await getJSON(`/train/${jobId}`);
  if (state.job !== jobId) return;
  state.rec = rec;
  showJob(rec);
  refreshJobs();
  if (rec.model) loadModels().then(refreshModelPickers);
}

// a new model name (a run that trained into it) appears in every picker
function refreshModelPickers() {
  const image = modelsOf("image");
  const current = $("#g-model").value;
  fillSelect($("#g-model"), image.map((n) => [n, n]), current || (image.includes("nebula") ? "nebula" : image[0]));
  refreshVersionPickers();
}

async function cancelJob() {
  try {
    const rec = await (await api("DELETE", `/train/${state.job}`, { auth: true })).json();
    showJob({ ...state.rec, ...rec });
    toast("Cancel requested: the job stops at its next checkpoint");
  } catch (e) { toast(e.message, true); }
}

async function resumeJob() {
  const jobId = state.job;
  try {
    await api("POST", "/train", { json: { preset: state.rec.preset, resume: jobId }, auth: true });
    toast(`Job ${jobId.slice(0, 8)} resumed`);
    openJob(jobId);
  } catch (e) { toast(e.message, true); }
}

async function activate(name, version) {
  await api("POST", `/models/${encodeURIComponent(name)}/activate`, { json: { version }, auth: true });
  await loadModels();
  refreshModelPickers();
  toast(`${name}@${version} is now served: it answers calls to ${name}`);
}

async function activateJobModel() {
  const [name, version] = state.rec.model.split("@");
  try { await activate(name, version); } catch (e) { toast(e.message, true); }
}

// ----------------------------------------------------------------------------- emulator
function mulberry32(seed) {
  return () => {
    seed |= 0; seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// a DES-like toy catalog: faint-heavy magnitudes, red colours, typical sky noise and seeing
function exampleCatalog(n) {
  const rand = mulberry32(42);
  const gauss = () => Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
  const cols = state.config.emulator_inputs;
  const lines = [cols.join(",")];
  for (let k = 0; k < n; k++) {
    const r = 25.5 - 7 * Math.pow(rand(), 1.6);
    const i = r - (0.35 + 0.2 * gauss());
    const z = i - (0.2 + 0.12 * gauss());
    const sky = [4.1, 7.1, 13.5].map((s) => s * (1 + 0.15 * gauss()));
    const psf = [0.95, 0.88, 0.84].map((p) => p * (1 + 0.12 * gauss()));
    lines.push([r, i, z, ...sky, ...psf].map((v) => v.toFixed(3)).join(","));
  }
  return lines.join("\n");
}

// the Emulator tab's model and version pickers, from the registry's emulator names
function refreshEmulatorPickers() {
  const emus = modelsOf("emulator");
  const keep = $("#e-model").value;
  fillSelect($("#e-model"), emus.length ? emus.map((n) => [n, n]) : [["", "none registered"]],
    emus.includes(keep) ? keep : emus.includes("balrog") ? "balrog" : emus[0]);
  state.emuModel = $("#e-model").value || null;
  fillSelect($("#e-version"), state.emuModel ? versionOptions(state.emuModel) : [["", "—"]], $("#e-version").value);
}

function initEmulator() {
  refreshEmulatorPickers();
  $("#e-model").addEventListener("change", () => { $("#e-version").value = ""; refreshEmulatorPickers(); });
  $("#e-samples").max = state.config.max_emulate_samples;
  $("#e-example").addEventListener("click", () => {
    $("#e-text").value = exampleCatalog(Math.min(2000, state.config.max_emulate_rows));
    $("#e-file").value = "";
  });
  $("#e-run").addEventListener("click", runEmulator);
  // the buttons are hidden until a run has succeeded; the guards keep a stray click harmless
  $("#e-dl-csv").addEventListener("click", () => state.emu && download(new Blob([toCsv(state.emu.rows)], { type: "text/csv" }), "emulated.csv"));
  $("#e-dl-json").addEventListener("click", () => state.emu && download(new Blob([JSON.stringify(state.emu)], { type: "application/json" }), "emulated.json"));
  $("#e-dl-parquet").addEventListener("click", async () => {
    if (!state.emu) return;
    try {
      const resp = await postEmulate(state.emu.request, state.emu.seed, "application/vnd.apache.parquet");
      download(await resp.blob(), "emulated.parquet");
    } catch (e) { toast(e.message, true); }
  });
}

const FILE_TYPES = { csv: "text/csv", parquet: "application/vnd.apache.parquet", pq: "application/vnd.apache.parquet", fits: "application/fits", fit: "application/fits", json: "application/json" };

// what to send: {type, body} from the file picker or the text box
async function emulatorInput() {
  const file = $("#e-file").files[0];
  if (file) {
    const ext = file.name.split(".").pop().toLowerCase();
    const type = FILE_TYPES[ext];
    if (!type) throw new Error(`unsupported file type .${ext}: use CSV, Parquet, FITS or JSON`);
    return { type, body: type === "application/json" ? await file.text() : file, name: file.name };
  }
  const text = $("#e-text").value.trim();
  if (!text) throw new Error("paste rows, load the example catalog or choose a file");
  return { type: /^[[{]/.test(text) ? "application/json" : "text/csv", body: text };
}

async function postEmulate(input, seed, accept = "application/json") {
  const samples = parseInt($("#e-samples").value, 10) || 1;
  const version = $("#e-version").value;
  const q = new URLSearchParams({ samples });
  if (seed !== undefined && seed !== null && seed !== "") q.set("seed", seed);
  if (state.emuModel) q.set("model", state.emuModel);
  if (version) q.set("version", version);
  let body = input.body;
  if (input.type === "application/json") {
    const parsed = typeof body === "string" ? JSON.parse(body) : body;
    const rows = Array.isArray(parsed) ? parsed : parsed.rows;
    if (!Array.isArray(rows)) throw new Error('JSON must be a list of rows or {"rows": [...]}');
    // the seed stays in the query string: a JSON number above 2^53 would be rounded here
    const req = { rows, samples };
    if (state.emuModel) req.model = state.emuModel;
    if (version) req.version = version;
    body = JSON.stringify(req);
    q.delete("samples");
  }
  return api("POST", `/emulate?${q}`, { body, headers: { "content-type": input.type, accept } });
}

async function runEmulator() {
  const status = $("#e-status");
  let input;
  try {
    input = await emulatorInput();
  } catch (e) {
    status.replaceChildren(el("span", { class: "error" }, e.message));
    return;
  }
  status.textContent = "emulating…";
  $("#e-run").disabled = true;
  const t0 = performance.now();
  clearEmulatorResults(); // a failed run must not leave the previous run's plots on screen
  try {
    const resp = await postEmulate(input, $("#e-seed").value);
    // the header carries the seed as text: exact, where the JSON number may be rounded
    const seed = resp.headers.get("x-emulate-seed") || "";
    const out = await resp.json();
    state.emu = { ...out, seed, request: input };
    const det = out.rows.filter((r) => r.detected).length;
    status.replaceChildren(`${out.rows.length} rows from ${out.model}@${out.version}, seed `,
      el("code", { id: "e-used-seed" }, seed), ` (enter it above to draw the same rows), ` +
      `${out.samples} realization(s); ${det} detected (${((100 * det) / Math.max(1, out.rows.length)).toFixed(1)}%) ` +
      `in ${((performance.now() - t0) / 1000).toFixed(2)} s`);
    $("#e-downloads").hidden = false;
    drawEmulatorPlots(out.rows);
    showTable(out.rows.slice(0, 50));
  } catch (e) {
    const big = /emulate\/jobs/.test(e.message);
    status.replaceChildren(el("span", { class: "error" }, e.message),
      big ? el("span", { class: "hint" }, " — the Python client sends large catalogs there by itself: ",
        el("code", {}, "cosmogan.Client(url, api_key).emulate(table)")) : "");
  } finally {
    $("#e-run").disabled = false;
  }
}

function clearEmulatorResults() {
  state.emu = null;
  $("#e-downloads").hidden = true;
  $("#e-plots").hidden = true;
  $("#e-table-wrap").hidden = true;
  for (const id of Object.keys(state.charts)) { state.charts[id].destroy(); delete state.charts[id]; }
}

function toCsv(rows) {
  if (!rows.length) return "";
  const cols = [...new Set(rows.flatMap((r) => Object.keys(r)))];
  const cell = (v) => {
    if (v === null || v === undefined) return "";
    const s = String(v);
    return /[",\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
  };
  return [cols.join(","), ...rows.map((r) => cols.map((c) => cell(r[c])).join(","))].join("\n") + "\n";
}

function showTable(rows) {
  const cols = [...new Set(rows.flatMap((r) => Object.keys(r)))];
  $("#e-table").replaceChildren(
    el("thead", {}, el("tr", {}, cols.map((c) => el("th", {}, c)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, cols.map((c) => el("td", {}, fmt(r[c])))))));
  $("#e-table-wrap").hidden = false;
}

// the column that holds a band's true magnitude: canonical name or a DES alias
function trueMagColumn(rows, band) {
  const keys = Object.keys(rows[0] || {});
  const want = `true_mag_${band}`;
  return keys.find((k) => k === want) || keys.find((k) => state.config.true_mag_aliases[k.toLowerCase()] === want);
}

// [min, max] of one coordinate over every point of every dataset, with a little margin
function bounds(datasets, key) {
  let lo = Infinity, hi = -Infinity;
  for (const ds of datasets) for (const p of ds.data) { if (p[key] < lo) lo = p[key]; if (p[key] > hi) hi = p[key]; }
  if (!isFinite(lo)) return {};
  const pad = (hi - lo) * 0.03 || 0.5;
  // rounded outwards to a tenth of the range's decade, so the end ticks read well
  const unit = Math.pow(10, Math.floor(Math.log10(hi - lo + 2 * pad))) / 10;
  return { min: Math.floor((lo - pad) / unit) * unit, max: Math.ceil((hi + pad) / unit) * unit };
}

// Chart.js with `parsing: false` takes each dataset as sorted by x and sizes the x axis
// from its first and last point: every dataset is sorted here, and both axes get explicit
// bounds from all the points, so that no point falls outside the chart.
function plot(id, config) {
  if (state.charts[id]) state.charts[id].destroy();
  const datasets = config.data.datasets;
  for (const ds of datasets) ds.data = ds.data.filter((p) => isFinite(p.x) && isFinite(p.y)).sort((a, b) => a.x - b.x);
  const axis = (text) => ({ type: "linear", title: { display: true, text, color: "#8b949e" }, ticks: { color: "#8b949e" }, grid: { color: "#21262d" } });
  config.options = {
    animation: false, parsing: false, maintainAspectRatio: false,
    plugins: { legend: { labels: { color: "#e6edf3" } } },
    ...config.options,
    scales: {
      x: { ...axis(config.x), ...bounds(datasets, "x") },
      y: { ...axis(config.y), ...bounds(datasets, "y"), ...(config.yRange || {}) },
    },
  };
  state.charts[id] = new Chart(document.getElementById(id), config);
}

function drawEmulatorPlots(rows) {
  const bands = ["r", "i", "z"];
  const trueCol = Object.fromEntries(bands.map((b) => [b, trueMagColumn(rows, b)]));
  if (bands.some((b) => !trueCol[b])) {
    $("#e-plots").hidden = true;
    return;
  }
  $("#e-plots").hidden = false;
  const num = (v) => (typeof v === "number" && isFinite(v) ? v : null);

  // detection completeness in 0.25 mag bins of true magnitude
  const completeness = bands.map((b) => {
    const bins = new Map();
    for (const r of rows) {
      const m = num(r[trueCol[b]]);
      if (m === null) continue;
      const k = Math.floor(m * 4) / 4;
      const cell = bins.get(k) || [0, 0];
      cell[0] += r.detected ? 1 : 0;
      cell[1] += 1;
      bins.set(k, cell);
    }
    const data = [...bins.entries()].sort((a, c) => a[0] - c[0]).filter(([, [, n]]) => n >= 3)
      .map(([k, [d, n]]) => ({ x: k + 0.125, y: d / n }));
    return { label: `${b} band`, data, borderColor: BAND_COLORS[b], backgroundColor: BAND_COLORS[b], pointRadius: 2, tension: 0.2 };
  });
  plot("e-completeness", { type: "line", data: { datasets: completeness }, x: "true magnitude", y: "fraction detected", yRange: { min: 0, max: 1.02 } });

  // colour–colour: emulated observed colours of detected objects, true colours beneath
  const det = rows.filter((r) => r.detected && bands.every((b) => num(r[`mag_${b}`]) !== null));
  const observed = det.map((r) => ({ x: r.mag_r - r.mag_i, y: r.mag_i - r.mag_z }));
  const truth = det.map((r) => ({ x: r[trueCol.r] - r[trueCol.i], y: r[trueCol.i] - r[trueCol.z] }));
  plot("e-colour", {
    type: "scatter",
    data: { datasets: [
      { label: "true colours", data: truth, pointRadius: 1.2, backgroundColor: "rgba(139,148,158,0.45)" },
      { label: "emulated (observed)", data: observed, pointRadius: 1.5, backgroundColor: "rgba(122,162,247,0.7)" },
    ] },
    x: "r − i", y: "i − z",
  });

  // observed − true magnitude against true magnitude, per band
  plot("e-residual", {
    type: "scatter",
    data: { datasets: bands.map((b) => ({
      label: `${b} band`,
      data: rows.filter((r) => r.detected && num(r[`mag_${b}`]) !== null)
        .map((r) => ({ x: r[trueCol[b]], y: r[`mag_${b}`] - r[trueCol[b]] })),
      pointRadius: 1.3, backgroundColor: BAND_COLORS[b] + "b0",
    })) },
    x: "true magnitude", y: "observed − true (mag)",
  });
}

// ------------------------------------------------------------------------------- models
// every job records {figures, floor, ratio, evaluated_on, ...}: one level is shown as "figures.swd"
function flatMetrics(metrics, prefix = "") {
  const out = {};
  for (const [k, v] of Object.entries(metrics || {})) {
    if (typeof v === "number" || typeof v === "string" || typeof v === "boolean") out[prefix + k] = v;
    else if (v && typeof v === "object" && !Array.isArray(v) && !prefix) Object.assign(out, flatMetrics(v, `${k}.`));
  }
  return out;
}

function button(v, action, disabled, onclick) {
  return el("button", { class: "small", "data-version": v.version, "data-action": action, disabled, onclick,
    title: disabled ? `not for the active version` : undefined }, action);
}

async function renderModels() {
  let models;
  try { models = await loadModels(); } catch (e) { toast(e.message, true); return; }
  const blocks = Object.entries(models).map(([name, m]) => {
    const versions = [...m.versions].reverse();
    // one key set for shipped and trained versions: the rows of their results tables
    const tables = versions.map((v) => Object.fromEntries((v.results?.rows || []).map((r) => [r.figure, r])));
    const keys = [...new Set(tables.flatMap((x) => Object.keys(x)))].sort();
    const head = el("tr", {}, el("th", {}, "version"), versions.map((v) => el("th", {},
      el("code", {}, v.version), v.version === m.active ? el("span", { class: "state succeeded" }, " active") : "")));
    const info = (label, f) => el("tr", {}, el("td", {}, label), versions.map((v) => el("td", {}, f(v))));
    const actions = el("tr", {}, el("td", {}, ""), versions.map((v) => el("td", {},
      button(v, "activate", v.version === m.active, () => activate(name, v.version).then(renderModels).catch((e) => toast(e.message, true))), " ",
      button(v, "note", false, () => editNote(name, v)), " ",
      button(v, "delete", v.version === m.active, () => deleteVersion(name, v.version)))));
    const cell = (r) => el("td", { class: `num ${r?.verdict || ""}`, title: r ? `floor ${fmt(r.floor)} · Gaussian ${fmt(r.baseline)} · ${r.verdict || "no verdict"}` : "" },
      r ? `${fmt(r.model)}${r.ratio !== null && r.ratio !== undefined ? ` (${ratioText(r.ratio)})` : ""}` : "—");
    const rows = keys.map((k) => el("tr", { "data-figure": k }, el("td", {}, k), tables.map((t) => cell(t[k]))));
    return el("div", { class: "card model", "data-model": name },
      el("h2", {}, name, el("span", { class: "hint" }, `${familyOf(name)} · active: ${m.active || "none"}`)),
      el("div", { class: "hscroll" }, el("table", { class: "grid" },
        el("thead", {}, head),
        el("tbody", {},
          info("created", (v) => fmtTime(v.created)),
          info("source", (v) => v.source || ""),
          info("job", (v) => (v.job_id ? el("code", {}, v.job_id.slice(0, 8)) : "")),
          info("kind", (v) => v.kind || "?"),
          info("note", (v) => el("span", { class: "note" }, v.note || "")),
          familyOf(name) === "emulator" ? info("µs per object", (v) => fmt(v.results?.us_per_object ?? v.metrics?.us_per_object ?? null)) : "",
          info("vs Gaussian", (v) => v.results?.summary ? el("span", { class: v.results.loses_to_baseline ? "error" : "" },
            `${v.results.counts.better} better · ${v.results.counts.tie} tie · ${v.results.counts.worse} worse`) : "—"),
          actions, rows))));
  });
  $("#m-list").replaceChildren(...(blocks.length ? blocks : [el("p", { class: "hint" }, "No models registered.")]));
}

async function editNote(name, v) {
  const note = prompt(`Note for ${name}@${v.version}`, v.note || "");
  if (note === null) return;
  try {
    await api("PATCH", `/models/${encodeURIComponent(name)}/versions/${encodeURIComponent(v.version)}`, { json: { note }, auth: true });
    renderModels();
  } catch (e) { toast(e.message, true); }
}

async function deleteVersion(name, version) {
  if (!confirm(`Delete ${name}@${version}? Its weights are removed from the registry.`)) return;
  try {
    await api("DELETE", `/models/${encodeURIComponent(name)}/versions/${encodeURIComponent(version)}`, { auth: true });
    toast(`${name}@${version} deleted`);
    renderModels();
    refreshVersionPickers();
  } catch (e) { toast(e.message, true); }
}

// ----------------------------------------------------------------------------- datasets
const UPLOAD_TYPES = { csv: "text/csv", parquet: "application/vnd.apache.parquet", fits: "application/fits",
  zip: "application/zip", tar: "application/x-tar", gz: "application/gzip", tgz: "application/gzip" };

function initDatasets() {
  $("#d-upload").addEventListener("submit", uploadDataset);
  $("#d-build").addEventListener("submit", buildDataset);
  refreshDatasets();
  setInterval(() => { if (!$("#training").hidden) refreshDatasets(); }, 3000);
}

async function refreshDatasets() {
  let list;
  try {
    list = (await getJSON("/datasets")).datasets;
  } catch (_) { return; }
  $("#t-datasets").replaceChildren(...list.filter((d) => d.state === "ready").map((d) => el("option", { value: d.name })));
  $("#d-list tbody").replaceChildren(...list.map((d) => {
    const pct = d.state === "ready" ? "" : d.progress != null ? ` ${(100 * d.progress).toFixed(0)}%` : "";
    const eta = d.eta_s != null ? `, ${fmtDuration(d.eta_s)} left` : "";
    return el("tr", {}, el("td", {}, d.name), el("td", {}, `${d.state}${pct}${eta}`),
      el("td", {}, d.rows == null ? "?" : d.rows.toLocaleString()), el("td", {}, d.source || ""));
  }));
}

async function uploadDataset(ev) {
  ev.preventDefault();
  const file = $("#d-up-file").files[0];
  const ext = file.name.split(".").pop().toLowerCase();
  const type = UPLOAD_TYPES[ext];
  if (!type) { toast("Upload a .csv, .parquet, .fits, .zip, .tar or .tar.gz file", true); return; }
  try {
    const name = $("#d-up-name").value.trim();
    const d = await (await api("PUT", `/datasets/${name}`, { body: file, headers: { "content-type": type }, auth: true })).json();
    toast(`Dataset ${d.name}: ${d.rows.toLocaleString()} ${d.kind === "images" ? "images" : "rows"}`);
    $("#t-data").value = d.name;
    refreshDatasets();
  } catch (e) { toast(e.message, true); }
}

async function buildDataset(ev) {
  ev.preventDefault();
  const json = { name: $("#d-b-name").value.trim(), simulator: $("#d-b-sim").value,
    rows: parseInt($("#d-b-rows").value, 10), seed: parseInt($("#d-b-seed").value || "0", 10) };
  try {
    const r = await (await api("POST", "/datasets", { json, auth: true })).json();
    toast(`Building ${r.name} (job ${r.job_id.slice(0, 8)})`);
    $("#t-data").value = r.name;
    refreshDatasets();
  } catch (e) { toast(e.message, true); }
}

// --------------------------------------------------------------------------------- start
async function main() {
  const key = $("#api-key");
  key.value = apiKey();
  key.addEventListener("input", () => sessionStorage.setItem(KEY_STORE, key.value.trim()));
  checkReady();
  setInterval(checkReady, 30000);
  try {
    [state.config] = await Promise.all([getJSON("/ui/config"), loadModels()]);
  } catch (e) {
    toast(`The service does not answer: ${e.message}`, true);
    return;
  }
  initGallery();
  initTraining();
  initDatasets();
  initEmulator();
  window.addEventListener("hashchange", showTab);
  showTab();
  document.body.dataset.ready = "1"; // for tests: every section is wired
}

main();
