"""The run scaffold's contract for every loop: one meaning of `epoch`, an honest metrics log,
one way to cancel, checkpoint, resume and fail."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from app.schemas import JobOut, JobProgress
from models.checkpoint import CheckpointError, load_checkpoint
from tests.catalogs import make_analytic_catalog
from training.presets import build_config
from training.progress import RECORD_FIELDS, ProgressEvent, Schedule, record_fields
from training.runner import run_training
from training.scaffold import MetricsLog, restore_rng, rng_state, use_deterministic_kernels

# Two epochs of two steps, then one step of a third epoch cut short by max_steps.
IMAGE = {"width": 4, "batch_size": 4, "n_critic": 2, "sample_count": 4, "checkpoint_every": 2}
EMULATOR = {
    "batch_size": 100,
    "n_critic": 2,
    "max_rows": 500,
    "detector_epochs": 1,
    "checkpoint_every": 2,
    "log_every": 1,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    for i in range(12):
        arr = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / "images" / f"img{i:02d}.png")
    return {
        "nebula": root / "images",
        "balrog": make_analytic_catalog(root / "catalog.parquet", 1200),
    }


def _config(preset: str, **overrides: Any) -> Any:
    return build_config(preset, {**(IMAGE if preset == "nebula" else EMULATOR), **overrides})


def _lines(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------------------------
# the schedule


def test_epoch_means_epochs_completed() -> None:
    s = Schedule.of(4, epochs=3)
    assert (s.total_steps, s.epochs) == (12, 3)
    assert [s.epoch(k) for k in (0, 1, 3, 4, 5, 8, 11, 12)] == [0, 0, 0, 1, 1, 2, 2, 3]
    assert [k for k in range(1, 13) if s.epoch_end(k)] == [4, 8, 12]


def test_a_run_cut_short_completes_its_last_epoch_at_its_last_step() -> None:
    s = Schedule.of(10, epochs=5, max_steps=6)  # a 6-step job inside a 10-step epoch
    assert (s.total_steps, s.epochs) == (6, 1)
    assert [s.epoch(k) for k in (0, 5, 6)] == [0, 0, 1]
    assert s.epoch_end(6) and not s.epoch_end(5) and s.done(6)
    dry = Schedule.of(0, epochs=25, dry_run_steps=2)
    assert (dry.steps_per_epoch, dry.total_steps, dry.epochs) == (1, 2, 2)


def test_the_api_declares_every_field_a_job_record_keeps() -> None:
    assert set(RECORD_FIELDS) <= set(JobProgress.model_fields)
    assert issubclass(JobOut, JobProgress)
    assert set(RECORD_FIELDS) <= set(ProgressEvent.__annotations__)
    event = {"event": "step", "epoch": 1, "epochs": 2, "step": 3, "total_steps": 4}
    event |= {"losses": {"g": 1.0}, "eta_s": 2.0, "samples": None, "metrics": {}}
    assert record_fields(event) == {k: event[k] for k in RECORD_FIELDS}
    assert record_fields({**event, "metrics": {"ks_mean": 0.1}})["metrics"] == {"ks_mean": 0.1}


# --------------------------------------------------------------------------------------------
# both families, through the one entry point


@pytest.mark.parametrize("preset", ["nebula", "balrog"])
def test_epoch_has_one_meaning_in_events_metrics_and_result(tmp_path, data, preset) -> None:
    events: list[ProgressEvent] = []
    result = run_training(
        _config(preset, max_steps=5), data[preset], tmp_path, progress=events.append
    )
    assert result["status"] == "succeeded" and result["step"] == 5
    gan = [e for e in events if e["step"] > 0]
    epoch_ends = sorted({e["step"] for e in gan if e["event"] == "epoch"})
    assert epoch_ends[-1] == 5 and len(epoch_ends) >= 2  # several epochs, the last cut short

    def completed(step: int) -> int:  # "epoch" events so far: the epochs completed
        return sum(1 for s in epoch_ends if s <= step)

    for e in gan:
        assert e["epoch"] == completed(e["step"]), e
        assert e["epochs"] == len(epoch_ends) and e["total_steps"] == 5
    for line in _lines(tmp_path):
        assert line["epoch"] == completed(line["step"]), line
    done = events[-1]
    assert done["event"] == "done"
    assert done["epoch"] == done["epochs"] == result["epoch"] == len(epoch_ends)


class Killed(BaseException):
    """Stands in for SIGKILL: the loop stops where it is, nothing is cleaned up."""


@pytest.mark.parametrize("preset", ["nebula", "balrog"])
@pytest.mark.parametrize("how", ["killed", "cancelled"])
def test_metrics_steps_strictly_increase_after_a_stop_and_resume(
    tmp_path, data, preset, how
) -> None:
    seen: list[int] = []

    def progress(event: ProgressEvent) -> None:
        seen.append(event["step"])
        # step 3 is logged, its checkpoint (every 2 steps) not yet written
        if how == "killed" and event["event"] == "step" and event["step"] == 3:
            raise Killed

    def should_stop() -> bool:
        return how == "cancelled" and bool(seen) and seen[-1] >= 3

    config = _config(preset, max_steps=6)
    try:
        first = run_training(
            config, data[preset], tmp_path, progress=progress, should_stop=should_stop
        )
        assert how == "cancelled" and first["status"] == "cancelled"
    except Killed:
        assert how == "killed"
    logged = [line["step"] for line in _lines(tmp_path)]
    assert 3 in logged  # the step after the last checkpoint was logged before the stop

    done = run_training(config, data[preset], tmp_path)
    assert done["status"] == "succeeded" and done["step"] == 6
    steps = [line["step"] for line in _lines(tmp_path)]
    assert steps == sorted(set(steps)), steps  # strictly increasing: nothing logged twice
    assert [s for s in steps if s > 0] == [1, 2, 3, 4, 5, 6]


def test_metrics_log_keeps_only_whole_lines_up_to_the_resumed_step(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path, None)
    for step in (1, 2, 3):
        log.write(step, 0, loss=float(step))
    with path.open("a") as f:
        f.write('{"step": 4, "lo')  # cut short by a kill
    MetricsLog(path, 2)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2]
    MetricsLog(path, None)  # a fresh run in a used folder starts an empty log
    assert path.read_text() == ""


def test_rng_states_come_back_also_from_the_earlier_emulator_layout() -> None:
    data = torch.Generator().manual_seed(5)
    saved = rng_state(torch.device("cpu"), data)
    expected = (torch.rand(3), torch.rand(3, generator=data))
    restore_rng({"rng": saved}, torch.device("cpu"), data)
    assert torch.equal(torch.rand(3), expected[0])
    assert torch.equal(torch.rand(3, generator=data), expected[1])
    legacy = {"rng_cpu": saved["torch"], "rng_cuda": None}  # checkpoints before "rng"
    restore_rng(legacy, torch.device("cpu"))
    assert torch.equal(torch.rand(3), expected[0])


def test_deterministic_kernels_are_asked_for_on_cuda_only(monkeypatch) -> None:
    cudnn = torch.backends.cudnn
    before = (
        cudnn.deterministic,
        cudnn.benchmark,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cudnn.deterministic, cudnn.benchmark = False, True
    try:
        use_deterministic_kernels(torch.device("cpu"), True)
        use_deterministic_kernels(torch.device("cuda"), False)
        assert (cudnn.deterministic, cudnn.benchmark) == (False, True)
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        use_deterministic_kernels(torch.device("cuda"), True)
        assert (cudnn.deterministic, cudnn.benchmark) == (True, False)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()  # warns, never fails a run
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        cudnn.deterministic, cudnn.benchmark = before[0], before[1]
        torch.use_deterministic_algorithms(before[2], warn_only=before[3])


# --------------------------------------------------------------------------------------------
# one loop convention: cancel, checkpoints, resume, a failed start

FLOW = {
    "batch_size": 100,
    "max_rows": 500,
    "hidden": 16,
    "transforms": 1,
    "detector_epochs": 1,
    "checkpoint_every": 2,
    "log_every": 1,
    "device": "cpu",
}
LOOPS = ["nebula", "balrog", "balrog-flow"]


def _loop_config(preset: str, **overrides: Any) -> Any:
    if preset == "balrog-flow":
        return build_config(preset, {**FLOW, **overrides})
    return _config(preset, **overrides)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("preset", LOOPS)
def test_every_loop_asks_to_stop_before_each_step_and_checkpoints_the_cancel(
    tmp_path, data, preset
) -> None:
    seen: list[int] = []
    asked_at: list[int] = []

    def should_stop() -> bool:
        asked_at.append(seen[-1] if seen else 0)
        return bool(seen) and seen[-1] >= 2

    config = _loop_config(preset, max_steps=6, checkpoint_every=100)
    data_path = data["nebula" if preset == "nebula" else "balrog"]
    result = run_training(
        config,
        data_path,
        tmp_path,
        progress=lambda e: seen.append(e["step"]),
        should_stop=should_stop,
    )
    assert result["status"] == "cancelled" and result["step"] == 2 and result["model"] is None
    assert asked_at[-3:] == [0, 1, 2]  # once before each generator step, the last one refused
    assert load_checkpoint(result["checkpoint"]).step == 2  # not on the every-100 schedule
    assert not (tmp_path / "model.pt").exists()
    assert run_training(config, data_path, tmp_path)["step"] == 6


@pytest.mark.parametrize("preset", ["balrog", "balrog-flow"])
def test_a_cancel_in_the_detector_phase_resumes_to_the_uninterrupted_result(
    tmp_path, data, preset
) -> None:
    config = _loop_config(preset, max_steps=4, detector_epochs=2)
    whole = run_training(config, data["balrog"], tmp_path / "whole")
    detector_epochs: list[int] = []

    def progress(event: ProgressEvent) -> None:
        detector_epochs.extend([1] if "detector_bce" in event["losses"] else [])

    cut = run_training(
        config,
        data["balrog"],
        tmp_path / "cut",
        progress=progress,
        should_stop=lambda: len(detector_epochs) == 1,  # during the detector's second epoch
    )
    assert cut["status"] == "cancelled" and cut["step"] == 0 and cut["model"] is None
    saved = load_checkpoint(cut["checkpoint"])
    assert saved.extra["detector_trained"] is False and saved.training_state is not None

    done = run_training(config, data["balrog"], tmp_path / "cut")
    assert done["status"] == "succeeded" and done["step"] == whole["step"]
    a, b = load_checkpoint(whole["model"]), load_checkpoint(done["model"])
    assert a.extra["calibration"] == b.extra["calibration"]
    for name, tensor in a.ema.items():
        assert torch.equal(tensor, b.ema[name]), name


@pytest.mark.parametrize("preset", LOOPS)
def test_a_resume_that_fails_changes_nothing_on_disk(tmp_path, data, preset) -> None:
    image = preset == "nebula"
    data_path = data["nebula" if image else "balrog"]
    run_training(_loop_config(preset, max_steps=2), data_path, tmp_path)
    before = _files(tmp_path)
    other = "balrog" if image else ("balrog-flow" if preset == "balrog" else "nebula")
    other_data = data["nebula" if other == "nebula" else "balrog"]
    with pytest.raises(CheckpointError, match="use another --out"):
        run_training(_loop_config(other, max_steps=4), other_data, tmp_path)
    with pytest.raises(FileNotFoundError):
        run_training(_loop_config(preset, max_steps=4), tmp_path / "gone", tmp_path)
    assert _files(tmp_path) == before


@pytest.mark.parametrize("preset", ["balrog", "balrog-flow"])
def test_the_emulator_loops_ask_for_deterministic_kernels(tmp_path, preset, monkeypatch) -> None:
    import training.emulator.flow
    import training.emulator.gan

    asked: list[bool] = []
    module = training.emulator.gan if preset == "balrog" else training.emulator.flow
    monkeypatch.setattr(module, "use_deterministic_kernels", lambda d, on: asked.append(on))
    for deterministic in (True, False):
        config = _loop_config(preset, dry_run=True, deterministic=deterministic)
        run_training(config, None, tmp_path / str(deterministic))
    assert asked == [True, False]
