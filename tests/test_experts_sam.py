"""FTD experts: one GSAM step against a hand computation, ρ = 0 is plain SGD, and `experts train --sam`."""
from __future__ import annotations

import copy
import json

import torch
import torch.nn as nn
import torch.nn.functional as F

from ddkit.teachers.experts import ExpertConfig, resolve_expert_config, train_experts
from ddkit.teachers.gsam import gsam_step
from tests.conftest import make_toy

CPU = torch.device("cpu")


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(5, 3, generator=g), torch.tensor([0, 1, 1, 0, 1])


def loss_of(model: nn.Module, x, y):
    return lambda: (lambda out: (out, F.cross_entropy(out, y)))(model(x))


def flat_grad(model: nn.Module, w: torch.Tensor, x, y) -> torch.Tensor:
    """∇L at flat weights w, computed functionally (no optimiser involved)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    w = w.detach().clone().requires_grad_(True)
    parts = dict(zip(names, (t.view(s) for t, s in zip(w.split([s.numel() for s in shapes]), shapes))))
    loss = F.cross_entropy(torch.func.functional_call(model, parts, (x,)), y)
    return torch.autograd.grad(loss, w)[0]


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_gsam_with_rho_zero_is_plain_sgd():
    x, y = batch()
    a, b = tiny_model(), tiny_model()
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(3):
        gsam_step(a, loss_of(a, x, y), opt_a, rho=0.0, alpha=0.3)
        opt_b.zero_grad()
        F.cross_entropy(b(x), y).backward()
        opt_b.step()
    assert torch.allclose(flat(a), flat(b), atol=1e-6)


def test_one_gsam_step_equals_the_hand_computation():
    x, y = batch()
    rho, alpha, lr = 0.05, 0.3, 0.1
    for adaptive in (True, False):
        model = tiny_model()
        ref = copy.deepcopy(model)
        w = flat(model)
        g = flat_grad(ref, w, x, y)
        # perturb: ASAM scales by w² and takes the norm of |w|⊙g; plain SAM uses g and ‖g‖
        e = rho * g * w ** 2 / (w.abs() * g).norm() if adaptive else rho * g / g.norm()
        g2 = flat_grad(ref, w + e, x, y)
        cos = (g @ g2) / (g.norm() * g2.norm())
        vertical = g - cos * g.norm() * g2 / g2.norm()
        expected = w - lr * (g2 - alpha * vertical)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        _, loss = gsam_step(model, loss_of(model, x, y), opt, rho=rho, alpha=alpha, adaptive=adaptive)
        assert torch.allclose(flat(model), expected, atol=1e-6), adaptive
        assert torch.isclose(loss, F.cross_entropy(ref(x), y))  # the logged loss is the unperturbed one
        plain = w - lr * g
        assert not torch.allclose(flat(model), plain, atol=1e-5)  # ρ > 0 really changes the step
        # α = 0 is SAM: the step follows the gradient at the perturbed point
        m2 = tiny_model()
        gsam_step(m2, loss_of(m2, x, y), torch.optim.SGD(m2.parameters(), lr=lr), rho=rho, alpha=0.0,
                  adaptive=adaptive)
        assert torch.allclose(flat(m2), w - lr * g2, atol=1e-6)


def test_gsam_freezes_batchnorm_running_statistics_in_the_second_pass():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    x, y = batch()
    ref = copy.deepcopy(model)
    gsam_step(model, loss_of(model, x, y), torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05, alpha=0.3)
    ref(x)  # one forward in train mode: the running statistics see the batch once, not twice
    assert torch.allclose(model[1].running_mean, ref[1].running_mean)
    assert model[1].momentum == ref[1].momentum  # restored


def test_experts_train_sam_runs_ftd_and_records_it(tmp_path):
    assert resolve_expert_config(ExpertConfig(sam=True))["epochs"] == 100  # DATM README --train_epochs=100
    assert resolve_expert_config(ExpertConfig())["epochs"] == 50
    eff = resolve_expert_config(ExpertConfig(sam=True))
    assert (eff["rho"], eff["alpha"], eff["adaptive"]) == (0.01, 0.3, True)
    train = make_toy(n_per_class=4, num_classes=3, size=6)
    opts = dict(arch="mlp", num_experts=1, epochs=2, batch_size=6, dsa_strategy="none", subset_per_class=0,
                test_limit=0, rho=0.5)
    train_experts(train, None, ExpertConfig(**opts, sam=True), tmp_path / "sam", device=CPU, progress=False)
    train_experts(train, None, ExpertConfig(**opts), tmp_path / "sgd", device=CPU, progress=False)
    head = json.loads((tmp_path / "sam" / "buffer.json").read_text())
    assert head["config"]["sam"] is True and head["config"]["rho"] == 0.5
    a = (tmp_path / "sam" / "expert_0000.safetensors").read_bytes()
    b = (tmp_path / "sgd" / "expert_0000.safetensors").read_bytes()
    assert a != b
