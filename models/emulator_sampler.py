"""Emulator inference: sample detection and observed magnitudes, for arrays and whole catalogs.

Randomness is counter-based by row: the draws for rows `[b·BLOCK_ROWS, (b+1)·BLOCK_ROWS)`
come from a CPU `torch.Generator` seeded with `(seed, b)`. A row's result therefore depends
only on the seed and its position, never on the device, the other rows of the batch or the
chunk size a file is streamed with.

Three model kinds are served the same way: the cWGAN-GP generator (`cwgan-gp`), the
conditional normalizing flow (`cflow`) and the flow's one-pass distilled student
(`cflow-distilled`); each maps (noise, conditions, true magnitudes) to the standardized
observed − true offsets (and log magnitude errors, when the model has them).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from models.columns import INPUTS
from models.device import resolve_device
from models.emulator import (
    Detector,
    EmulatorConfig,
    EmulatorScalers,
    build_generator,
    generator_conditions,
)
from models.flow import FlowConfig, FlowStudent, OffsetFlow
from models.kinds import EMULATOR_KINDS

log = logging.getLogger(__name__)

BLOCK_ROWS = 1024  # rows per independently seeded block of random draws
FORWARD_ROWS = 65_536  # rows per forward pass (bounds memory for large inputs)


def _block_seed(seed: int, block: int) -> int:
    """A 63-bit generator seed for one block, mixed from (seed, block) by SeedSequence."""
    state = np.random.SeedSequence([int(seed) & (2**64 - 1), int(block)]).generate_state(2)
    return int(state[0]) << 31 ^ int(state[1])


def random_seed() -> int:
    """A fresh seed for callers that did not ask for reproducibility."""
    return int.from_bytes(os.urandom(8), "little") >> 1


@dataclass
class EmulatedRows:
    """One realization per row: what the emulator says a survey would measure."""

    mags: np.ndarray  # (M, 3) float64 mag_{r,i,z}, NaN where not detected
    magerr: np.ndarray | None  # (M, 3) float64 magerr_{r,i,z}, NaN where not detected; None
    # when the model does not emulate errors (checkpoints from before them)
    detected: np.ndarray  # (M,) bool
    out_of_domain: np.ndarray  # (M,) bool: an input outside the training ranges

    def slice(self, start: int, stop: int) -> EmulatedRows:
        """Rows `start … stop−1`."""
        sl = slice(start, stop)
        magerr = None if self.magerr is None else self.magerr[sl]
        return EmulatedRows(self.mags[sl], magerr, self.detected[sl], self.out_of_domain[sl])


def build_offset_model(kind: str, config: dict[str, Any]) -> tuple[nn.Module, Detector]:
    """The (untrained) offset network and detection classifier of an emulator checkpoint kind."""
    if kind in ("cflow", "cflow-distilled"):
        flow_cfg = FlowConfig.from_dict(config)
        net = OffsetFlow(flow_cfg) if kind == "cflow" else FlowStudent(flow_cfg)
        return net, Detector(flow_cfg)
    gan_cfg = EmulatorConfig.from_dict(config)
    return build_generator(gan_cfg), Detector(gan_cfg)


class EmulatorSampler:
    """A trained emulator: calibrated detection classifier + EMA generator (or flow) + scalers."""

    def __init__(
        self,
        generator: nn.Module,
        detector: Detector,
        scalers: EmulatorScalers,
        device: torch.device,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.generator = generator.eval().requires_grad_(False)
        self.detector = detector.eval().requires_grad_(False)
        self.scalers = scalers
        self.device = device
        self.meta = meta or {}

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "auto") -> EmulatorSampler:
        """Rebuild from an emulator checkpoint (inference-only or full)."""
        return cls.from_checkpoint(load_checkpoint(path, map_location="cpu"), device, str(path))

    @classmethod
    def from_checkpoint(
        cls, ckpt: Checkpoint, device: str | torch.device = "auto", name: str = "model"
    ) -> EmulatorSampler:
        """Build from an already loaded checkpoint."""
        if ckpt.kind not in EMULATOR_KINDS:
            raise CheckpointError(f"{name} holds a {ckpt.kind!r} model, not an emulator")
        dev = resolve_device(device)
        generator, detector = build_offset_model(ckpt.kind, ckpt.config)
        generator.load_state_dict(ckpt.ema)
        detector.load_state_dict(ckpt.extra["detector"])
        scalers = EmulatorScalers.from_dict(ckpt.preprocessing)
        meta = {
            "kind": ckpt.kind,
            "step": ckpt.step,
            "epoch": ckpt.epoch,
            **{k: ckpt.extra.get(k) for k in ("preset", "calibration", "metrics")},
        }
        return cls(generator.to(dev), detector.to(dev), scalers, dev, meta)

    @property
    def noise_dim(self) -> int:
        """Noise columns drawn per row (a generator mixture's pick of member included)."""
        return self.generator.cfg.draw_dim

    @property
    def emulates_errors(self) -> bool:
        """Whether the model draws `magerr_{r,i,z}` along with the magnitudes."""
        return self.scalers.out_dim == 6

    # ---- randomness ----------------------------------------------------------------------
    def draws(
        self, rows: int, samples: int = 1, seed: int = 0, start: int = 0
    ) -> tuple[Tensor, Tensor]:
        """Noise (rows·samples, noise_dim) and detection uniforms (rows·samples,) on the CPU.

        For rows `start … start+rows−1` of a catalog; realization k of row i sits at index
        `(i − start)·samples + k`.
        """
        if rows == 0:
            return torch.zeros(0, self.noise_dim), torch.zeros(0, dtype=torch.float64)
        first, last = start // BLOCK_ROWS, (start + rows - 1) // BLOCK_ROWS
        noise, uniforms = [], []
        for b in range(first, last + 1):
            g = torch.Generator().manual_seed(_block_seed(seed, b))
            n = BLOCK_ROWS * samples
            uniforms.append(torch.rand(n, generator=g, dtype=torch.float64))
            noise.append(torch.randn(n, self.noise_dim, generator=g))
        lo = (start - first * BLOCK_ROWS) * samples
        hi = lo + rows * samples
        return torch.cat(noise)[lo:hi], torch.cat(uniforms)[lo:hi]

    def noise(self, n: int, seed: int) -> Tensor:
        """The generator noise (n, noise_dim) of `n` rows for `seed` (CPU, device-independent)."""
        return self.draws(n, 1, seed)[0]

    # ---- sampling ------------------------------------------------------------------------
    @torch.no_grad()
    def detection_probability(self, x: np.ndarray) -> np.ndarray:
        """Calibrated P(detected) per row of raw inputs (N, 9) → (N,) float64."""
        x = _check_inputs(x)
        out = []
        for i in range(0, len(x), FORWARD_ROWS):
            xt = torch.tensor(x[i : i + FORWARD_ROWS], dtype=torch.float32, device=self.device)
            cond, true = self.scalers.split_inputs(xt)
            out.append(self.detector.calibrated_prob(cond, true).double().cpu())
        return torch.cat(out).numpy() if out else np.zeros(0)

    @torch.no_grad()
    def sample_outputs(self, x: np.ndarray, noise: Tensor, uniforms: Tensor) -> EmulatedRows:
        """One realization per row of `x` (M, 9) with the given draws.

        `noise` (M, noise_dim) and `uniforms` (M,) come from `draws`; a row is detected when
        its uniform is below its calibrated detection probability, and only detected rows
        get magnitudes (and errors). Rows never interact, so callers may concatenate the
        inputs and draws of many requests and run them in one pass.
        """
        x = _check_inputs(x)
        if noise.shape != (len(x), self.noise_dim) or uniforms.shape != (len(x),):
            raise ValueError(
                f"draws do not match {len(x)} rows: noise {tuple(noise.shape)}, "
                f"uniforms {tuple(uniforms.shape)}"
            )
        out = np.full((len(x), self.scalers.out_dim), np.nan)
        detected = np.zeros(len(x), dtype=bool)
        for i in range(0, len(x), FORWARD_ROWS):
            sl = slice(i, i + FORWARD_ROWS)
            xt = torch.tensor(x[sl], dtype=torch.float32, device=self.device)  # (m, 9)
            cond, true = self.scalers.split_inputs(xt)  # (m, 6), (m, 3)
            logit = self.detector.calibrated_logit(cond, true)  # (m,)
            prob = torch.sigmoid(logit).double().cpu()
            det = (uniforms[sl].double() < prob).numpy()
            detected[sl] = det
            if not det.any():
                continue
            keep = torch.from_numpy(det).to(self.device)
            z = noise[sl][torch.from_numpy(det)].to(self.device)  # (d, noise_dim)
            cond_d, true_d = cond[keep], true[keep]  # the logit is the generator's too
            given = generator_conditions(self.generator.cfg, None, cond_d, true_d, logit[keep])
            target = self.generator(z, given, true_d).double().cpu().numpy()  # (d, D)
            x_raw = x[sl][det].astype(np.float64)
            out[np.flatnonzero(det) + i] = self.scalers.observed_numpy(target, x_raw)
        return EmulatedRows(
            mags=out[:, :3],
            magerr=out[:, 3:] if self.emulates_errors else None,
            detected=detected,
            out_of_domain=self.scalers.out_of_domain(x),
        )

    def sample_with(
        self, x: np.ndarray, noise: Tensor, uniforms: Tensor
    ) -> tuple[np.ndarray, np.ndarray]:
        """`sample_outputs` reduced to magnitudes (M, 3) float64 and detected (M,) bool."""
        rows = self.sample_outputs(x, noise, uniforms)
        return rows.mags, rows.detected

    def emulate(self, x: np.ndarray, samples: int = 1, seed: int | None = None) -> EmulatedRows:
        """`samples` realizations per row of raw inputs `x` (N, 9), all outputs.

        Realization k of row i is at index i·samples + k (the draws of `sample`).
        """
        x = _check_inputs(x)
        if samples < 1:
            raise ValueError(f"samples must be at least 1, got {samples}")
        seed = random_seed() if seed is None else seed
        noise, uniforms = self.draws(len(x), samples, seed)
        return self.sample_outputs(np.repeat(x, samples, axis=0), noise, uniforms)

    def sample(
        self, x: np.ndarray, samples: int = 1, seed: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`samples` realizations per row of raw inputs `x` (N, 9), in `columns.INPUTS` order.

        Returns magnitudes (N·samples, 3) float64 with NaN where not detected and detected
        (N·samples,) bool; realization k of row i is at index i·samples + k.
        """
        rows = self.emulate(x, samples, seed)
        return rows.mags, rows.detected


def _check_inputs(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != len(INPUTS):
        raise ValueError(f"emulator inputs must have shape (N, {len(INPUTS)}), got {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"emulator inputs must be numbers, got dtype {x.dtype}")
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))[:5].tolist()
        raise ValueError(f"emulator inputs must be finite; rows {bad} are not")
    return x


__all__ = ["BLOCK_ROWS", "EmulatedRows", "EmulatorSampler", "build_offset_model", "random_seed"]
