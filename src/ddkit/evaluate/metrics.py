"""DD-Ranking's scores (peers.md §4.3), with accuracies as FRACTIONS in [0, 1].

DD-Ranking's own code feeds percentages into the same exponentials (its cache holds 56.5 for
ImageNet-1K), so its α is in percentage points and "LRS ∈ [0, 1]" does not hold there. Here every
accuracy must be a fraction; a value outside [0, 1] (e.g. 56.5) raises ValueError.

    HLR = acc(full, HL) − acc(syn, HL)                       (hard-label recovery; lower is better)
    IOR = acc(syn) − acc(random real subset, same eval)      (improvement over random)
    LRS = N(λ·IOR − (1−λ)·HLR),  λ = 0.5                     (label-robust score)
    ARS = N(γ·(syn_aug − rdm_aug) + (1−γ)·(syn_noaug − rdm_noaug)),  γ = 0.5
    N(α) = (e^α − e^−1) / (e − e^−1)                         maps α ∈ [−1, 1] onto [0, 1]
"""
from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

import numpy as np


def _frac(name: str, v: float) -> float:
    v = float(v)
    if not (0.0 <= v <= 1.0) or math.isnan(v):
        hint = " (a percentage? divide by 100)" if 1.0 < v <= 100.0 else ""
        raise ValueError(f"{name} must be an accuracy fraction in [0, 1], got {v}{hint}")
    return v


def _gap(name: str, v: float) -> float:
    v = float(v)
    if not (-1.0 <= v <= 1.0) or math.isnan(v):
        raise ValueError(f"{name} must be a difference of fractions in [-1, 1], got {v}")
    return v


def _weight(name: str, v: float) -> float:
    v = float(v)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {v}")
    return v


def normalize_score(alpha: float) -> float:
    """N(α) = (e^α − e^−1)/(e − e^−1): 0 at α = −1, 1 at α = 1."""
    return (math.exp(alpha) - math.exp(-1.0)) / (math.e - math.exp(-1.0))


def hlr(acc_full_hl: float, acc_syn_hl: float) -> float:
    """Hard-label recovery: acc(full data, HL) − acc(synthetic, HL)."""
    return _frac("acc_full_hl", acc_full_hl) - _frac("acc_syn_hl", acc_syn_hl)


def ior(acc_syn: float, acc_random: float) -> float:
    """Improvement over random: acc(synthetic) − acc(random real subset), same eval protocol."""
    return _frac("acc_syn", acc_syn) - _frac("acc_random", acc_random)


def lrs_from_gaps(ior_value: float, hlr_value: float, lam: float = 0.5) -> float:
    """LRS from IOR and HLR (each a difference of fractions): N(λ·IOR − (1−λ)·HLR)."""
    lam = _weight("lam", lam)
    alpha = lam * _gap("ior", ior_value) - (1.0 - lam) * _gap("hlr", hlr_value)
    return normalize_score(alpha)


def lrs(acc_syn: float, acc_random: float, acc_full_hl: float, acc_syn_hl: float, lam: float = 0.5) -> float:
    """Label-robust score from four accuracies (fractions): IOR from the soft-label eval of the
    synthetic and random sets, HLR from the hard-label evals of full data and the synthetic set."""
    return lrs_from_gaps(ior(acc_syn, acc_random), hlr(acc_full_hl, acc_syn_hl), lam)


def ars(acc_syn_aug: float, acc_rdm_aug: float, acc_syn_noaug: float, acc_rdm_noaug: float,
        gamma: float = 0.5) -> float:
    """Augmentation-robust score: N(γ·(syn_aug − rdm_aug) + (1−γ)·(syn_noaug − rdm_noaug))."""
    gamma = _weight("gamma", gamma)
    beta = (gamma * ior(acc_syn_aug, acc_rdm_aug)
            + (1.0 - gamma) * ior(acc_syn_noaug, acc_rdm_noaug))
    return normalize_score(beta)


def mean_std(accs: Sequence[float]) -> Tuple[float, float, int]:
    """(mean, population std (ddof 0, as CIM's np.std), n) of per-seed accuracies."""
    a = np.asarray(list(accs), dtype=np.float64)
    if a.size == 0:
        return float("nan"), float("nan"), 0
    return float(a.mean()), float(a.std(ddof=0)), int(a.size)


def summarize(accs: Sequence[float]) -> Dict[str, float]:
    """{"mean", "std", "std_ddof1", "n"}: ddof 0 as the peers report, ddof 1 for a sample estimate."""
    m, s, n = mean_std(accs)
    s1 = float(np.std(np.asarray(list(accs), dtype=np.float64), ddof=1)) if n > 1 else float("nan")
    return {"mean": m, "std": s, "std_ddof1": s1, "n": n}
