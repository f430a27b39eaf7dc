"""DD-Ranking scores on worked examples, with accuracies as fractions."""
from __future__ import annotations

import math

import pytest

from ddkit.evaluate.metrics import ars, hlr, ior, lrs, lrs_from_gaps, mean_std, normalize_score, summarize

DEN = math.e - math.exp(-1)


def test_normalisation_endpoints():
    assert normalize_score(-1.0) == pytest.approx(0.0, abs=1e-12)
    assert normalize_score(1.0) == pytest.approx(1.0)
    assert normalize_score(0.0) == pytest.approx((1 - math.exp(-1)) / DEN)


def test_hlr_ior():
    assert hlr(0.8, 0.5) == pytest.approx(0.3)
    assert ior(0.5, 0.4) == pytest.approx(0.1)
    assert ior(0.3, 0.4) == pytest.approx(-0.1)


def test_lrs_worked_example():
    # IOR = 0.1, HLR = 0.3, λ = 0.5 -> α = 0.05 - 0.15 = -0.1
    expected = (math.exp(-0.1) - math.exp(-1)) / DEN
    assert lrs_from_gaps(0.1, 0.3) == pytest.approx(expected)
    assert lrs(acc_syn=0.5, acc_random=0.4, acc_full_hl=0.8, acc_syn_hl=0.5) == pytest.approx(expected)
    # λ = 1 keeps only IOR
    assert lrs_from_gaps(0.1, 0.3, lam=1.0) == pytest.approx((math.exp(0.1) - math.exp(-1)) / DEN)


def test_ars_worked_example():
    # γ = 0.5: β = 0.5·(0.6-0.5) + 0.5·(0.4-0.45) = 0.05 - 0.025 = 0.025
    expected = (math.exp(0.025) - math.exp(-1)) / DEN
    assert ars(0.6, 0.5, 0.4, 0.45) == pytest.approx(expected)


def test_percentages_rejected():
    with pytest.raises(ValueError, match="percentage"):
        ior(56.5, 40.0)
    with pytest.raises(ValueError):
        hlr(-0.1, 0.5)
    with pytest.raises(ValueError):
        lrs_from_gaps(1.5, 0.2)
    with pytest.raises(ValueError):
        ars(0.5, 0.5, 0.5, 0.5, gamma=2.0)


def test_mean_std_ddof0():
    m, s, n = mean_std([0.5, 0.7])
    assert (m, n) == (pytest.approx(0.6), 2) and s == pytest.approx(0.1)
    d = summarize([0.5, 0.7])
    assert d["std_ddof1"] == pytest.approx(math.sqrt(0.02))
