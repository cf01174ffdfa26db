"""Inference benchmark: the real service against the raw model calls it wraps, in one run.

Starts a private service (embedded Redis, a worker per queue, the API) in a temporary
home serving the shipped `nebula` and `balrog` weights on `--device`, then measures
  1. `GET /generate` (16 × 128²) p50/p95 vs the raw generator forward + PNG encode;
  2. its throughput with 1, 8 and 32 concurrent clients (the worker coalesces requests),
     against the generator's forward alone at its best micro-batch (the compute limit), and
     the PNG encoder settings (time vs size);
  3. `POST /emulate` rows/s with JSON and Parquet bodies vs the raw emulator forward;
  4. the emulator's time per object vs the GalSim mini-Balrog it stands in for;
  5. generation latency vs images per request;
  6. `GET /generate` latency again while a `nebula` training job runs on the same machine;
  7. the peak memory of every service process.
The raw calls run in this process with as many torch threads as the inference worker.
With `--baseline DIR`, the figures of 2 and 3 are measured again, in the same run, against a
service started from the code in DIR (e.g. a checkout of the previous release): before/after.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.common import (
    Table,
    device_label,
    median,
    peak_rss_mib,
    percentile,
    resolve_device,
    time_calls,
)
from bench.training import ROOT, synthetic_folder
from launcher.service import Service
from launcher.service import start_service as launch
from worker.policy import torch_threads

PARQUET = "application/vnd.apache.parquet"
API_KEY = "bench"


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does; `quick` only checks that everything runs."""

    repeats: int  # requests per latency figure
    per_level: int  # requests per concurrency level
    emulate_rows: int  # rows per /emulate request (the service's default cap is 10,000)
    emulate_repeats: int
    raw_rows: int  # rows for the emulator's time per object
    galsim_rows: int  # objects drawn and measured by GalSim


FULL = Sizes(repeats=30, per_level=64, emulate_rows=10_000, emulate_repeats=5, raw_rows=100_000,
             galsim_rows=300)  # fmt: skip
QUICK = Sizes(repeats=3, per_level=8, emulate_rows=200, emulate_repeats=1, raw_rows=2_000,
              galsim_rows=5)  # fmt: skip
CONCURRENCY = (1, 8, 32)
BASELINE_CLIENTS = 8
COALESCED = 4  # requests per forward in the raw "batched" figure
IMAGE_COUNTS = (1, 4, 16, 64)
MICRO_BATCHES = (1, 2, 4, 8, 16, 32, 64)  # candidates for the forward-alone figure


# --------------------------------------------------------------------------------------------
# The service


def start_service(
    home: Path, device: str = "cpu", code: Path = ROOT, name: str = "service"
) -> Service:
    """Redis, a worker per queue and the API, as `cosmogan serve` runs them, ready.

    `code` is the checkout whose worker and API run (this one, or a baseline to compare with).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSMOGAN_")}
    env["PYTHONPATH"] = str(code)
    settings = {"COSMOGAN_DEVICE": device, "COSMOGAN_API_KEY": API_KEY}
    os.chdir(code)  # `python -m` puts the working folder first on the path: the children's code
    try:
        service = launch(
            home, settings=settings, env=env, log_dir=home / name, stop_timeout_s=15, watch=True
        )
    finally:
        os.chdir(ROOT)
    try:
        service.wait_ready()
    except BaseException:
        service.stop(check=False)
        raise
    return service


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (from /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children", encoding="utf-8") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return out


def label(pid: int) -> str:
    """What a service process is, from its command line and its parent's."""

    def args_of(p: int) -> list[str]:
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                return f.read().decode(errors="replace").split("\0")
        except OSError:
            return []

    def parent(p: int) -> int:
        try:
            with open(f"/proc/{p}/stat", encoding="utf-8") as f:
                return int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return 0

    args = args_of(pid)
    if "celery" in args:
        queue = args[args.index("-Q") + 1] if "-Q" in args else "?"
        role = "pool process" if "celery" in args_of(parent(pid)) else "main"
        return f"celery worker [{queue}], {role}"
    if "uvicorn" in args:
        return "API (uvicorn)"
    return Path(args[0]).name if args else "?"


