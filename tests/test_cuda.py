"""The CUDA group (`DDKIT_TEST_CUDA=1 python -m pytest -m cuda tests`; deselected in the CPU suite): the device a
run takes, the draw-ahead step on a real GPU (one copy per buffer, no reads, finite bf16 losses), and a teacher
checkpoint started on CUDA refused on the CPU."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from ddkit.utils import DDKitError, device_note, get_device
from tests.conftest import load_bench_script, make_toy

pytestmark = pytest.mark.cuda


def test_auto_takes_this_ranks_gpu(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", str(torch.cuda.device_count()))  # one past the last GPU: wraps to cuda:0
    dev = get_device("auto")
    assert dev == torch.device("cuda", 0) and torch.cuda.get_device_name(0) in device_note(dev)


def test_draw_ahead_step_on_the_gpu_copies_once_per_buffer_and_reads_nothing():
    bench = load_bench_script("step_syncs.py")
    dev = torch.device("cuda")
    t = bench.cim_trainer(dev, 8)
    c = bench.count_syncs(t, steps=16, warmup=8)
    assert c["h2d_per_step"] <= 1 / 8 + 1e-9 and c["d2h_per_step"] == 0, c
    losses = torch.stack([t.step() for _ in range(4)])
    assert losses.device.type == "cuda" and bool(torch.isfinite(losses).all())


def test_cuda_checkpoint_is_refused_on_the_cpu(tmp_path):
    from ddkit.teachers.train import TeacherConfig, train_teacher
    import ddkit.teachers.train as tt

    train, test = make_toy(16, 4, 8), make_toy(4, 4, 8, seed=1, split="test")
    cfg = dataclasses.replace(TeacherConfig(arch="convnet-d1", arch_kw={"width": 8}), epochs=2, batch_size=16)
    ckpt = tmp_path / "t.ckpt"
    real = tt._log_epoch

    class Stop(Exception):
        pass

    def stop(run, rec, total, fh):
        real(run, rec, total, fh)
        raise Stop

    tt._log_epoch = stop
    try:
        with pytest.raises(Stop):
            train_teacher(train, test, cfg, "cuda", progress=False, checkpoint=ckpt)
    finally:
        tt._log_epoch = real
    with pytest.raises(DDKitError, match="started on cuda and cannot go on on cpu"):
        train_teacher(train, test, cfg, "cpu", progress=False, checkpoint=ckpt)
