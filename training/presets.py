"""Training presets and their configs; torch-free, so the API can validate requests with it.

A preset names a model family and the seed settings as defaults. `build_config` applies
user overrides and rejects unknown keys and out-of-range values with a clear message.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

from models.kinds import Family, family_of


@dataclass(frozen=True)
class ImageTrainConfig:
    """One image-GAN run (`nebula` = WGAN-GP 128², `nebula-dcgan` = DCGAN 64²)."""

    preset: str = "nebula"
    kind: str = "wgan-gp-128"  # models.checkpoint.KINDS
    image_size: int = 128
    latent_dim: int = 128
    batch_size: int = 32
    lr: float = 1e-4
    beta1: float = 0.0
    beta2: float = 0.9
    gp_lambda: float = 10.0
    n_critic: int = 5  # critic steps per generator step, each on a fresh real batch
    epochs: int = 25  # one epoch = one pass over the real images
    ema_decay: float = 0.999
    augment: bool = True  # flips and 90° rotations of the real images
    diffaugment: bool = False  # DiffAugment (colour, translation, cutout) on real and fake
    stretch: Literal["none", "log", "asinh"] = "asinh"  # for FITS / high-dynamic-range data
    checkpoint_every: int = 50  # generator steps between checkpoints (also at each epoch end)
    sample_count: int = 64  # images in the per-epoch grid of fixed latents
    seed: int = 0
    device: str = "auto"
    dry_run: bool = False  # two steps on generated data
    max_steps: int | None = None  # stop after this many generator steps (time-boxing)
    width: int = 32  # network width (channels of the widest-resolution block; seed = 64)
    samples_every: int = 1  # epochs between sample grids (the last epoch always gets one)
    heldout_fraction: float = 0.1  # images kept out of training for evaluation (by file hash)
    eval_images: int = 64  # generated images for the figures recorded at the end (0: none)
    deterministic: bool = True  # CUDA: deterministic kernels, so a resumed run is bit-exact


@dataclass(frozen=True)
class EmulatorTrainConfig:
    """One emulator run (`balrog` = conditional WGAN-GP + detection classifier)."""

    preset: str = "balrog"
    kind: str = "cwgan-gp"
    noise_dim: int = 8
    hidden: int = 128
    batch_size: int = 200
    lr: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    gp_lambda: float = 10.0
    n_critic: int = 5
    epochs: int = 200
    # from the end of the burn-in (the run's first half) both learning rates fall linearly to
    # zero at the last step, as in the WGAN-GP paper: at a constant rate the generator keeps
    # jittering around the target by more than the EMA averages out (training.emulator.gan)
    lr_decay: bool = True
    # at least this many generator steps: on a small catalog an epoch is a few steps, and
    # 200 of them stop the GAN long before it converges (more epochs are run to get there);
    # an `epochs` override without one sets it to 0: the epochs asked for are what runs
    min_steps: int = 10_000
    ema_decay: float = 0.999
    mse_weight: float = 0.0  # the seed's MSE pull to the mean; >0 only for the baseline
    emulate_errors: bool = True  # also generate magerr_{r,i,z} when the catalog has them
    log_conditions: bool = True  # standardize ln(sky sigma), ln(PSF FWHM): S/N is linear
    # divide each band's target by a per-object error scale (a linear fit of ln magerr on
    # the inputs): bright objects' offsets are otherwise ~1 % of the target's spread
    error_scale: bool = True
    # draw each band's flux error, ln(σ_F / F_true), and derive its magnitude error from the
    # drawn offset as a survey does (magerr = 1.086 σ_F / F): drawn on its own, ln magerr is
    # off the exact relation to the offset by what the network misses (models.emulator)
    flux_errors: bool = True
    # draw the three error columns as their principal components, the thin ones widened: they
    # lie close to one line (a galaxy's size sets all three), which columns drawn one by one miss
    error_basis: bool = True
    # draw each offset as the flux's deviation in units of the object's own (drawn) flux
    # error: a unit normal before selection where the noise is the whole scatter, instead of
    # a scale mixture skewed by the magnitude's logarithm (models.emulator.EmulatorScalers).
    # "auto": with the noise skip (training.emulator.gan.use_flux_offsets)
    flux_offsets: bool | str = "auto"
    # add the generator's first noise components to the offsets it outputs, through a 3 × 3
    # matrix learned per object (a residual on the unit normal that the error scale makes of
    # them; see models.emulator.Generator). "auto": on when the catalog's measurement noise
    # is its whole scatter (`training.emulator.data.noise_share`), where the generator
    # without it comes out 5–10 % too narrow; off where measurements also scatter with a
    # galaxy's shape and size (GalSim's), where it has not been shown to help (two-sample
    # AUC 0.83–0.84 in runs with it, 0.64 and 0.89 in two without)
    noise_skip: bool | str = "auto"
    noise_mix: bool = True  # the learned matrix; false: the noise is added as it is
    # give the generator and the critic the detector's logit as one more condition: near the
    # threshold, selection shifts and narrows the detected offsets as a function of it
    # (models.emulator.generator_conditions). "auto": with the noise skip
    # (training.emulator.gan.use_detection_input)
    detection_input: bool | str = "auto"
    # at the end, with the mixed skip, fold into the served generator's output layer the
    # per-column affine map that gives its samples the training targets' median and
    # central-68 % width (see training.emulator.gan.match_spread)
    match_spread: bool = True
    # generators trained side by side (each with its own critic, on one detector) and served
    # as one mixture, each object drawn by one of them: their misses average out, at the
    # cost per object of one generator and the training time of `members`
    # (models.emulator.GeneratorMixture). "auto": 3 with the noise skip, else 1
    # (training.emulator.gan.use_members)
    members: int | str = "auto"
    detector_epochs: int = 20
    detector_batch_size: int = 1024  # the detection classifier sees every training row
    detector_lr: float = 1e-3
    # Platt-scale the detector on the val split: off, since a network trained with BCE on
    # the train split is calibrated already, and two parameters fitted on a split a tenth
    # its size shift the completeness by up to ~1 % per bin (the val split's own noise)
    detector_platt: bool = False
    log_every: int = 50  # generator steps between metrics.jsonl lines (also at each epoch end)
    checkpoint_every: int = 500
    seed: int = 0
    device: str = "auto"
    dry_run: bool = False
    max_steps: int | None = None
    max_rows: int | None = None  # use only the first N training rows (quick runs)
    deterministic: bool = True  # CUDA: deterministic kernels, so a resumed run is bit-exact


@dataclass(frozen=True)
class FlowTrainConfig:
    """One flow-emulator run (`balrog-flow` = conditional spline flow + detection classifier).

    Trained by maximum likelihood with a cosine learning-rate schedule; the weights served
    are those of the epoch with the lowest validation negative log-likelihood, and the run
    stops early after `patience` epochs without a better one. With kind `cflow-distilled`
    (`balrog-fast`) the best flow is then distilled into a one-pass student, which is served.
    """

    preset: str = "balrog-flow"
    kind: str = "cflow"
    hidden: int = 128
    transforms: int = 5
    bins: int = 8
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 100  # one epoch = one pass over the detected training objects
    patience: int = 30  # epochs without a better validation likelihood before stopping
    emulate_errors: bool = True  # also draw magerr_{r,i,z} when the catalog has them
    log_conditions: bool = True  # standardize ln(sky sigma), ln(PSF FWHM): S/N is linear
    detector_epochs: int = 20
    detector_batch_size: int = 1024
    detector_lr: float = 1e-3
    detector_platt: bool = False  # as in the cWGAN-GP's config
    log_every: int = 50
    checkpoint_every: int = 500
    seed: int = 0
    device: str = "auto"
    dry_run: bool = False
    max_steps: int | None = None
    max_rows: int | None = None
    deterministic: bool = True  # CUDA: deterministic kernels, so a resumed run is bit-exact
    # `cflow-distilled` only: the flow is then distilled into a one-pass student (served)
    student_hidden: int = 256
    student_depth: int = 3
    distill_steps: int = 30_000
    distill_rows: int = 400_000  # teacher samples the student learns from
    distill_batch_size: int = 1024
    distill_lr: float = 2e-3
    # distil this flow instead of training one: a registered model (`NAME[@VERSION]`, e.g.
    # `balrog-flow@default`) or, from the command line, a `cflow` checkpoint file
    teacher: str | None = None


PRESETS: dict[str, ImageTrainConfig | EmulatorTrainConfig | FlowTrainConfig] = {
    "nebula": ImageTrainConfig(),
    "nebula-dcgan": ImageTrainConfig(
        preset="nebula-dcgan",
        kind="dcgan-64",
        image_size=64,
        latent_dim=100,
        batch_size=128,
        lr=2e-4,
        beta1=0.5,
        beta2=0.999,
        n_critic=1,
    ),
    # The recipe behind the shipped `nebula@default` (MODEL_CARD.md): a 16-wide WGAN-GP that
    # learns nebula-like images in about one CPU-hour (2,500 generator steps, 1.3 s each on one
    # thread); the seed-width `nebula` preset needs a GPU to get there.
    "nebula-cpu": ImageTrainConfig(
        preset="nebula-cpu",
        width=16,
        batch_size=16,
        lr=2e-4,
        diffaugment=True,
        epochs=2000,
        max_steps=2500,
    ),
    "balrog": EmulatorTrainConfig(),
    "balrog-flow": FlowTrainConfig(),
    # the flow, then its one-pass student: flow quality at about the cWGAN-GP's cost per object
    "balrog-fast": FlowTrainConfig(preset="balrog-fast", kind="cflow-distilled"),
}

# The dataset a preset trains on when none is given, under the settings' data folder (what
# `cosmogan data nebulae` and `cosmogan data balrog` build).
DEFAULT_DATA = {"image": "nebulae", "emulator": "balrog.parquet"}


def default_data(preset: str) -> str:
    """The default dataset of `preset`, relative to the data folder."""
    return DEFAULT_DATA[family(preset)]


# Overrides a user may not set: they define the model family of the preset.
FIXED = {"preset", "kind", "image_size"}

# (min, max) bounds for numeric overrides; anything numeric not listed must be >= 0.
BOUNDS: dict[str, tuple[float, float]] = {
    "batch_size": (1, 4096),
    "epochs": (1, 100_000),
    "lr": (1e-7, 1.0),
    "beta1": (0.0, 0.999),
    "beta2": (0.0, 0.9999),
    "n_critic": (1, 20),
    "ema_decay": (0.0, 1.0),
    "latent_dim": (1, 1024),
    "noise_dim": (1, 256),
    "members": (1, 8),
    "hidden": (8, 2048),
    "checkpoint_every": (1, 10**9),
    "sample_count": (1, 256),
    "max_steps": (1, 10**9),
    "min_steps": (0, 10**9),
    "max_rows": (1, 10**9),
    "width": (4, 512),
    "samples_every": (1, 10**6),
    "heldout_fraction": (0.0, 0.9),
    "eval_images": (0, 4096),
    "detector_epochs": (0, 10_000),
    "detector_batch_size": (1, 65_536),
    "detector_lr": (1e-7, 1.0),
    "log_every": (1, 10**9),
    "transforms": (1, 32),
    "bins": (2, 64),
    "patience": (1, 10**6),
    "student_hidden": (8, 2048),
    "student_depth": (1, 16),
    "distill_steps": (1, 10**7),
    "distill_rows": (1024, 20_000_000),
    "distill_batch_size": (1, 65_536),
    "distill_lr": (1e-7, 1.0),
}


# `teacher` as a registered model, `NAME[@VERSION]` (over HTTP the only form accepted)
TEACHER_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}(@[A-Za-z0-9][A-Za-z0-9._-]{0,63})?$")


class PresetError(ValueError):
    """An unknown preset or a bad override; the message says which and why."""


def family(preset: str) -> Family:
    """`image` or `emulator`: the family of the preset's checkpoint kind."""
    if preset not in PRESETS:
        raise PresetError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    return family_of(PRESETS[preset].kind)


