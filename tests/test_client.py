"""The Python client without a service: retries, errors, PNG tiles, SSE parsing, no torch."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import numpy as np
import pytest

import cosmogan
from cosmogan import _common


def client_with(handler, **kwargs) -> cosmogan.Client:
    return cosmogan.Client(
        "http://cosmogan.test", api_key="k", transport=httpx.MockTransport(handler), **kwargs
    )


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waited: list[float] = []
    monkeypatch.setattr("cosmogan.client.time.sleep", waited.append)
    return waited


def test_the_client_imports_nothing_of_the_service_and_no_torch() -> None:
    # torch and the service's packages made unimportable: `import cosmogan` must not care
    code = (
        "import sys\n"
        "for m in ('torch', 'app', 'models', 'training', 'worker', 'launcher'):\n"
        "    sys.modules[m] = None\n"
        "import cosmogan\n"
        "print(cosmogan.Client.__module__, cosmogan.AsyncClient.__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["cosmogan.client", "cosmogan.aio"]
    meta = tomllib.loads((Path(__file__).parents[1] / "client" / "pyproject.toml").read_text())
    names = [re.split(r"[<>=\[ ;]", d)[0] for d in meta["project"]["dependencies"]]
    assert sorted(names) == ["httpx", "numpy", "pandas", "pyarrow", "tqdm"]


def test_the_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"models": {}})

    monkeypatch.setenv("COSMOGAN_API_KEY", "from-env")
    transport = httpx.MockTransport(handler)
    cosmogan.Client("http://x", transport=transport).models()
    cosmogan.Client("http://x", api_key="given", transport=transport).models()
    monkeypatch.delenv("COSMOGAN_API_KEY")
    cosmogan.Client("http://x", transport=transport).models()
    assert seen == ["Bearer from-env", "Bearer given", None]


def test_idempotent_calls_wait_as_long_as_retry_after_says(sleeps: list[float]) -> None:
    answers = iter(
        [
            httpx.Response(503, json={"detail": "queue full"}, headers={"Retry-After": "3"}),
            httpx.Response(429, json={"detail": "slow down"}, headers={"Retry-After": "1"}),
            httpx.Response(200, json={"models": {"nebula": {}}}),
        ]
    )
    assert client_with(lambda r: next(answers)).models() == {"nebula": {}}
    assert sleeps == [3.0, 1.0]


def test_a_post_that_is_not_idempotent_is_never_retried(sleeps: list[float]) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        return httpx.Response(503, json={"detail": "the task queue is unreachable"})

    with pytest.raises(cosmogan.ServiceBusyError, match="503: the task queue is unreachable"):
        client_with(handler).train("balrog", epochs=1)
    assert calls == ["POST"] and sleeps == []


def test_retries_stop_after_the_policy_and_raise_the_servers_message(sleeps) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"detail": "busy"}, headers={"Retry-After": "2"})

    client = client_with(handler, retry=cosmogan.RetryPolicy(max_retries=2))
    with pytest.raises(cosmogan.ServiceBusyError) as info:
        client.models()
    assert info.value.retry_after == 2.0 and info.value.message == "busy"
    assert sleeps == [2.0, 2.0]
    # a Retry-After beyond what the caller will wait is not waited for
    patient = client_with(handler, retry=cosmogan.RetryPolicy(max_wait_s=1.0))
    with pytest.raises(cosmogan.ServiceBusyError):
        patient.models()
    assert sleeps == [2.0, 2.0]


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (401, cosmogan.AuthenticationError),
        (404, cosmogan.NotFoundError),
        (409, cosmogan.ConflictError),
        (413, cosmogan.InvalidRequestError),
        (422, cosmogan.InvalidRequestError),
    ],
)
def test_errors_carry_the_servers_message_and_problems(status: int, cls: type) -> None:
    body = {"detail": "bad rows", "problems": [{"row": 2, "column": "psf_fwhm_r", "message": "<0"}]}
    client = client_with(lambda r: httpx.Response(status, json=body))
    with pytest.raises(cls) as info:
        client.models()
    assert info.value.status == status and info.value.message == "bad rows"
    assert "row index 2 column psf_fwhm_r: <0" in str(info.value)


def test_png_grids_are_split_into_the_images_the_server_drew() -> None:
    from models.image_format import grid_png

    rng = np.random.default_rng(0)
    for n, size in [(1, 8), (5, 16), (16, 12)]:
        images = rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8)
        png = grid_png(images, _common.grid_columns(n))
        tiles = _common.split_grid(_common.decode_png(png), n, _common.grid_columns(n))
        assert np.array_equal(tiles, images.transpose(0, 2, 3, 1))


def test_png_decoding_handles_every_filter_as_pillow_writes_them() -> None:
    import io

    from PIL import Image

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    rgb[3:] = rgb[3]  # repeated rows and a gradient make Pillow's adaptive filters vary
    rgb[:, :, 0] = np.arange(7, dtype=np.uint8)[None, :] * 30
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=False)
    assert np.array_equal(_common.decode_png(buf.getvalue()), rgb)


def test_server_sent_events_are_parsed_with_ids_and_json() -> None:
    lines = [
        ": keep-alive",
        "event: snapshot",
        "id: 1-0",
        'data: {"state": "running", "step": 0}',
        "",
        "event: state",
        "id: 2-0",
        'data: {"state": "succeeded"}',
        "",
    ]
    events = list(_common.SSEParser().parse(lines))
    assert [(e.event, e.id, e.data) for e in events] == [
        ("snapshot", "1-0", {"state": "running", "step": 0}),
        ("state", "2-0", {"state": "succeeded"}),
    ]


def test_references_name_a_model_and_version() -> None:
    assert _common.split_ref("balrog@abc", None) == ("balrog", "abc")
    assert _common.split_ref("balrog", "v2") == ("balrog", "v2")
    assert _common.model_params("balrog@abc", None) == {"model": "balrog", "version": "abc"}
    with pytest.raises(ValueError, match="name a version"):
        _common.split_ref("balrog", None)


def test_a_drawn_seed_survives_json_and_javascript_numbers() -> None:
    seeds = [_common.random_seed() for _ in range(1000)]
    assert all(0 <= s <= 2**53 - 1 and float(s) == s for s in seeds)
    assert json.loads(json.dumps(seeds)) == seeds


def test_a_dataset_part_whose_bytes_are_not_the_manifests_is_refused(tmp_path: Path) -> None:
    import hashlib

    import pandas as pd

    good = _common.parquet_bytes(pd.DataFrame({"id": [0, 1, 2]}))
    more = _common.parquet_bytes(pd.DataFrame({"id": [3, 4]}))
    served = {"part-00000.parquet": good, "part-00001.parquet": more}
    parts = [
        {"file": f, "rows": r, "sha256": hashlib.sha256(b).hexdigest(), "url": f"/p/{f}"}
        for (f, b), r in zip(served.items(), (3, 2), strict=True)
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/datasets/cat":
            assert request.url.params["parts"] == "true"
            return httpx.Response(200, json={"name": "cat", "rows": 5, "parts": parts})
        return httpx.Response(200, content=served[request.url.path.rsplit("/", 1)[1]])

    c = client_with(handler, progress=False)
    assert list(c.read_dataset("cat")["id"]) == [0, 1, 2, 3, 4]
    folder = c.download_dataset("cat", tmp_path / "cat")
    assert sorted(p.name for p in folder.iterdir()) == [
        "_manifest.json",
        "part-00000.parquet",
        "part-00001.parquet",
    ]
    served["part-00001.parquet"] = good  # a part that changed on its way
    with pytest.raises(cosmogan.CosmoganError, match=r"part-00001\.parquet of dataset 'cat'"):
        c.read_dataset("cat")
    with pytest.raises(cosmogan.CosmoganError, match="sha256"):
        c.download_dataset("cat", tmp_path / "again")
    assert not (tmp_path / "again" / "part-00001.parquet").exists()
    assert not (tmp_path / "again" / "_manifest.json").exists()
