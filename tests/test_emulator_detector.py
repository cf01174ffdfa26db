"""The detection classifier: its own probabilities by default, Platt scaling on request, and
`cosmogan retrain-detector`, which refits it on a trained model and keeps the rest."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint, save_checkpoint
from models.emulator import Detector, EmulatorConfig
from models.emulator_sampler import EmulatorSampler
from tests.conftest import cosmogan_home
from training.emulator import balrog
from training.emulator.data import fit_scalers, load_emulator_catalog
from training.emulator.detector import train_detector
from training.emulator.redetect import retrain_detector

ROWS = 4000


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """An analytic catalog, and a cWGAN-GP trained a few steps on it (detector: 1 epoch)."""
    from training.emulator.gan import train_emulator_gan
    from training.presets import build_config

    with cosmogan_home(tmp_path_factory.mktemp("home")) as home:
        kw = dict(rows=ROWS, simulator="analytic", seed=3, workers=1, progress=False)
        path = balrog.build_catalog(home / "a.parquet", **kw)["path"]
        config = build_config(
            "balrog",
            {"detector_epochs": 1, "device": "cpu", "max_steps": 2, "batch_size": 1000},
        )
        # a generator that does not take the detector's logit (which could not be refitted)
        config = replace(config, detection_input=False)
        model = train_emulator_gan(config, path, home / "run")["model"]
        yield path, model


def _fit(path, **settings):
    splits = load_emulator_catalog(path)
    scalers = fit_scalers(splits["train"], log_conditions=True)
    config = SimpleNamespace(
        detector_epochs=3, detector_batch_size=512, detector_lr=1e-3, seed=0, dry_run=False,
        **settings,
    )  # fmt: skip
    torch.manual_seed(0)
    detector = Detector(EmulatorConfig())
    events = []
    calibration = train_detector(
        detector, scalers, splits["train"], splits["val"], config, torch.device("cpu"),
        report=lambda *a, **k: events.append(k), step=0, stopped=lambda: False,
    )  # fmt: skip
    return detector, calibration, events


def test_the_detector_keeps_its_own_probabilities_unless_platt_is_asked_for(catalog):
    path, _ = catalog
    detector, calibration, events = _fit(path)
    assert (float(detector.platt_a), float(detector.platt_b)) == (1.0, 0.0)
    assert "platt_a" not in calibration and 0 <= calibration["val_ece"] < 0.2
    # every epoch reports its validation BCE beside the training BCE
    assert len(events) == 3 and all(e["losses"]["detector_val_bce"] > 0 for e in events)

    platt, calibration, _ = _fit(path, detector_platt=True)
    assert calibration["platt_a"] == pytest.approx(float(platt.platt_a))
    assert (float(platt.platt_a), float(platt.platt_b)) != (1.0, 0.0)
    assert {"val_ece_raw", "val_brier_raw"} <= set(calibration)


def test_retrain_detector_refits_the_detector_and_keeps_the_generator(catalog, tmp_path):
    path, model = catalog
    out = tmp_path / "redetected.pt"
    calibration = retrain_detector(model, path, out, overrides={"detector_epochs": 2})
    before, after = load_checkpoint(model), load_checkpoint(out)
    assert after.kind == before.kind and after.step == before.step
    for k, v in before.ema.items():  # the generator is untouched
        assert torch.equal(after.ema[k], v)
    changed = [
        k for k, v in before.extra["detector"].items()
        if not torch.equal(after.extra["detector"][k], v)
    ]  # fmt: skip
    assert any(k.startswith("net.") for k in changed)
    assert after.extra["calibration"] == calibration
    assert after.extra["train_config"]["detector_epochs"] == 2
    assert after.extra["train_config"]["detector_platt"] is False
    assert after.training_state is None
    # the metrics keep the run's figures, and only the new detector's calibration
    assert after.extra["metrics"]["val_ece"] == calibration["val_ece"]
    assert "platt_a" not in after.extra["metrics"]
    # the new file serves, and its detection is the new detector's
    x = load_emulator_catalog(path)["test"].x
    p = EmulatorSampler.load(out, device="cpu").detection_probability(x)
    assert p.shape == (len(x),) and np.all((p >= 0) & (p <= 1))
    assert not np.allclose(p, EmulatorSampler.load(model, device="cpu").detection_probability(x))


def test_retrain_detector_refuses_what_it_cannot_do(catalog, tmp_path):
    path, model = catalog
    with pytest.raises(ValueError, match="not detector settings: lr"):
        retrain_detector(model, path, tmp_path / "x.pt", overrides={"lr": 1.0})
    assert not (tmp_path / "x.pt").exists()
    with pytest.raises(ValueError, match="detector_epochs"):  # a PresetError: checked values
        retrain_detector(model, path, tmp_path / "x.pt", overrides={"detector_epochs": "many"})
    assert not (tmp_path / "x.pt").exists()
    with pytest.raises(ValueError, match="not an emulator"):
        retrain_detector("models/weights/nebula.pt", path, tmp_path / "y.pt")
    assert not (tmp_path / "y.pt").exists()
    # a generator trained on its detector's logit needs that detector
    given = load_checkpoint(model)
    given.config["detection_input"] = True
    save_checkpoint(given, tmp_path / "given.pt")
    with pytest.raises(ValueError, match="takes its detector's logit as an input"):
        retrain_detector(tmp_path / "given.pt", path, tmp_path / "z.pt")
    assert not (tmp_path / "z.pt").exists()


def test_the_command(catalog, tmp_path, capsys):
    from launcher.cli import main

    path, model = catalog
    out = tmp_path / "cli.pt"
    code = main(
        ["retrain-detector", "--checkpoint", str(model), "--data", str(path), "--out", str(out),
         "--set", "detector_epochs=1"]
    )  # fmt: skip
    assert code == 0 and out.is_file()
    printed = json.loads(capsys.readouterr().out)
    assert printed["checkpoint"] == str(out) and "val_ece" in printed["calibration"]
    assert main(["retrain-detector", "--checkpoint", str(model), "--data", str(path),
                 "--out", str(out), "--set", "epochs=3"]) == 2  # fmt: skip
    assert "not detector settings: epochs" in capsys.readouterr().err
