"""What every benchmark shares: result tables, the machine they ran on, timing helpers."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Table:
    """One result table: printed as Markdown and kept as JSON beside its reproducing command."""

    title: str
    command: str  # the command that reproduces this table
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    device: str = ""  # what computed the figures, printed in the header

    def markdown(self) -> str:
        head = f"### {self.title}" + (f" — {self.device}" if self.device else "")
        lines = [head, "", f"`{self.command}`", ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in self.rows]
        lines += [""] + [f"- {n}" for n in self.notes] if self.notes else []
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fmt(value: Any) -> str:
    """Three significant figures for floats, everything else as it is."""
    if isinstance(value, float):
        if value != value:  # NaN
            return "–"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}"
    return str(value)


def percentile(xs: list[float], q: float) -> float:
    """The q-th percentile (0–100) by linear interpolation, as numpy does by default."""
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def time_calls(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Wall seconds of `repeats` calls of `fn`."""
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """The facts a figure needs beside it to mean anything."""
    import torch

    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "os": f"{platform.system()} {platform.release()}",
    }


def resolve_device(device: str) -> str:
    """'auto' → 'cuda' when a GPU is visible, else 'cpu'; anything else as given."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def device_label(device: str, threads: int | None = None) -> str:
    """A device in words for a table header: the GPU's name, or the CPU's and its cores."""
    import torch

    device = resolve_device(device)
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        return f"device: {torch.cuda.get_device_name(index)} ({device})"
    used = f", {threads} torch thread(s)" if threads else ""
    return f"device: CPU ({cpu_model()}, {os.cpu_count()} cores{used})"


def peak_rss_mib(pid: int) -> float | None:
    """A live process's peak resident memory (VmHWM), MiB; None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