# --------------------------------------------------------------------------------------------
# Measurements


def generate_latency(
    client: httpx.Client, sampler: Any, version: str, n: int, repeats: int, seed0: int
) -> dict[str, list[float]]:
    """Service and raw wall times for `repeats` distinct seeds, interleaved."""
    params = {"model": "nebula", "version": version, "n": n}
    client.get("/generate", params={**params, "seed": seed0 - 1}).raise_for_status()  # warm up
    sampler.png(seed0 - 1, n)
    raw, svc = [], []
    for seed in range(seed0, seed0 + repeats):
        t = time.perf_counter()
        sampler.png(seed, n)
        raw.append(time.perf_counter() - t)
        t = time.perf_counter()
        client.get("/generate", params={**params, "seed": seed}).raise_for_status()
        svc.append(time.perf_counter() - t)
    return {"raw": raw, "service": svc}


def coalesced_pngs(sampler: Any, k: int) -> list[bytes]:
    """`k` requests of 16 images the way the worker runs a batch: one pass, then k PNGs."""
    import torch

    images = sampler.images(torch.cat([sampler.latents(seed, 16) for seed in range(k)]))
    return [sampler.grid_png(images[16 * i : 16 * (i + 1)]) for i in range(k)]


def worker_busy_s(client: httpx.Client) -> float:
    """Seconds the inference worker has spent computing /generate batches (from /metrics)."""
    text = client.get("/metrics").text
    found = re.search(r'cosmogan_inference_batch_seconds_sum\{task="generate"\} (\S+)', text)
    return float(found.group(1)) if found else 0.0


def forward_rates(
    sampler: Any, images: int, repeats: int, micro_batches: tuple[int, ...] = MICRO_BATCHES
) -> dict[int, float]:
    """Images/s of the generator's forward alone (uint8 pixels on the host), per micro-batch."""
    z = sampler.latents(3, images)
    kept = sampler.micro_batch
    rates = {}
    try:
        for mb in micro_batches:
            sampler.micro_batch = mb
            sampler.images(z[:mb])  # warm up this shape
            rates[mb] = images / min(time_calls(lambda: sampler.images(z), repeats))
    finally:
        sampler.micro_batch = kept
    return rates


