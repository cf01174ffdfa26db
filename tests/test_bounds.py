"""Request bounds, damaged registry files, load failures, proxy and security headers: units."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from app import tables
from app.headers import docs_csp, inline_script_hashes
from app.routes.train import STREAM_ID
from launcher.supervisor import api_command, proxy_options
from models.columns import INPUTS
from models.registry import DEFAULT_WEIGHTS_DIR, Registry, RegistryDamaged, RegistryError

ROW = dict(zip(INPUTS, [22.1, 21.7, 21.5, 5.0, 6.0, 8.0, 1.0, 0.9, 0.95], strict=True))


def test_bounds_name_the_limit_that_was_exceeded() -> None:
    bounds = tables.Bounds(rows=100, columns=20, cells=10_000, samples=4)
    bounds.check(100, 15)  # 100 × 4 × (15 + 9) = 9,600 cells
    with pytest.raises(tables.TableError, match="21 columns is more than the 20") as exc:
        bounds.check(2, 21)
    assert exc.value.status == 413
    with pytest.raises(tables.TableError, match="10,000 allowed") as exc:
        bounds.check(100, 20)
    assert exc.value.status == 413
    with pytest.raises(tables.TableError, match="101 rows"):
        bounds.check(101, 9)


def test_a_csv_body_is_measured_from_its_header_and_lines() -> None:
    head = ",".join(INPUTS) + ',"a,b"'
    body = (head + "\n" + "1,2,3,4,5,6,7,8,9,x\n\n\n" * 3).encode()
    assert tables._csv_shape(body) == (3, 10)
    assert tables._csv_shape(head.encode()) == (0, 10)
    wide = (",".join(f"c{i}" for i in range(5000)) + "\n" + "0," * 4999 + "0\n").encode()
    with pytest.raises(tables.TableError, match="5000 columns"):
        tables.read_table(wide, "csv", tables.Bounds(10, columns=1000))


def test_a_fits_response_wider_than_999_columns_is_refused_up_front() -> None:
    names = [*INPUTS, *(f"c{i}" for i in range(990))]
    with pytest.raises(tables.TableError, match="at most 999 columns") as exc:
        tables.check_media(tables.FITS, names, samples=1)
    assert exc.value.status == 406
    tables.check_media(tables.PARQUET, names, samples=1)
    tables.check_media(tables.FITS, names[:-10], samples=1)  # 989 + 8 emulated = 997


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    reg = Registry(tmp_path / "registry")
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"weights")
    for v in ("v1", "v2"):
        reg.register("nebula", v, weights)
    reg.activate("nebula", "v1")
    return reg


def test_damaged_registry_files_are_listed_not_raised(registry: Registry) -> None:
    meta = registry.root / "nebula" / "versions" / "v2" / "meta.json"
    meta.write_text(meta.read_text()[:10])
    listed = registry.describe()["nebula"]
    assert [v["version"] for v in listed["versions"]] == ["v1"]
    assert listed["damaged"] == ["versions/v2/meta.json"] and listed["active"] == "v1"
    with pytest.raises(RegistryDamaged, match="nebula@v2 is damaged") as exc:
        registry.get("nebula", "v2")
    assert str(registry.root) not in str(exc.value)
    active = registry.root / "nebula" / "active.json"
    active.write_text('{"vers')
    with pytest.raises(RegistryDamaged, match=r"active\.json"):
        registry.get("nebula")
    assert registry.describe()["nebula"]["damaged"][0] == "active.json"
    active.write_text('{"version": "../v1"}')
    with pytest.raises(RegistryDamaged):
        registry.active_version("nebula")
    active.unlink()
    assert registry.active_version("nebula") is None
    with pytest.raises(RegistryError, match="no active version"):
        registry.get("nebula")


def test_a_broken_version_reports_no_path_and_serves_once_restored(tmp_path: Path) -> None:
    from worker.engine import Engine, RequestError

    reg = Registry(tmp_path / "registry")
    reg.ensure_defaults()
    weights = reg.root / "balrog" / "versions" / "default" / "model.pt"
    weights.write_bytes(weights.read_bytes()[:1000])
    engine = Engine(reg.root, device="cpu")
    status = engine.status()
    assert status["ready"] and "balrog" in status["unavailable"]
    assert status["loaded"].get("nebula") == "default"
    with pytest.raises(RequestError) as exc:
        engine.get("balrog")
    assert exc.value.status == 503 and "cannot be read" in exc.value.detail
    assert str(tmp_path) not in exc.value.detail + json.dumps(status)
    shutil.copyfile(DEFAULT_WEIGHTS_DIR / "balrog.pt", weights)  # restored: no 60 s wait
    assert engine.get("balrog", active="default").version == "default"
    assert not engine.status()["unavailable"]
    assert engine.paces["emulator"] > 0 and engine.paces["image"] > 0


def test_emulation_in_passes_gives_the_numbers_of_one_pass(monkeypatch) -> None:
    from models.sampling import load_sampler
    from worker import engine

    em = load_sampler(DEFAULT_WEIGHTS_DIR / "balrog.pt", "cpu")
    rng = np.random.default_rng(0)
    x = np.array([list(ROW.values())]) + rng.normal(0, 0.3, (700, 9)) * [1, 1, 1, 1, 1, 1, 0, 0, 0]
    whole = engine.emulate_coalesced(em, [x, x[:50]], [2, 1], [5, 6])
    monkeypatch.setattr(engine, "PASS_ROWS", 128)
    sliced = engine.emulate_coalesced(em, [x, x[:50]], [2, 1], [5, 6])
    for a, b in zip(whole, sliced, strict=True):
        np.testing.assert_array_equal(a.mags, b.mags)
        np.testing.assert_array_equal(a.detected, b.detected)
    asked = []
    with pytest.raises(engine.Abandoned):  # nobody waits: stops after its first pass
        engine.emulate_coalesced(em, [x], [1], [5], lambda: asked.append(1) or True)
    assert asked == [1]


def test_event_ids_fit_redis_64_bit_parts() -> None:
    def ok(event_id: str) -> bool:
        return re.fullmatch(STREAM_ID, event_id) is not None

    top = 2**64 - 1
    assert ok(f"{top}-{top}") and ok("0") and ok("0-0") and ok("00012-3")
    assert ok(str(top - 1)) and ok("9" * 19) and ok("17" + "9" * 18)
    for bad in (top + 1, 2**65, 10**20, 99999999999999999999):
        assert not ok(str(bad)) and not ok(f"0-{bad}"), bad
    for n in range(0, 2000):  # every prefix rule near the limit
        assert ok(str(top - n * 7919)) and not ok(str(top + 1 + n * 7919))
    assert not ok("1-0\n") and not ok("-1") and not ok("1-") and not ok("a-1")


def test_proxy_headers_are_believed_only_from_configured_proxies() -> None:
    assert proxy_options("") == ["--no-proxy-headers"]
    assert "--no-proxy-headers" in api_command("127.0.0.1", 8000)
    assert proxy_options(" 10.0.0.1, 10.1.0.0/16 ") == [
        "--proxy-headers",
        "--forwarded-allow-ips",
        "10.0.0.1,10.1.0.0/16",
    ]


def test_docs_scripts_are_allowed_by_their_hash() -> None:
    html = "<script src='/x.js'></script><script>\nconst ui = 1;\n</script>"
    (digest,) = inline_script_hashes(html)
    assert digest.startswith("'sha256-") and digest in docs_csp([digest])
