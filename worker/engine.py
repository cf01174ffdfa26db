"""The inference engine: registry versions loaded once per process, hot-swapped, batched.

One engine lives in each inference worker process. For every model name it keeps the
active version loaded; when the registry's active pointer moves, the new version is loaded
completely and only then swapped in (a single reference assignment), so a request sees the
old model or the new one, never a half-loaded one. A version that fails to load is logged
and the previous one keeps serving. Other versions asked for by name are kept in a small
LRU cache.

Requests arrive in batches (see `worker.tasks`); requests for the same model version are
coalesced into one forward pass, and each request's randomness comes from its own seed, so
the numbers do not depend on which other requests shared the batch. PNG grids are encoded
by a small thread pool (zlib releases the GIL) while the next batch already runs.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.kinds import EMULATOR, IMAGE
from models.memory import release_freed_memory
from models.registry import Registry, RegistryDamaged, RegistryError

log = logging.getLogger(__name__)

REFRESH_EVERY_S = 0.25  # how often the active pointers are re-read from the registry
RETRY_FAILED_S = 60.0  # a version that failed to load, files unchanged, is tried again then
PASS_ROWS = 4096  # rows per emulator pass: the flow's buffers take ~0.6 GB at 8k rows, 1.1 at 65k
TRIM_ROWS = 8192  # emulated rows (realizations included) after which a batch trims the heap
ENCODER_THREADS = max(1, min(8, (os.cpu_count() or 2) // 2))  # PNG encoding beside the forward


class RequestError(Exception):
    """A request that cannot be served; `status` is the HTTP status the API should return."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass(frozen=True)
class Failure:
    """A version that could not be loaded: the reason callers may see, when, and the state
    of its files then (a change means someone repaired or replaced them: try again)."""

    reason: str
    when: float
    files: tuple[Any, ...]


def public_reason(exc: BaseException) -> str:
    """What a caller may read about a load failure: registry messages name no server path,
    anything else (torch, the file system) may, so it gets a fixed text; the log has all."""
    if isinstance(exc, RegistryError):
        return str(exc)
    return "its weights file cannot be read (damaged or incomplete)"


@dataclass(frozen=True)
class Loaded:
    name: str
    version: str
    created: float
    family: str  # models.kinds.IMAGE or EMULATOR
    model: Any  # models.sampling.Sampler: an ImageSampler or an EmulatorSampler


