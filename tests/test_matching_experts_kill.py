"""`ddkit experts train` killed with SIGKILL mid-run resumes to the bytes of an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from ddkit.data import create_dataset
from ddkit.teachers.experts import ExpertConfig, train_experts

SRC = str(Path(__file__).resolve().parents[1] / "src")
OPTS = dict(arch="mlp", num_experts=2, epochs=12, batch_size=8, subset_per_class=20, test_limit=50)


def _cmd(out: Path) -> list:
    flags = [x for k, v in OPTS.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    return [sys.executable, "-m", "ddkit", "experts", "train", "--dataset", "digits", "--device", "cpu",
            "--no-progress", "--output", str(out)] + flags


def test_kill_9_then_resume_equals_uninterrupted(tmp_path):
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    full, cut = tmp_path / "full", tmp_path / "cut"
    killed = subprocess.Popen(_cmd(cut), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and killed.poll() is None and not list(cut.glob(".expert_*.partial.pt")):
        time.sleep(0.005)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert len(list(cut.glob("expert_*.safetensors"))) < 2  # it really was interrupted
    r = subprocess.run(_cmd(cut), env=env, capture_output=True, text=True, timeout=300)  # resume
    assert r.returncode == 0, r.stderr[-2000:]
    assert "epoch 12/12" in r.stdout + r.stderr  # the one-line-per-epoch log
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1), so float results agree bit for bit
    try:
        train, test = create_dataset("digits", split="train"), create_dataset("digits", split="test")
        train_experts(train, test, ExpertConfig(**OPTS), full, device=torch.device("cpu"), progress=False)
    finally:
        torch.set_num_threads(threads)
    for name in ["buffer.json"] + [f"expert_{e:04d}.safetensors" for e in range(2)]:
        assert (cut / name).read_bytes() == (full / name).read_bytes(), name
    assert not list(cut.glob(".*partial*"))