def encoder_costs(sampler: Any, repeats: int) -> dict[str, dict[str, float]]:
    """Seconds and bytes per 16-image grid for PNG encoder settings (one thread)."""
    from PIL import Image

    from models import image_format

    rgb = image_format.grid(sampler.images(sampler.latents(5, 16)).numpy())

    def pillow(level: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG", compress_level=level, optimize=False)
        return buf.getvalue()

    def ours(level: int) -> bytes:
        kept = image_format.PNG_LEVEL
        image_format.PNG_LEVEL = level
        try:
            return image_format.encode_png(rgb)
        finally:
            image_format.PNG_LEVEL = kept

    cases = {
        "Pillow, adaptive filters, level 6 (before)": lambda: pillow(6),
        "Pillow, adaptive filters, level 1": lambda: pillow(1),
        "Up filter, zlib level 0 (stored)": lambda: ours(0),
        f"Up filter, zlib level {image_format.PNG_LEVEL} (now)": lambda: ours(
            image_format.PNG_LEVEL
        ),
        "Up filter, zlib level 3": lambda: ours(3),
        "Up filter, zlib level 6": lambda: ours(6),
    }
    return {
        name: {"s": min(time_calls(fn, repeats)), "bytes": len(fn())} for name, fn in cases.items()
    }


async def closed_loop(base: str, version: str, clients: int, total: int, seed0: int) -> dict:
    """`clients` clients, each sending its share of `total` requests one after another."""
    latencies: list[float] = []
    batches: list[int] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as ac:

        async def client(k: int) -> None:
            for j in range(total // clients):
                params = {"model": "nebula", "version": version, "n": 16}
                t = time.perf_counter()
                r = await ac.get("/generate", params={**params, "seed": seed0 + k * 1000 + j})
                latencies.append(time.perf_counter() - t)
                r.raise_for_status()
                batches.append(int(r.headers["x-batch-size"]))

        t = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
        wall = time.perf_counter() - t
    return {"wall": wall, "requests": len(latencies), "latencies": latencies, "batches": batches}


def emulate_rates(
    client: httpx.Client, emulator: Any, frame: Any, repeats: int
) -> dict[str, list[float]]:
    """Seconds per request of `len(frame)` rows: JSON, Parquet, and the raw emulator."""
    from models.columns import INPUTS

    rows = frame[list(INPUTS)].to_dict(orient="records")
    x = frame[list(INPUTS)].to_numpy()
    json_headers = {"Content-Type": "application/json"}
    buf = io.BytesIO()
    frame[list(INPUTS)].to_parquet(buf, index=False)
    parquet = buf.getvalue()
    headers = {"Content-Type": PARQUET, "Accept": PARQUET}

    def via_json(seed: int) -> None:
        # the body is encoded outside the timing: a client's own JSON encoder is not the service
        client.post("/emulate", content=bodies[seed], headers=json_headers).raise_for_status()

    def via_parquet(seed: int) -> None:
        r = client.post("/emulate", content=parquet, headers=headers, params={"seed": seed})
        r.raise_for_status()

    bodies = {
        seed: json.dumps({"rows": rows, "samples": 1, "seed": seed}).encode()
        for seed in range(repeats + 1)
    }
    via_json(0), via_parquet(0), emulator.sample(x, 1, 0)  # warm up
    out: dict[str, list[float]] = {"json": [], "parquet": [], "raw": []}
    for seed in range(1, repeats + 1):
        for name, fn in (
            ("raw", lambda s=seed: emulator.sample(x, 1, s)),
            ("json", lambda s=seed: via_json(s)),
            ("parquet", lambda s=seed: via_parquet(s)),
        ):
            out[name] += time_calls(fn, 1)
    return out


def per_object_times(emulator: Any, truth_dir: Path, sizes: Sizes) -> dict[str, float]:
    """Seconds per object: the emulator on a large batch, the mini-Balrog simulators."""
    from models.columns import INPUTS
    from training.emulator.balrog import sample_inputs
    from training.emulator.minibalrog import simulate

    big = sample_inputs(sizes.raw_rows, seed=11, data_dir=truth_dir)
    x = big[list(INPUTS)].to_numpy()
    emulator.sample(x[:1000], 1, 0)  # warm up
    emu = min(time_calls(lambda: emulator.sample(x, 1, 1), 3)) / len(x)
    analytic = min(time_calls(lambda: simulate(big[list(INPUTS)], "analytic", 1), 3)) / len(x)
    small = big.iloc[: sizes.galsim_rows][list(INPUTS)]
    simulate(big.iloc[-2:][list(INPUTS)], "galsim", 1)  # warm up GalSim's lazy set-up
    galsim = time_calls(lambda: simulate(small, "galsim", 1), 1)[0] / len(small)
    return {"emulator": emu, "galsim": galsim, "analytic": analytic}


def generate_while_training(
    client: httpx.Client, sampler: Any, version: str, home: Path, data: Path, quick: bool,
    repeats: int,
) -> dict[str, Any]:  # fmt: skip
    """`GET /generate` n=16 latencies while the worker runs a `nebula` training job.

    The job trains on a copy of `data` in the service's data root (the API only takes
    datasets from there), from its first generator step on; it is cancelled afterwards.
    """
    shutil.copytree(data, home / "data" / "nebulae", symlinks=False)
    overrides: dict[str, Any] = {"samples_every": 10**6}  # no sample grids: steady load
    if quick:
        overrides |= {"width": 8, "batch_size": 4}
    auth = {"Authorization": f"Bearer {API_KEY}"}
    body = {"preset": "nebula", "data": "nebulae", "overrides": overrides}
    r = client.post("/train", json=body, headers=auth)
    r.raise_for_status()
    job_id = r.json()["job_id"]

    def job() -> dict[str, Any]:
        return client.get(f"/train/{job_id}").raise_for_status().json()

    deadline = time.monotonic() + 300
    while (rec := job())["step"] < 1:
        if rec["state"] in ("failed", "cancelled", "succeeded") or time.monotonic() > deadline:
            raise RuntimeError(f"the training job did not get going: {rec}")
        time.sleep(0.5)
    step0 = rec["step"]
    t = time.perf_counter()
    lat = generate_latency(client, sampler, version, 16, repeats, seed0=20_000)
    wall = time.perf_counter() - t
    rec = job()
    if rec["state"] != "running":
        raise RuntimeError(f"the training job ended while being measured against: {rec}")
    client.delete(f"/train/{job_id}", headers=auth).raise_for_status()
    deadline = time.monotonic() + 120
    while job()["state"] not in ("failed", "cancelled", "succeeded"):
        if time.monotonic() > deadline:
            break  # stop_all ends it with the service
        time.sleep(0.5)
    steps = rec["step"] - step0
    return {**lat, "train_steps": steps, "train_wall_s": wall, "overrides": overrides}


# --------------------------------------------------------------------------------------------
# The run


def run(
    quick: bool,
    command: str,
    data: Path | None = None,
    device: str = "auto",
    baseline: Path | None = None,
) -> tuple[list[Table], dict[str, Any]]:
    """Every inference measurement against one private service; the tables and raw figures.

    `data` is the nebula image folder the load measurement trains on (default
    var/data/nebulae); without one that measurement is left out. `baseline`, a checkout of
    other code, gets the throughput figures measured again against its own service.
    """
    import torch

    from models.emulator_sampler import EmulatorSampler
    from models.image_sampler import ImageSampler
    from models.registry import Registry
    from training.emulator.balrog import sample_inputs

    sizes = QUICK if quick else FULL
    device = resolve_device(device)
    threads = torch_threads("inference")
    torch.set_num_threads(threads)  # the raw side gets what the inference worker gets
    raw: dict[str, Any] = {"torch_threads": threads, "sizes": sizes.__dict__, "device": device}
    with tempfile.TemporaryDirectory(prefix="cosmogan-bench-") as tmp:
        home = Path(tmp) / "home"
        service = start_service(home, device)
        base = service.base_url
        try:
            with httpx.Client(base_url=base, timeout=300) as client:
                models = client.get("/models").json()["models"]
                versions = {m: models[m]["active"] for m in ("nebula", "balrog")}
                registry = Registry(home / "registry")
                path = registry.get("nebula", versions["nebula"]).path
                sampler = ImageSampler.load(path, device)
                emulator = EmulatorSampler.load(
                    registry.get("balrog", versions["balrog"]).path, device
                )

                # 1. GET /generate n=16 vs the raw call
                raw["generate_n16"] = generate_latency(
                    client, sampler, versions["nebula"], 16, sizes.repeats, seed0=1
                )

                # 2. concurrency, against the forward alone; PNG encoder settings
                raw["forward_images_per_s"] = forward_rates(sampler, 64, 2 if quick else 3)
                best_mb = max(raw["forward_images_per_s"], key=raw["forward_images_per_s"].get)
                raw["concurrency"] = {}
                for c in CONCURRENCY:
                    total = max(sizes.per_level, c) // c * c
                    # the compute limit right before and after each level: shared machines
                    # drift, and a ratio is only fair between figures taken together
                    before = forward_rates(sampler, 64, 2, (best_mb,))[best_mb]
                    busy0 = worker_busy_s(client)
                    level = asyncio.run(
                        closed_loop(base, versions["nebula"], c, total, seed0=10_000 * (c + 1))
                    )
                    level["worker_busy_s"] = worker_busy_s(client) - busy0
                    after = forward_rates(sampler, 64, 2, (best_mb,))[best_mb]
                    raw["concurrency"][c] = {**level, "forward_images_per_s": (before + after) / 2}
                raw_png = time_calls(lambda: sampler.png(7, 16), max(3, sizes.repeats // 3))
                raw["raw_png_n16_s"] = raw_png
                raw["raw_coalesced_s"] = time_calls(
                    lambda: coalesced_pngs(sampler, COALESCED), max(3, sizes.repeats // 3)
                )
                raw["png_encoders"] = encoder_costs(sampler, 2 if quick else 5)

                # 3. POST /emulate
                truth_dir = Path(tmp) / "truth"
                frame = sample_inputs(sizes.emulate_rows, seed=5, data_dir=truth_dir)
                raw["emulate"] = emulate_rates(client, emulator, frame, sizes.emulate_repeats)

                # 4. emulator vs simulator, per object
                raw["per_object_s"] = per_object_times(emulator, truth_dir, sizes)

                # 5. latency vs images per request
                raw["generate_by_n"] = {
                    n: generate_latency(
                        client, sampler, versions["nebula"], n, max(2, sizes.repeats // 3), 500
                    )
                    for n in IMAGE_COUNTS
                }

                # 6. GET /generate while a training job runs
                if quick:
                    data = synthetic_folder(Path(tmp) / "blobs")
                elif data is None:
                    data = ROOT / "var" / "data" / "nebulae"
                if data.is_dir() and any(data.iterdir()):
                    raw["generate_training"] = generate_while_training(
                        client, sampler, versions["nebula"], home, data, quick, sizes.repeats
                    )
                else:
                    print(f"no images in {data}: skipping /generate under training load")

                # 7. memory
                raw["peak_rss_mib"] = {
                    f"{label(pid)}, pid {pid}": peak_rss_mib(pid)
                    for proc in service.procs.values()
                    for pid in process_tree(proc.pid)
                }
        finally:
            service.stop()
        if baseline is not None:
            raw["baseline"] = baseline_figures(
                baseline, Path(tmp) / "baseline", device, sampler, best_mb, emulator, frame, sizes
            )
            raw["baseline"]["code"] = str(baseline)
    return tables(raw, command, threads, device_label(device, threads)), raw


def baseline_figures(
    code: Path,
    home: Path,
    device: str,
    sampler: Any,
    mb: int,
    emulator: Any,
    frame: Any,
    sizes: Sizes,
) -> dict[str, Any]:
    """8 clients of /generate n=16 and /emulate rates against the service of other code."""
    service = start_service(home, device, code=code.resolve(), name="baseline")
    base = service.base_url
    try:
        with httpx.Client(base_url=base, timeout=300) as client:
            version = client.get("/models").json()["models"]["nebula"]["active"]
            c = BASELINE_CLIENTS
            total = max(sizes.per_level, c) // c * c
            fwd = forward_rates(sampler, 64, 2, (mb,))[mb]
            clients = asyncio.run(closed_loop(base, version, c, total, seed0=90_000))
            fwd = (fwd + forward_rates(sampler, 64, 2, (mb,))[mb]) / 2
            clients["forward_images_per_s"] = fwd
            return {
                "clients": clients,
                "emulate": emulate_rates(client, emulator, frame, sizes.emulate_repeats),
            }
    finally:
        service.stop()


# --------------------------------------------------------------------------------------------
# Tables


def tables(raw: dict[str, Any], command: str, threads: int, device: str = "") -> list[Table]:
    ms = lambda xs, q: 1000 * percentile(xs, q)  # noqa: E731
    g = raw["generate_n16"]
    latency = Table(
        "GET /generate, 16 images of 128² (one client, distinct seeds)",
        command,
        ["path", "p50 ms", "p95 ms", "service / raw (p50)", "service / raw (p95)"],
        [
            ["raw: generator forward + PNG encode", ms(g["raw"], 50), ms(g["raw"], 95), 1.0, 1.0],
            [
                "service: HTTP → API → Redis → worker → back",
                ms(g["service"], 50),
                ms(g["service"], 95),
                median(g["service"]) / median(g["raw"]),
                percentile(g["service"], 95) / percentile(g["raw"], 95),
            ],
        ],
        [f"{len(g['raw'])} requests each, interleaved; torch threads {threads} on both sides"],
    )

    forward = raw["forward_images_per_s"]
    best_mb = max(forward, key=forward.get)
    best = forward[best_mb]
    conc = Table(
        "GET /generate throughput with concurrent clients (16 images per request)",
        command,
        ["clients", "requests", "req/s", "images/s", "× 1 client", "of forward alone",
         "worker busy", "p50 ms", "p95 ms", "batch"],
    )  # fmt: skip
    one = raw["concurrency"][CONCURRENCY[0]]
    one_rate = one["requests"] / one["wall"]
    for c, r in raw["concurrency"].items():
        rate = r["requests"] / r["wall"]
        conc.rows.append(
            [
                c,
                r["requests"],
                rate,
                16 * rate,
                rate / one_rate,
                f"{100 * 16 * rate / r['forward_images_per_s']:.0f} %",
                f"{100 * r['worker_busy_s'] / r['wall']:.0f} %",
                ms(r["latencies"], 50),
                ms(r["latencies"], 95),
                float(np.mean(r["batches"])),
            ]
        )
    raw_rate = 1 / median(raw["raw_png_n16_s"])
    conc.rows.append(["raw forward + PNG, sequential", "", raw_rate, 16 * raw_rate,
                      raw_rate / one_rate, f"{100 * 16 * raw_rate / best:.0f} %"])  # fmt: skip
    batched_rate = COALESCED / median(raw["raw_coalesced_s"])
    conc.rows.append(
        [
            f"raw forward + PNG, {COALESCED} requests per pass",
            "",
            batched_rate,
            16 * batched_rate,
            batched_rate / one_rate,
            f"{100 * 16 * batched_rate / best:.0f} %",
        ]
    )
    conc.rows.append(
        [f"raw forward alone, micro-batch {best_mb}", "", best / 16, best, best / 16 / one_rate,
         "100 %"]
    )  # fmt: skip
    conc.notes = [
        "each client sends its requests one after another (a closed loop); batch = mean "
        "number of requests the worker ran in one batch (`X-Batch-Size`); worker busy = the "
        "inference process's time in /generate batches (forward, latents, handing PNG jobs to "
        "its encoder threads) over the level's wall time; the raw rows run in this process "
        "with the inference worker's torch threads",
        "forward alone: images/s of the generator's forward (uint8 pixels on the host) at its "
        "best micro-batch, in this process; a sweep gave "
        + ", ".join(f"{mb}: {v:,.0f}" for mb, v in forward.items())
        + " images/s (the service runs the micro-batch fixed for its device type); each "
        "client level is divided by the forward rate measured right before and after it ("
        + ", ".join(f"{c}: {r['forward_images_per_s']:,.0f}" for c, r in raw["concurrency"].items())
        + " images/s), the raw rows by the sweep's best",
    ]

    enc = raw["png_encoders"]
    before = next(v for k, v in enc.items() if "before" in k)
    encoders = Table(
        "PNG encoding of one 16-image grid (402×402 RGB), one thread",
        command,
        ["encoder", "ms", "KiB", "× time of before", "× size of before"],
        [
            [k, 1000 * v["s"], v["bytes"] / 1024, v["s"] / before["s"],
             v["bytes"] / before["bytes"]]
            for k, v in enc.items()
        ],
        ["the service's encoder is fixed (the bytes of a seed must not change); zlib releases "
         "the GIL, so the worker encodes grids in a thread pool while the next batch runs"],
    )  # fmt: skip

    e = raw["emulate"]
    rows = raw["sizes"]["emulate_rows"]
    raw_rate = rows / median(e["raw"])
    emulate = Table(
        f"POST /emulate, {rows:,} rows per request, one realization",
        command,
        ["path", "rows/s", "service / raw"],
        [["raw: emulator forward (in process)", raw_rate, 1.0]],
    )
    for name, label in (("json", "service, JSON in and out"), ("parquet", "service, Parquet")):
        rate = rows / median(e[name])
        emulate.rows.append([label, rate, rate / raw_rate])
    emulate.notes = [f"median of {len(e['raw'])} requests each, distinct seeds"]

    p = raw["per_object_s"]
    per_object = Table(
        "Emulator vs the mini-Balrog it stands in for, time per object",
        command,
        ["method", "µs / object", "speed-up of the emulator"],
        [
            ["GalSim mini-Balrog (draw, convolve, add noise, measure)", 1e6 * p["galsim"], ""],
            ["analytic noise model (tests, quick runs)", 1e6 * p["analytic"], ""],
            ["emulator (cWGAN-GP + detection classifier)", 1e6 * p["emulator"], ""],
        ],
        [
            f"emulator on {raw['sizes']['raw_rows']:,} rows, GalSim on "
            f"{raw['sizes']['galsim_rows']} objects, both with {threads} torch thread(s)",
        ],
    )
    per_object.rows[0][2] = p["galsim"] / p["emulator"]
    per_object.rows[1][2] = p["analytic"] / p["emulator"]

    by_n = Table(
        "Generation latency vs images per request (p50)",
        command,
        ["images", "raw ms", "service ms", "service / raw", "raw ms / image"],
    )
    for n, r in raw["generate_by_n"].items():
        by_n.rows.append(
            [
                n,
                ms(r["raw"], 50),
                ms(r["service"], 50),
                median(r["service"]) / median(r["raw"]),
                ms(r["raw"], 50) / n,
            ]
        )

    under_load = None
    if (t := raw.get("generate_training")) is not None:
        under_load = Table(
            "GET /generate, 16 images of 128², idle vs while a `nebula` training job runs",
            command,
            ["path", "idle p50 ms", "training p50 ms", "idle p95 ms", "training p95 ms",
             "× idle (p50)", "× idle (p95)"],
        )  # fmt: skip
        for name, key in (("service", "service"), ("raw forward + PNG", "raw")):
            idle, busy = g[key], t[key]
            under_load.rows.append(
                [
                    name,
                    ms(idle, 50),
                    ms(busy, 50),
                    ms(idle, 95),
                    ms(busy, 95),
                    median(busy) / median(idle),
                    percentile(busy, 95) / percentile(idle, 95),
                ]
            )
        under_load.notes = [
            f"{len(t['service'])} requests each; the job (`nebula` preset, overrides "
            f"{json.dumps(t['overrides'])}) ran throughout, from its first generator step, and "
            f"advanced {t['train_steps']} step(s) in those {t['train_wall_s']:.0f} s; the "
            "worker's training and inference processes share the machine's cores",
        ]

    memory = Table(
        "Peak resident memory of the service processes (after all of the above, training included)",
        command,
        ["process", "peak MiB"],
        [[k, v] for k, v in raw["peak_rss_mib"].items() if v is not None],
    )
    out = [latency, conc, encoders, emulate, per_object, by_n]
    out += [under_load] if under_load else []
    out += [memory]
    if (b := raw.get("baseline")) is not None:
        out.append(before_after(raw, b, command))
    for t in out:
        t.device = device
    return out


def before_after(raw: dict[str, Any], b: dict[str, Any], command: str) -> Table:
    """The same throughput figures for the baseline code's service and this one, one run."""
    rows = raw["sizes"]["emulate_rows"]
    c = BASELINE_CLIENTS
    now_c, old_c = raw["concurrency"][c], b["clients"]
    table = Table(
        "Before and after, measured in the same run",
        command,
        ["figure", "before", "after", "after / before", "before, of raw", "after, of raw"],
    )
    img = lambda r: 16 * r["requests"] / r["wall"]  # noqa: E731
    old_fwd, new_fwd = old_c["forward_images_per_s"], now_c["forward_images_per_s"]
    table.rows.append(
        [f"/generate n=16, {c} clients, images/s", img(old_c), img(now_c),
         img(now_c) / img(old_c), f"{100 * img(old_c) / old_fwd:.0f} %",
         f"{100 * img(now_c) / new_fwd:.0f} %"]
    )  # fmt: skip
    for name in ("json", "parquet"):
        old_rate = rows / median(b["emulate"][name])
        new_rate = rows / median(raw["emulate"][name])
        old_raw = rows / median(b["emulate"]["raw"])
        new_raw = rows / median(raw["emulate"]["raw"])
        table.rows.append(
            [f"/emulate {rows:,} rows, {name.upper()}, rows/s", old_rate, new_rate,
             new_rate / old_rate, f"{100 * old_rate / old_raw:.0f} %",
             f"{100 * new_rate / new_raw:.0f} %"]
        )  # fmt: skip
    table.notes = [
        f"before: the service of the code in `{b['code']}`, started after this one stopped, "
        "same device and sizes; raw = the generator's forward alone at its best micro-batch "
        "measured right before and after each service's clients (images), or the raw emulator "
        "measured beside each service's requests (rows)",
    ]
    return table