class Engine:
    """Loaded model versions of one process."""

    def __init__(self, registry_root: str | Path, device: str = "auto", cache_size: int = 4):
        from models.device import resolve_device

        self.registry = Registry(registry_root)
        self.device = resolve_device(device)
        self.cache_size = cache_size
        self._active: dict[str, Loaded] = {}  # replaced wholesale, never mutated
        self._cache: OrderedDict[tuple[str, str], Loaded] = OrderedDict()
        self._failed: dict[tuple[str, str], Failure] = {}
        self._pointers: dict[str, str] = {}  # name → why its active.json cannot be read
        self._load_lock = threading.Lock()
        self._last_refresh = 0.0
        self._encoders = ThreadPoolExecutor(ENCODER_THREADS, thread_name_prefix="png")
        # work units a second of each family, timed when a model loads: what admission
        # assumes until batches have measured it (`worker.payload.record_pace`)
        self.paces: dict[str, float] = {}

    # -- versions --------------------------------------------------------------------------
    def _load(self, name: str, version: str) -> Loaded:
        from models.sampling import load_sampler, sampler_family

        mv = self.registry.get(name, version)
        t0 = time.perf_counter()
        model = load_sampler(mv.path, self.device)
        fam = sampler_family(model)
        log.info("loaded %s@%s (%s) in %.2fs", name, version, fam, time.perf_counter() - t0)
        self.paces[fam] = _warm_up(model, fam)
        return Loaded(name, version, float(mv.meta.get("created") or 0.0), fam, model)

    def _files(self, name: str, version: str) -> tuple[Any, ...]:
        """(mtime, size, inode) of a version's files: cheap to compare at every refresh."""
        vdir = self.registry.root / name / "versions" / version
        out = []
        for f in ("model.pt", "meta.json"):
            try:
                st = (vdir / f).stat()
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                out.append(None)
        return tuple(out)

    def _active_versions(self) -> dict[str, str]:
        """name → active version; a damaged pointer is remembered (and logged once) and
        leaves whatever this process loaded serving."""
        wanted = {}
        for name in self.registry.names():
            try:
                version = self.registry.active_version(name)
            except RegistryDamaged as exc:
                if name not in self._pointers:
                    log.error("%s; still serving %s", exc, self._active.get(name) or "nothing")
                self._pointers[name] = str(exc)
                continue
            self._pointers.pop(name, None)
            if version is not None:
                wanted[name] = version
        return wanted

    def refresh(self, force: bool = False) -> dict[str, str]:
        """Load and swap in every model whose active version changed; returns name → version."""
        now = time.monotonic()
        if force or now - self._last_refresh >= REFRESH_EVERY_S:
            self._last_refresh = now
            for name, version in self._active_versions().items():
                current = self._active.get(name)
                if current is not None and current.version == version:
                    continue
                files = self._files(name, version)
                failed = self._failed.get((name, version))
                if (
                    failed is not None
                    and failed.files == files
                    and now - failed.when < RETRY_FAILED_S
                ):
                    continue  # logged already; the previous version keeps serving
                try:
                    with self._load_lock:
                        loaded = self._cached(name, version) or self._load(name, version)
                except Exception as exc:
                    self._failed[(name, version)] = Failure(public_reason(exc), now, files)
                    kept = current.version if current else None
                    log.exception(
                        "could not load %s@%s; still serving %s", name, version, kept or "nothing"
                    )
                    continue
                self._failed.pop((name, version), None)
                self._remember(loaded)
                self._active = {**self._active, name: loaded}  # the atomic swap
                log.info("%s: now serving version %s", name, version)
        return {name: m.version for name, m in self._active.items()}

    def status(self) -> dict[str, Any]:
        """What is loaded and whether every active version is (for readiness).

        `ready`: every active version has been tried (loaded, or failed and logged), so a
        broken upload never keeps the rest from serving. `unavailable`: each model that does
        not serve its active version, and why (`serving` says which version answers instead,
        if any); the API reports these as a degraded state.
        """
        loaded = self.refresh(force=True)
        wanted = self._active_versions()
        settled = all(loaded.get(n) == v or (n, v) in self._failed for n, v in wanted.items())
        unavailable: dict[str, dict[str, Any]] = {}
        for name, why in self._pointers.items():
            unavailable[name] = {"reason": why, "serving": loaded.get(name)}
        for (name, version), failure in self._failed.items():
            if wanted.get(name) == version and loaded.get(name) != version:
                reason = f"version {version}: {failure.reason}"
                unavailable[name] = {"reason": reason, "serving": loaded.get(name)}
        return {
            "loaded": loaded,
            "paces": dict(self.paces),
            "active": wanted,
            "ready": settled,
            "unavailable": unavailable,
            "failed": {f"{n}@{v}": f.reason for (n, v), f in self._failed.items()},
            "device": str(self.device),
        }

    def get(self, name: str, version: str | None = None, active: str | None = None) -> Loaded:
        """The active version of `name` (None) or a named version; raises RequestError.

        `active` is the active version the caller saw in the registry: when it differs from
        the one serving here, the pointers are re-read now rather than at the next refresh.
        """
        try:
            if version is None:
                current = self._active.get(name)
                stale = active is not None and (current is None or current.version != active)
                self.refresh(force=stale)
                loaded = self._active.get(name)
                if loaded is None:
                    if name in self._pointers:
                        raise RequestError(503, self._pointers[name])
                    self.registry.get(name)  # raises "unknown model"/"no active version"
                    failed = self._failed.get((name, self.registry.active_version(name) or ""))
                    why = failed.reason if failed else "it is still loading; retry shortly"
                    raise RequestError(503, f"model {name!r} is unavailable: {why}")
                return loaded
            current = self._active.get(name)
            if current is not None and current.version == version:
                return current
            with self._load_lock:
                loaded = self._cached(name, version) or self._load(name, version)
            self._remember(loaded)
            return loaded
        except RegistryDamaged as exc:
            raise RequestError(503, str(exc)) from exc
        except RegistryError as exc:
            raise RequestError(404, str(exc)) from exc
        except RequestError:
            raise
        except Exception as exc:
            log.exception("could not load %s@%s", name, version)
            raise RequestError(
                503, f"model {name}@{version} could not be loaded: {public_reason(exc)}"
            ) from exc

    def _cached(self, name: str, version: str) -> Loaded | None:
        loaded = self._cache.get((name, version))
        if loaded is not None:
            self._cache.move_to_end((name, version))
        return loaded

    def _remember(self, loaded: Loaded) -> None:
        self._cache[(loaded.name, loaded.version)] = loaded
        self._cache.move_to_end((loaded.name, loaded.version))
        active = {(m.name, m.version) for m in self._active.values()}
        for key in list(self._cache):
            if len(self._cache) <= self.cache_size:
                break
            if key not in active:
                del self._cache[key]

    # -- batched work ----------------------------------------------------------------------
    def _group(
        self, requests: list[dict[str, Any]], family: str
    ) -> tuple[list[Any], dict[tuple[str, str], list[int]], dict[tuple[str, str], Loaded]]:
        """Resolve each request's model; group request indices by (name, version).

        Requests that cannot be served get their `RequestError` in the returned answer list;
        the others are left `None` for the caller to fill.
        """
        what = {IMAGE: "an image generator", EMULATOR: "an emulator"}
        out: list[dict[str, Any] | RequestError | None] = [None] * len(requests)
        groups: dict[tuple[str, str], list[int]] = {}
        models: dict[tuple[str, str], Loaded] = {}
        for i, req in enumerate(requests):
            try:
                loaded = self.get(req["model"], req.get("version"), req.get("active"))
                if loaded.family != family:
                    raise RequestError(
                        422,
                        f"model {loaded.name!r} is {what[loaded.family]}, not {what[family]}",
                    )
            except RequestError as exc:
                out[i] = exc
                continue
            key = (loaded.name, loaded.version)
            models[key] = loaded
            groups.setdefault(key, []).append(i)
        return out, groups, models

    def generate(self, requests: list[dict[str, Any]]) -> list[dict[str, Any] | RequestError]:
        """Each request `{model, version, seed, n, nrow}` → `{png, version, ...}`.

        `png` is a `Future` of the PNG bytes, encoded in the engine's thread pool; the
        caller answers when it is done (the forward of the next batch need not wait).
        """
        import torch

        from models.image_format import BYTES_VERSION, grid_png

        out, groups, models = self._group(requests, IMAGE)
        for key, idx in groups.items():
            sampler = models[key].model
            try:
                z = torch.cat([sampler.latents(requests[i]["seed"], requests[i]["n"]) for i in idx])
                images = sampler.images(z).numpy()  # the whole group in fixed-shape forwards
                start = 0
                for i in idx:
                    n = requests[i]["n"]
                    png: Future[bytes] = self._encoders.submit(
                        grid_png, images[start : start + n], requests[i].get("nrow")
                    )
                    start += n
                    out[i] = {
                        "png": png,
                        "model": key[0],
                        "version": key[1],
                        "created": models[key].created,
                        "format": BYTES_VERSION,
                    }
            except Exception as exc:
                log.exception("generate failed for %s@%s", *key)
                for i in idx:
                    out[i] = RequestError(500, f"generation failed: {type(exc).__name__}")
        return out  # type: ignore[return-value]

    def emulate(
        self, requests: list[dict[str, Any]], abandoned: Callable[[], bool] | None = None
    ) -> list[dict[str, Any] | RequestError]:
        """Each request `{model, version, x, samples, seed}` → arrays as bytes.

        `abandoned()`, asked between passes, says nobody waits for the batch any more (every
        client left or timed out): the work stops there.

        `x` is the (N, 9) float64 input as bytes (`worker.payload.to_bytes`). The result
        holds `mags` (float64, (N·samples, 3), NaN where not detected), `detected` and
        `out_of_domain` (uint8, (N·samples,)) and, for models that emulate them, `magerr`
        (float64, (N·samples, 3)) as bytes the same way, in the emulator's row order.
        """
        from worker.payload import from_bytes, to_bytes

        out, groups, models = self._group(requests, EMULATOR)
        expired = {i for i, r in enumerate(requests) if not isinstance(r.get("x"), bytes)}
        for i in expired:  # its input blob expired before the request ran
            out[i] = RequestError(504, "the request's input expired before it could run")
        for key, all_idx in groups.items():
            idx = [i for i in all_idx if i not in expired]
            if not idx:
                continue
            emulator = models[key].model
            try:
                xs = [from_bytes(requests[i]["x"], "<f8", 9) for i in idx]
                results = emulate_coalesced(
                    emulator,
                    xs,
                    [int(requests[i]["samples"]) for i in idx],
                    [int(requests[i]["seed"]) for i in idx],
                    abandoned,
                )
                for i, rows in zip(idx, results, strict=True):
                    out[i] = {
                        "mags": to_bytes(rows.mags, "<f8"),
                        "detected": to_bytes(rows.detected, "u1"),
                        "out_of_domain": to_bytes(rows.out_of_domain, "u1"),
                        "rows": len(rows.detected),
                        "model": key[0],
                        "version": key[1],
                    }
                    if rows.magerr is not None:
                        out[i]["magerr"] = to_bytes(rows.magerr, "<f8")
            except Abandoned:
                log.info("abandoned %d emulate request(s): nobody waits for them", len(idx))
                for i in idx:
                    out[i] = RequestError(499, "the client went away")
            except Exception as exc:
                log.exception("emulate failed for %s@%s", *key)
                for i in idx:
                    out[i] = RequestError(500, f"emulation failed: {type(exc).__name__}")
        rows = sum(len(r["x"]) // (9 * 8) * int(r.get("samples") or 1)  # (rows, 9) float64
                   for r in requests if isinstance(r.get("x"), bytes))  # fmt: skip
        if rows > TRIM_ROWS:  # the batch's buffers are freed: give their pages back
            release_freed_memory()
        return out  # type: ignore[return-value]


