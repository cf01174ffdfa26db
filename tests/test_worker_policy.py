"""Torch threads per worker process: a training worker's processes share the cores."""

from __future__ import annotations

import pytest
import torch

from launcher.supervisor import worker_env
from worker.policy import DATA_QUEUE, INFERENCE_QUEUE, TRAINING_QUEUE, torch_threads
from worker.training_job import _limit_torch_threads


def test_training_processes_split_the_cores_among_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert torch_threads(TRAINING_QUEUE) == 15  # one core left for requests
    assert torch_threads(TRAINING_QUEUE, 2) == 7
    assert torch_threads(TRAINING_QUEUE, 40) == 1
    assert torch_threads(INFERENCE_QUEUE, 2) == 4 and torch_threads(DATA_QUEUE, 8) == 1
    env = worker_env(TRAINING_QUEUE, {"OMP_NUM_THREADS": "16", "KEEP": "1"}, 3)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "5" and env["KEEP"] == "1"
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert worker_env(TRAINING_QUEUE, {}, 2)["OMP_NUM_THREADS"] == "1"


def test_a_training_job_keeps_the_threads_its_worker_was_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = torch.get_num_threads()
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        _limit_torch_threads()
        assert torch.get_num_threads() == 3
        monkeypatch.delenv("OMP_NUM_THREADS")
        _limit_torch_threads()  # started by hand: the policy's for one process
        assert torch.get_num_threads() == 15
    finally:
        torch.set_num_threads(before)
