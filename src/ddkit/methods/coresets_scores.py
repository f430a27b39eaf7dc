"""Coreset scores and per-class selection rules as pure functions on tensors.

Scores come from a recorded `Dynamics` (see ddkit.methods.dynamics) or from teacher features. Every
score has a fixed difficulty direction (`HIGHER_IS_HARDER`), so "easy" / "hard" / "window" mean the
same thing for all of them:

| score      | definition                                                                 | higher = |
|------------|----------------------------------------------------------------------------|----------|
| el2n       | ‖softmax − onehot‖₂ at the early point(s), mean over runs (Paul et al.)   | harder   |
| grand      | last-layer gradient norm at the early point(s), mean over runs            | harder   |
| forgetting | # correct→incorrect transitions between consecutive record points;        | harder   |
|            | never-learned samples get R (> any reachable count; Toneva et al.'s "∞")  |          |
| aum        | mean over record points of logit_y − max_{j≠y} logit_j (Pleiss et al.)    | EASIER   |
| entropy    | entropy of the final-point softmax                                         | harder   |
| dyn-unc    | mean over all sliding windows of span J of std(p_y) (He et al., J = 10)   | harder   |

DeepCore's forgetting.py leaves never-learned samples at 0 instead (`--unlearned zero`): at IPC 10 on a 6-epoch
proxy that convention alone moved the selection's accuracy by about 10 points (bench/results/parity_deepcore.json).
Forgetting is counted between record points (epochs by default), not per minibatch presentation as in
Toneva et al.: each sample is presented once per epoch, so the two agree up to the evaluation view.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch

from ddkit.methods.dynamics import Dynamics, window_std
from ddkit.utils import DDKitError

HIGHER_IS_HARDER: Dict[str, bool] = {"el2n": True, "grand": True, "forgetting": True, "entropy": True,
                                     "dyn-unc": True, "aum": False}
MODES = ("easy", "hard", "window")


def early_score(t: torch.Tensor, reduce: str = "last") -> torch.Tensor:
    """runs×E×N early-point values -> N: mean over runs, then the last early point or the mean over them.

    "last" is Paul et al. (the score at epoch t); "mean" is CCS (averaged over the first epochs).
    """
    x = t.float().mean(0)
    if reduce == "last":
        return x[-1]
    if reduce == "mean":
        return x.mean(0)
    raise DDKitError(f"unknown early_reduce {reduce!r}; use last or mean")


UNLEARNED = ("top", "zero")


def forgetting_counts(correct: torch.Tensor, unlearned: str = "top") -> torch.Tensor:
    """R×N correctness -> N forgetting events (correct at t, wrong at t+1); never-learned samples get R ("top":
    Toneva et al.'s infinitely forgotten) or 0 ("zero": DeepCore's forgetting.py, which never counts them)."""
    if unlearned not in UNLEARNED:
        raise DDKitError(f"unknown --unlearned {unlearned!r}; choose {', '.join(UNLEARNED)}")
    c = correct.bool()
    events = (c[:-1] & ~c[1:]).sum(0).float()
    never = ~c.any(0)
    return torch.where(never, torch.full_like(events, float(c.shape[0]) if unlearned == "top" else 0.0), events)


def aum(margin: torch.Tensor) -> torch.Tensor:
    """R×N logit margins -> N area under the margin (mean over record points)."""
    return margin.float().mean(0)


def dynamic_uncertainty(p_true: torch.Tensor, span: int = 10) -> torch.Tensor:
    """R×N true-class probabilities -> N mean over all sliding windows of the windowed (unbiased) std."""
    return window_std(p_true, span).mean(0)


def compute_score(name: str, dyn: Dynamics, early_reduce: str = "last", span: int = 10,
                  unlearned: str = "top") -> torch.Tensor:
    """The N-vector of score `name` (a key of HIGHER_IS_HARDER) from recorded dynamics."""
    if name == "el2n":
        return early_score(dyn.el2n, early_reduce)
    if name == "grand":
        return early_score(dyn.grand, early_reduce)
    if name == "forgetting":
        return forgetting_counts(dyn.correct, unlearned)
    if name == "aum":
        return aum(dyn.margin)
    if name == "entropy":
        return dyn.entropy.float()
    if name == "dyn-unc":
        return dynamic_uncertainty(dyn.p_true, span)
    raise DDKitError(f"unknown score {name!r}; choose one of {', '.join(HIGHER_IS_HARDER)}")


def difficulty(name: str, score: torch.Tensor) -> torch.Tensor:
    """Score mapped so that higher always means harder (AUM is negated)."""
    return score.float() if HIGHER_IS_HARDER[name] else -score.float()


def select_by_difficulty(diff: torch.Tensor, ipc: int, mode: str, offset: float = 0.0,
                         unit: str = "class") -> torch.Tensor:
    """Local indices of `ipc` samples of one class chosen by difficulty (higher = harder).

    easy: the ipc lowest; hard: the ipc highest; window: a contiguous run of ipc samples —
    unit "class": in easy→hard order starting at ⌊offset·n_c⌋ (clamped to n_c − ipc), so offset 0 is the
    easiest window and 1 the hardest; unit "selmatch": in hard→easy order skipping the ⌊offset·ipc⌋ hardest
    (SelMatch's eval.py semantics, hardtruths §7). Ties keep dataset order (stable sort).
    """
    n = len(diff)
    if ipc > n:
        raise DDKitError(f"cannot select {ipc} of {n} samples; lower --ipc")
    easy_first = torch.argsort(diff, stable=True)
    hard_first = torch.argsort(-diff, stable=True)
    if mode == "easy":
        return easy_first[:ipc]
    if mode == "hard":
        return hard_first[:ipc]
    if mode != "window":
        raise DDKitError(f"unknown selection mode {mode!r}; use easy, hard or window")
    if not 0.0 <= offset <= 1.0:
        raise DDKitError(f"--window-offset must be in [0, 1], got {offset}")
    if unit == "class":
        start = min(math.floor(offset * n), n - ipc)
        return easy_first[start:start + ipc]
    if unit == "selmatch":
        start = min(math.floor(offset * ipc), n - ipc)
        return hard_first[start:start + ipc]
    raise DDKitError(f"unknown window unit {unit!r}; use class or selmatch")


# --------------------------------------------------------------------------------------------------
# CCS (Zheng et al., ICLR 2023)
# --------------------------------------------------------------------------------------------------
def ccs_allocate(counts: Sequence[int], budget: int) -> List[int]:
    """CCS budget allocation: visit strata smallest-first, each gets min(size, ⌊remaining / strata left⌋).

    Strata smaller than their share are taken whole and the rest is redistributed to the larger ones.
    A final top-up (never needed when the floors add up, kept for safety) fills any shortfall in
    largest-leftover order so exactly min(budget, Σ counts) are allocated.
    """
    order = sorted(range(len(counts)), key=lambda i: (counts[i], i))
    take = [0] * len(counts)
    rest = budget
    for j, i in enumerate(order):
        share = rest // (len(order) - j)
        take[i] = min(counts[i], share)
        rest -= take[i]
    for i in sorted(range(len(counts)), key=lambda i: -(counts[i] - take[i])):
        extra = min(rest, counts[i] - take[i])
        take[i] += extra
        rest -= extra
    return take


def ccs_select(score: torch.Tensor, aum_score: torch.Tensor, ipc: int, mislabel_ratio: float = 0.1,
               strata: int = 50, generator: torch.Generator | None = None) -> torch.Tensor:
    """Local indices of one class chosen by CCS: AUM cut, equal-width strata of `score`, uniform sampling.

    1. Drop the ⌊mislabel_ratio·n⌋ samples with the LOWEST AUM (likely mislabeled); the cut shrinks when
       fewer than ipc samples would remain.
    2. Split the remaining `score` range [min, max] into `strata` equal-width bins.
    3. Allocate the budget with `ccs_allocate` and sample uniformly inside each bin.
    """
    n = len(score)
    if ipc > n:
        raise DDKitError(f"cannot select {ipc} of {n} samples; lower --ipc")
    if not 0.0 <= mislabel_ratio < 1.0 or strata < 1:
        raise DDKitError("CCS needs 0 ≤ mislabel_ratio < 1 and strata ≥ 1")
    cut = min(math.floor(mislabel_ratio * n), n - ipc)
    keep = torch.argsort(aum_score.float(), stable=True)[cut:]
    s = score.float()[keep]
    lo, hi = float(s.min()), float(s.max())
    if hi > lo:
        bins = ((s - lo) / (hi - lo) * strata).floor().long().clamp_(0, strata - 1)
    else:
        bins = torch.zeros(len(s), dtype=torch.long)
    counts = torch.bincount(bins, minlength=strata).tolist()
    take = ccs_allocate(counts, ipc)
    picked = []
    for b, k in enumerate(take):
        if k:
            members = keep[bins == b]
            picked.append(members[torch.randperm(len(members), generator=generator)[:k]])
    return torch.cat(picked)


# --------------------------------------------------------------------------------------------------
# feature-space selection (herding, k-center greedy)
# --------------------------------------------------------------------------------------------------
def herding_select(feats: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy herding (Welling 2009; iCaRL): at step t pick argmin_x ‖t·μ − Σ_{chosen} φ − φ(x)‖₂.

    The running mean of the chosen features tracks the class mean μ. This is the textbook argmin;
    DeepCore's argmax picks the point that pushes the mean AWAY from μ (a known defect, peers §5.1).
    """
    f = feats.float().flatten(1)
    if k > len(f):
        raise DDKitError(f"cannot herd {k} of {len(f)} samples; lower --ipc")
    mu = f.mean(0)
    total = torch.zeros_like(mu)
    taken = torch.zeros(len(f), dtype=torch.bool, device=f.device)
    chosen = []
    for t in range(1, k + 1):
        d = (t * mu - total - f).norm(dim=1).masked_fill(taken, float("inf"))
        i = int(d.argmin())
        chosen.append(i)
        taken[i] = True
        total += f[i]
    return torch.tensor(chosen, dtype=torch.long)


def kcenter_select(feats: torch.Tensor, k: int, first: int) -> torch.Tensor:
    """Farthest-first traversal (Sener & Savarese 2018): start at `first`, then repeatedly add
    argmax_{i∉S} min_{j∈S} ‖φ_i − φ_j‖₂."""
    f = feats.float().flatten(1)
    if k > len(f):
        raise DDKitError(f"cannot pick {k} centres from {len(f)} samples; lower --ipc")
    mind = (f - f[first]).norm(dim=1)
    mind[first] = float("-inf")
    chosen = [first]
    for _ in range(k - 1):
        i = int(mind.argmax())
        chosen.append(i)
        mind = torch.minimum(mind, (f - f[i]).norm(dim=1))
        mind[chosen] = float("-inf")
    return torch.tensor(chosen, dtype=torch.long)