def build_config(preset: str, overrides: dict[str, Any] | None = None, *, base: Any = None) -> Any:
    """The preset's config (or `base`, a saved run's config of it) with `overrides` applied
    and checked."""
    family(preset)  # an unknown preset fails here, with the list of known ones
    if base is None:
        base = PRESETS[preset]
    elif base.preset != preset:
        raise PresetError(f"a {base.preset} config cannot be the base of preset {preset!r}")
    overrides = dict(overrides or {})
    known = {f.name: f for f in fields(base)}
    for key, value in overrides.items():
        if key not in known:
            allowed = sorted(set(known) - FIXED)
            raise PresetError(f"unknown override {key!r} for preset {preset!r}; allowed: {allowed}")
        if key in FIXED:
            raise PresetError(f"override {key!r} is fixed by preset {preset!r}")
        default = getattr(base, key)
        overrides[key] = _coerce(key, value, default)
    if "epochs" in overrides and "min_steps" in known and "min_steps" not in overrides:
        overrides["min_steps"] = 0  # a number of epochs asked for is the number that runs
    config = replace(base, **overrides)
    if getattr(config, "flux_offsets", None) is True:
        needs = ("emulate_errors", "error_scale", "flux_errors")  # the own error it divides by
        if off := [k for k in needs if not getattr(config, k)]:
            raise PresetError(f"override 'flux_offsets' true needs {', '.join(off)} true as well")
    return config


