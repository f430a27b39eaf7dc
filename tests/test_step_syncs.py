"""The student step that does not wait on the host: the default `cim` step draws its augmentation parameters and
batch indices K steps ahead into one device buffer, keeps its constants on the device and reads nothing back, and
trains the very same student as the step-by-step path (same draws in the same order, bit for bit on CPU).

Host synchronisations are counted with bench/step_syncs.py's SyncCounter, which follows where each tensor would
live on a GPU (tests/test_step_syncs.py checks the counter itself on known patterns first)."""
from __future__ import annotations

import pytest
import torch

from ddkit.augment import dsa
from ddkit.augment.ahead import DrawAhead
from tests.conftest import load_bench_script

bench = load_bench_script("step_syncs.py")
CPU = torch.device("cpu")


def test_counter_sees_copies_and_reads_where_a_gpu_would_wait():
    g = torch.Generator().manual_seed(0)
    dev_x = torch.ones(4, 3)  # made before counting: a device tensor
    with bench.SyncCounter(CPU) as c:
        p = torch.rand(4, generator=g)          # a host draw ...
        q = (p - 0.5) * 2                       # ... stays on the host through arithmetic
        _ = float(q[0])                         # a read of a host tensor: free
        d = q.to(CPU)                           # host -> device: one copy
        _ = d.sum().item()                      # a read of a device tensor: one sync
        _ = torch.tensor([1.0, 2.0], device=CPU)  # Python data onto the device: one copy
        _ = torch.arange(3, device=CPU) + dev_x.sum()  # made on the device: nothing
        _ = (dev_x * d[:, None]).tolist()        # device result read back: one sync
    assert sum(c.h2d.values()) == 2 and sum(c.d2h.values()) == 2, (c.h2d, c.d2h)
    assert all(site.startswith("test_step_syncs.py:") for site in [*c.h2d, *c.d2h])


def test_draw_ahead_returns_the_step_by_step_draws_in_one_copy():
    aug = dsa("color_crop_cutout_flip_scale_rotate")
    one, ahead = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    buf = DrawAhead(lambda: aug.sample(5, (5, 3, 8, 8), generator=ahead), CPU, steps=4)
    for _ in range(10):  # crosses two refills
        want, got = aug.sample(5, (5, 3, 8, 8), generator=one), buf.next()
        assert sorted(want) == sorted(got)
        for k in want:
            assert want[k].dtype == got[k].dtype and torch.equal(want[k], got[k]), k
    assert buf.copies == 3  # one packed buffer per refill
    with pytest.raises(ValueError):
        DrawAhead(lambda: {}, CPU, steps=0)


@pytest.mark.parametrize("regime", ["hl", "slkd"])
def test_default_cim_step_syncs_fall_and_the_student_is_unchanged(regime):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        old, new = (bench.cim_trainer(CPU, ahead, ipc=2, classes=4, size=16, regime=regime) for ahead in (0, 8))
        if regime == "slkd":  # an online teacher: its forward must not add syncs either
            from ddkit.evaluate.student import teacher_forward
            from ddkit.models import create_model
            from ddkit.teachers import Teacher

            torch.manual_seed(1)
            t = Teacher(create_model("convnet-d1", 4, 16, width=8), "convnet-d1", [str(i) for i in range(4)],
                        (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), 16)
            for tr in (old, new):
                tr.targets.teacher_fn = teacher_forward(t, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), 16, CPU, False)
        before, after = (bench.count_syncs(tr, steps=16, warmup=8) for tr in (old, new))  # 24 steps each
        # step by step: every parameter of FactorCrop, the DSA chain and the batch indices is its own copy
        assert before["h2d_per_step"] >= 9, before
        # drawn ahead: one copy per 8 steps (the packed buffer), constants cached on the device, no reads
        assert after["h2d_per_step"] <= 1 / 8 + 1e-9 and after["d2h_per_step"] == 0, after
        assert before["d2h_per_step"] == after["d2h_per_step"] == 0
        for a, b in zip(old.model.state_dict().values(), new.model.state_dict().values()):
            assert torch.equal(a, b)  # the same draws in the same order: the same student, bit for bit
        losses = [(old.step(), new.step()) for _ in range(5)]
        assert all(torch.equal(a, b) for a, b in losses)
    finally:
        torch.set_num_threads(n)
