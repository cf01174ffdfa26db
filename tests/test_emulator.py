"""Emulator networks and inference: shapes, seeds, request batching, files, physics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from models.columns import DETECTED, INPUTS, MAGERR, OBSERVED, CatalogError
from models.emulator import (
    Critic,
    Detector,
    EmulatorConfig,
    Generator,
    GeneratorMixture,
    build_generator,
    generator_conditions,
)
from models.emulator_sampler import BLOCK_ROWS, EmulatorSampler
from tests.catalogs import make_analytic_catalog
from training.emulator.files import emulate_file
from training.emulator.gan import train_emulator_gan
from training.losses import gradient_penalty
from training.presets import build_config

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dry_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dry")
    result = train_emulator_gan(
        build_config("balrog", {"dry_run": True, "device": "cpu"}), None, out
    )
    return Path(result["model"])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> pd.DataFrame:
    path = make_analytic_catalog(tmp_path_factory.mktemp("inp") / "c.parquet", 2500, seed=3)
    return pd.read_parquet(path)


def _x(df: pd.DataFrame) -> np.ndarray:
    return df[list(INPUTS)].to_numpy(np.float32)


# --------------------------------------------------------------------------------------------
# networks


def test_network_shapes_and_no_batchnorm():
    cfg = EmulatorConfig()
    g, c, d = Generator(cfg), Critic(cfg), Detector(cfg)
    z, cond, true = torch.randn(5, 8), torch.randn(5, 6), torch.randn(5, 3)
    assert g(z, cond, true).shape == (5, 3)
    assert c(torch.randn(5, 3), cond, true).shape == (5,)
    assert d(cond, true).shape == (5,)
    assert 0 < float(d.calibrated_prob(cond, true).detach().min()) <= 1
    for net in (g, c, d):
        assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    # the branch/trunk layout of the seed: 3 × (in→128→64), then 192→128→128→out
    assert g.trunk.net[0].in_features == 192 and c.trunk.net[-1].out_features == 1
    gp = gradient_penalty(c, torch.randn(5, 3), g(z, cond, true), cond, true)
    assert gp.ndim == 0 and torch.isfinite(gp)


def test_noise_skip_adds_the_noise_to_the_offsets_only():
    cfg = EmulatorConfig(out_dim=6, noise_skip=True)
    g = Generator(cfg)
    torch.nn.init.zeros_(g.trunk.net[-1].weight)
    torch.nn.init.zeros_(g.trunk.net[-1].bias)
    z, cond, true = torch.randn(5, 8), torch.randn(5, 6), torch.randn(5, 3)
    out = g(z, cond, true)
    torch.testing.assert_close(out[:, :3], z[:, :3])  # the offsets start as unit normals
    assert torch.equal(out[:, 3:], torch.zeros(5, 3))  # the log errors get no noise added
    # a network config saved before the skip loads without it
    old = {k: v for k, v in cfg.to_dict().items() if k != "noise_skip"}
    assert EmulatorConfig.from_dict(old).noise_skip is False


def test_noise_mix_starts_at_the_identity_and_can_make_the_bands_err_alike():
    cfg = EmulatorConfig(out_dim=6, noise_skip=True, noise_mix=True)
    g = Generator(cfg)
    z, cond, true = torch.randn(5, 8), torch.randn(5, 6), torch.randn(5, 3)
    plain = Generator(EmulatorConfig(out_dim=6, noise_skip=True))
    plain.load_state_dict({k: v for k, v in g.state_dict().items() if not k.startswith("mix.")})
    torch.testing.assert_close(g(z, cond, true), plain(z, cond, true))  # the skip, unmixed
    # a matrix whose every row is (1, 1, 1) gives every band the same noise
    with torch.no_grad():
        g.mix.bias.fill_(1.0)
        torch.nn.init.zeros_(g.trunk.net[-1].weight)
        torch.nn.init.zeros_(g.trunk.net[-1].bias)
    out = g(z, cond, true)[:, :3]
    torch.testing.assert_close(out, z[:, :3].sum(1, keepdim=True).expand(5, 3))
    # a config saved before the mix loads without it, and its generator has no mix layer
    old = {k: v for k, v in cfg.to_dict().items() if k != "noise_mix"}
    assert not hasattr(Generator(EmulatorConfig.from_dict(old)), "mix")


def test_detection_input_gives_the_generator_and_the_critic_the_detectors_logit():
    cfg = EmulatorConfig(out_dim=6, noise_skip=True, noise_mix=True, detection_input=True)
    g, c, d = Generator(cfg), Critic(cfg), Detector(cfg)
    z, cond, true = torch.randn(5, 8), torch.randn(5, 6), torch.randn(5, 3)
    with torch.no_grad():
        d.platt_a.fill_(2.0)  # the calibrated logit, as the sampler draws detection with
        given = generator_conditions(cfg, d, cond, true)
        assert given.shape == (5, 7) and torch.equal(given[:, :6], cond)
        torch.testing.assert_close(given[:, 6], (2 * d(cond, true)).clamp(-10, 10) / 5)
        assert g(z, given, true).shape == (5, 6) and c(torch.randn(5, 6), given, true).shape == (5,)
        d.net[-1].bias.fill_(1e3)  # certain detections: the column is clamped at 10 / 5
        assert torch.equal(generator_conditions(cfg, d, cond, true)[:, 6], torch.full((5,), 2.0))
    with pytest.raises(ValueError, match="pass the detector"):
        generator_conditions(cfg, None, cond, true)
    # without it (and in configs saved before it) the generator sees the six conditions
    old = EmulatorConfig.from_dict(
        {k: v for k, v in cfg.to_dict().items() if k != "detection_input"}
    )
    assert not old.detection_input and generator_conditions(old, None, cond, true) is cond
    assert Generator(old).cond.net[0].in_features == 6 and d.net[0].in_features == 9


def test_rows_do_not_interact():
    g = Generator(EmulatorConfig()).eval()
    z, cond, true = torch.randn(7, 8), torch.randn(7, 6), torch.randn(7, 3)
    together = g(z, cond, true)
    alone = torch.cat([g(z[i : i + 1], cond[i : i + 1], true[i : i + 1]) for i in range(7)])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# inference


def test_sample_shapes_and_reproducibility(dry_model, inputs):
    emu = EmulatorSampler.load(dry_model, device="cpu")
    x = _x(inputs)[:50]
    mags, det = emu.sample(x, samples=3, seed=11)
    assert mags.shape == (150, 3) and mags.dtype == np.float64 and det.shape == (150,)
    assert np.isnan(mags[~det]).all() and np.isfinite(mags[det]).all()
    again, det2 = emu.sample(x, samples=3, seed=11)
    np.testing.assert_array_equal(mags, again)
    np.testing.assert_array_equal(det, det2)
    other, _ = emu.sample(x, samples=3, seed=12)
    assert not np.array_equal(np.nan_to_num(mags), np.nan_to_num(other))
    # realization k of row i sits at i·samples + k and depends only on (seed, i): the first
    # five rows alone give the first fifteen outputs of the fifty-row request (to float32
    # rounding: the product of a few rows' matrix can round apart from that of many, and the
    # preset's mixture hands each of its generators a third of the rows)
    first, first_det = emu.sample(x[:5], samples=3, seed=11)
    np.testing.assert_allclose(first, mags[:15], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(first_det, det[:15])


def test_batched_requests_match_separate_requests(dry_model, inputs):
    """The service concatenates requests with their own draws into one forward pass."""
    emu = EmulatorSampler.load(dry_model, device="cpu")
    xa, xb = _x(inputs)[:40], _x(inputs)[40:47]
    ma, da = emu.sample(xa, samples=2, seed=5)
    mb, db = emu.sample(xb, samples=3, seed=99)
    na, ua = emu.draws(len(xa), 2, seed=5)
    nb, ub = emu.draws(len(xb), 3, seed=99)
    x = np.concatenate([np.repeat(xa, 2, axis=0), np.repeat(xb, 3, axis=0)])
    m, d = emu.sample_with(x, torch.cat([na, nb]), torch.cat([ua, ub]))
    np.testing.assert_array_equal(d, np.concatenate([da, db]))
    np.testing.assert_allclose(m, np.concatenate([ma, mb]), rtol=0, atol=1e-6, equal_nan=True)


def test_draws_do_not_depend_on_where_a_chunk_starts(dry_model):
    emu = EmulatorSampler.load(dry_model, device="cpu")
    rows = 2 * BLOCK_ROWS + 300
    noise, uniforms = emu.draws(rows, 2, seed=7)
    start, n = BLOCK_ROWS - 50, 500  # straddles a block boundary
    n2, u2 = emu.draws(n, 2, seed=7, start=start)
    torch.testing.assert_close(n2, noise[2 * start : 2 * (start + n)], rtol=0, atol=0)
    torch.testing.assert_close(u2, uniforms[2 * start : 2 * (start + n)], rtol=0, atol=0)
    assert emu.noise(10, seed=7).shape == (10, emu.noise_dim)


def test_bad_inputs_are_rejected(dry_model):
    emu = EmulatorSampler.load(dry_model, device="cpu")
    with pytest.raises(ValueError, match="shape"):
        emu.sample(np.zeros((3, 8), np.float32))
    bad = np.ones((2, 9), np.float32)
    bad[1, 4] = np.nan
    with pytest.raises(ValueError, match="finite"):
        emu.sample(bad)


# --------------------------------------------------------------------------------------------
# files


def test_emulate_file_streams_the_same_as_one_chunk(dry_model, inputs, tmp_path):
    src = tmp_path / "in.csv"
    inputs[list(INPUTS)].iloc[:700].assign(name=[f"g{i}" for i in range(700)]).to_csv(
        src, index=False
    )
    one = emulate_file(dry_model, src, tmp_path / "one.parquet", samples=2, seed=4, device="cpu")
    many = emulate_file(
        dry_model, src, tmp_path / "many.parquet", samples=2, seed=4, chunk_rows=128, device="cpu"
    )
    assert many["chunks"] == 6 and one["chunks"] == 1 and many["output_rows"] == 1400
    a, b = pd.read_parquet(tmp_path / "one.parquet"), pd.read_parquet(tmp_path / "many.parquet")
    pd.testing.assert_frame_equal(a, b)
    assert list(a.columns[-8:]) == [*OBSERVED, *MAGERR, DETECTED, "out_of_domain"]
    assert "realization" in a.columns
    assert a["name"].iloc[2] == "g1" and a["realization"].tolist()[:4] == [0, 1, 0, 1]
    assert a.loc[~a[DETECTED], "mag_r"].isna().all()
    different = emulate_file(dry_model, src, tmp_path / "d.parquet", samples=2, seed=5)
    assert not pd.read_parquet(tmp_path / "d.parquet").equals(a)
    assert different["rows"] == 700
    schema = pq.read_schema(tmp_path / "many.parquet")  # provenance and units travel along
    meta = json.loads(schema.metadata[b"cosmogan"])
    assert meta == {"checkpoint": str(dry_model), "seed": 4, "samples": 2}
    assert schema.field("magerr_r").metadata[b"unit"] == b"mag"


def test_emulate_file_reports_bad_rows_and_writes_nothing(dry_model, inputs, tmp_path):
    df = inputs[list(INPUTS)].iloc[:300].copy()
    df.loc[250, "psf_fwhm_i"] = -1.0
    src = tmp_path / "in.csv"
    df.to_csv(src, index=False)
    out = tmp_path / "out.csv"
    with pytest.raises(CatalogError, match=r"psf_fwhm_i.*rows 250"):
        emulate_file(dry_model, src, out, chunk_rows=100)
    assert not out.exists() and not list(tmp_path.glob(".out.csv*"))


def test_emulate_file_keeps_input_columns_named_like_its_outputs(dry_model, inputs, tmp_path):
    # a real Balrog catalog brings its own measurements: they are kept, renamed, not lost
    df = inputs[list(INPUTS)].iloc[:50].copy()
    df["mag_r"], df["detected"] = np.arange(50.0), np.ones(50, bool)
    src = tmp_path / "in.parquet"
    df.to_parquet(src, index=False)
    summary = emulate_file(dry_model, src, tmp_path / "out.parquet", seed=1, chunk_rows=20)
    assert summary["renamed_input_columns"] == {
        "mag_r": "input_mag_r",
        "detected": "input_detected",
    }
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert out["input_mag_r"].tolist() == list(np.arange(50.0)) and out["input_detected"].all()
    assert not np.array_equal(out["mag_r"].fillna(-1), out["input_mag_r"])
    df["input_mag_r"] = 0.0  # nowhere left to keep it: refused, nothing written
    df.to_parquet(src, index=False)
    with pytest.raises(CatalogError, match="input_mag_r"):
        emulate_file(dry_model, src, tmp_path / "again.parquet", seed=1)
    assert not (tmp_path / "again.parquet").exists()


# --------------------------------------------------------------------------------------------
# physics: a short training on the analytic mini-Balrog must learn the conditions' direction


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[EmulatorSampler, pd.DataFrame]:
    tmp = tmp_path_factory.mktemp("phys")
    cat = make_analytic_catalog(tmp / "c.parquet", 20_000)
    # a faster schedule than the preset (higher lr, 2 critic steps) so that ~15 s suffice
    cfg = build_config(
        "balrog",
        {
            "max_steps": 800,
            "lr": 1e-3,
            "beta1": 0.0,
            "beta2": 0.9,
            "batch_size": 128,
            "n_critic": 2,
            "detector_epochs": 10,
            "device": "cpu",
            "checkpoint_every": 10_000,
            "log_every": 10_000,
        },
    )
    result = train_emulator_gan(cfg, cat, tmp / "run")
    df = pd.read_parquet(cat)
    return EmulatorSampler.load(result["model"], device="cpu"), df[df["split"] == "test"]


def _scaled(x: np.ndarray, sky: float = 1.0, psf: float = 1.0) -> np.ndarray:
    return (x * np.r_[1, 1, 1, sky, sky, sky, psf, psf, psf]).astype(np.float32)


def test_worse_conditions_lower_the_completeness(trained):
    emu, test = trained
    x = _x(test)
    p = emu.detection_probability(x)
    mid = x[(p > 0.2) & (p < 0.8)]  # objects near the detection limit
    assert len(mid) > 50
    base = emu.detection_probability(mid).mean()
    assert emu.detection_probability(_scaled(mid, sky=2.0)).mean() < base - 0.15
    assert emu.detection_probability(_scaled(mid, psf=1.5)).mean() < base - 0.05


def test_more_sky_noise_gives_more_scatter(trained):
    emu, test = trained
    x = _x(test)
    bright = x[emu.detection_probability(_scaled(x, sky=2.0)) > 0.98][:100]  # always detected
    assert len(bright) >= 50

    def scatter(xs: np.ndarray) -> np.ndarray:
        mags, _ = emu.sample(xs, samples=200, seed=0)
        delta = (mags - np.repeat(xs[:, :3], 200, axis=0)).reshape(len(xs), 200, 3)
        return np.nanstd(delta, axis=1).mean(axis=0)  # (3,) mean per-object scatter

    ratio = scatter(_scaled(bright, sky=2.0)) / scatter(bright)  # the simulator's ratio is 2
    assert (ratio > 1.2).all(), ratio


def test_a_mixture_draws_each_row_with_the_member_its_last_noise_column_picks():
    cfg = EmulatorConfig(out_dim=6, noise_skip=True, noise_mix=True, members=3)
    mixture = build_generator(cfg).eval()
    assert isinstance(mixture, GeneratorMixture) and cfg.draw_dim == cfg.noise_dim + 1
    assert all(m.cfg.members == 1 and m.cfg.draw_dim == 8 for m in mixture.members)
    z, cond, true = torch.randn(3000, 9), torch.randn(3000, 6), torch.randn(3000, 3)
    with torch.no_grad():
        out = mixture(z, cond, true)
        which = mixture.member_of(z[:, -1])
        for j, member in enumerate(mixture.members):
            rows = which == j  # floor(3 Φ(z)): a third of the rows each
            assert abs(rows.float().mean().item() - 1 / 3) < 0.04
            torch.testing.assert_close(out[rows], member(z[rows, :8], cond[rows], true[rows]))
    # the members differ, so the pick matters; the extremes of the normal stay in range
    assert not torch.allclose(mixture.members[0](z[:, :8], cond, true), out)
    assert mixture.member_of(torch.tensor([-40.0, 0.0, 40.0])).tolist() == [0, 1, 2]
    # a mixture holding given generators, and configs saved before mixtures: one generator
    again = GeneratorMixture.of(list(mixture.members))
    assert again.cfg == cfg and set(again.state_dict()) == set(mixture.state_dict())
    old = EmulatorConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "members"})
    assert type(build_generator(old)) is Generator and old.draw_dim == old.noise_dim
    with pytest.raises(ValueError, match="at least 2"):
        GeneratorMixture(old)