def config_to_dict(config: Any) -> dict[str, Any]:
    return asdict(config)


def config_from_dict(data: dict[str, Any]) -> Any:
    """Rebuild a config saved by `config_to_dict` (unknown keys from newer versions ignored)."""
    preset = data.get("preset")
    base = PRESETS.get(preset)
    if base is None:
        raise PresetError(f"unknown preset {preset!r}")
    known = {f.name for f in fields(base)}
    return replace(base, **{k: v for k, v in data.items() if k in known})


def _coerce(key: str, value: Any, default: Any) -> Any:
    if key in ("noise_skip", "flux_offsets", "detection_input"):
        if not (isinstance(value, bool) or value == "auto"):
            raise PresetError(f"override {key!r} must be true, false or auto, got {value!r}")
        return value
    if key == "members" and value == "auto":
        return value
    if isinstance(default, bool) or key in {
        "augment",
        "diffaugment",
        "dry_run",
        "deterministic",
        "emulate_errors",
        "log_conditions",
        "error_scale",
        "flux_errors",
        "error_basis",
    }:
        if not isinstance(value, bool):
            raise PresetError(f"override {key!r} must be true or false, got {value!r}")
        return value
    if key == "stretch":
        if value not in ("none", "log", "asinh"):
            raise PresetError(f"override 'stretch' must be none, log or asinh, got {value!r}")
        return value
    if key == "device":
        if not isinstance(value, str) or not (
            value in ("auto", "cpu", "cuda") or value.startswith("cuda:")
        ):
            raise PresetError(f"override 'device' must be auto, cpu, cuda or cuda:N, got {value!r}")
        return value
    if key == "teacher":
        if value is not None and not (isinstance(value, str) and value):
            raise PresetError(f"override 'teacher' must be a model or checkpoint, got {value!r}")
        return value
    if value is None and key in {"max_steps", "max_rows"}:
        return None
    is_int = isinstance(default, int) or key in {"max_steps", "max_rows", "members"}
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PresetError(f"override {key!r} must be a number, got {value!r}")
    if is_int and not float(value).is_integer():
        raise PresetError(f"override {key!r} must be a whole number, got {value!r}")
    value = int(value) if is_int else float(value)
    lo, hi = BOUNDS.get(key, (0, float("inf")))
    if not lo <= value <= hi:
        raise PresetError(f"override {key!r} must be between {lo} and {hi}, got {value}")
    return value
