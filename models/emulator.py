"""Balrog emulator networks: the conditional WGAN-GP generator/critic and the detection model.

The generator and critic follow the Seed 004 cWGAN-GP (DESIGN.md): one small MLP branch per
input group (noise or observed magnitudes / observing conditions / true magnitudes), the three
64-wide embeddings concatenated, then a shared trunk. Two deliberate departures from the seed:
the trunk has LeakyReLU activations between its linear layers (the seed's trunk was a chain of
linears, i.e. one linear map), and nothing is normalized with BatchNorm, so every row is
processed independently of the others in its batch (a WGAN critic must not mix samples, and
the inference service coalesces many requests into one forward pass).

The detection model is a separate MLP classifier `P(detected | true mags, conditions)`, whose
logit is recalibrated with Platt scaling (`a · logit + b`, fitted on the validation split).
With `detection_input` the generator and the critic also take that logit as a seventh
condition column (`generator_conditions`): the detector is trained first and then frozen.

The generated target has `out_dim` columns: the observed − true magnitude offsets in r, i, z,
then (when `out_dim` is 6) the natural log of the magnitude errors `magerr_{r,i,z}`, so that
errors and magnitudes are drawn jointly. Checkpoints from before the errors have 3.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

# ln F falls by 0.4 ln 10 = 0.921 per magnitude: magerr = 2.5 / ln 10 · σ_F / F
LN_FLUX_PER_MAG = 0.4 * float(np.log(10.0))
# with `flux_offsets`, a drawn flux below this fraction of the true flux is kept at it (+5 mag):
# the catalogs hold no such detection, and the logarithm of a non-positive flux has no value
MIN_FLUX_RATIO = 0.01


@dataclass(frozen=True)
class EmulatorConfig:
    """Shapes of the emulator networks (stored in every checkpoint as a plain dict)."""

    noise_dim: int = 8  # latent noise per object
    cond_dim: int = 6  # sky sigma and PSF FWHM in r, i, z
    mag_dim: int = 3  # true (and observed) magnitudes in r, i, z
    hidden: int = 128  # width of the first branch layer and of the trunk
    embed: int = 64  # width of each branch's output; the trunk sees 3 × embed
    slope: float = 0.2  # LeakyReLU negative slope
    det_hidden: int = 128  # width of the detection classifier's two hidden layers
    out_dim: int = 3  # generated columns: 3 offsets, or 3 offsets + 3 ln(magerr)
    # the generator adds its first 3 noise components to the 3 offsets it outputs (False in
    # checkpoints from before the skip)
    noise_skip: bool = False
    # the skip's noise is first multiplied by a 3 × 3 matrix computed from the object's
    # conditions and true magnitudes, started at the identity (False in older checkpoints)
    noise_mix: bool = False
    # the generator and the critic take the detector's calibrated logit as one more condition
    # column (`generator_conditions`): how far an object sits above the detection threshold
    # is what selection does to its detected offsets (False in older checkpoints)
    detection_input: bool = False
    # generators served as one mixture, each row drawn by one of them (`GeneratorMixture`);
    # 1 in older checkpoints: a single generator
    members: int = 1

    @property
    def draw_dim(self) -> int:
        """Noise columns drawn per row: the generator's, and one more that picks the member
        of a mixture."""
        return self.noise_dim + int(self.members > 1)

    @property
    def given_dim(self) -> int:
        """Condition columns of the generator and the critic (the detector sees `cond_dim`)."""
        return self.cond_dim + int(self.detection_input)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmulatorConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class EmulatorScalers:
    """Standardization fitted on the train split, kept in the checkpoint as plain lists.

    Inputs are z-scored per column; with `log_conditions` the observing conditions are
    z-scored in their logarithm, so that the expected S/N of a galaxy, ``ln S/N = −0.4 ln 10 ·
    mag − ln sky_sigma − ln psf_fwhm + const`` for a sky-dominated point source, is a linear
    function of the network's inputs. The target (offsets, then ln magerr when there are 6
    columns) is z-scored with its train-split mean and standard deviation. `input_min` and
    `input_max` are the training ranges of the raw inputs, for the out-of-domain flag (empty
    in checkpoints from before the flag).

    With `scale_coef` (3 bands × [bias, 9 weights]), each band's target is first divided by
    a per-object scale before the z-score: ``ln s = bias + w · (standardized inputs)``, a
    linear fit of ln magerr (the expected error of a sky-dominated measurement is linear in
    the true magnitude and the log conditions). The offset becomes offset / s and the log
    error ln magerr − ln s. Without it the offsets of bright objects (scatter ~0.01 mag) are
    a hundredth of the target's standard deviation and a generator that is right to 0.05 of
    it gets their distribution wrong entirely. Empty in older checkpoints: no scale.

    With `shift_coef` (3 × [bias, 9 weights]) the offset's expected value, a linear fit on
    the standardized inputs, is subtracted first, and with `scale_floor` (3 values) the
    scale is ``sqrt(s² + floor²)``: a measurement can be biased (light missed in the wings)
    and scattered (by shape and size) more than its noise says, and a bright object's
    offset of 0.1 ± 0.03 mag against a noise of 0.004 would otherwise be 25 ± 8 units of it.
    Empty in older checkpoints: no shift, no floor.

    With `flux_errors` the error columns are ln(σ_F / F_true) rather than ln magerr: a
    survey reports ``magerr = 2.5 / ln 10 · σ_F / F`` with the measured flux F, so ``ln
    magerr = ln(σ_F / F_true) + 0.4 ln 10 · (observed − true)``. The generator then draws the
    flux error, and each magnitude error follows from its own offset exactly, as it does in
    the catalog; drawn as a column of its own, the error is off that relation by what the
    network misses, which a classifier given both finds at once. False in older checkpoints.

    With `error_basis` (a 3 × 3 matrix M, row-major) the generated error columns are the
    principal components of the z-scored error columns: errors = components @ M, the
    components uncorrelated, each of standard deviation λ^¼ for its direction's variance λ.
    A galaxy's three flux errors share its size, so they lie close to one line (correlations
    0.96–0.99; the two thin directions hold 0.2–1.4 % of the variance), and a network drawing
    each column on its own misses that line by as much as it misses a column. Drawn as
    components, a miss in a thin direction is scaled down by λ^¼ (2–3.5× there). Whitened
    components (unit variance, scaled down by √λ) held the line better still but drew the
    critic from the offsets (see MODEL_CARD.md). Empty in older checkpoints: the columns
    are drawn as they are.

    With `flux_offsets` (with the scale and `flux_errors` only) each offset is drawn as the
    flux's deviation in units of the object's own error, ``t = (1 − F / F_true) / (σ_F /
    F_true)`` after the shift, σ_F / F_true from the drawn error column and widened by the
    floor; ``t ≈ offset / magerr`` for a bright object. A survey's noise is Gaussian in flux:
    where it is the whole scatter, t is a unit normal before selection at every magnitude,
    whereas offset / s is a scale mixture over the galaxies' sizes (kurtosis ~1) that the
    magnitude's logarithm skews at low S/N (kurtosis ~10 in the faint z band). False in
    older checkpoints.
    """

    true_mean: tuple[float, ...]
    true_std: tuple[float, ...]
    cond_mean: tuple[float, ...]
    cond_std: tuple[float, ...]
    delta_mean: tuple[float, ...]
    delta_std: tuple[float, ...]
    log_conditions: bool = False
    input_min: tuple[float, ...] = ()
    input_max: tuple[float, ...] = ()
    scale_coef: tuple[float, ...] = ()
    shift_coef: tuple[float, ...] = ()
    scale_floor: tuple[float, ...] = ()
    flux_errors: bool = False
    error_basis: tuple[float, ...] = ()
    flux_offsets: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k in self.__dataclass_fields__:
            v = getattr(self, k)
            out[k] = bool(v) if isinstance(v, bool) else [float(x) for x in v]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmulatorScalers:
        out: dict[str, Any] = {}
        for k, f in cls.__dataclass_fields__.items():
            if k not in data and f.default is not MISSING:
                continue  # an older checkpoint: the field's default
            flag = k in ("log_conditions", "flux_errors", "flux_offsets")
            out[k] = bool(data[k]) if flag else tuple(float(v) for v in data[k])
        return cls(**out)

    @property
    def out_dim(self) -> int:
        return len(self.delta_mean)

    def split_inputs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Raw inputs (B, 9) in `columns.INPUTS` order → standardized (cond (B, 6), true (B, 3))."""
        true = (x[:, :3] - _t(self.true_mean, x)) / _t(self.true_std, x)  # (B, 3)
        raw_cond = torch.log(x[:, 3:]) if self.log_conditions else x[:, 3:]
        cond = (raw_cond - _t(self.cond_mean, x)) / _t(self.cond_std, x)  # (B, 6)
        return cond, true

    def features(self, x: Tensor) -> Tensor:
        """Raw inputs (B, 9) → [1, standardized inputs] (B, 10): what the scale and the
        shift are linear in."""
        cond, true = self.split_inputs(x)
        return torch.cat([torch.ones_like(true[:, :1]), true, cond], dim=1)  # (B, 10)

    def features_numpy(self, x: np.ndarray) -> np.ndarray:
        """`features` for float64 arrays."""
        true = (x[:, :3] - np.asarray(self.true_mean)) / np.asarray(self.true_std)
        raw_cond = np.log(x[:, 3:]) if self.log_conditions else x[:, 3:]
        cond = (raw_cond - np.asarray(self.cond_mean)) / np.asarray(self.cond_std)
        return np.concatenate([np.ones((len(x), 1)), true, cond], axis=1)

    def _features_if_used(self, x: Tensor) -> Tensor | None:
        """`features` when the shift or the scale needs them: computed once per batch."""
        return self.features(x) if self.scale_coef or self.shift_coef else None

    def _features_numpy_if_used(self, x: np.ndarray) -> np.ndarray | None:
        return self.features_numpy(x) if self.scale_coef or self.shift_coef else None

    def ln_scale(self, x: Tensor, feats: Tensor | None = None) -> Tensor | None:
        """Raw inputs (B, 9) → ln of the per-object, per-band scale (B, 3); None without one.
        `feats`: the inputs' `features`, when the caller has them already."""
        if not self.scale_coef:
            return None
        feats = self.features(x) if feats is None else feats
        return self.floored(feats @ _t(self.scale_coef, x).reshape(3, -1).T)  # (B, 3)

    def ln_scale_numpy(self, x: np.ndarray, feats: np.ndarray | None = None) -> np.ndarray | None:
        """`ln_scale` for float64 arrays."""
        if not self.scale_coef:
            return None
        feats = self.features_numpy(x) if feats is None else feats
        return self.floored(feats @ np.asarray(self.scale_coef).reshape(3, -1).T)

    def floored(self, ln_noise: Any) -> Any:
        """ln sqrt(noise² + floor²) per band, for ln noise (B, 3) as a tensor or a float64
        array: the fitted scale's noise, or with `flux_offsets` each object's own magnitude
        error at its true flux, 1.086 σ_F / F_true (the `flux_errors` column)."""
        if not self.scale_floor:
            return ln_noise
        if isinstance(ln_noise, Tensor):
            ln_floor = torch.log(_t(self.scale_floor, ln_noise))
            return 0.5 * torch.logaddexp(2 * ln_noise, 2 * ln_floor)
        return 0.5 * np.logaddexp(2 * ln_noise, 2 * np.log(np.asarray(self.scale_floor)))

    def shift(self, x: Tensor, feats: Tensor | None = None) -> Tensor | None:
        """Raw inputs (B, 9) → the expected offset per band (B, 3); None without one."""
        if not self.shift_coef:
            return None
        feats = self.features(x) if feats is None else feats
        return feats @ _t(self.shift_coef, x).reshape(3, -1).T

    def shift_numpy(self, x: np.ndarray, feats: np.ndarray | None = None) -> np.ndarray | None:
        """`shift` for float64 arrays."""
        if not self.shift_coef:
            return None
        feats = self.features_numpy(x) if feats is None else feats
        return feats @ np.asarray(self.shift_coef).reshape(3, -1).T

    def target(self, observed: Tensor, x: Tensor, magerr: Tensor | None = None) -> Tensor:
        """Observed magnitudes (B, 3) [and errors (B, 3)] of the raw inputs `x` (B, 9) →
        standardized targets (B, out_dim)."""
        raw = observed - x[:, :3]
        feats = self._features_if_used(x)
        mu = self.shift(x, feats)
        if mu is not None:
            raw = raw - mu
        if self.out_dim == 6:
            if magerr is None:
                raise ValueError("this model emulates magnitude errors: pass magerr")
            ln_err = torch.log(magerr)
            if self.flux_errors:
                ln_err = ln_err - LN_FLUX_PER_MAG * (observed - x[:, :3])
            raw = torch.cat([raw, ln_err], dim=1)
        ln_s = self.ln_scale(x, feats)
        if ln_s is not None:
            errs = [raw[:, 3:] - ln_s] if self.out_dim == 6 else []  # errors in units of s
            if self.flux_offsets:  # the flux's deviation in units of its own error
                own = torch.exp(self.floored(raw[:, 3:]))
                offsets = -torch.expm1(-LN_FLUX_PER_MAG * raw[:, :3]) / (LN_FLUX_PER_MAG * own)
            else:
                offsets = raw[:, :3] * torch.exp(-ln_s)
            raw = torch.cat([offsets, *errs], dim=1)
        z = (raw - _t(self.delta_mean, raw)) / _t(self.delta_std, raw)
        if self.error_basis:  # components = errors @ M⁻¹
            basis = _t(self.error_basis, z).reshape(3, 3)
            comps = torch.linalg.solve(basis.T, z[:, 3:].T).T
            z = torch.cat([z[:, :3], comps], dim=1)
        return z

    def observed(self, target: Tensor, x: Tensor) -> Tensor:
        """Inverse of `target`: standardized (B, out_dim) → magnitudes (B, 3) [, errors (B, 3)]."""
        if self.error_basis:
            errs = target[:, 3:] @ _t(self.error_basis, target).reshape(3, 3)
            target = torch.cat([target[:, :3], errs], dim=1)
        raw = target * _t(self.delta_std, target) + _t(self.delta_mean, target)
        feats = self._features_if_used(x)
        ln_s = self.ln_scale(x, feats)
        if ln_s is not None:
            errs = [raw[:, 3:] + ln_s] if self.out_dim == 6 else []
            if self.flux_offsets:
                own = torch.exp(self.floored(errs[0]))
                lost = (LN_FLUX_PER_MAG * own * raw[:, :3]).clamp(max=1 - MIN_FLUX_RATIO)
                offsets = -torch.log1p(-lost) / LN_FLUX_PER_MAG
            else:
                offsets = raw[:, :3] * torch.exp(ln_s)
            raw = torch.cat([offsets, *errs], dim=1)
        mu = self.shift(x, feats)
        offset = raw[:, :3] + (0 if mu is None else mu)
        if self.out_dim != 6:
            return x[:, :3] + offset
        ln_err = raw[:, 3:] + LN_FLUX_PER_MAG * offset if self.flux_errors else raw[:, 3:]
        return torch.cat([x[:, :3] + offset, torch.exp(ln_err)], dim=1)

    def observed_numpy(self, target: np.ndarray, x: np.ndarray) -> np.ndarray:
        """`observed` for float64 arrays (the sampler's output precision)."""
        if self.error_basis:
            errs = target[:, 3:] @ np.asarray(self.error_basis).reshape(3, 3)
            target = np.concatenate([target[:, :3], errs], axis=1)
        raw = target * np.asarray(self.delta_std) + np.asarray(self.delta_mean)
        feats = self._features_numpy_if_used(x)
        ln_s = self.ln_scale_numpy(x, feats)
        if ln_s is not None:
            errs = [raw[:, 3:] + ln_s] if self.out_dim == 6 else []
            if self.flux_offsets:
                own = np.exp(self.floored(errs[0]))
                lost = np.minimum(LN_FLUX_PER_MAG * own * raw[:, :3], 1 - MIN_FLUX_RATIO)
                offsets = -np.log1p(-lost) / LN_FLUX_PER_MAG
            else:
                offsets = raw[:, :3] * np.exp(ln_s)
            raw = np.concatenate([offsets, *errs], axis=1)
        mu = self.shift_numpy(x, feats)
        offset = raw[:, :3] + (0 if mu is None else mu)
        if self.out_dim != 6:
            return x[:, :3] + offset
        ln_err = raw[:, 3:] + LN_FLUX_PER_MAG * offset if self.flux_errors else raw[:, 3:]
        return np.concatenate([x[:, :3] + offset, np.exp(ln_err)], axis=1)

    def out_of_domain(self, x: np.ndarray) -> np.ndarray:
        """(N,) bool: rows with an input outside the training range (all False if unknown)."""
        if not self.input_min:
            return np.zeros(len(x), dtype=bool)
        return ((x < np.asarray(self.input_min)) | (x > np.asarray(self.input_max))).any(axis=1)


