"""DCS, the Distillation Correlation Score (hardtruths §4.1): does a method's own objective track generalisation?

    DCS(φ) = ρ_Spearman({ test loss of a student trained on S_j }, { L_distill(S_j, D) })   over subsets S_j

A useful objective gives a strongly positive ρ (lower distillation loss ⇒ lower test loss).

Size bias (the paper adjusts for it without saying how, §4.1): a larger subset has both a lower test
loss and, for most objectives, a lower distillation loss, so a pooled ρ mostly measures size. We HOLD
SIZE FIXED: the family is built per IPC (every subset of a group has exactly ipc·C images), ρ is
computed within each IPC group, and DCS is the mean of the per-IPC ρ weighted by group size. The
pooled ρ over all subsets is reported too, labelled size-biased.

Family: `subsets` random class-balanced subsets of the train split per IPC (seeded by (seed, ipc, j)),
plus any `extra_sets` (coresets or distilled sets; grouped by their IPC). Distillation losses
(`DISTILL_LOSSES`, or any callable `fn(subset, train, device) -> float`):

* `dm`: Σ_c ‖mean ψ(real_c) − mean ψ(S_c)‖² with randomly initialised ConvNet embedders ψ, averaged over
  `num_nets` nets (DM's objective);
* `feature_mean`: the same with the teacher's penultimate features (the CIM/LIC feature objective in
  class-mean form: LIC's paired per-image loss is identically 0 on real subsets, so it cannot rank them);
* `teacher_ce`: mean teacher cross-entropy of S (the RDED/LIC selection criterion, "realism").

Test loss: `ddkit.evaluate.evaluate` reports accuracies and the TRAIN loss only, so `student_test_losses`
has `evaluate` train the students (HL; its recipe resolution, plan, seeds and data path) and scores the
test cross-entropy of each trained student through the evaluator's public `on_student` hook.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ddkit.data.base import ImageDataset, to_float
from ddkit.distilled import DistilledSet
from ddkit.evaluate import EvalConfig, evaluate
from ddkit.models import create_model, feature_extractor
from ddkit.report import markdown_table
from ddkit.teachers import predict_dataset, predict_logits
from ddkit.teachers.frozen import FrozenTeacher
from ddkit.utils import DDKitError, derive_seed, get_device, make_generator

LossFn = Callable[[DistilledSet, ImageDataset, torch.device], float]


# ----------------------------------------------------------------------------------------------------
# Spearman
# ----------------------------------------------------------------------------------------------------

def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of a 1-d array; tied values share the mean of their positions."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[0, np.flatnonzero(xs[1:] != xs[:-1]) + 1]
    ends = np.r_[starts[1:], len(xs)]
    ranks = np.empty(len(x), dtype=np.float64)
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + 1 + e) / 2  # mean of positions s+1 … e
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's ρ: Pearson correlation of the ranks (ties get their average rank). NaN when either side
    is constant or has fewer than 2 values (ρ is undefined there)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"spearman needs two 1-d sequences of equal length, got {x.shape} and {y.shape}")
    if len(x) < 2:
        return float("nan")
    rx, ry = average_ranks(x) - (len(x) + 1) / 2, average_ranks(y) - (len(y) + 1) / 2
    den = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def dcs(distill_losses: Sequence[float], test_losses: Sequence[float]) -> float:
    """DCS = Spearman ρ between a method's distillation losses and the students' test losses (same order)."""
    if len(distill_losses) != len(test_losses):
        raise DDKitError(f"dcs needs one test loss per distillation loss, got {len(distill_losses)} and "
                         f"{len(test_losses)}")
    return spearman(distill_losses, test_losses)


def grouped_dcs(distill_losses: Sequence[float], test_losses: Sequence[float], groups: Sequence[Any]
                ) -> Tuple[float, Dict[Any, float]]:
    """Size-held-fixed DCS: ρ within each group (e.g. IPC), then the group-size-weighted mean over the
    groups where ρ is defined. Returns (DCS, {group: ρ})."""
    per: Dict[Any, float] = {}
    weights: Dict[Any, int] = {}
    for g in dict.fromkeys(groups):
        sel = [i for i, x in enumerate(groups) if x == g]
        per[g] = dcs([distill_losses[i] for i in sel], [test_losses[i] for i in sel])
        weights[g] = len(sel)
    ok = [g for g in per if not math.isnan(per[g])]
    if not ok:
        return float("nan"), per
    return sum(per[g] * weights[g] for g in ok) / sum(weights[g] for g in ok), per


# ----------------------------------------------------------------------------------------------------
# Distillation losses L_distill(S, D)
# ----------------------------------------------------------------------------------------------------

def _class_means(feats: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    out = torch.zeros(k, feats.shape[1], dtype=torch.float64)
    out.index_add_(0, labels.cpu(), feats.double().cpu())
    return out / torch.bincount(labels.cpu(), minlength=k).clamp(min=1).double()[:, None]


def _real_reference(train: ImageDataset, per_class: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """A fixed real sample (same for every subset, so their losses are comparable)."""
    idx = torch.cat([train.class_images(c, per_class, generator=make_generator(seed, "dcs-real", c))[1]
                     for c in range(train.num_classes)])
    return train.get(idx), train.labels[idx]


@torch.no_grad()
def _embed(net: torch.nn.Module, images: torch.Tensor, mean, std, device: torch.device, bs: int = 512) -> torch.Tensor:
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)
    out = [net((to_float(images[i:i + bs].to(device)) - m) / s).float().flatten(1).cpu()
           for i in range(0, len(images), bs)]
    return torch.cat(out)


def dm_loss(arch: str = "convnet-d3", width: Optional[int] = None, num_nets: int = 3, real_per_class: int = 256,
            seed: int = 0) -> LossFn:
    """DM's objective with `num_nets` random-init `arch` embedders (fixed by `seed`) and a fixed real sample."""
    cache: Dict[str, Any] = {}

    def fn(subset: DistilledSet, train: ImageDataset, device: torch.device) -> float:
        k = train.num_classes
        if "nets" not in cache:
            kw = {"width": width} if width else {}
            nets = []
            for r in range(num_nets):
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(derive_seed(seed, "dcs-dm", r))
                    net = create_model(arch, k, train.image_size, train.channels, **kw).eval()
                nets.append(feature_extractor(net.to(device), "penultimate").eval())
            x, y = _real_reference(train, real_per_class, seed)
            cache["nets"] = nets
            cache["real"] = [_class_means(_embed(n, x, train.mean, train.std, device), y, k) for n in nets]
        total = 0.0
        for net, real in zip(cache["nets"], cache["real"]):
            syn = _class_means(_embed(net, subset.images, train.mean, train.std, device), subset.labels, k)
            total += float((real - syn).pow(2).sum())
        return total / len(cache["nets"])

    return fn


