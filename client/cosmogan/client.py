"""The synchronous client: `cosmogan.Client(url, api_key=None)` and its job handles."""

from __future__ import annotations

import time
from collections.abc import Iterator
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
from cosmogan.errors import ApiError, CosmoganError, JobFailed, error_from


class Client:
    """A cosmogan service at `url` (default COSMOGAN_URL, else http://127.0.0.1:8000).

    `api_key` (default COSMOGAN_API_KEY) is needed to train, activate, run background
    emulation and change datasets. Idempotent calls are retried on connection errors and on
    429/502/503/504, waiting as long as the server's `Retry-After` says; a failed call raises
    an `ApiError` subclass carrying the server's message.
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        progress: bool = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url, self.api_key = resolve_settings(url, api_key)
        self.retry = retry or RetryPolicy()
        self.progress = progress
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers_for(self.api_key),
            timeout=timeout,
            transport=transport,
        )
        self._config: dict[str, Any] | None = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"cosmogan.Client({self.url!r})"

    # ------------------------------------------------------------------------- transport
    def request(
        self, method: str, path: str, *, idempotent: bool | None = None, **kwargs: Any
    ) -> httpx.Response:
        """One call, retried when it is idempotent (or marked so); errors raise ApiError."""
        retry = self.retry.retryable(method, idempotent)
        attempt = 0
        while True:
            try:
                resp = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                # a refused connection sent nothing: safe to retry whatever the method
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
            time.sleep(wait)
            attempt += 1

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    # ---------------------------------------------------------------------------- service
    def ready(self) -> bool:
        """Whether a worker answers and the active models are loaded (`GET /readyz`)."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def config(self) -> dict[str, Any]:
        """The server's limits, presets with their defaults, and emulator columns."""
        if self._config is None:
            self._config = self._json("GET", "/ui/config")
        return self._config

    # --------------------------------------------------------------------------- images
    def generate(
        self,
        seed: int = 0,
        n: int = 16,
        *,
        model: str | None = None,
        version: str | None = None,
        output: str = "pil",
    ) -> Any:
        """`n` images from an image model: PIL images (`output="pil"`, needs Pillow), an
        (n, H, W, 3) uint8 array (`"array"`) or the PNG grid's bytes (`"png"`). The same
        seed and version always give the same pixels."""
        nrow = grid_columns(n)
        params = {"seed": seed, "n": n, "nrow": nrow, **model_params(model, version)}
        png = self.request("GET", "/generate", params=params).content
        if output == "png":
            return png
        return to_images(split_grid(decode_png(png), n, nrow), output)

    # ------------------------------------------------------------------------- emulation
    def emulate(
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
        """Observed magnitudes and detection for a catalog: a DataFrame, an astropy or
        pyarrow Table, rows, or a CSV/Parquet/FITS path. Returns the rows as sent (the
        index kept when `samples` is 1; otherwise each row's realizations follow it, with a
        `realization` column) with `mag_{r,i,z}` (`magerr_*` when the model draws them) and
        `detected`; `attrs` holds `model` and `seed`.

        Catalogs over the server's per-request limit go through `/emulate/jobs`
        (needs the API key) with a progress bar; `background=True` forces that path. A
        result too large for one file comes back as a server dataset, read part by part.
        With `dataset="NAME"` the result stays on the server as dataset NAME, and its
        description is returned (`read_dataset(NAME)` fetches it).
        Without `seed` the client draws one, so a retried request gives the same rows.
        """
        upload = prepare_catalog(table)
        seed = random_seed() if seed is None else seed
        limit = self.config()["max_emulate_rows"]
        if background is None:
            background = dataset is not None or (upload.rows is not None and upload.rows > limit)
        if not background:
            try:
                return self._emulate_once(upload, seed, samples, model, version)
            except ApiError as exc:
                if exc.status != 413:
                    raise
        return self._emulate_background(upload, seed, samples, model, version, progress, dataset)

    def _emulate_once(
        self, upload: Upload, seed: int, samples: int, model: str | None, version: str | None
    ) -> pd.DataFrame:
        params = emulate_job_params(samples, seed, model, version)
        del params["output"]
        resp = self.request(
            "POST",
            "/emulate",
            params=params,
            content=upload.body,
            headers={"content-type": upload.media, "accept": PARQUET},
            idempotent=True,  # a pure function of the rows and the seed
        )
        return attach(read_parquet(resp.content), resp, upload.index if samples == 1 else None)

    def _emulate_background(
        self,
        upload: Upload,
        seed: int,
        samples: int,
        model: str | None,
        version: str | None,
        progress: bool | None,
        dataset: str | None = None,
    ) -> pd.DataFrame | dict[str, Any]:
        job = self._json(
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
                time.sleep(0.5)
                job = self._json("GET", url)
                if job.get("rows_total") and bar.total != job["rows_total"]:
                    bar.total = job["rows_total"]
                bar.update(job.get("rows_done", 0) - bar.n)
        if job["state"] != "succeeded":
            raise JobFailed(job["job_id"], job["state"], job.get("error"))
        if dataset is not None:
            return self.dataset(dataset)
        if job.get("result_dataset"):  # too large for one file: read it part by part
            df = self.read_dataset(job["result_dataset"], progress=progress)
        else:
            df = read_parquet(self.request("GET", job["result"]).content)
        df.attrs.update(model=f"{job['model']}@{job.get('version') or 'active'}", seed=job["seed"])
        if upload.index is not None and samples == 1 and len(upload.index) == len(df):
            df.index = upload.index
        return df

    # -------------------------------------------------------------------------- training
    def train(
        self,
        preset: str,
        *,
        data: str | None = None,
        model: str | None = None,
        activate: bool = False,
        overrides: dict[str, Any] | None = None,
        **settings: Any,
    ) -> Job:
        """Queue a training run from a preset; keyword settings (`epochs=5`) are overrides.
        The version is registered under `model` (default `nebula` or `balrog`, by family)."""
        body: dict[str, Any] = {"preset": preset, "overrides": {**(overrides or {}), **settings}}
        if data is not None:
            body["data"] = data
        if model is not None:
            body["model"] = model
        if activate:
            body["activate"] = True
        accepted = self._json("POST", "/train", json=body)
        return Job(self, accepted["job_id"])

    def job(self, job_id: str) -> Job:
        """A handle on an existing training job."""
        return Job(self, job_id)

    def jobs(self, *, state: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if state:
            params["state"] = state
        return self._json("GET", "/train", params=params)["jobs"]

    # ---------------------------------------------------------------------------- models
    def models(self) -> dict[str, Any]:
        """Every model name: its family, active version and versions (kind, metrics, note)."""
        return self._json("GET", "/models")["models"]

    def activate(self, model: str, version: str | None = None) -> dict[str, Any]:
        """Serve a version: `activate("balrog", "v2")` or `activate("balrog@v2")`."""
        name, ref = split_ref(model, version)
        return self._json(
            "POST", f"/models/{name}/activate", json={"version": ref}, idempotent=True
        )

    def set_note(self, model: str, version: str, note: str) -> dict[str, Any]:
        return self._json(
            "PATCH", f"/models/{model}/versions/{version}", json={"note": note}, idempotent=True
        )

    def delete_version(self, model: str, version: str) -> dict[str, Any]:
        return self._json("DELETE", f"/models/{model}/versions/{version}")

    # -------------------------------------------------------------------------- datasets
    def datasets(self) -> list[dict[str, Any]]:
        """Every dataset (`name`, `rows`, `state`, ...)."""
        out = self._json("GET", "/datasets")
        return out["datasets"] if isinstance(out, dict) and "datasets" in out else out

    def dataset(self, name: str) -> dict[str, Any]:
        return self._json("GET", f"/datasets/{name}")

    def upload_dataset(self, name: str, table: Any) -> dict[str, Any]:
        """Upload a catalog (DataFrame, Table, rows or a CSV/Parquet/FITS path) as `name`."""
        upload = prepare_catalog(table)
        return self._json(
            "PUT", f"/datasets/{name}", content=upload.body, headers={"content-type": upload.media}
        )

    def build_dataset(
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
        """Build a catalog with the mini-Balrog simulator; waits until it is ready unless
        `wait=False` (then the `{job_id}` answer)."""
        body: dict[str, Any] = {"name": name, "simulator": simulator, "rows": rows, "seed": seed}
        if draw_seed is not None:
            body["draw_seed"] = draw_seed
        accepted = self._json("POST", "/datasets", json=body)
        return self.wait_dataset(name, timeout=timeout) if wait else accepted

    def wait_dataset(self, name: str, *, timeout: float | None = None) -> dict[str, Any]:
        """Poll a dataset until its state is `ready` (JobFailed when it fails)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            desc = self.dataset(name)
            if desc.get("state") == "ready":
                return desc
            if desc.get("state") in ("failed", "cancelled"):
                raise JobFailed(name, desc["state"], desc.get("error"))
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"dataset {name!r} is still {desc.get('state')}")
            time.sleep(1.0)

    def delete_dataset(self, name: str) -> None:
        self.request("DELETE", f"/datasets/{name}")

    def _manifest(self, name: str) -> dict[str, Any]:
        return self._json("GET", f"/datasets/{name}", params={"parts": "true"})

    def _parts(
        self, name: str, desc: dict[str, Any], progress: bool | None
    ) -> Iterator[tuple[dict[str, Any], bytes]]:
        """Each part of dataset `name` in row order, its bytes checked against the manifest,
        with a progress bar over the rows."""
        show = self.progress if progress is None else progress
        with tqdm(total=desc.get("rows"), unit="rows", disable=not show, desc=name) as bar:
            for part in dataset_parts(name, desc):
                yield part, checked_part(name, part, self.request("GET", part["url"]).content)
                bar.update(part["rows"])

    def read_dataset(self, name: str, *, progress: bool | None = None) -> pd.DataFrame:
        """A multi-part catalog dataset (built, uploaded or emulated) as one DataFrame, its
        parts downloaded in order and each checked against the manifest's sha256."""
        parts = self._parts(name, self._manifest(name), progress)
        return concat_parts([read_parquet(data) for _, data in parts])

    def download_dataset(
        self, name: str, folder: str | Path, *, progress: bool | None = None
    ) -> Path:
        """Write a multi-part catalog's parts (each checked against its sha256) and its
        manifest (`_manifest.json`, the description) into `folder`; returns the folder,
        which pandas and pyarrow read as one table."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        desc = self._manifest(name)
        for part, data in self._parts(name, desc, progress):
            save_file(folder / Path(part["file"]).name, data)
        save_manifest(folder, desc)
        return folder


class Job:
    """A training job: `status()`, `events()`, `wait()`, `cancel()`, `resume()`."""

    def __init__(self, client: Client, job_id: str) -> None:
        self.client, self.job_id = client, job_id
        self._last: dict[str, Any] | None = None

    def __repr__(self) -> str:
        state = self._last["state"] if self._last else "?"
        return f"<cosmogan.Job {self.job_id} {state}>"

    def status(self) -> dict[str, Any]:
        """The job's record: state, epoch/step, losses, ETA, metrics, `model` once registered."""
        self._last = self.client._json("GET", f"/train/{self.job_id}")
        return self._last

    @property
    def model(self) -> str | None:
        """`name@version` of the registered model, once the job has succeeded."""
        rec = self._last if self._last and self._last.get("model") else self.status()
        return rec.get("model")

    def events(self, *, since: str | None = None) -> Iterator[Event]:
        """Server-sent events until the job ends: a `snapshot` first (unless `since`, an
        event id, resumes after it), then `progress` and `state` events. A dropped
        connection is resumed from the last event id."""
        cursor = since
        while True:
            params = {"last_event_id": cursor} if cursor else {}
            ended = False
            try:
                with self.client._http.stream(
                    "GET",
                    f"/train/{self.job_id}/events",
                    params=params,
                    timeout=httpx.Timeout(30.0, read=None),
                ) as resp:
                    if resp.status_code >= 400:
                        resp.read()
                        raise error_from(resp)
                    for ev in SSEParser().parse(resp.iter_lines()):
                        cursor = ev.id or cursor
                        yield ev
                        if ev.data.get("state") in TERMINAL and ev.event in ("state", "snapshot"):
                            ended = True
                    ended = True  # the server closes the stream when the job has ended
            except (httpx.RemoteProtocolError, httpx.ReadError):
                pass  # reconnect below from the last event id
            if ended:
                return
            time.sleep(1.0)

    def wait(
        self,
        *,
        timeout: float | None = None,
        progress: bool | None = None,
        raise_on_failure: bool = True,
    ) -> dict[str, Any]:
        """Follow the job to its end with a progress bar over its steps; the final record.
        Raises JobFailed when it ends failed or cancelled (unless `raise_on_failure=False`)
        and TimeoutError after `timeout` seconds."""
        show = self.client.progress if progress is None else progress
        deadline = None if timeout is None else time.monotonic() + timeout
        rec = self.status()
        with tqdm(
            total=rec.get("total_steps"), unit="step", disable=not show, desc=self.job_id[:8]
        ) as bar:
            while rec["state"] not in TERMINAL:
                try:
                    for ev in self.events():
                        _advance(bar, ev.data)
                        if deadline is not None and time.monotonic() > deadline:
                            break
                        if ev.data.get("state") in TERMINAL:
                            break
                except ApiError as exc:
                    if exc.status != 429:  # too many streams: fall back to polling
                        raise
                    time.sleep(2.0)
                rec = self.status()
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

    def cancel(self) -> dict[str, Any]:
        """Ask the job to stop at its next checkpoint (it can be resumed)."""
        self._last = self.client._json("DELETE", f"/train/{self.job_id}")
        return self._last

    def resume(self) -> Job:
        """Continue a cancelled or failed job in its run folder, with its settings."""
        preset = (self._last or self.status())["preset"]
        self.client._json("POST", "/train", json={"preset": preset, "resume": self.job_id})
        self._last = None
        return self


def _advance(bar: tqdm, rec: dict[str, Any]) -> None:
    total = rec.get("total_steps")
    if total and bar.total != total:
        bar.total = total
    step = rec.get("step")
    if isinstance(step, int) and step >= bar.n:
        bar.update(step - bar.n)
    if rec.get("state"):
        bar.set_postfix_str(str(rec["state"]), refresh=False)
