"""The emulator training loop: dry run, progress, checkpoints, exact resume, cancel, physics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint
from models.emulator import Generator
from models.emulator_sampler import EmulatorSampler
from training.emulator.data import load_emulator_catalog
from training.emulator.gan import decayed_lr, generators_of, train_emulator_gan
from training.presets import build_config

torch.set_num_threads(1)


def _config(**overrides):
    base = {"detector_epochs": 2, "checkpoint_every": 2, "log_every": 1, "device": "cpu"}
    return build_config("balrog", {**base, **overrides})


def test_dry_run_writes_a_loadable_model_and_reports_progress(tmp_path):
    events = []
    result = train_emulator_gan(
        build_config("balrog", {"dry_run": True, "device": "cpu"}),
        None,
        tmp_path / "run",
        progress=events.append,
    )
    assert result["status"] == "succeeded" and result["step"] == 2
    model = load_checkpoint(result["model"])  # weights_only=True inside
    assert model.kind == "cwgan-gp" and model.training_state is None
    assert set(model.preprocessing) >= {"true_mean", "cond_std", "delta_mean", "delta_std"}
    assert all(isinstance(v, float) for v in model.preprocessing["delta_std"])
    # the detector's own probabilities by default: no Platt scaling fitted on the val split
    assert "detector" in model.extra and "val_ece" in model.extra["calibration"]
    assert "platt_a" not in model.extra["calibration"]
    assert float(model.extra["detector"]["platt_a"]) == 1.0
    assert float(model.extra["detector"]["platt_b"]) == 0.0
    full = load_checkpoint(result["checkpoint"])
    assert set(full.training_state) >= {"members", "rng"}
    members = full.training_state["members"]  # the preset's three generators, each its own
    assert len(members) == 3 and model.config["members"] == 3
    for state in members:
        assert set(state) >= {"generator", "critic", "opt_g", "opt_c", "ema", "best_epoch"}
    gan_events = [e for e in events if e["event"] == "step" and "critic" in e["losses"]]
    assert [e["step"] for e in gan_events] == [1, 2]
    assert events[-1]["event"] == "done"
    for e in events:
        assert set(e) >= {"event", "epoch", "epochs", "step", "total_steps", "losses", "eta_s"}
        assert set(e) >= {"samples", "metrics"}
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert any(json.loads(line).get("step") == 2 for line in lines)


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
        ),
    ],
)
def test_resume_continues_exactly(tmp_path, catalog, device):
    def config(steps: int):
        return _config(max_steps=steps, device=device)

    straight = train_emulator_gan(config(6), catalog, tmp_path / "a", resume=False)
    seen: list[int] = []  # stopped after step 3 of the same 6-step schedule (learning rates)
    first = train_emulator_gan(
        config(6),
        catalog,
        tmp_path / "b",
        resume=False,
        progress=lambda event: seen.append(event["step"]),
        should_stop=lambda: bool(seen) and seen[-1] >= 3,
    )
    assert first["status"] == "cancelled" and first["step"] == 3
    second = train_emulator_gan(config(6), catalog, tmp_path / "b", resume=True)
    assert second["step"] == 6
    a, b = load_checkpoint(straight["model"]), load_checkpoint(second["model"])
    for name, tensor in a.ema.items():
        torch.testing.assert_close(tensor, b.ema[name], rtol=0, atol=1e-6)
    steps = [json.loads(s)["step"] for s in (tmp_path / "b" / "metrics.jsonl").open()]
    assert steps == [0, 1, 2, 3, 4, 5, 6]  # the detector's line, then each generator step


def test_learning_rates_fall_to_zero_over_the_second_half():
    assert [decayed_lr(1.0, s, 4, 8) for s in range(9)] == [1, 1, 1, 1, 1, 0.75, 0.5, 0.25, 0]
    assert decayed_lr(1.0, 5, 4, 4) == 1.0  # nothing left to decay over


@pytest.mark.parametrize("decay", [True, False])
def test_the_run_decays_both_learning_rates_unless_told_not_to(tmp_path, catalog, decay):
    config = _config(max_steps=8, batch_size=1000, lr_decay=decay)
    result = train_emulator_gan(config, catalog, tmp_path / "run")
    states = load_checkpoint(result["checkpoint"]).training_state["members"]
    (rate,) = {s[k]["param_groups"][0]["lr"] for s in states for k in ("opt_g", "opt_c")}
    # the last step (0-based 7) of 8 ran at 1/(8 − start) of the rate, start ≤ 4 (half)
    assert rate <= config.lr / 4 if decay else rate == config.lr


@pytest.mark.parametrize("given", [True, False])
def test_a_generator_given_the_detectors_logit_trains_and_serves_with_it(tmp_path, catalog, given):
    config = _config(max_steps=4, batch_size=1000, detection_input=given)
    result = train_emulator_gan(config, catalog, tmp_path / "run")
    assert result["status"] == "succeeded"
    assert load_checkpoint(result["model"]).config["detection_input"] is given
    sampler = EmulatorSampler.load(result["model"], device="cpu")
    for generator in generators_of(sampler.generator):
        assert generator.cond.net[0].in_features == (7 if given else 6)
    x = load_emulator_catalog(catalog)["test"].x
    noise, uniforms = sampler.draws(len(x), 1, seed=3)
    every = torch.zeros_like(uniforms)  # every row detected, whatever its probability
    before = sampler.sample_outputs(x, noise, every)
    with torch.no_grad():
        sampler.detector.platt_b.fill_(2.0)  # the same objects, judged easier to detect
    after = sampler.sample_outputs(x, noise, every)
    assert before.detected.all() and after.detected.all()
    # the generator's draws move with the logit it is given, and only then
    assert np.allclose(before.mags, after.mags) is not given


def test_cancel_checkpoints_and_resume_finishes(tmp_path, catalog):
    seen = []

    def progress(event):
        seen.append(event["step"])

    result = train_emulator_gan(
        _config(max_steps=8, checkpoint_every=100),
        catalog,
        tmp_path / "run",
        progress=progress,
        should_stop=lambda: bool(seen) and seen[-1] >= 3,
    )
    assert result["status"] == "cancelled" and result["step"] == 3 and result["model"] is None
    assert load_checkpoint(result["checkpoint"]).step == 3
    assert not (tmp_path / "run" / "model.pt").exists()
    done = train_emulator_gan(_config(max_steps=8), catalog, tmp_path / "run")
    assert done["status"] == "succeeded" and done["step"] == 8


def test_unreadable_catalog_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("true_mag_r,true_mag_i\n20,21\n")
    with pytest.raises(ValueError, match="missing columns"):
        train_emulator_gan(_config(), bad, tmp_path / "run")
    with pytest.raises(FileNotFoundError):
        train_emulator_gan(_config(), tmp_path / "nope.parquet", tmp_path / "run2")


def test_one_member_trains_and_serves_a_single_generator(tmp_path, catalog):
    result = train_emulator_gan(_config(max_steps=3, members=1), catalog, tmp_path / "run")
    full = load_checkpoint(result["checkpoint"])
    # the training state of one generator sits where it did before mixtures, so old runs resume
    assert "members" not in full.training_state and full.config["members"] == 1
    assert set(full.training_state) >= {"generator", "critic", "opt_g", "opt_c", "ema", "rng"}
    sampler = EmulatorSampler.load(result["model"], device="cpu")
    assert type(sampler.generator) is Generator and sampler.noise_dim == 8
    mixture = EmulatorSampler.load(
        train_emulator_gan(_config(max_steps=3), catalog, tmp_path / "mix")["model"], device="cpu"
    )
    assert len(generators_of(mixture.generator)) == 3 and mixture.noise_dim == 9
    x = load_emulator_catalog(catalog)["test"].x
    rows = mixture.emulate(x, seed=4)
    assert rows.detected.any() and np.isfinite(rows.mags[rows.detected]).all()
