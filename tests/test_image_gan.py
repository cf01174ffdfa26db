"""The image-GAN training loop (dry run, resume, cancel) and deterministic PNG sampling."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from models import image_format
from models.checkpoint import CheckpointError, load_checkpoint
from models.image_sampler import ImageSampler, generate_png
from training.image.gan import train_image_gan
from training.image.metrics import evaluate_image_generator
from training.presets import build_config

TINY = {"width": 4, "batch_size": 4, "n_critic": 2, "sample_count": 4, "checkpoint_every": 2}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    root.mkdir()
    for i in range(12):
        arr = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / f"img{i:02d}.png")
    return root


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def _steps(run) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_dry_run_writes_checkpoint_samples_metrics_and_model(tmp_path):
    events = []
    config = build_config("nebula", {**TINY, "dry_run": True})
    result = train_image_gan(config, None, tmp_path / "run", progress=events.append)
    run = tmp_path / "run"
    assert result["status"] == "succeeded" and result["step"] == 2
    assert "figures" not in result["metrics"]  # a dry run is not evaluated
    assert _steps(run) == [1, 2]
    assert (run / "samples" / "epoch_0001.png").is_file()
    with Image.open(run / "samples" / "epoch_0001.png") as im:
        assert im.size == (2 * 130 + 2, 2 * 130 + 2)  # 2×2 grid of 128² with 2-px padding
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt.kind == "wgan-gp-128" and ckpt.step == 2 and ckpt.training_state is not None
    assert ckpt.preprocessing == {
        "image_size": 128,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "stretch": "asinh",
    }
    assert ckpt.extra["preset"] == "nebula" and ckpt.extra["latent_dim"] == 128
    model = load_checkpoint(result["model"])
    assert model.training_state is None and model.ema.keys() == ckpt.ema.keys()
    assert json.loads((run / "config.json").read_text())["width"] == 4
    # progress: every step reported, torch-free and JSON-able
    kinds = [e["event"] for e in events]
    assert kinds.count("step") == 2 and kinds[-1] == "done"
    json.dumps(events)
    step = next(e for e in events if e["event"] == "step")
    assert set(step) == {
        "event",
        "epoch",
        "epochs",
        "step",
        "total_steps",
        "losses",
        "eta_s",
        "samples",
        "metrics",
    }
    assert set(step["losses"]) == {"critic", "gp", "wasserstein", "generator"}
    assert events[-1]["samples"] == "samples/epoch_0002.png"


def test_dcgan_dry_run(tmp_path):
    config = build_config("nebula-dcgan", {**TINY, "dry_run": True})
    result = train_image_gan(config, None, tmp_path / "run")
    assert result["status"] == "succeeded"
    assert set(result["metrics"]["losses"]) == {"discriminator", "generator", "d_real", "d_fake"}
    assert ImageSampler.load(result["model"]).images(torch.zeros(1, 100)).shape == (1, 3, 64, 64)


@pytest.mark.parametrize(
    ("device", "recipe"),
    [
        ("cpu", {}),
        pytest.param("cuda", {}, marks=CUDA),
        pytest.param("cuda", {"diffaugment": True}, marks=CUDA, id="cuda-diffaugment"),
    ],
)
def test_resume_continues_exactly(tmp_path, folder, device, recipe):
    tiny = {**TINY, **recipe, "device": device}
    # an uninterrupted 5-step run ...
    straight = train_image_gan(
        build_config("nebula", {**tiny, "max_steps": 5}), folder, tmp_path / "a"
    )
    # ... and the same run stopped after 3 steps, then resumed to 5
    first = train_image_gan(
        build_config("nebula", {**tiny, "max_steps": 3}), folder, tmp_path / "b"
    )
    assert first["step"] == 3
    before = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    # lines a killed process wrote after its last checkpoint, the last one cut short
    with (tmp_path / "b" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "critic": 0.0}\n{"step": 5, "cri')
    resumed_events = []
    second = train_image_gan(
        build_config("nebula", {**tiny, "max_steps": 5}),
        folder,
        tmp_path / "b",
        progress=resumed_events.append,
    )
    assert second["step"] == 5 and second["status"] == "succeeded"
    assert [e["step"] for e in resumed_events if e["event"] == "step"] == [4, 5]
    assert _steps(tmp_path / "b") == [1, 2, 3, 4, 5]
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    # optimizer, networks, EMA and data order were all restored: bit-identical to no break
    adam_steps = [s["step"].item() for s in b.training_state["opt_d"]["state"].values()]
    assert set(adam_steps) == {5 * TINY["n_critic"]}
    assert before.training_state["opt_d"]["state"][0]["step"].item() == 3 * TINY["n_critic"]
    for key, value in a.ema.items():
        assert torch.equal(value, b.ema[key]), key
    for key, value in a.training_state["critic"].items():
        assert torch.equal(value, b.training_state["critic"][key]), key
    assert straight["metrics"]["losses"] == second["metrics"]["losses"]


@pytest.mark.parametrize("device", DEVICES)
def test_two_runs_give_the_same_bits(tmp_path, folder, device):
    # what exact resume rests on: no kernel whose result changes from run to run
    config = build_config("nebula", {**TINY, "max_steps": 3, "device": device})
    a = train_image_gan(config, folder, tmp_path / "a")
    b = train_image_gan(config, folder, tmp_path / "b", resume=False)
    ema_a, ema_b = load_checkpoint(a["model"]).ema, load_checkpoint(b["model"]).ema
    for key, value in ema_a.items():
        assert torch.equal(value, ema_b[key]), key
    assert a["metrics"]["losses"] == b["metrics"]["losses"]


def test_a_finished_run_has_completed_its_epochs(tmp_path, folder):
    # one configured epoch of 11 generator steps, cut to 6 by max_steps
    events = []
    overrides = {**TINY, "batch_size": 1, "n_critic": 1, "epochs": 1, "max_steps": 6}
    result = train_image_gan(
        build_config("nebula", overrides), folder, tmp_path / "e", progress=events.append
    )
    assert result["status"] == "succeeded" and result["step"] == 6
    assert result["epoch"] == 1 and events[-1]["event"] == "done"
    assert events[-1]["epoch"] == events[-1]["epochs"] == 1
    assert [e["epoch"] for e in events if e["event"] == "step"] == [0, 0, 0, 0, 0, 1]
    lines = [json.loads(x) for x in (tmp_path / "e" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 0, 0, 0, 0, 1]
    assert load_checkpoint(result["model"]).epoch == 1
    assert "figures" not in result["metrics"]  # 1 held-out image says nothing: not evaluated


def test_a_finished_run_records_its_figures_against_the_real_floor(tmp_path):
    rng = np.random.default_rng(1)
    data = tmp_path / "images"
    data.mkdir()
    for i in range(16):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(data / f"{i}.png")
    overrides = {"width": 8, "batch_size": 4, "sample_count": 4, "max_steps": 2}
    overrides |= {"heldout_fraction": 0.3, "eval_images": 64}  # more than the training images
    events = []
    result = train_image_gan(
        build_config("nebula-dcgan", overrides), data, tmp_path / "run", progress=events.append
    )
    m = result["metrics"]
    assert set(m["figures"]) >= {"swd_avg", "psd", "color"} and set(m["floor"]) == set(m["figures"])
    assert m["ratio"]["psd"] == pytest.approx(m["figures"]["psd"] / m["floor"]["psd"])
    assert m["ratio"]["psd"] > 2  # two steps from noise are far from the photographs' floor
    held = m["evaluated_on"]["heldout_images"]
    assert held >= 4 and m["evaluated_on"]["images"] == 16 - held == m["images"]
    assert events[-1]["event"] == "done" and events[-1]["metrics"]["ratio"] == m["ratio"]
    # with every training image, the same figures as `cosmogan evaluate` gives
    report = evaluate_image_generator(result["model"], data, seed=0, device="cpu")
    assert report["generated_vs_heldout"] == m["figures"]
    assert report["real_vs_real_floor"] == m["floor"]


def test_resume_refuses_a_different_network(tmp_path, folder):
    train_image_gan(build_config("nebula", {**TINY, "max_steps": 1}), folder, tmp_path / "r")
    with pytest.raises(CheckpointError, match="use another --out"):
        train_image_gan(
            build_config("nebula", {**TINY, "max_steps": 2, "width": 8}), folder, tmp_path / "r"
        )


def test_cancel_writes_checkpoint_and_returns_cancelled(tmp_path, folder):
    calls = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) > 2  # let two steps run, then cancel

    config = build_config("nebula", {**TINY, "max_steps": 50, "checkpoint_every": 1000})
    result = train_image_gan(config, folder, tmp_path / "c", should_stop=should_stop)
    assert result["status"] == "cancelled" and result["step"] == 2 and result["model"] is None
    assert load_checkpoint(result["checkpoint"]).step == 2
    assert not (tmp_path / "c" / "model.pt").exists()


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no image folder"):
        train_image_gan(build_config("nebula", TINY), None, tmp_path / "x")


# --------------------------------------------------------------------------------------------
# sampling
@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    config = build_config("nebula", {**TINY, "dry_run": True})
    return train_image_gan(config, None, out / "run")["model"]


def test_same_seed_gives_identical_png_bytes(model_path):
    a = generate_png(model_path, seed=7, n=5)
    b = generate_png(model_path, seed=7, n=5)
    c = generate_png(model_path, seed=8, n=5)
    assert a == b and a != c
    assert a.startswith(b"\x89PNG") and b"tIME" not in a and b"tEXt" not in a


def test_pixels_do_not_depend_on_the_rest_of_the_batch(model_path):
    sampler = ImageSampler.load(model_path)
    assert sampler.micro_batch == image_format.micro_batch("cpu") > 1  # padding is exercised
    z = sampler.latents(3, 11)
    full = sampler.images(z)
    assert full.dtype == torch.uint8 and full.shape == (11, 3, 128, 128)
    assert torch.equal(full[:4], sampler.images(z[:4]))
    assert torch.equal(full[5:6], sampler.images(z[5:6]))
    mixed = torch.cat([sampler.latents(99, 3), z[7:9]])
    assert torch.equal(full[7:9], sampler.images(mixed)[3:])


def test_latents_come_from_a_seeded_cpu_generator(model_path):
    sampler = ImageSampler.load(model_path)
    z = sampler.latents(5, 4)
    expected = torch.randn(4, 128, generator=torch.Generator().manual_seed(5))
    assert z.device.type == "cpu" and torch.equal(z, expected)
    assert torch.equal(sampler.latents(5, 2), z[:2])
    with pytest.raises(ValueError, match="n must be at least 1"):
        sampler.latents(5, 0)
    assert len(sampler.version_tag) == 16


def test_sampler_rejects_non_image_checkpoints(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"a": 1}, path)
    with pytest.raises(CheckpointError):
        ImageSampler.load(path)


def test_fresh_run_in_a_used_folder_starts_over(tmp_path, folder):
    train_image_gan(build_config("nebula", {**TINY, "max_steps": 2}), folder, tmp_path / "f")
    result = train_image_gan(
        build_config("nebula", {**TINY, "max_steps": 1}), folder, tmp_path / "f", resume=False
    )
    assert result["step"] == 1 and _steps(tmp_path / "f") == [1]
    assert load_checkpoint(tmp_path / "f" / "checkpoints" / "last.pt").step == 1


def test_grid_png_decodes_to_the_pixels_in_torchvision_layout():
    from torchvision.utils import make_grid

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (7, 3, 9, 11), dtype=np.uint8)
    for nrow in (None, 3, 10):
        expected = make_grid(torch.from_numpy(images), nrow=nrow or 3, padding=2, pad_value=0)
        grid = image_format.grid(images, nrow)
        assert np.array_equal(grid, expected.permute(1, 2, 0).numpy()), nrow
        png = image_format.grid_png(images, nrow)
        decoded = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        assert np.array_equal(decoded, grid)
        assert png == image_format.grid_png(images.copy(), nrow)
    with pytest.raises(ValueError, match="uint8"):
        image_format.encode_png(np.zeros((4, 4, 3), dtype=np.float32))