WARM_UP_ROWS, WARM_UP_IMAGES = 2048, 8


def _warm_up(model: Any, family: str) -> float:
    """Work units a second of one small pass through a freshly loaded model (thousands of
    emulated rows, or images); it also warms the kernels' caches before the first request."""
    import numpy as np

    t0 = time.perf_counter()
    if family == EMULATOR:
        row = [[21.0, 21.0, 21.0, 5.0, 5.0, 5.0, 1.0, 1.0, 1.0]]  # mid-range inputs
        emulate_coalesced(model, [np.repeat(np.array(row), WARM_UP_ROWS, axis=0)], [1], [0])
        units = WARM_UP_ROWS / 1000
    else:
        model.images(model.latents(0, WARM_UP_IMAGES))
        units = WARM_UP_IMAGES
    return units / max(time.perf_counter() - t0, 1e-3)


class Abandoned(Exception):
    """Nobody waits for the work in progress any more."""


def emulate_coalesced(
    emulator: Any,
    xs: list[Any],
    samples: list[int],
    seeds: list[int],
    abandoned: Callable[[], bool] | None = None,
) -> list:
    """Several requests through one forward pass; each keeps its own seed's randomness.

    Each request's draws come from `EmulatorSampler.draws(rows, samples, seed)` exactly as a lone
    `EmulatorSampler.sample` call would make them, and rows never interact in the networks, so the
    numbers are identical to separate calls.
    """
    import numpy as np
    import torch

    reps, noises, uniforms, sizes = [], [], [], []
    for x, s, seed in zip(xs, samples, seeds, strict=True):
        noise, u = emulator.draws(len(x), s, seed)
        reps.append(np.repeat(x, s, axis=0))
        noises.append(noise)
        uniforms.append(u)
        sizes.append(len(x) * s)
    x, noise, u = np.concatenate(reps), torch.cat(noises), torch.cat(uniforms)
    # in slices: the flow's intermediate buffers grow with the rows of one pass
    parts = []
    for a in range(0, len(x), PASS_ROWS):
        if a and abandoned is not None and abandoned():
            raise Abandoned
        sl = slice(a, a + PASS_ROWS)
        parts.append(emulator.sample_outputs(x[sl], noise[sl], u[sl]))
    rows = _concat(parts)
    bounds = np.cumsum([0, *sizes])
    return [rows.slice(a, b) for a, b in itertools.pairwise(bounds)]


def _concat(parts: list[Any]) -> Any:
    """One `EmulatedRows` of consecutive parts."""
    import numpy as np

    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    return type(first)(
        mags=np.concatenate([p.mags for p in parts]),
        magerr=None if first.magerr is None else np.concatenate([p.magerr for p in parts]),
        detected=np.concatenate([p.detected for p in parts]),
        out_of_domain=np.concatenate([p.out_of_domain for p in parts]),
    )


_engine: Engine | None = None


def get_engine() -> Engine:
    """The process's engine, created on first use (inside a pool child, never the parent)."""
    global _engine
    if _engine is None:
        import torch

        from models.settings import get_settings
        from worker.policy import INFERENCE_QUEUE, torch_threads

        torch.set_num_threads(torch_threads(INFERENCE_QUEUE))
        settings = get_settings()
        _engine = Engine(settings.registry_dir, device=settings.device)
    return _engine
