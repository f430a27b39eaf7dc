"""DWA's first Adam step (#27, the DWA recover-loop parity row): the official distillation_cifar.py zeroes the
image gradient before its K adjustment passes, so their CE gradients w.r.t. the images reach the first step;
`first_step=official` (the default with the official batch unit) reproduces that, `clean` leaves them out (the
class-unit variant's default). Both are checked against a hand-run
of the loop written here: K passes of CE backward (moving the weights up by ρ/K · g/‖g‖ after each), the step's
own loss backward, Adam(0.5, 0.9) with the cosine lr."""
from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from ddkit.methods import create_method
from ddkit.utils import DDKitError
from tests.test_sre2l import _toy_teacher

STEPS, RHO, LR, ITS = 3, 0.5, 0.1, 2


def _ddkit(ds, t, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_method("dwa", ipc=1, iterations=ITS, lr=LR, r_bn=0.0, jitter=0, steps=STEPS, rho=RHO, seed=0,
                             **kw)(ds, t, device="cpu", progress=False)


def _by_hand(net, x0: torch.Tensor, y: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, leak: bool) -> torch.Tensor:
    """The official loop's order on the working-space batch x0 (views off, r_bn 0; pixels clipped to [lo, hi] after
    each step): returns the last iterate."""
    net = copy.deepcopy(net).eval().requires_grad_(True)
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=LR, betas=(0.5, 0.9), eps=1e-8)
    params = list(net.parameters())
    for it in range(ITS):
        for g in opt.param_groups:
            g["lr"] = 0.5 * (1 + math.cos(math.pi * it / ITS)) * LR
        opt.zero_grad()
        if it == 0:
            for _ in range(STEPS):
                F.cross_entropy(net(x), y).backward()  # reaches x.grad too
                with torch.no_grad():
                    norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in params))
                    for p in params:
                        p.add_(p.grad * (RHO / STEPS) / (norm + 1e-12))
                        p.grad = None
            if not leak:
                x.grad = None
        F.cross_entropy(net(x), y).backward()
        opt.step()
        with torch.no_grad():
            x.copy_(torch.maximum(torch.minimum(x, hi), lo))
    return x.detach()


@pytest.mark.parametrize("first_step,leak", [("official", True), ("clean", False)])
def test_first_step_adds_the_adjustment_gradients_only_when_official(first_step, leak):
    ds, t = _toy_teacher()
    s = _ddkit(ds, t, first_step=first_step)
    src = torch.tensor(s.meta["source_indices"])
    m, sd = torch.tensor(ds.mean).view(1, -1, 1, 1), torch.tensor(ds.std).view(1, -1, 1, 1)
    x0 = (ds.images[src].float() / 255 - m) / sd
    y = torch.arange(ds.num_classes)
    mine, other = (_by_hand(t.model, x0, y, -m / sd, (1 - m) / sd, leak=v) for v in (leak, not leak))
    px = lambda x: (x * sd + m).clamp(0, 1)  # noqa: E731
    assert torch.allclose(s.images, px(mine), atol=1e-5)
    assert not torch.allclose(s.images, px(other), atol=1e-3)  # the two rules give different images here
    assert s.meta["recover"].get("first_step") == ("official" if leak else None)


def test_first_step_official_needs_batch_units_and_a_known_name():
    ds, t = _toy_teacher()
    with pytest.raises(DDKitError, match="unit batch"):
        _ddkit(ds, t, first_step="official", unit="class")
    with pytest.raises(DDKitError, match="first_step"):
        _ddkit(ds, t, first_step="sometimes")


def test_the_default_first_step_is_the_official_codes():
    ds, t = _toy_teacher()
    default, official = _ddkit(ds, t), _ddkit(ds, t, first_step="official")
    assert torch.equal(default.images, official.images)  # batch unit: the official loop's first step
    assert default.meta["recover"].get("first_step") == "official"
    clean = _ddkit(ds, t, first_step="clean")
    assert not torch.equal(default.images, clean.images)
    # the class-unit variant has no official first step: it runs clean unless told otherwise (then refuses)
    variant = _ddkit(ds, t, unit="class", bn_target="class", direction="descent")
    assert variant.meta["recover"].get("first_step") is None