def feature_mean_loss(teacher: Any, real_per_class: int = 256, seed: int = 0) -> LossFn:
    """Σ_c ‖mean φ_T(real_c) − mean φ_T(S_c)‖² with the teacher's penultimate features φ_T."""
    if teacher is None:
        raise DDKitError("the feature_mean distillation loss needs a teacher: pass --teacher CKPT")
    cache: Dict[str, torch.Tensor] = {}
    # fp32 (amp off) on the teacher's own device: the features are compared across subsets, not trained on
    ft = FrozenTeacher(teacher, teacher.device, amp=False, channels_last=False, max_batch=512)

    def fn(subset: DistilledSet, train: ImageDataset, device: torch.device) -> float:
        if "real" not in cache:
            x, y = _real_reference(train, real_per_class, seed)
            cache["real"] = _class_means(ft.features(x, "penultimate").cpu(), y, train.num_classes)
        syn = _class_means(ft.features(subset.images, "penultimate").cpu(), subset.labels, train.num_classes)
        return float((cache["real"] - syn).pow(2).sum())

    return fn


def teacher_ce_loss(teacher: Any) -> LossFn:
    """Mean teacher cross-entropy of the subset's images against their labels."""
    if teacher is None:
        raise DDKitError("the teacher_ce distillation loss needs a teacher: pass --teacher CKPT")

    def fn(subset: DistilledSet, train: ImageDataset, device: torch.device) -> float:
        z = predict_logits(teacher, subset.images)
        return float(F.cross_entropy(z.float(), subset.labels.cpu()))

    return fn


DISTILL_LOSSES = ("dm", "feature_mean", "teacher_ce")


def make_distill_loss(name: str, teacher: Any = None, **kw: Any) -> LossFn:
    """One of DISTILL_LOSSES bound to its options (kw: dm's arch/width/num_nets/real_per_class/seed)."""
    if name == "dm":
        return dm_loss(**kw)
    if name == "feature_mean":
        return feature_mean_loss(teacher, **{k: v for k, v in kw.items() if k in ("real_per_class", "seed")})
    if name == "teacher_ce":
        return teacher_ce_loss(teacher)
    raise DDKitError(f"unknown distillation loss {name!r}; choose one of {', '.join(DISTILL_LOSSES)} or pass a callable")


# ----------------------------------------------------------------------------------------------------
# Students: test loss via the evaluator's building blocks (HL)
# ----------------------------------------------------------------------------------------------------

