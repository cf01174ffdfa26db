"""`make bench`: service overhead and batching gains, as ratios measured in one run.

Starts a private service (embedded Redis, workers, API) in a temporary home, then measures
  1. `GET /generate` latency against the raw model call it wraps (same model, same n);
  2. batched against unbatched inference: in-process (one forward pass for K requests vs K
     passes) and over HTTP (K concurrent requests, which the worker coalesces, vs K
     sequential ones).
The model is the shipped `nebula` weights when present, else a dry-run model trained first.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from training.service import Supervisor, free_port, redis_command, wait_for_redis

ROOT = Path(__file__).resolve().parents[1]
REPEATS = 15
K = 16  # requests per throughput round


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


def start_service(home: Path) -> tuple[Supervisor, str]:
    rport, aport = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSMOGAN_")}
    env.update(
        COSMOGAN_HOME=str(home),
        COSMOGAN_REDIS_URL=f"redis://127.0.0.1:{rport}/0",
        COSMOGAN_DEVICE="cpu",
    )
    (home / "redis").mkdir(parents=True)
    sup = Supervisor(stop_timeout_s=15)
    log = (home / "service.log").open("ab")
    redis = sup.start("redis", redis_command(rport, home / "redis"), env, output=log)
    wait_for_redis(env["COSMOGAN_REDIS_URL"], proc=redis.proc)
    cli = [sys.executable, "-m", "training.cli", "-q"]
    for name, args in (("worker", ["worker"]), ("api", ["api", "--port", str(aport)])):
        sup.start(name, [*cli, *args], env, output=log)
    base = f"http://127.0.0.1:{aport}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=10).status_code == 200:
                return sup, base
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    sup.stop_all()
    raise TimeoutError("the service did not become ready")


def pick_model(client: httpx.Client) -> tuple[str, str]:
    models = client.get("/models").json()["models"]
    for name in ("nebula", "nebula-dcgan"):
        if models.get(name, {}).get("active"):
            return name, models[name]["active"]
    body = {"preset": "nebula", "overrides": {"dry_run": True}, "activate": True}
    job = client.post("/train", json=body, headers={"Authorization": "Bearer dev"}).json()
    for _ in range(600):
        rec = client.get(f"/train/{job['job_id']}").json()
        if rec["state"] in ("succeeded", "failed"):
            break
        time.sleep(0.5)
    if rec["state"] != "succeeded":
        raise RuntimeError(f"could not train a model to benchmark: {rec.get('error')}")
    return "nebula", job["job_id"]


def main() -> int:
    import torch

    from models.registry import Registry
    from training.generate import ImageSampler

    torch.set_num_threads(1)  # the inference worker runs with one thread on this kind of box
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cosmogan-bench-") as tmp:
        home = Path(tmp) / "home"
        sup, base = start_service(home)
        try:
            with httpx.Client(base_url=base, timeout=120) as client:
                name, version = pick_model(client)
                path = Registry(home / "registry").get(name, version).path
                sampler = ImageSampler.load(path, "cpu")
                n = 16
                params = {"model": name, "version": version, "n": n}

                # 1. service latency vs the raw model call (distinct seeds: no caching)
                client.get("/generate", params={**params, "seed": 0})  # warm up both sides
                sampler.png(0, n)
                raw, svc = [], []
                for seed in range(1, REPEATS + 1):
                    t = time.perf_counter()
                    sampler.png(seed, n)
                    raw.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    r = client.get("/generate", params={**params, "seed": seed})
                    svc.append(time.perf_counter() - t)
                    r.raise_for_status()
                results["generate_n16_raw_p50_ms"] = 1000 * p50(raw)
                results["generate_n16_service_p50_ms"] = 1000 * p50(svc)
                results["service_over_raw"] = p50(svc) / p50(raw)

                # 2a. in-process: K requests of one image, one pass vs K passes
                zs = [sampler.latents(s, 1) for s in range(K)]
                t = time.perf_counter()
                for z in zs:
                    sampler.images(z)
                unbatched = time.perf_counter() - t
                t = time.perf_counter()
                sampler.images(torch.cat(zs))
                batched = time.perf_counter() - t
                results["engine_batched_over_unbatched_throughput"] = unbatched / batched

                # 2b. over HTTP: K sequential requests vs K concurrent (coalesced) ones
                one = {"model": name, "version": version, "n": 1}
                t = time.perf_counter()
                for s in range(K):
                    client.get("/generate", params={**one, "seed": 1000 + s}).raise_for_status()
                sequential = time.perf_counter() - t

                async def burst() -> list[httpx.Response]:
                    async with httpx.AsyncClient(base_url=base, timeout=120) as ac:
                        return await asyncio.gather(
                            *[
                                ac.get("/generate", params={**one, "seed": 2000 + s})
                                for s in range(K)
                            ]
                        )

                t = time.perf_counter()
                responses = asyncio.run(burst())
                concurrent = time.perf_counter() - t
                sizes = [int(r.headers["x-batch-size"]) for r in responses]
                results["service_concurrent_over_sequential_throughput"] = sequential / concurrent
                results["service_mean_batch_size"] = statistics.mean(sizes)
        finally:
            sup.stop_all()

    print(f"model {name}@{version}, cpu, torch threads 1, {REPEATS} repeats, K={K}")
    print(
        f"GET /generate n=16 p50 {results['generate_n16_service_p50_ms']:.1f} ms vs raw model "
        f"call {results['generate_n16_raw_p50_ms']:.1f} ms: "
        f"ratio {results['service_over_raw']:.2f}"
    )
    print(
        f"batched/unbatched throughput, {K} one-image requests in-process: "
        f"{results['engine_batched_over_unbatched_throughput']:.2f}x"
    )
    print(
        f"concurrent/sequential throughput over HTTP, {K} one-image requests: "
        f"{results['service_concurrent_over_sequential_throughput']:.2f}x "
        f"(mean batch size {results['service_mean_batch_size']:.1f})"
    )
    out = ROOT / "var" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
