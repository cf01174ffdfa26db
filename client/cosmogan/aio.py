"""The asynchronous client: `cosmogan.AsyncClient`, the same methods as `Client`, awaited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from tqdm.auto import tqdm

from cosmogan._common import (
    PARQUET,
    TERMINAL,
    Event,
    RetryPolicy,
    SSEParser,
    Upload,
    attach,
    checked_part,
    concat_parts,
    dataset_parts,
    decode_png,
    emulate_job_params,
    grid_columns,
    headers_for,
    model_params,
    prepare_catalog,
    random_seed,
    read_parquet,
    resolve_settings,
    save_file,
    save_manifest,
    split_grid,
    split_ref,
    to_images,
)
from cosmogan.client import _advance
from cosmogan.errors import ApiError, CosmoganError, JobFailed, error_from


class AsyncClient:
    """`Client`'s asynchronous twin (see `Client` for each method's meaning)."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        progress: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url, self.api_key = resolve_settings(url, api_key)
        self.retry = retry or RetryPolicy()
        self.progress = progress
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=headers_for(self.api_key),
            timeout=timeout,
            transport=transport,
        )
        self._config: dict[str, Any] | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def __repr__(self) -> str:
        return f"cosmogan.AsyncClient({self.url!r})"

    async def request(
        self, method: str, path: str, *, idempotent: bool | None = None, **kwargs: Any
    ) -> httpx.Response:
        retry = self.retry.retryable(method, idempotent)
        attempt = 0
        while True:
            try:
                resp = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                again = retry or isinstance(exc, httpx.ConnectError)
                wait = self.retry.delay(attempt) if again else None
                if wait is None:
                    raise CosmoganError(f"{method} {self.url}{path}: {exc}") from exc
            else:
                if resp.status_code < 400:
                    return resp
                wait = None
                if retry and resp.status_code in {429, 502, 503, 504}:
                    wait = self.retry.delay(attempt, resp)
                if wait is None:
                    raise error_from(resp)
            await asyncio.sleep(wait)
            attempt += 1

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return (await self.request(method, path, **kwargs)).json()

    async def ready(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    async def config(self) -> dict[str, Any]:
        if self._config is None:
            self._config = await self._json("GET", "/ui/config")
        return self._config

    async def generate(
        self,
        seed: int = 0,
        n: int = 16,
        *,
        model: str | None = None,
        version: str | None = None,
        output: str = "pil",
    ) -> Any:
        nrow = grid_columns(n)
        params = {"seed": seed, "n": n, "nrow": nrow, **model_params(model, version)}
        png = (await self.request("GET", "/generate", params=params)).content
        if output == "png":
            return png
        return to_images(split_grid(decode_png(png), n, nrow), output)

    async def emulate(
        self,
        table: Any,
        *,
        seed: int | None = None,
        samples: int = 1,
        model: str | None = None,
        version: str | None = None,
        background: bool | None = None,
        progress: bool | None = None,
        dataset: str | None = None,
    ) -> pd.DataFrame | dict[str, Any]:
        upload = await asyncio.to_thread(prepare_catalog, table)
        seed = random_seed() if seed is None else seed
        limit = (await self.config())["max_emulate_rows"]
        if background is None:
            background = dataset is not None or (upload.rows is not None and upload.rows > limit)
        if not background:
            try:
                return await self._emulate_once(upload, seed, samples, model, version)
            except ApiError as exc:
                if exc.status != 413:
                    raise
        return await self._emulate_background(
            upload, seed, samples, model, version, progress, dataset
        )

    async def _emulate_once(
        self, upload: Upload, seed: int, samples: int, model: str | None, version: str | None
    ) -> pd.DataFrame:
        params = emulate_job_params(samples, seed, model, version)
        del params["output"]
        resp = await self.request(
            "POST",
            "/emulate",
            params=params,
            content=upload.body,
            headers={"content-type": upload.media, "accept": PARQUET},
            idempotent=True,
        )
        df = await asyncio.to_thread(read_parquet, resp.content)
        return attach(df, resp, upload.index if samples == 1 else None)

    async def _emulate_background(
        self,
        upload: Upload,
        seed: int,
        samples: int,
        model: str | None,
        version: str | None,
        progress: bool | None,
        dataset: str | None = None,
    ) -> pd.DataFrame | dict[str, Any]:
        job = await self._json(
            "POST",
            "/emulate/jobs",
            params=emulate_job_params(samples, seed, model, version, dataset),
            content=upload.body,
            headers={"content-type": upload.media},
        )
        url = job["url"]
        show = self.progress if progress is None else progress
        with tqdm(
            total=job.get("rows_total"), unit="rows", disable=not show, desc="emulate"
        ) as bar:
            while job["state"] not in TERMINAL:
                await asyncio.sleep(0.5)
                job = await self._json("GET", url)
                if job.get("rows_total") and bar.total != job["rows_total"]:
                    bar.total = job["rows_total"]
                bar.update(job.get("rows_done", 0) - bar.n)
        if job["state"] != "succeeded":
            raise JobFailed(job["job_id"], job["state"], job.get("error"))
        if dataset is not None:
            return await self.dataset(dataset)
        if job.get("result_dataset"):  # too large for one file: read it part by part
            df = await self.read_dataset(job["result_dataset"], progress=progress)
        else:
            resp = await self.request("GET", job["result"])
            df = await asyncio.to_thread(read_parquet, resp.content)
        df.attrs.update(model=f"{job['model']}@{job.get('version') or 'active'}", seed=job["seed"])
        if upload.index is not None and samples == 1 and len(upload.index) == len(df):
            df.index = upload.index
        return df

    async def train(
        self,
        preset: str,
        *,
        data: str | None = None,
        model: str | None = None,
        activate: bool = False,
        overrides: dict[str, Any] | None = None,
        **settings: Any,
    ) -> AsyncJob:
        body: dict[str, Any] = {"preset": preset, "overrides": {**(overrides or {}), **settings}}
        if data is not None:
            body["data"] = data
        if model is not None:
            body["model"] = model
        if activate:
            body["activate"] = True
        accepted = await self._json("POST", "/train", json=body)
        return AsyncJob(self, accepted["job_id"])

    def job(self, job_id: str) -> AsyncJob:
        return AsyncJob(self, job_id)

    async def jobs(self, *, state: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if state:
            params["state"] = state
        return (await self._json("GET", "/train", params=params))["jobs"]

    async def models(self) -> dict[str, Any]:
        return (await self._json("GET", "/models"))["models"]

    async def activate(self, model: str, version: str | None = None) -> dict[str, Any]:
        name, ref = split_ref(model, version)
        return await self._json(
            "POST", f"/models/{name}/activate", json={"version": ref}, idempotent=True
        )

    async def set_note(self, model: str, version: str, note: str) -> dict[str, Any]:
        return await self._json(
            "PATCH", f"/models/{model}/versions/{version}", json={"note": note}, idempotent=True
        )

    async def delete_version(self, model: str, version: str) -> dict[str, Any]:
        return await self._json("DELETE", f"/models/{model}/versions/{version}")

    async def datasets(self) -> list[dict[str, Any]]:
        out = await self._json("GET", "/datasets")
        return out["datasets"] if isinstance(out, dict) and "datasets" in out else out

    async def dataset(self, name: str) -> dict[str, Any]:
        return await self._json("GET", f"/datasets/{name}")

    async def upload_dataset(self, name: str, table: Any) -> dict[str, Any]:
        upload = await asyncio.to_thread(prepare_catalog, table)
        return await self._json(
            "PUT", f"/datasets/{name}", content=upload.body, headers={"content-type": upload.media}
        )

    async def build_dataset(
        self,
        name: str,
        *,
        rows: int,
        simulator: str = "analytic",
        seed: int = 0,
        draw_seed: int | None = None,
        wait: bool = True,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "simulator": simulator, "rows": rows, "seed": seed}
        if draw_seed is not None:
            body["draw_seed"] = draw_seed
        accepted = await self._json("POST", "/datasets", json=body)
        return await self.wait_dataset(name, timeout=timeout) if wait else accepted

    async def wait_dataset(self, name: str, *, timeout: float | None = None) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            desc = await self.dataset(name)
            if desc.get("state") == "ready":
                return desc
            if desc.get("state") in ("failed", "cancelled"):
                raise JobFailed(name, desc["state"], desc.get("error"))
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"dataset {name!r} is still {desc.get('state')}")
            await asyncio.sleep(1.0)

    async def delete_dataset(self, name: str) -> None:
        await self.request("DELETE", f"/datasets/{name}")

    async def _manifest(self, name: str) -> dict[str, Any]:
        return await self._json("GET", f"/datasets/{name}", params={"parts": "true"})

    async def _parts(
        self, name: str, desc: dict[str, Any], progress: bool | None
    ) -> AsyncIterator[tuple[dict[str, Any], bytes]]:
        show = self.progress if progress is None else progress
        with tqdm(total=desc.get("rows"), unit="rows", disable=not show, desc=name) as bar:
            for part in dataset_parts(name, desc):
                resp = await self.request("GET", part["url"])
                yield part, checked_part(name, part, resp.content)
                bar.update(part["rows"])

    async def read_dataset(self, name: str, *, progress: bool | None = None) -> pd.DataFrame:
        frames = []
        async for _, data in self._parts(name, await self._manifest(name), progress):
            frames.append(await asyncio.to_thread(read_parquet, data))
        return concat_parts(frames)

    async def download_dataset(
        self, name: str, folder: str | Path, *, progress: bool | None = None
    ) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        desc = await self._manifest(name)
        async for part, data in self._parts(name, desc, progress):
            await asyncio.to_thread(save_file, folder / Path(part["file"]).name, data)
        save_manifest(folder, desc)
        return folder


class AsyncJob:
    """`Job`'s asynchronous twin."""

    def __init__(self, client: AsyncClient, job_id: str) -> None:
        self.client, self.job_id = client, job_id
        self._last: dict[str, Any] | None = None

    def __repr__(self) -> str:
        state = self._last["state"] if self._last else "?"
        return f"<cosmogan.AsyncJob {self.job_id} {state}>"

    async def status(self) -> dict[str, Any]:
        self._last = await self.client._json("GET", f"/train/{self.job_id}")
        return self._last

    async def model(self) -> str | None:
        rec = self._last if self._last and self._last.get("model") else await self.status()
        return rec.get("model")

    async def events(self, *, since: str | None = None) -> AsyncIterator[Event]:
        cursor = since
        while True:
            params = {"last_event_id": cursor} if cursor else {}
            ended = False
            try:
                async with self.client._http.stream(
                    "GET",
                    f"/train/{self.job_id}/events",
                    params=params,
                    timeout=httpx.Timeout(30.0, read=None),
                ) as resp:
                    if resp.status_code >= 400:
                        await resp.aread()
                        raise error_from(resp)
                    parser = SSEParser()
                    async for line in resp.aiter_lines():
                        ev = parser.feed(line)
                        if ev is None:
                            continue
                        cursor = ev.id or cursor
                        yield ev
                    ended = True
            except (httpx.RemoteProtocolError, httpx.ReadError):
                pass
            if ended:
                return
            await asyncio.sleep(1.0)

    async def wait(
        self,
        *,
        timeout: float | None = None,
        progress: bool | None = None,
        raise_on_failure: bool = True,
    ) -> dict[str, Any]:
        show = self.client.progress if progress is None else progress
        deadline = None if timeout is None else time.monotonic() + timeout
        rec = await self.status()
        with tqdm(
            total=rec.get("total_steps"), unit="step", disable=not show, desc=self.job_id[:8]
        ) as bar:
            while rec["state"] not in TERMINAL:
                try:
                    async for ev in self.events():
                        _advance(bar, ev.data)
                        if deadline is not None and time.monotonic() > deadline:
                            break
                        if ev.data.get("state") in TERMINAL:
                            break
                except ApiError as exc:
                    if exc.status != 429:
                        raise
                    await asyncio.sleep(2.0)
                rec = await self.status()
                _advance(bar, rec)
                if (
                    deadline is not None
                    and time.monotonic() > deadline
                    and rec["state"] not in TERMINAL
                ):
                    raise TimeoutError(
                        f"job {self.job_id} is still {rec['state']} after {timeout} s"
                    )
        if raise_on_failure and rec["state"] != "succeeded":
            raise JobFailed(self.job_id, rec["state"], rec.get("error"))
        return rec

    async def cancel(self) -> dict[str, Any]:
        self._last = await self.client._json("DELETE", f"/train/{self.job_id}")
        return self._last

    async def resume(self) -> AsyncJob:
        preset = (self._last or await self.status())["preset"]
        await self.client._json("POST", "/train", json={"preset": preset, "resume": self.job_id})
        self._last = None
        return self
