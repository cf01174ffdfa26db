"""The distilled flow (`balrog-fast`): the student learns the flow's sampling map, is served
like any emulator, and a run cancelled while distilling resumes to the same weights."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from models.checkpoint import load_checkpoint, save_checkpoint
from models.columns import INPUTS
from models.emulator_sampler import EmulatorSampler
from models.flow import FlowConfig, FlowStudent, OffsetFlow
from models.kinds import EMULATOR, family_of
from training.emulator.flow import train_emulator_flow
from training.presets import PRESETS, FlowTrainConfig

torch.set_num_threads(1)

SMALL = dict(
    hidden=32,
    transforms=2,
    detector_epochs=2,
    device="cpu",
    batch_size=256,
    student_hidden=64,
    distill_rows=20_000,
    distill_batch_size=256,
)
FAST = replace(PRESETS["balrog-fast"], epochs=3, distill_steps=600, **SMALL)


@pytest.fixture(scope="module")
def run(catalog, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fast")
    train_emulator_flow(FAST, catalog, folder)
    return folder


def test_the_preset_is_an_emulator_of_its_own_kind():
    assert isinstance(PRESETS["balrog-fast"], FlowTrainConfig)
    assert PRESETS["balrog-fast"].kind == "cflow-distilled"
    assert family_of("cflow-distilled") == EMULATOR


def _teacher(run: Path) -> OffsetFlow:
    full = load_checkpoint(run / "checkpoints" / "last.pt")
    teacher = OffsetFlow(FlowConfig.from_dict(full.config)).eval()
    teacher.load_state_dict(full.training_state["best_flow"])
    return teacher


def test_the_student_reproduces_the_flows_samples(run, catalog):
    ckpt = load_checkpoint(run / "model.pt")  # weights only
    assert ckpt.kind == "cflow-distilled" and ckpt.training_state is None
    assert ckpt.extra["metrics"]["distill_val_mse"] < 0.5
    em = EmulatorSampler.load(run / "model.pt", device="cpu")
    assert isinstance(em.generator, FlowStudent) and em.emulates_errors

    # the same noise through the teacher, the trained student and an untrained one
    teacher, fresh = _teacher(run), FlowStudent(em.generator.cfg).eval()
    x = pd.read_parquet(catalog)[list(INPUTS)].to_numpy(np.float32)[:2000].copy()
    cond, true = em.scalers.split_inputs(torch.from_numpy(x))
    z = torch.randn(len(x), 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = teacher(z, cond, true)
        err = (em.generator(z, cond, true) - want).square().mean()
        err_fresh = (fresh(z, cond, true) - want).square().mean()
    assert err < 0.25 * err_fresh, (err, err_fresh)

    rows = em.emulate(x, 1, seed=3)
    det = rows.detected
    assert 0.3 < det.mean() < 0.95
    assert np.isfinite(rows.mags[det]).all() and (rows.magerr[det] > 0).all()


def test_cancel_while_distilling_and_resume_equals_an_uninterrupted_run(run, catalog, tmp_path):
    seen = {"distill": 0}

    def progress(event) -> None:
        seen["distill"] = event["metrics"].get("distill_step", 0)

    def stop() -> bool:
        return seen["distill"] >= 300

    cut = tmp_path / "cut"
    first = train_emulator_flow(FAST, catalog, cut, progress=progress, should_stop=stop)
    assert first["status"] == "cancelled"
    assert load_checkpoint(cut / "checkpoints" / "last.pt").training_state["phase"] == ("distill")
    done = train_emulator_flow(FAST, catalog, cut)
    assert done["status"] == "succeeded"
    a, b = load_checkpoint(run / "model.pt").ema, load_checkpoint(done["model"]).ema
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_given_teacher_is_distilled_without_training_a_flow(run, catalog, tmp_path):
    teacher = load_checkpoint(run / "checkpoints" / "last.pt").inference_only()
    teacher.kind, teacher.ema = "cflow", teacher_state(run)
    save_checkpoint(teacher, tmp_path / "flow.pt")
    cfg = replace(FAST, teacher=str(tmp_path / "flow.pt"), distill_steps=200)
    done = train_emulator_flow(cfg, catalog, tmp_path / "run")
    assert done["status"] == "succeeded"
    model = load_checkpoint(done["model"])
    assert model.kind == "cflow-distilled" and model.extra["metrics"]["teacher"] == cfg.teacher
    for k, v in teacher.extra["detector"].items():  # the teacher's detector, not a new one
        assert torch.equal(model.extra["detector"][k], v), k
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert lines and not any('"nll"' in line for line in lines)  # no flow step ran

    with pytest.raises(ValueError, match="only a flow"):
        train_emulator_flow(replace(cfg, teacher=done["model"]), catalog, tmp_path / "again")


def teacher_state(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / "last.pt").training_state["best_flow"]


def test_a_teacher_named_as_a_model_is_read_from_the_registry(home):
    from training.emulator.distill import load_teacher

    flow = load_teacher("balrog-flow@default")  # a fresh home knows the shipped flow
    assert flow.kind == "cflow"
    with pytest.raises(ValueError, match="only a flow"):
        load_teacher("balrog")  # the shipped default is itself a student
