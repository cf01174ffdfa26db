"""The checkpoint format: round trip, atomic writes, clear errors for foreign files."""

from __future__ import annotations

import pickle

import pytest
import torch

from models.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint


def _ckpt(**kw) -> Checkpoint:
    base = dict(
        kind="wgan-gp-128",
        config={"latent_dim": 8, "width": 4},
        preprocessing={"image_size": 128, "mean": [0.5] * 3, "std": [0.5] * 3, "stretch": "asinh"},
        ema={"w": torch.arange(6.0).reshape(2, 3)},
        step=7,
        epoch=2,
        extra={"preset": "nebula", "latent_dim": 8},
        training_state={
            "opt": {"state": {0: {"step": torch.tensor(3.0)}}, "betas": (0.0, 0.9)},
            "rng": torch.get_rng_state(),
            "losses": {"critic": -1.5},
        },
    )
    base.update(kw)
    return Checkpoint(**base)


def test_round_trip(tmp_path):
    path = save_checkpoint(_ckpt(), tmp_path / "c" / "last.pt")
    back = load_checkpoint(path)
    assert back.kind == "wgan-gp-128" and back.step == 7 and back.epoch == 2
    assert back.config == {"latent_dim": 8, "width": 4}
    assert torch.equal(back.ema["w"], torch.arange(6.0).reshape(2, 3))
    assert back.training_state["losses"] == {"critic": -1.5}
    assert back.training_state["rng"].dtype == torch.uint8
    assert back.training_state["opt"]["state"][0]["step"].item() == 3.0
    assert back.training_state["opt"]["betas"] == (0.0, 0.9)


def test_inference_only_drops_training_state(tmp_path):
    path = save_checkpoint(_ckpt().inference_only(), tmp_path / "model.pt")
    back = load_checkpoint(path)
    assert back.training_state is None and torch.equal(back.ema["w"], _ckpt().ema["w"])


def test_save_leaves_no_temp_file_and_replaces_atomically(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(_ckpt(step=1), path)
    save_checkpoint(_ckpt(step=2), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert load_checkpoint(path).step == 2


def test_failed_save_keeps_old_file_and_no_temp(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(_ckpt(step=1), path)

    class Unpicklable:
        def __reduce__(self):
            raise pickle.PicklingError("nope")

    with pytest.raises(Exception, match="nope"):
        save_checkpoint(_ckpt(extra={"bad": Unpicklable()}), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert load_checkpoint(path).step == 1


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_truncated_file(tmp_path):
    path = save_checkpoint(_ckpt(), tmp_path / "last.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_text_file(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello, not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_plain_torch_dict_is_foreign(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"weight": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match="not a cosmogan checkpoint"):
        load_checkpoint(path)


class Foreign:
    """An arbitrary class: `weights_only=True` must refuse to rebuild it."""


def test_pickled_object_is_refused_by_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"cosmogan_checkpoint": True, "format_version": 1, "obj": Foreign()}, path)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_newer_format_and_unknown_kind(tmp_path):
    path = save_checkpoint(_ckpt(format_version=99), tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(path)
    path = save_checkpoint(_ckpt(kind="vae"), tmp_path / "kind.pt")
    with pytest.raises(CheckpointError, match="unknown model kind 'vae'"):
        load_checkpoint(path)
