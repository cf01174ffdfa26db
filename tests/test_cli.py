"""The `cosmogan` command line: version, help, Ctrl-C during training, --resume, the bar."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.cli import _parser, main
from tests.integration.conftest import make_images
from training.commands import StepBar

TINY = ["--set", "width=8", "--set", "sample_count=4", "--set", "heldout_fraction=0.0"]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("cosmogan ")


def _parsers(parser: argparse.ArgumentParser, name: str = "cosmogan"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_every_option_says_what_it_means_and_shows_its_default() -> None:
    commands = dict(_parsers(_parser()))
    assert {"cosmogan train", "cosmogan data balrog", "cosmogan serve"} <= set(commands)
    for name, parser in commands.items():
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    text = commands["cosmogan generate"].format_help()
    assert "same seed, same images (default: 0)" in text
    assert "(default: grid.png)" in text and "(default: None)" not in text
    assert "(default: 100000)" in commands["cosmogan data balrog"].format_help()


def test_resume_without_a_checkpoint_is_an_error(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = home / "runs" / "nothing-here"
    assert main(["-q", "train", "balrog", "--dry-run", "--resume", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "nothing to resume" in err and str(out) in err
    assert not (out / "checkpoints").exists()


def test_ctrl_c_saves_a_checkpoint_and_resume_continues_from_it(tmp_path: Path) -> None:
    make_images(tmp_path / "images", n=8, size=64)
    out = tmp_path / "run"
    env = {**os.environ, "COSMOGAN_HOME": str(tmp_path / "home"), "COSMOGAN_DEVICE": "cpu"}
    base = [sys.executable, "-m", "launcher", "-q", "train", "nebula-dcgan"]
    args = [*base, "--data", str(tmp_path / "images"), "--out", str(out), "--batch-size", "4"]
    args += [*TINY, "--set", "checkpoint_every=3", "--epochs", "10000"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoints" / "last.pt").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint written in time"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr.decode()
    result = json.loads(stdout)
    assert result["status"] == "cancelled" and result["step"] >= 3
    assert f"interrupted at step {result['step']}" in stderr.decode()
    assert "--resume" in stderr.decode()

    # resumed: it starts at the interrupted step (not 0) and runs two more
    stop_at = result["step"] + 2
    again = subprocess.run(
        [*args, "--resume", "--max-steps", str(stop_at)], env=env, capture_output=True, timeout=120
    )
    assert again.returncode == 0, again.stderr.decode()
    final = json.loads(again.stdout)
    assert final["status"] == "succeeded" and final["step"] == stop_at
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in logged if "step" in m]
    assert min(s for s in steps if s > result["step"]) == result["step"] + 1


def test_the_eta_leaves_out_the_time_before_the_first_step(monkeypatch) -> None:
    import tqdm.std

    now = {"t": 0.0}
    monkeypatch.setattr(tqdm.std, "time", lambda: now["t"])
    bar = StepBar()

    def at(t: float, event: dict) -> None:
        now["t"] = t
        bar({"total_steps": 100, **event})

    try:
        at(0.0, {"step": 0, "losses": {"detector_bce": 0.7}})
        at(100.0, {"step": 0, "losses": {"detector_bce": 0.3}})  # the detector phase ends
        at(101.0, {"step": 10})
        at(102.0, {"step": 20})
        info = bar.bar.format_dict
        # 20 steps in the 2 s since the detector phase: 10 steps/s, so 8 s to go
        assert info["elapsed"] == pytest.approx(2.0)
        assert info["rate"] == pytest.approx(10.0)
        assert "<00:08" in bar.bar.format_meter(**info)
    finally:
        bar.close()


def test_the_bar_counts_only_steps_it_has_seen_run() -> None:
    bar = StepBar()
    try:
        bar({"step": 40, "total_steps": 100, "epoch": 4, "epochs": 10, "losses": {"g": 1.0}})
        bar({"step": 45, "total_steps": 100, "epoch": 4, "epochs": 10, "losses": {"g": 0.5}})
        info = bar.bar.format_dict
        # the 40 steps done before a resume (and the setup time) are not in the rate
        assert info["initial"] == 40 and info["n"] == 45 and info["total"] == 100
    finally:
        bar.close()


# --------------------------------------------------------------------------------------------
# --resume continues the run that was saved, with its data and settings

FLOW = ["--set", "hidden=16", "--set", "transforms=1", "--set", "detector_epochs=1"]
FLOW += ["--batch-size", "256", "--device", "cpu"]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _ctrl_c_at(step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """One real SIGINT to this process once the bar has shown `step` (the CLI's handler)."""
    show = StepBar.__call__
    sent: list[int] = []

    def show_then_interrupt(self: StepBar, event: dict) -> None:
        show(self, event)
        if event["step"] >= step and not sent:
            sent.append(step)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(StepBar, "__call__", show_then_interrupt)


def test_an_interrupted_run_resumes_with_its_data_and_settings(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    from tests.catalogs import make_analytic_catalog

    data = make_analytic_catalog(tmp_path / "mid.parquet", 1500)
    out = tmp_path / "runs" / "x"
    _ctrl_c_at(2, monkeypatch)
    first = ["-q", "train", "balrog-flow", "--data", str(data), "--epochs", "6"]
    assert main([*first, "--out", str(out), *FLOW]) == 130
    captured = capsys.readouterr()
    cut = json.loads(captured.out)
    assert cut["status"] == "cancelled" and cut["step"] == 2
    again = captured.err.split("continue with: ")[1].strip()
    assert again == f"cosmogan train balrog-flow --resume --out {out}"

    # the printed command alone: the data and --epochs 6 come from the run's config.json
    assert main(["-q", *shlex.split(again)[1:]]) == 0
    done = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "config.json").read_text())
    assert done["status"] == "succeeded" and done["epoch"] == 6  # not the preset's 100
    assert saved["epochs"] == 6 and saved["data"] == str(data) and saved["hidden"] == 16
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and min(s for s in steps if s > 2) == 3


def test_a_failed_resume_changes_nothing_on_disk(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    from tests.catalogs import make_analytic_catalog

    data = make_analytic_catalog(tmp_path / "mid.parquet", 1500)
    out = tmp_path / "runs" / "x"
    args = ["-q", "train", "balrog-flow", "--data", str(data), "--epochs", "12"]
    assert main([*args, "--out", str(out), "--max-steps", "2", *FLOW]) == 0
    capsys.readouterr()
    before = _files(out)
    assert json.loads(before["config.json"])["epochs"] == 12

    moved = data.rename(tmp_path / "elsewhere.parquet")
    resume = ["-q", "train", "balrog-flow", "--resume", "--out", str(out)]
    assert main([*resume, "--epochs", "30"]) == 2  # the saved catalog is gone
    assert str(data) in capsys.readouterr().err
    assert main(["-q", "train", "balrog", "--resume", "--out", str(out)]) == 2  # another preset
    err = capsys.readouterr().err
    assert "holds a balrog-flow run" in err and "cosmogan train balrog-flow --resume" in err
    assert main([*resume, "--data", str(moved), "--set", "hidden=4"]) == 2  # out of bounds
    assert "hidden" in capsys.readouterr().err
    assert _files(out) == before  # config.json still says 12 epochs, nothing else touched

    # --data points a resume at the moved catalog; --max-steps extends the saved settings
    assert main([*resume, "--data", str(moved), "--max-steps", "4"]) == 0
    done = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "config.json").read_text())
    assert done["step"] == 4 and saved["epochs"] == 12 and saved["max_steps"] == 4
    assert saved["data"] == str(moved)
