"""Devices: this rank's GPU is LOCAL_RANK mod the visible GPUs, `--device auto` says why it fell back to the CPU
(the run's line and its records), and the suite itself is pinned to the CPU."""
from __future__ import annotations

import os
import warnings

import pytest
import torch

import ddkit.utils as U
from ddkit.cli import main


@pytest.fixture
def fake_cuda(monkeypatch):
    """CUDA that answers as a host with `n` GPUs would (nothing is allocated)."""
    def setup(n: int, available: bool = True, warn: str = ""):
        def is_available() -> bool:
            if warn:
                warnings.warn(warn)
            return available
        monkeypatch.setattr(torch.version, "cuda", "12.4")
        monkeypatch.setattr(torch.cuda, "is_available", is_available)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Fake GPU")
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return setup


@pytest.mark.parametrize("local,count,want", [(0, 8, 0), (5, 8, 5), (3, 1, 0), (5, 4, 1), (0, 0, 0)])
def test_rank_gpu_is_local_rank_mod_visible_gpus(monkeypatch, fake_cuda, local, count, want):
    fake_cuda(count)
    monkeypatch.setenv("LOCAL_RANK", str(local))
    assert U.rank_cuda_device() == torch.device("cuda", want)
    if count:  # SLURM --gpus-per-task=1: every rank sees one GPU, cuda:0, whatever its LOCAL_RANK
        assert U.get_device("auto") == torch.device("cuda", want)
        assert "Fake GPU" in U.device_note(U.get_device("auto"))


def test_auto_falls_back_to_the_cpu_and_says_why(monkeypatch, fake_cuda):
    fake_cuda(0, available=False, warn="CUDA initialization: The NVIDIA driver on your system is too old")
    assert U.get_device("auto") == torch.device("cpu")
    note = U.device_note("cpu")
    assert note.startswith("device cpu (--device auto fell back to the CPU: CUDA is unusable:") and "too old" in note
    assert U.machine_info(torch.device("cpu"))["device"] == note  # what summaries, sets and runs.jsonl record
    with pytest.raises(RuntimeError, match="too old"):  # an explicit cuda is refused with the same reason
        U.get_device("cuda")
    fake_cuda(0, available=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert "CUDA_VISIBLE_DEVICES='' hides every GPU" in (U.cuda_unusable() or "")
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    assert "has no CUDA" in (U.cuda_unusable() or "")


def test_every_cli_run_prints_its_device(tmp_path, capsys):
    assert main(["distill", "--dataset", "digits", "--device", "auto", "--no-progress", "--method", "random",
                 "--ipc", "1", "--output", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "ddkit: device cpu (--device auto fell back to the CPU: " in out
    assert main(["distill", "--dataset", "digits", "--device", "cpu", "--no-progress", "--method", "random",
                 "--ipc", "1", "--output", str(tmp_path / "s2")]) == 0
    assert "ddkit: device cpu\n" in capsys.readouterr().out


def test_the_suite_is_pinned_to_the_cpu():
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == "" and not torch.cuda.is_available()
    assert U.get_device("auto").type == "cpu"
