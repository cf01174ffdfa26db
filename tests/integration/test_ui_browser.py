"""The web page driven in a real headless Chromium against the real service.

Needs Debian's `chromium` and Playwright for Python (no browser download); skipped with the
reason when either is missing. `COSMOGAN_SCREENSHOTS=1` saves the README's screenshots.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from models.registry import Registry
from tests.integration.conftest import API_KEY, Service, wait_for_state

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright for Python is not installed (pip install playwright)"
)
CHROMIUM = os.environ.get("COSMOGAN_CHROMIUM") or shutil.which("chromium")
if not CHROMIUM:
    pytest.skip(
        "no chromium executable (apt-get install chromium, or set COSMOGAN_CHROMIUM)",
        allow_module_level=True,
    )

DOCS = Path(__file__).resolve().parents[2] / "docs"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
TINY_DCGAN = {"batch_size": 4, "width": 8, "sample_count": 16, "heldout_fraction": 0.0}


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, service: Service):
    """A fresh page that records requests leaving the service and any script error."""
    context = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    pg = context.new_page()
    pg.external = []
    pg.errors = []
    own = urlsplit(service.base_url).netloc

    def route(r):
        if urlsplit(r.request.url).netloc not in (own, ""):
            pg.external.append(r.request.url)
            return r.abort()
        return r.continue_()

    pg.route("**/*", route)
    pg.on("pageerror", lambda exc: pg.errors.append(str(exc)))
    yield pg
    context.close()
    assert not pg.errors, pg.errors


def open_tab(page, service: Service, tab: str) -> None:
    page.goto(f"{service.base_url}/#{tab}")
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)


def screenshot(page, name: str) -> None:
    if os.environ.get("COSMOGAN_SCREENSHOTS") == "1":
        page.evaluate("document.querySelector('#toast').hidden = true; window.scrollTo(0, 0)")
        page.screenshot(path=str(DOCS / name), full_page=True)


def test_gallery_shows_an_image_for_a_seed(page, service: Service) -> None:
    open_tab(page, service, "gallery")
    page.fill("#g-seed", "3")
    page.dispatch_event("#g-seed", "change")
    img = page.locator("#g-panels img")
    page.wait_for_function(
        "() => { const i = document.querySelector('#g-panels img');"
        " return i && i.src.includes('seed=3') && i.complete && i.naturalWidth > 0 }",
        timeout=60_000,
    )
    src = img.get_attribute("src")
    assert src.startswith("/generate?") and "seed=3" in src and "model=nebula" in src
    # the picture is exactly what the deterministic URL gives, and the download link is it
    assert page.locator("#g-panels a[download]").get_attribute("href") == src
    with service.client() as c:
        png = c.get(src).content
    shown = page.evaluate(
        "async (u) => Array.from(new Uint8Array(await (await fetch(u)).arrayBuffer()))", src
    )
    assert bytes(shown) == png and png[:8] == b"\x89PNG\r\n\x1a\n"

    page.click("#g-next")
    page.wait_for_function(
        "() => document.querySelector('#g-panels img').src.includes('seed=4')", timeout=10_000
    )
    # the address bar is a link to this grid
    assert "seed=4" in page.url and "model=nebula" in page.url
    page.keyboard.press("ArrowRight")
    page.wait_for_function(
        "() => document.querySelector('#g-panels img').src.includes('seed=5')", timeout=10_000
    )
    # one version only: nothing to compare it with
    assert page.is_disabled("#g-compare")
    registry = Registry(service.home / "registry")
    shipped = registry.get("nebula", "default")
    registry.register("nebula", "second", shipped.path, kind=shipped.kind, source="test")
    page.goto(f"{service.base_url}/#gallery?model=nebula&seed=9&n=4")
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    page.wait_for_function(
        "() => document.querySelector('#g-panels img').src.includes('seed=9&n=4')",
        timeout=10_000,
    )
    # side by side: two versions, two panels; "compare with" starts on the other version
    assert page.input_value("#g-version-b") == "second"
    page.check("#g-compare")
    assert page.locator("#g-panels img").count() == 2
    assert "version=second" in page.locator("#g-panels img").nth(1).get_attribute("src")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#g-panels img')]"
        ".every(i => i.complete && i.naturalWidth > 0)",
        timeout=60_000,
    )
    page.uncheck("#g-compare")
    page.select_option("#g-n", "16")
    page.fill("#g-seed", "1")
    page.dispatch_event("#g-seed", "change")
    page.wait_for_function(
        "() => { const i = document.querySelector('#g-panels img');"
        " return i.src.includes('seed=1&n=16') && i.complete && i.naturalWidth > 0 }",
        timeout=60_000,
    )
    screenshot(page, "ui_gallery.png")
    assert not page.external
    registry.delete("nebula", "second")


def test_training_form_starts_a_job_that_shows_progress_and_finishes(
    page, service: Service
) -> None:
    open_tab(page, service, "training")
    page.fill("#api-key", API_KEY)
    page.select_option("#t-preset", "nebula-dcgan")
    page.fill("#t-data", "tiny")
    page.fill("#t-epochs", "10")
    page.fill("#t-max-steps", "18")
    page.fill("#t-overrides", json.dumps(TINY_DCGAN))
    page.click("#t-form button[type=submit]")

    page.wait_for_selector("#t-live:not([hidden])", timeout=10_000)
    job_id = page.inner_text("#t-live-id")
    assert len(job_id) == 32
    # the key stays in this tab's session storage only
    assert page.evaluate("sessionStorage.getItem('cosmogan-api-key')") == API_KEY
    assert page.evaluate("localStorage.length") == 0

    page.wait_for_function(
        "() => document.querySelector('#t-live-state').textContent.startsWith('succeeded')",
        timeout=240_000,
    )
    # progress from the event stream: the bar is full, the text names the last step,
    # every loss curve has points, and the sample grids written per epoch are shown
    assert page.evaluate("document.querySelector('#t-bar').style.width") == "100%"
    assert "step 18 of 18" in page.inner_text("#t-progress-text")
    curves = page.evaluate("() => state.chart.data.datasets.map(d => [d.label, d.data.length])")
    assert curves and all(n >= 1 for _, n in curves), curves
    # smoothing off: the curves are the raw losses the stream carried
    page.fill("#t-smooth", "0")
    raw = page.evaluate("() => state.chart.data.datasets.map(d => [d.raw, d.data])")
    assert all(r == d for r, d in raw)
    page.wait_for_function(
        "() => { const i = document.querySelector('#t-sample');"
        " return !i.hidden && i.complete && i.naturalWidth > 0 }",
        timeout=20_000,
    )
    assert page.locator("#t-sample-list a").count() >= 1
    page.wait_for_selector(f"#t-jobs tr[data-job='{job_id}'] .state.succeeded", timeout=10_000)
    assert page.is_enabled("#t-activate-btn") and page.is_disabled("#t-cancel")
    with service.client() as c:
        rec = c.get(f"/train/{job_id}").json()
    assert rec["state"] == "succeeded" and rec["step"] == 18
    assert page.inner_text("#t-progress-text").count(rec["model"]) == 1
    screenshot(page, "ui_training.png")
    assert not page.external


def _state_is(page, text: str, timeout: float = 60_000) -> None:
    page.wait_for_function(
        "(t) => document.querySelector('#t-live-state').textContent.startsWith(t)",
        arg=text,
        timeout=timeout,
    )


def _step(page) -> int:
    return page.evaluate("(state.rec && state.rec.step) || 0")


def test_cancel_and_resume_buttons(page, service: Service) -> None:
    open_tab(page, service, "training")
    page.fill("#api-key", API_KEY)
    page.select_option("#t-preset", "nebula-dcgan")
    page.fill("#t-data", "tiny")
    page.fill("#t-epochs", "1000")
    page.fill("#t-max-steps", "600")  # far more than the test lets it run, yet bounded
    page.fill("#t-overrides", json.dumps({**TINY_DCGAN, "checkpoint_every": 2}))
    page.click("#t-form button[type=submit]")
    page.wait_for_selector("#t-live:not([hidden])", timeout=10_000)
    job_id = page.inner_text("#t-live-id")
    try:
        page.wait_for_function("() => state.rec && state.rec.step >= 2", timeout=120_000)
        page.click("#t-cancel")
        _state_is(page, "cancelled")
        stopped = _step(page)
        assert page.is_enabled("#t-resume") and page.is_disabled("#t-cancel")

        page.click("#t-resume")
        page.wait_for_function(
            "(s) => state.rec && state.rec.state === 'running' && state.rec.step > s",
            arg=stopped,
            timeout=120_000,
        )
        # the curves go on from where the run stopped, not from step 0
        xs = page.evaluate("state.chart.data.datasets[0].raw.map(p => p.x)")
        assert xs == sorted(xs) and xs[-1] > stopped
        page.click("#t-cancel")
        _state_is(page, "cancelled")
    finally:  # never leave the worker busy with it for the tests that follow
        with service.client() as c:
            c.delete(f"/train/{job_id}", headers=service.auth)
    assert not page.external


def test_an_uploaded_catalog_returns_plots(page, service: Service, tmp_path: Path) -> None:
    open_tab(page, service, "emulator")
    page.click("#e-example")
    page.fill("#e-seed", "5")
    page.click("#e-run")
    page.wait_for_selector("#e-plots:not([hidden])", timeout=60_000)
    rows = page.evaluate("state.emu.rows.length")
    assert rows == 200  # the example catalog fills the server's row limit in this service
    sizes = page.evaluate(
        "() => Object.fromEntries(Object.entries(state.charts)"
        ".map(([k, c]) => [k, c.data.datasets.map(d => d.data.length)]))"
    )
    assert set(sizes) == {"e-completeness", "e-colour", "e-residual"}
    assert all(n > 0 for n in sizes["e-completeness"]) and sum(sizes["e-residual"]) > 0, sizes
    screenshot(page, "ui_emulator.png")

    # a CSV file with DES Balrog column names: uploaded as a CSV body, plotted the same way
    example = page.evaluate("exampleCatalog(40)")
    header, *lines = example.splitlines()
    des = header.replace("true_mag_", "BDF_MAG_DERED_CALIB_").replace("psf_fwhm_", "FWHM_WMEAN_")
    path = tmp_path / "des.csv"
    path.write_text("\n".join([des.upper(), *lines]) + "\n")
    page.set_input_files("#e-file", str(path))
    page.click("#e-run")
    page.wait_for_function("() => state.emu && state.emu.rows.length === 40", timeout=60_000)
    assert page.is_visible("#e-plots")
    assert "mag_r" in page.evaluate("Object.keys(state.emu.rows[0])")
    assert page.evaluate("state.charts['e-completeness'].data.datasets[0].data.length") > 0

    with page.expect_download() as dl:
        page.click("#e-dl-csv")
    text = Path(dl.value.path()).read_text().splitlines()
    assert len(text) == 41 and {"mag_r", "detected"} <= set(text[0].split(","))
    with page.expect_download() as dl:
        page.click("#e-dl-parquet")
    assert Path(dl.value.path()).read_bytes()[:4] == b"PAR1"
    assert not page.external


def test_models_page_lists_versions_with_metrics(page, service: Service) -> None:
    reg = Registry(service.home / "registry")
    reg.register("nebula", "ui-test", reg.get("nebula", "default").path, metrics={"psd": 0.5})
    open_tab(page, service, "models")
    page.wait_for_selector("#m-list .model[data-model='nebula']", timeout=10_000)
    with service.client() as c:
        models = c.get("/models").json()["models"]
    for name, m in models.items():
        card = page.locator(f"#m-list .model[data-model='{name}']")
        assert card.count() == 1
        head = card.locator("thead").inner_text()
        assert all(v["version"] in head for v in m["versions"])
    assert "swd_avg" in page.locator("#m-list .model[data-model='nebula']").inner_text()

    # a note, then deletion; the active version offers neither activate nor delete
    page.fill("#api-key", API_KEY)
    column = "#m-list .model[data-model='nebula'] button[data-version='{}'][data-action='{}']"
    assert page.is_disabled(column.format(models["nebula"]["active"], "delete"))
    page.once("dialog", lambda d: d.accept("wider critic"))
    page.click(column.format("ui-test", "note"))
    page.wait_for_function(
        "() => document.querySelector(\"#m-list .model[data-model='nebula']\")"
        ".innerText.includes('wider critic')",
        timeout=10_000,
    )
    assert reg.get("nebula", "ui-test").meta["note"] == "wider critic"
    screenshot(page, "ui_models.png")
    page.once("dialog", lambda d: d.accept())
    page.click(column.format("ui-test", "delete"))
    page.wait_for_function(
        "() => !document.querySelector(\"#m-list .model[data-model='nebula']\")"
        ".innerText.includes('ui-test')",
        timeout=10_000,
    )
    assert "ui-test" not in [v.version for v in reg.versions("nebula")]


@pytest.mark.parametrize(("path", "ready"), [("/docs", ".opblock"), ("/redoc", ".menu-content")])
def test_api_docs_render_offline(page, service: Service, path: str, ready: str) -> None:
    page.goto(service.base_url + path)
    page.wait_for_selector(ready, timeout=30_000)
    assert page.locator(ready).count() >= 1
    assert not page.external, page.external


def _spread_catalog(n: int) -> str:
    """CSV rows in no particular order whose colours and magnitudes span wide ranges."""
    import numpy as np

    rng = np.random.default_rng(3)
    r = rng.uniform(16.0, 24.0, n)
    i = r - rng.uniform(-1.2, 1.9, n)
    z = i - rng.uniform(-0.8, 1.2, n)
    cols = ["true_mag_r", "true_mag_i", "true_mag_z", "sky_sigma_r", "sky_sigma_i",
            "sky_sigma_z", "psf_fwhm_r", "psf_fwhm_i", "psf_fwhm_z"]  # fmt: skip
    lines = [",".join(cols)]
    for k in range(n):
        lines.append(f"{r[k]:.3f},{i[k]:.3f},{z[k]:.3f},4.1,7.1,13.5,0.95,0.88,0.84")
    return "\n".join(lines)


def test_plots_contain_every_point(page, service: Service) -> None:
    open_tab(page, service, "emulator")
    # before any run: no download buttons, no empty plot cards
    for sel in ("#e-downloads", "#e-plots", "#e-dl-csv", "#e-completeness"):
        assert page.is_hidden(sel), sel
    page.fill("#e-text", _spread_catalog(200))
    page.fill("#e-seed", "2")
    page.click("#e-run")
    page.wait_for_selector("#e-plots:not([hidden])", timeout=60_000)
    assert page.is_visible("#e-dl-csv")
    report = page.evaluate(
        """() => {
          const out = {};
          for (const id of ['e-colour', 'e-residual']) {
            const c = state.charts[id];
            const pts = c.data.datasets.flatMap(d => d.data);
            const {x, y} = c.scales;
            out[id] = {n: pts.length, outside: pts.filter(p =>
              p.x < x.min || p.x > x.max || p.y < y.min || p.y > y.max).length};
          }
          const det = state.emu.rows.filter(r => r.detected && r.mag_r !== null
            && r.mag_i !== null && r.mag_z !== null).length;
          return {out, det};
        }"""
    )
    # every detected object is drawn (true and observed colours), and none off the axes
    assert report["out"]["e-colour"] == {"n": 2 * report["det"], "outside": 0}, report
    assert report["out"]["e-residual"]["n"] > 0 and report["out"]["e-residual"]["outside"] == 0

    # an error leaves no stale plots behind, and too many rows points to /emulate/jobs
    page.fill("#e-text", _spread_catalog(201))
    page.click("#e-run")
    page.wait_for_selector("#e-status .error", timeout=30_000)
    assert "/emulate/jobs" in page.inner_text("#e-status")
    assert page.is_hidden("#e-plots") and page.is_hidden("#e-downloads")
    assert not page.external


def test_a_displayed_seed_reproduces_the_rows(page, service: Service) -> None:
    open_tab(page, service, "emulator")
    page.fill("#e-text", _spread_catalog(30))
    page.fill("#e-seed", "")
    page.click("#e-run")
    page.wait_for_selector("#e-used-seed", timeout=60_000)
    shown = page.inner_text("#e-used-seed")
    assert shown.isdigit() and int(shown) <= 2**53 - 1
    first = page.evaluate("JSON.stringify(state.emu.rows)")
    page.fill("#e-seed", shown)
    page.click("#e-run")
    page.wait_for_function(f"() => state.emu && state.emu.seed === '{shown}'", timeout=60_000)
    assert page.evaluate("JSON.stringify(state.emu.rows)") == first
    # a seed above 2^53 typed by a user reaches the server exactly
    big = str(2**62 + 1)
    page.fill("#e-seed", big)
    page.click("#e-run")
    page.wait_for_function(f"() => state.emu && state.emu.seed === '{big}'", timeout=60_000)
    assert page.inner_text("#e-used-seed") == big


def test_a_model_trained_from_the_page_is_picked_and_served(page, service: Service) -> None:
    open_tab(page, service, "training")
    page.fill("#api-key", API_KEY)
    page.select_option("#t-preset", "balrog")
    page.fill("#t-model", "page-emulator")
    page.check("#t-dry-run")
    page.click("#t-form button[type=submit]")
    page.wait_for_selector("#t-live:not([hidden])", timeout=10_000)
    job_id = page.inner_text("#t-live-id")
    _state_is(page, "succeeded", timeout=120_000)
    assert f"page-emulator@{job_id}" in page.inner_text("#t-progress-text")
    # an emulator job has no sample grids: no broken image
    assert page.is_hidden("#t-sample")
    # every curve in the legend is drawn: a series of one or two points (the detection
    # classifier's loss, logged at one step) shows as dots
    page.wait_for_function(
        "() => state.chart && state.chart.data.datasets.length > 0"
        " && state.chart.data.datasets.every(d => d.data.length === d.raw.length)"
    )
    drawn = page.evaluate(
        "state.chart.data.datasets.map(d => [d.label, d.data.length, d.pointRadius || 0])"
    )
    assert all(n >= 3 or (n >= 1 and r > 0) for _, n, r in drawn), drawn
    page.click("#t-activate-btn")
    page.wait_for_function(
        "(t) => document.querySelector('#toast').textContent.includes(t)",
        arg=f"page-emulator@{job_id} is now served",
        timeout=10_000,
    )

    page.click("#tabs a[data-tab='emulator']")
    page.wait_for_selector("#e-model option[value='page-emulator']", state="attached")
    page.select_option("#e-model", "page-emulator")
    page.fill("#e-text", _spread_catalog(10))
    page.fill("#e-seed", "3")
    page.click("#e-run")
    page.wait_for_selector("#e-used-seed", timeout=60_000)
    assert f"page-emulator@{job_id}" in page.inner_text("#e-status")
    # the page and a direct call agree: the picked model served these rows
    with service.client() as c:
        direct = c.post(
            "/emulate?seed=3&model=page-emulator",
            content=_spread_catalog(10),
            headers={"content-type": "text/csv"},
        ).json()
    assert direct["version"] == job_id
    assert page.evaluate("state.emu.rows.map(r => r.mag_r)") == [r["mag_r"] for r in direct["rows"]]


def test_no_dead_ends_on_a_wide_screen(page, service: Service) -> None:
    reg = Registry(service.home / "registry")
    shipped = reg.get("nebula", "default")
    reg.register("idle-nebula", "v1", shipped.path, kind=shipped.kind, source="test")
    try:
        for tab in ("gallery", "training", "emulator", "models"):
            open_tab(page, service, tab)
            page.wait_for_timeout(300)
            wide = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            beyond = page.evaluate(
                "Array.from(document.querySelectorAll('body *'))"
                ".filter(e => e.getBoundingClientRect().right"
                " > document.documentElement.clientWidth + 0.5)"
                ".map(e => e.tagName + '#' + e.id + '.' + e.className).slice(0, 8)"
            )
            assert wide <= 0, f"{tab} scrolls sideways by {wide} px at 1400 px: {beyond}"
        # an image model with no active version: a hint, never `name@null`
        open_tab(page, service, "gallery")
        page.select_option("#g-model", "idle-nebula")
        page.wait_for_selector("#g-panels .hint")
        assert "no active version" in page.inner_text("#g-panels")
        body = page.inner_text("body")
        assert "@null" not in body and "@undefined" not in body
    finally:
        reg.delete("idle-nebula", "v1")


def test_results_read_as_a_table_and_runs_overlay(page, service: Service) -> None:
    from tests.catalogs import make_analytic_catalog

    make_analytic_catalog(service.home / "data" / "ui_results.parquet", 3000, seed=5)
    tiny = {"epochs": 2, "hidden": 16, "transforms": 2, "detector_epochs": 2}
    bodies = [  # an evaluated run on a real catalog, and a dry run to overlay
        {"preset": "balrog-flow", "model": "ui-results", "data": "ui_results.parquet",
         "overrides": tiny},
        {"preset": "balrog-flow", "model": "ui-results", "overrides": {"dry_run": True}},
    ]  # fmt: skip
    with service.client() as c:
        ids = []
        for body in bodies:
            r = c.post("/train", json=body, headers=service.auth)
            assert r.status_code == 202, r.text
            ids.append(r.json()["job_id"])
        recs = [wait_for_state(c, i, {"succeeded", "failed"}, timeout=300) for i in ids]
    assert all(rec["state"] == "succeeded" for rec in recs), recs
    results = recs[0]["results"]
    assert results["lower_is_better"] and results["rows"], recs[0]["metrics"]
    assert sum(results["counts"].values()) > 0 and results["summary"]
    assert recs[1]["results"] is None  # a dry run is not evaluated: no table, no guess

    open_tab(page, service, "training")
    page.click(f"#t-jobs tr[data-job='{ids[0]}']")
    page.wait_for_selector("#t-results table.results", timeout=20_000)
    head = page.inner_text("#t-results thead")
    for column in ("figure", "model", "Gaussian baseline", "floor", "ratio", "vs baseline"):
        assert column in head
    shown = page.locator("#t-results tbody tr").count()
    assert shown == len(results["rows"])
    assert results["summary"] in page.inner_text("#t-results .verdict")
    # a catalog the service did not simulate has no second draw: the page says so
    assert "not made by the service's simulator" in results["floor_missing"]
    assert results["floor_missing"] in page.inner_text("#t-results .floor-source")
    verdicts = page.locator(
        "#t-results tbody td.better, #t-results tbody td.tie, #t-results tbody td.worse"
    ).count()
    assert verdicts == sum(results["counts"].values())
    # validation curves beside the losses, a log scale, and another run overlaid
    page.wait_for_function("() => state.chart && state.chart.data.datasets.length > 0")
    labels = page.evaluate("state.chart.data.datasets.map(d => d.label)")
    assert "nll" in labels and "val_nll (validation)" in labels, labels
    page.check("#t-log")
    assert page.evaluate("state.chart.options.scales.y.type") == "logarithmic"
    page.wait_for_selector(f"#t-overlay option[value='{ids[1]}']", state="attached")
    page.select_option("#t-overlay", ids[1])
    tag = ids[1][:8]
    page.wait_for_function(
        "(t) => state.chart.data.datasets.some(d => d.label === `${t} · nll` && d.data.length)",
        arg=tag,
        timeout=20_000,
    )

    # the Models tab shows the same figures for the shipped and the trained versions
    open_tab(page, service, "models")
    card = page.locator("#m-list .model[data-model='balrog']")
    card.wait_for(timeout=10_000)
    assert "lower is better" in page.inner_text("#models")
    text = card.inner_text()
    assert "ks_r" in text and "cflow" in text
    trained = page.locator("#m-list .model[data-model='ui-results']").inner_text()
    for row in results["rows"][:3]:
        assert row["figure"] in trained