def _t(values: tuple[float, ...], like: Tensor) -> Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device)


# --------------------------------------------------------------------------------------------
# building blocks


class Branch(nn.Module):
    """`Linear(in, hidden) → LeakyReLU → Linear(hidden, embed) → LeakyReLU` (one input group)."""

    def __init__(self, in_dim: int, hidden: int, embed: int, slope: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.LeakyReLU(slope),
            nn.Linear(hidden, embed),
            nn.LeakyReLU(slope),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, embed)


class Trunk(nn.Module):
    """`Linear(3·embed, h) → LeakyReLU → Linear(h, h) → LeakyReLU → Linear(h, out)`."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, slope: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.LeakyReLU(slope),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(slope),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h)  # (B, out_dim)


# --------------------------------------------------------------------------------------------
# networks


class Generator(nn.Module):
    """`G(z, conditions, true mags)` → standardized observed − true magnitude offsets (B, 3).

    With `noise_skip` the first three noise components are added to the offsets: a target
    divided by its error scale is close to a unit normal per object, so the network starts
    from the right scatter and learns the departures from it. Without the skip the scatter
    has to pass through the whole network, and the EMA of weights that keep moving during
    adversarial training averages maps of the noise that point in different directions: on
    a catalog whose scatter is its noise the served generator came out 5–10 % too narrow in
    every band. With `noise_mix` the skip's noise is first multiplied by a 3 × 3 matrix
    computed from the object's conditions and true magnitudes (started at the identity), so
    that bands can err alike and by more or less than the scale says. Where measurements
    scatter beyond their noise (GalSim's galaxies) the unit normal is not the target's shape
    and the skip has not been shown to help; the training preset decides per catalog
    (`training.emulator.gan.use_noise_skip`).
    """

    def __init__(self, cfg: EmulatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.noise = Branch(cfg.noise_dim, cfg.hidden, cfg.embed, cfg.slope)
        self.cond = Branch(cfg.given_dim, cfg.hidden, cfg.embed, cfg.slope)
        self.true = Branch(cfg.mag_dim, cfg.hidden, cfg.embed, cfg.slope)
        self.trunk = Trunk(3 * cfg.embed, cfg.hidden, cfg.out_dim, cfg.slope)
        self.k = min(3, cfg.noise_dim)
        if cfg.noise_skip and cfg.noise_mix:
            self.mix = nn.Linear(2 * cfg.embed, self.k * self.k)
            nn.init.zeros_(self.mix.weight)
            with torch.no_grad():
                self.mix.bias.copy_(torch.eye(self.k).flatten())

    def forward(self, z: Tensor, cond: Tensor, true: Tensor) -> Tensor:
        # z (B, 8), cond (B, given_dim), true (B, 3)
        given = torch.cat([self.cond(cond), self.true(true)], dim=1)  # (B, 128)
        out = self.trunk(torch.cat([self.noise(z), given], dim=1))  # (B, out_dim)
        if not self.cfg.noise_skip:
            return out
        k = self.k
        skip = z[:, :k]  # (B, k)
        if self.cfg.noise_mix:
            mix = self.mix(given).view(-1, k, k)  # (B, k, k)
            skip = torch.bmm(mix, skip.unsqueeze(2)).squeeze(2)  # (B, k)
        return torch.cat([out[:, :k] + skip, out[:, k:]], dim=1)


class GeneratorMixture(nn.Module):
    """`members` generators of one run served as one: each row is drawn by one of them.

    The member is picked by the row's last noise column, ``floor(K · Φ(z))`` for K members,
    so that it is drawn with the rest of the row's noise and is independent of it and of the
    detection draw. Generators trained from different initializations and noise miss the
    target in different places; a uniform mixture of them averages those misses, at the cost
    per object of one generator (MODEL_CARD.md). Each member is a plain `Generator` trained
    against its own critic on the same detector.
    """

    def __init__(self, cfg: EmulatorConfig, generators: list[Generator] | None = None) -> None:
        # generators: the members themselves (not copies); new ones when not given
        super().__init__()
        if cfg.members < 2:
            raise ValueError(f"a mixture needs at least 2 members, got {cfg.members}")
        self.cfg = cfg
        if generators is None:
            generators = [Generator(replace(cfg, members=1)) for _ in range(cfg.members)]
        self.members = nn.ModuleList(generators)

    @classmethod
    def of(cls, generators: list[Generator]) -> GeneratorMixture:
        """A mixture holding `generators` themselves (not copies)."""
        return cls(replace(generators[0].cfg, members=len(generators)), generators)

    def member_of(self, pick: Tensor) -> Tensor:
        """The member (B,) int64 of each row, from its last noise column `pick` (B,)."""
        k = len(self.members)
        return (torch.special.ndtr(pick) * k).long().clamp(0, k - 1)

    def forward(self, z: Tensor, cond: Tensor, true: Tensor) -> Tensor:
        # z (B, noise_dim + 1), cond (B, given_dim), true (B, 3)
        which = self.member_of(z[:, -1])  # (B,)
        out = z.new_empty(len(z), self.cfg.out_dim)
        for j, member in enumerate(self.members):
            rows = (which == j).nonzero().squeeze(1)
            if len(rows):
                out[rows] = member(z[rows, :-1], cond[rows], true[rows])
        return out  # (B, out_dim)


def build_generator(cfg: EmulatorConfig) -> Generator | GeneratorMixture:
    """The (untrained) generator of `cfg`: one, or a mixture of `cfg.members`."""
    return GeneratorMixture(cfg) if cfg.members > 1 else Generator(cfg)


class Critic(nn.Module):
    """`D(observed, conditions, true mags)` → one Wasserstein score per object, shape (B,)."""

    def __init__(self, cfg: EmulatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.obs = Branch(cfg.out_dim, cfg.hidden, cfg.embed, cfg.slope)
        self.cond = Branch(cfg.given_dim, cfg.hidden, cfg.embed, cfg.slope)
        self.true = Branch(cfg.mag_dim, cfg.hidden, cfg.embed, cfg.slope)
        self.trunk = Trunk(3 * cfg.embed, cfg.hidden, 1, cfg.slope)

    def forward(self, obs: Tensor, cond: Tensor, true: Tensor) -> Tensor:
        # obs (B, out_dim), cond (B, given_dim), true (B, 3)
        h = torch.cat([self.obs(obs), self.cond(cond), self.true(true)], dim=1)  # (B, 192)
        return self.trunk(h).squeeze(1)  # (B,)


class Detector(nn.Module):
    """Detection classifier: logit of `P(detected | true mags, conditions)`, shape (B,).

    A plain MLP on the 9 standardized inputs, trained with binary cross-entropy on every
    training row; `calibrated_prob` applies the Platt scaling fitted on the validation split.
    """

    def __init__(self, cfg: Any) -> None:
        # cfg: any network config with mag_dim, cond_dim, det_hidden and slope
        super().__init__()
        self.cfg = cfg
        self.net = nn.Sequential(
            nn.Linear(cfg.mag_dim + cfg.cond_dim, cfg.det_hidden),
            nn.LeakyReLU(cfg.slope),
            nn.Linear(cfg.det_hidden, cfg.det_hidden),
            nn.LeakyReLU(cfg.slope),
            nn.Linear(cfg.det_hidden, 1),
        )
        # Platt scaling of the logit; identity until calibrated. Buffers travel with the weights.
        self.register_buffer("platt_a", torch.tensor(1.0))
        self.register_buffer("platt_b", torch.tensor(0.0))

    def forward(self, cond: Tensor, true: Tensor) -> Tensor:
        # cond (B, 6), true (B, 3)
        return self.net(torch.cat([true, cond], dim=1)).squeeze(1)  # (B,) raw logit

    def calibrated_logit(self, cond: Tensor, true: Tensor) -> Tensor:
        return self.platt_a * self(cond, true) + self.platt_b  # (B,)

    def calibrated_prob(self, cond: Tensor, true: Tensor) -> Tensor:
        return torch.sigmoid(self.calibrated_logit(cond, true))  # (B,)


DETECTION_CLAMP = 10.0  # the logit column is clamped to ±10 (P within 5e-5 of 0 or 1) …
DETECTION_SCALE = 5.0  # … and divided by 5, so that it spans the others' unit range


def generator_conditions(
    cfg: Any,
    detector: Detector | None,
    cond: Tensor,
    true: Tensor,
    logit: Tensor | None = None,
) -> Tensor:
    """The condition columns of the generator and the critic, (B, `cfg.given_dim`).

    `cond` (B, 6) as it is, or with `detection_input` followed by the detector's calibrated
    logit, clamped to ±10 and divided by 5. The logit measures how close the object is to
    the detection threshold, where selection keeps the draws that scattered bright: the
    detected offsets' mean shift and narrowing there are a function of it, which the
    conditions and magnitudes give the generator only through a steep nonlinearity.
    `logit` (B,): the detector's calibrated logit when the caller has computed it already.
    """
    if not getattr(cfg, "detection_input", False):
        return cond
    if logit is None:
        if detector is None:
            raise ValueError("this generator takes the detector's logit: pass the detector")
        logit = detector.calibrated_logit(cond, true)
    column = logit.clamp(-DETECTION_CLAMP, DETECTION_CLAMP) / DETECTION_SCALE
    return torch.cat([cond, column.unsqueeze(1).to(cond.dtype)], dim=1)


__all__ = [
    "Branch",
    "Critic",
    "Detector",
    "EmulatorConfig",
    "EmulatorScalers",
    "Generator",
    "GeneratorMixture",
    "Trunk",
    "build_generator",
    "generator_conditions",
]