def student_test_losses(distilled: DistilledSet, test: ImageDataset, cfg: EvalConfig, *,
                        full_train_size: Optional[int] = None, device: Any = None, progress: bool = False
                        ) -> List[Tuple[float, float]]:
    """(test accuracy, test cross-entropy) of each of cfg.seeds students, trained by `evaluate` itself under
    HL; its public `on_student` hook hands over each trained student, whose test cross-entropy is scored here."""
    if cfg.regime != "hl":
        raise DDKitError("the DCS study trains students under hl (hard labels); use --regime hl")
    dev = device if isinstance(device, torch.device) else get_device(device)
    losses: List[float] = []

    def test_loss(seed: int, model: torch.nn.Module) -> None:
        z = predict_dataset(model, test, distilled.mean, distilled.std, device=dev, batch_size=cfg.test_batch_size)
        losses.append(float(F.cross_entropy(z.float(), test.labels.cpu())))

    res = evaluate(distilled, test, cfg, full_train_size=full_train_size, device=dev, progress=progress,
                   set_name="dcs", on_student=test_loss)
    return list(zip(res.accs, losses))


# ----------------------------------------------------------------------------------------------------
# The study
# ----------------------------------------------------------------------------------------------------

@dataclass
class DCSResult:
    """Per-subset rows, the size-held-fixed DCS, ρ per IPC and the pooled (size-biased) ρ."""

    rows: List[Dict[str, Any]]
    dcs: float
    per_ipc: Dict[int, float]
    pooled: float
    info: Dict[str, Any] = field(default_factory=dict)

    def to_markdown(self) -> str:
        head = (f"DCS (Spearman within each IPC, size held fixed; weighted mean): **{self.dcs:+.3f}**  \n"
                f"per IPC: {', '.join(f'{k}: {v:+.3f}' for k, v in self.per_ipc.items())}  \n"
                f"pooled over all sizes (size-biased): {self.pooled:+.3f}\n\n")
        rows = [(r["ipc"], r["subset"], f"{r['distill_loss']:.5g}", f"{r['test_loss']:.4f}",
                 f"{100 * r['test_acc']:.2f}") for r in self.rows]
        return head + markdown_table(["ipc", "subset", "L_distill", "test loss", "test acc %"], rows)


def dcs_study(train: ImageDataset, test: ImageDataset, loss: Union[str, LossFn] = "dm", *,
              ipcs: Sequence[int] = (10,), subsets: int = 8, eval_cfg: Optional[EvalConfig] = None,
              teacher: Any = None, extra_sets: Sequence[DistilledSet] = (), seed: int = 0,
              loss_options: Optional[Dict[str, Any]] = None, device: Any = None, progress: bool = True) -> DCSResult:
    """DCS of `loss` over a fixed-size family: `subsets` random class-balanced subsets per IPC (+ extra_sets).

    Each subset gets L_distill(S, D) and the mean test CE of eval_cfg.seeds HL students (default: the
    hardtruths-hl recipe, 1 seed; set eval_cfg.budget_epochs to fix compute in full-data epochs).
    """
    from ddkit.methods import create_method

    dev = device if isinstance(device, torch.device) else get_device(device)
    cfg = eval_cfg or EvalConfig(protocol="hard-truths", recipe="hardtruths-hl", regime="hl", seeds=1)
    if subsets < 2 and not extra_sets:
        raise DDKitError("a DCS needs at least 2 subsets per IPC")
    fn = loss if callable(loss) else make_distill_loss(loss, teacher, **(loss_options or {}))
    family: List[Tuple[int, str, DistilledSet]] = []
    for ipc in ipcs:
        for j in range(subsets):
            s = create_method("random", ipc=ipc, seed=derive_seed(seed, "dcs", ipc, j))(train, device=dev, progress=False)
            family.append((ipc, f"random-{j}", s))
    for i, s in enumerate(extra_sets):
        family.append((s.ipc, str(s.meta.get("method", f"set{i}")), s))
    rows = []
    for ipc, name, s in family:
        d = float(fn(s, train, dev))
        res = student_test_losses(s, test, replace(cfg, regime="hl"), full_train_size=len(train), device=dev)
        rows.append({"ipc": ipc, "subset": name, "distill_loss": d,
                     "test_loss": float(np.mean([r[1] for r in res])), "test_acc": float(np.mean([r[0] for r in res]))})
        if progress:
            print(f"[dcs] ipc {ipc} {name}: L_distill {d:.5g}  test loss {rows[-1]['test_loss']:.4f}  "
                  f"acc {rows[-1]['test_acc']:.4f}")
    dl, tl, g = [r["distill_loss"] for r in rows], [r["test_loss"] for r in rows], [r["ipc"] for r in rows]
    value, per = grouped_dcs(dl, tl, g)
    return DCSResult(rows, value, per, dcs(dl, tl),
                     info={"loss": loss if isinstance(loss, str) else getattr(loss, "__name__", "callable"),
                           "recipe": cfg.recipe, "seeds": cfg.seeds, "budget_epochs": cfg.budget_epochs})
