"""Each evaluation loss against values computed by hand on 1-2 row tensors."""
from __future__ import annotations

import math

import pytest
import torch

from ddkit.augment import Mixup
from ddkit.evaluate.losses import (LOSSES, cross_entropy, gift, kl_div, make_criterion, mse_ce, mse_logits,
                                   soft_cross_entropy)
from ddkit.evaluate.student import mix_soft_targets
from ddkit.registry import UnknownNameError

LN3 = math.log(3.0)


def close(a: torch.Tensor, b: float, tol: float = 1e-6) -> None:
    assert abs(float(a) - b) < tol, (float(a), b)


def test_cross_entropy_ids_and_probs():
    s = torch.tensor([[0.0, LN3]])  # softmax = [1/4, 3/4]
    close(cross_entropy(s, torch.tensor([1])), -math.log(0.75))
    close(cross_entropy(s, torch.tensor([0])), -math.log(0.25))
    # mixed one-hot 0.5/0.5 -> average of both CEs
    close(cross_entropy(s, torch.tensor([[0.5, 0.5]])), 0.5 * (-math.log(0.25) - math.log(0.75)))


def test_kl_temperature_batchmean_and_t2():
    s = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    t = torch.tensor([[0.0, LN3], [0.0, 0.0]])  # row 1: q = [1/4, 3/4]; row 2: KL = 0
    row1 = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    close(kl_div(s, t, temperature=1.0), row1 / 2)
    # T = 2: q = softmax([0, ln3/2]) = [1/(1+√3), √3/(1+√3)]
    q0, q1 = 1 / (1 + math.sqrt(3)), math.sqrt(3) / (1 + math.sqrt(3))
    row1_t2 = q0 * math.log(q0 / 0.5) + q1 * math.log(q1 / 0.5)
    close(kl_div(s, t, temperature=2.0), row1_t2 / 2)
    close(kl_div(s, t, temperature=2.0, t2_scale=True), 4 * row1_t2 / 2)
    close(kl_div(t, t, temperature=20.0), 0.0)


def test_soft_cross_entropy():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[0.0, LN3]])
    close(soft_cross_entropy(s, t), math.log(2.0))  # -(1/4 + 3/4)·ln(1/2)
    # = KL + entropy(q)
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    close(soft_cross_entropy(s, t), float(kl_div(s, t)) + h)


def test_mse_and_mse_ce():
    s = torch.tensor([[1.0, 2.0]])
    t = torch.tensor([[0.0, 0.0]])
    close(mse_logits(s, t), 2.5)  # (1 + 4) / 2
    ce = math.log(1 + math.e)  # CE(s, y=0) = -log(e^1/(e^1+e^2)) = log(1+e)
    close(mse_ce(s, t, torch.tensor([0])), 2.5 + 0.025 * ce, 1e-5)
    close(mse_ce(s, t, torch.tensor([0]), mse_weight=0.5, ce_weight=1.0), 1.25 + ce, 1e-5)


def test_gift_by_hand():
    t = torch.tensor([[3.0, 4.0]])  # normalised: [0.6, 0.8]
    y = torch.tensor([0])          # GIFT's smoothing (α=0.1, K=2): 1 − α on the class, α/(K−1) off: [0.9, 0.1]
    n = math.hypot(0.9, 0.1)
    ref = (0.6 + 0.1 * 0.9 / n, 0.8 + 0.1 * 0.1 / n)
    s = torch.tensor([[1.0, 0.0]])
    cos = ref[0] / math.hypot(*ref)
    close(gift(s, t, y), 1 - cos)
    # a student parallel to the reference has zero loss, whatever its scale
    close(gift(torch.tensor([ref]) * 7.0, t, y), 0.0, 1e-6)


def test_gift_smoothing_is_the_official_alpha_over_k_minus_one():
    # K = 3, class 2: LINs-lab/GIFT batch_label_smoothing gives [0.05, 0.05, 0.9] (α/(K−1) = 0.05 off the class)
    t = torch.tensor([[1.0, 2.0, 2.0]])  # norm 3
    sm = (0.05, 0.05, 0.9)
    n = math.sqrt(sum(v * v for v in sm))
    ref = [t[0, i].item() / 3 + 0.1 * sm[i] / n for i in range(3)]
    s = torch.tensor([[0.3, -1.0, 2.0]])
    cos = sum(a * b for a, b in zip(ref, s[0].tolist())) / (math.sqrt(sum(r * r for r in ref)) * s.norm().item())
    close(gift(s, t, torch.tensor([2])), 1 - cos)
    # a one-hot probability row is the same as its class id
    close(gift(s, t, torch.tensor([[0.0, 0.0, 1.0]])), 1 - cos)


def test_criterion_registry():
    s, t, y = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    close(make_criterion("mse")(s, t, y), 2.5)
    close(make_criterion("MSE_GT")(s, t, y), float(mse_ce(s, t, y)))
    close(make_criterion("kl", temperature=2.0, t2_scale=True)(s, t, y), float(kl_div(s, t, 2.0, True)))
    close(make_criterion("ce")(s, None, y), float(cross_entropy(s, y)))
    assert LOSSES.get("kl").prob_space and not LOSSES.get("mse").prob_space
    assert not LOSSES.get("ce").needs_logits
    with pytest.raises(UnknownNameError, match="Known"):
        make_criterion("hinge")


def test_mix_soft_targets_prob_space_is_exact():
    t = torch.tensor([[0.0, LN3], [LN3, 0.0]])
    p = {"perm": torch.tensor([1, 0]), "lam": torch.tensor([0.25])}
    mixed = mix_soft_targets(t, Mixup(), p, prob_space=True, temperature=1.0)
    # row 0: 0.25·[1/4, 3/4] + 0.75·[3/4, 1/4] = [0.625, 0.375]
    assert torch.allclose(torch.softmax(mixed, 1)[0], torch.tensor([0.625, 0.375]), atol=1e-6)
    lin = mix_soft_targets(t, Mixup(), p, prob_space=False, temperature=1.0)
    assert torch.allclose(lin[0], torch.tensor([0.75 * LN3, 0.25 * LN3]), atol=1e-6)
