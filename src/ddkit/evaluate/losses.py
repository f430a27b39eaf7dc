"""Student losses used by the evaluation recipes, each a plain function with hand-checkable maths.

Conventions: `student` and `teacher` are B×K *logits*; `target` is either B int64 class ids or
B×K probabilities (one-hot, or mixed one-hot after CutMix/Mixup). Every loss is a mean over the
batch and is computed in float32 (logits coming out of bf16 autocast are upcast first: a softmax
at T = 20 in bf16 loses most of its precision).

| name      | formula                                                       | used by                  |
|-----------|---------------------------------------------------------------|--------------------------|
| `ce`      | −Σ_k y_k log softmax(s)_k                                      | HL everywhere            |
| `kl`      | KL(softmax(t/T) ‖ softmax(s/T)), batchmean, optional ×T²       | RDED, SRe2L (T=20, no T²)|
| `softce`  | −Σ_k softmax(t/T)_k log softmax(s/T)_k                         | DD-Ranking `sce`         |
| `mse`     | mean over B·K of (s − t)²                                      | CIM / LIC                |
| `mse_ce`  | w_mse·MSE(s, t) + w_ce·CE(s, y)   (1, 0.025)                    | EDC / DD-Ranking mse_gt  |
| `gift`    | 1 − mean_b cos(s, n(t) + 0.1·n(smooth_0.1(y)))                 | GIFT (as coded)          |

GIFT choice (peers.md §6.4): we follow GIFT's *code*, not its README blend: the reference vector is
the L2-normalised teacher logits plus 0.1 × the L2-normalised label-smoothed (α = 0.1) target, and
the loss is one minus the batch-mean cosine similarity with the student logits. The smoothing is GIFT's
`batch_label_smoothing` (LINs-lab/GIFT `validate/losses_benchmark.py:18-22,45-51` @38db552): 1 − α on the class
and α/(K − 1) on each other class (not the usual α/K spread). GIFT's evaluator mixes no batches (its mix call is
commented out, `validate/evaluator_benchmark.py:423`); with mixed targets ddkit applies the same affine map to the
mixed vector, (1 − α)·y + α/(K − 1)·(1 − y), which is GIFT's rule on every one-hot row.
EDC choice (§6.5): MSE on raw logits (no temperature), plus 0.025 × CE on the hard (or mixed)
label; both weights are configurable.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ddkit.registry import Registry


def _probs(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class ids -> one-hot float; probabilities pass through (as float32)."""
    if torch.is_floating_point(target):
        return target.float()
    return F.one_hot(target.long(), num_classes).float()


def cross_entropy(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with class ids or (mixed) one-hot probabilities; mean over the batch."""
    s = student.float()
    if torch.is_floating_point(target):
        return -(target.float() * F.log_softmax(s, dim=1)).sum(1).mean()
    return F.cross_entropy(s, target.long())


def kl_div(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0,
           t2_scale: bool = False) -> torch.Tensor:
    """KL(softmax(t/T) ‖ softmax(s/T)) summed over classes, averaged over the batch ("batchmean").

    t2_scale multiplies by T² (Hinton's gradient-scale correction); RDED/SRe2L do not.
    """
    T = float(temperature)
    log_p = F.log_softmax(student.float() / T, dim=1)
    q = F.softmax(teacher.float() / T, dim=1)
    loss = F.kl_div(log_p, q, reduction="batchmean")
    return loss * (T * T) if t2_scale else loss


def soft_cross_entropy(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """−Σ_k softmax(t/T)_k · log softmax(s/T)_k, averaged over the batch (KL plus the teacher entropy)."""
    T = float(temperature)
    q = F.softmax(teacher.float() / T, dim=1)
    return -(q * F.log_softmax(student.float() / T, dim=1)).sum(1).mean()


def mse_logits(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error between logits, averaged over B·K (torch's MSELoss, as CIM)."""
    return F.mse_loss(student.float(), teacher.float())


def mse_ce(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, mse_weight: float = 1.0,
           ce_weight: float = 0.025) -> torch.Tensor:
    """EDC's loss: mse_weight·MSE(s, t) + ce_weight·CE(s, y)."""
    return mse_weight * mse_logits(student, teacher) + ce_weight * cross_entropy(student, target)


def gift(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, smoothing: float = 0.1,
         weight: float = 0.1) -> torch.Tensor:
    """GIFT: 1 − mean_b cos(s, normalize(t) + weight·normalize(smooth(y))) (see module docstring)."""
    k = student.shape[1]
    y = _probs(target, k)
    smooth = (1.0 - smoothing) * y + smoothing / max(k - 1, 1) * (1.0 - y)  # GIFT: α/(K−1) off the class
    ref = F.normalize(teacher.float(), dim=1) + weight * F.normalize(smooth, dim=1)
    return 1.0 - F.cosine_similarity(student.float(), ref, dim=1).mean()


# ---------------------------------------------------------------------------------------------------------
# Registry: a name -> how to call it with (student, teacher_logits, target_probs)
# ---------------------------------------------------------------------------------------------------------

Criterion = Callable[[torch.Tensor, Optional[torch.Tensor], torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LossSpec:
    """How a named loss is called.

    needs_logits: it compares with teacher (or stored) logits, so it cannot serve HL.
    prob_space: its teacher target enters through softmax(t/T); stored soft labels of mixed views
        are then mixed as probabilities, otherwise as logits (see train.mix_soft_targets).
    """

    name: str
    needs_logits: bool
    prob_space: bool
    description: str


LOSSES: Registry[LossSpec] = Registry("loss")
for _spec, _aliases in (
    (LossSpec("ce", False, False, "cross-entropy on hard / mixed one-hot labels"), ("cross_entropy", "hard")),
    (LossSpec("kl", True, True, "KL at temperature T (batchmean; x T^2 with t2_scale)"), ("kl_div", "kld")),
    (LossSpec("softce", True, True, "soft cross-entropy at temperature T"), ("sce", "soft_ce")),
    (LossSpec("mse", True, False, "MSE between student and teacher logits (CIM)"), ("mse_logits",)),
    (LossSpec("mse_ce", True, False, "mse_weight*MSE + ce_weight*CE (EDC)"), ("mse_gt", "edc")),
    (LossSpec("gift", True, False, "1 - cos(s, n(t) + 0.1 n(smooth(y))) (GIFT)"), ()),
):
    LOSSES.register(_spec.name, aliases=_aliases, obj=_spec)


def list_losses() -> list:
    """Names of the registered losses."""
    return LOSSES.names()


def make_criterion(name: str, *, temperature: float = 1.0, t2_scale: bool = False, mse_weight: float = 1.0,
                   ce_weight: float = 0.025) -> Criterion:
    """A callable `(student_logits, teacher_logits_or_None, target_probs) -> scalar` for loss `name`.

    Example:
        >>> crit = make_criterion("kl", temperature=20)
        >>> loss = crit(student_logits, teacher_logits, one_hot_targets)
    """
    key = LOSSES.resolve(name)
    if key == "ce":
        return lambda s, t, y: cross_entropy(s, y)
    if key == "kl":
        return lambda s, t, y: kl_div(s, t, temperature, t2_scale)
    if key == "softce":
        return lambda s, t, y: soft_cross_entropy(s, t, temperature)
    if key == "mse":
        return lambda s, t, y: mse_logits(s, t)
    if key == "mse_ce":
        return lambda s, t, y: mse_ce(s, t, y, mse_weight, ce_weight)
    if key == "gift":
        return lambda s, t, y: gift(s, t, y)
    raise AssertionError(f"loss {key!r} registered without an implementation")  # pragma: no cover
