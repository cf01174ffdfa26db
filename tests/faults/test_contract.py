"""The OpenAPI document against the real service: a bounded Schemathesis run over every
operation (examples, coverage, fuzzing with positive and negative data, stateful links)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.faults.conftest import FaultService, running_service

CONFIG = Path(__file__).with_name("schemathesis.toml")
BUDGET_S = 60


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultService]:
    with running_service(tmp_path_factory.mktemp("contract")) as service:
        yield service


def schemathesis(svc: FaultService, *selection: str, budget_s: int = BUDGET_S) -> str:
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
    cmd = [
        st,
        "--config-file",
        str(CONFIG),
        "run",
        f"{svc.base_url}/openapi.json",
        "-H",
        f"Authorization: Bearer {svc.auth['Authorization'].split()[1]}",
        "--max-examples",
        "15",
        "--max-time",
        str(budget_s),
        "--seed",
        "1",
        "--request-timeout",
        "30",
        "--no-color",
        *selection,
    ]
    with tempfile.TemporaryDirectory() as cwd:  # its crash cache goes there, not in the tree
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=budget_s + 120, cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    print(*re.findall(r"\d+ generated.*", proc.stdout))
    return proc.stdout


def test_the_document_describes_errors_as_the_server_sends_them(svc: FaultService) -> None:
    doc = httpx.get(f"{svc.base_url}/openapi.json").json()
    assert "HTTPValidationError" not in str(doc)
    create = doc["paths"]["/train"]["post"]["responses"]
    assert {"202", "400", "401", "403", "404", "409", "413", "422", "503"} <= set(create)
    assert create["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut")
    n = next(p for p in doc["paths"]["/generate"]["get"]["parameters"] if p["name"] == "n")
    assert n["schema"]["maximum"] == 64  # COSMOGAN_MAX_GENERATE_N
    r = httpx.request("PUT", f"{svc.base_url}/train/{'0' * 32}")
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET"


def test_schemathesis_finds_no_server_error_and_no_mismatch(svc: FaultService) -> None:
    # POST /datasets starts real simulator builds: tests/integration/test_datasets.py
    out = schemathesis(svc, "--exclude-name", "POST /emulate", "--exclude-name", "POST /datasets")
    doc = httpx.get(f"{svc.base_url}/openapi.json").json()
    operations = sum(len(ops) for ops in doc["paths"].values()) - 2  # all but those two
    assert f"Tested: {operations}" in out.replace("  ", " "), out[-3000:]


def test_schemathesis_on_emulate(svc: FaultService) -> None:
    # one operation and no links: the stateful phase has nothing to run
    schemathesis(
        svc, "--include-name", "POST /emulate", "--phases", "examples,coverage,fuzzing", budget_s=30
    )
