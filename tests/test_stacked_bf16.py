"""bf16 kept inside the stacked (vmap) step: `torch.autocast` does not reach through vmap, `VmapAutocast` does.

The CPU tests force the bf16 decision (`cpu_bf16_native` → True) so they run the same on a CPU without native
bf16 (there bf16 is emulated: slower, same numbers)."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
from torch.func import functional_call, stack_module_state, vmap

import ddkit.utils
from ddkit.evaluate import EvalConfig, make_criterion, make_plan, resolve_recipe
from ddkit.evaluate.losses import LOSSES
from ddkit.evaluate.stacked import StackedTrainer
from ddkit.evaluate.student import StudentTrainer, Targets, Views, teacher_forward
from ddkit.evaluate.vmap_amp import VmapAutocast, vmap_autocast
from ddkit.models import create_model
from ddkit.teachers import Teacher
from ddkit.utils import derive_seed, make_generator

pytestmark = pytest.mark.usefixtures("one_thread")
K, SEEDS = 4, [0, 1, 2]
BF16_STEP = 2.0 ** -8  # spacing of bf16 numbers relative to their size (8 significant bits)


@pytest.fixture
def bf16_cpu(monkeypatch):
    monkeypatch.setattr(ddkit.utils, "cpu_bf16_native", lambda: True)


def _student(seed: int, depth: int = 2) -> nn.Module:
    torch.manual_seed(derive_seed(seed, "init"))
    return create_model(f"convnet-d{depth}", num_classes=K, image_size=8, width=8)


def _dtypes(module: nn.Module):
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((type(m).__name__, o.dtype)))
             for m in module.modules() if not list(m.children())]
    return seen, hooks


def test_the_mode_is_autocast_on_a_plain_module():
    """Outside vmap the mode's casts are autocast's, bit for bit (CPU policy); under the CUDA policy (exercised
    on CPU tensors) GroupNorm runs in fp32 and the convolutions in bf16, as CUDA autocast does."""
    m, x = _student(0), torch.randn(5, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = m(x)
    with VmapAutocast("cpu"):
        out = m(x)
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref)
    seen, hooks = _dtypes(m)
    with VmapAutocast("cuda"):
        m(x)
    for h in hooks:
        h.remove()
    kinds = dict(seen)
    assert kinds["Conv2d"] == kinds["Linear"] == torch.bfloat16 and kinds["GroupNorm"] == torch.float32


def test_autocast_is_lost_inside_vmap_and_the_mode_keeps_it():
    """The reason for the mode: under torch.autocast a vmapped conv runs in fp32; under the mode every layer of
    every stacked student computes in bf16 (the weights' gradients stay fp32)."""
    ms = [_student(s) for s in SEEDS]
    params, _ = stack_module_state(ms)
    base = ms[0]
    f = vmap(lambda p, x: functional_call(base, p, (x,)))
    x = torch.randn(len(ms), 5, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert f(params, x).dtype == torch.float32
    seen, hooks = _dtypes(base)
    with VmapAutocast("cpu"):
        out = f(params, x)
    out.float().sum().backward()
    for h in hooks:
        h.remove()
    assert out.dtype == torch.bfloat16 and {d for _, d in seen} == {torch.bfloat16}
    assert params["classifier.weight"].grad.dtype == torch.float32
    # Each student's logits within two bf16 steps of its own autocast forward: vmap adds a conv's / linear's bias
    # after the product (one more rounding to bf16 than the fused kernel), which can move an output by one step.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = torch.stack([m(x[i]) for i, m in enumerate(ms)])
    scale = ref.float().abs().max()
    assert (out.float() - ref.float()).abs().max() <= 2 * BF16_STEP * scale


def test_vmap_autocast_follows_ddkit_autocast(bf16_cpu, monkeypatch):
    cpu = torch.device("cpu")
    assert isinstance(vmap_autocast(cpu, True, cpu=True), VmapAutocast)
    assert not isinstance(vmap_autocast(cpu, True, cpu=False), VmapAutocast)  # CPU bf16 only when asked
    with warnings.catch_warnings():  # torch warns that CUDA is absent; the decision is what is checked here
        warnings.simplefilter("ignore")
        assert isinstance(vmap_autocast(torch.device("cuda"), True), VmapAutocast)  # the context CUDA would use
        assert not isinstance(vmap_autocast(torch.device("cuda"), False), VmapAutocast)
    monkeypatch.setattr(ddkit.utils, "cpu_bf16_native", lambda: False)
    assert not isinstance(vmap_autocast(cpu, True, cpu=True), VmapAutocast)  # emulated bf16: stay fp32


@pytest.mark.parametrize("recipe,regime", [("dc", "hl"), ("cim", "slkd")])
def test_stacked_bf16_steps_equal_per_student_bf16_steps(bf16_cpu, recipe, regime):
    """`--cpu-amp` stacked equals `--cpu-amp` one at a time within bf16 tolerance, and runs in bf16 inside.

    Tolerance: each stacked student's logits sit within a bf16 step or two of its own run's (see above); a step's
    loss is a mean over the batch of functions of them, and six optimiser steps compound the drift a little.
    Measured: at most 7e-3 relative over 12 steps (SL+KD's MSE), 1.2e-3 under HL; 2e-2 (five bf16 steps) bounds
    it with room. That bf16 (not fp32) ran inside vmap is checked on the layers' output dtypes."""
    torch.manual_seed(5)
    tnet = create_model("convnet-d1", num_classes=K, image_size=8, width=8).eval()
    mean, std = (0.5,) * 3, (0.25,) * 3
    teacher = Teacher(tnet, "convnet-d1", [str(i) for i in range(K)], mean, std, image_size=8)
    n, dev = 12, torch.device("cpu")
    images, labels = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(3)), torch.arange(n) % K
    rec = resolve_recipe(EvalConfig(recipe=recipe, regime=regime, epochs=20), n_images=n, num_classes=K, ipc=3,
                         image_size=8)
    plan = make_plan(rec, n)
    spec = LOSSES.get(rec.loss_for(regime))
    fn = teacher_forward(teacher, mean, std, 8, dev, True, cpu_amp=True) if regime == "slkd" else None
    targets = Targets(regime, K, spec, rec.temperature, teacher_fn=fn)
    crit = make_criterion(spec.name, temperature=rec.temperature)
    views = Views(rec, 8, mean, std)
    own = []
    for s in SEEDS:
        tr = StudentTrainer(_student(s), images, labels, rec, plan, views, targets, crit, device=dev,
                            order_gen=make_generator(s, "order"), aug_gen=make_generator(s, "aug"), cpu_amp=True)
        own.append(torch.stack([tr.step() for _ in range(6)]))
    st = StackedTrainer([_student(s) for s in SEEDS], SEEDS, images, labels, rec, plan, views, targets, crit,
                        device=dev, cpu_amp=True)
    seen, hooks = _dtypes(st.base)
    stacked = torch.stack([st.step() for _ in range(6)])
    for h in hooks:
        h.remove()
    assert seen and {d for _, d in seen} == {torch.bfloat16}
    torch.testing.assert_close(stacked, torch.stack(own, 1), rtol=2e-2, atol=1e-6)
