"""`cad-prune` (Compute-Aware Difficulty pruning) and `ca2d` (Compute-Aligned DD), hardtruths §2–§3.

CAD-Prune (§2.1, §2.4, §2.6):

1. K, the scoring run's length in full-data epochs, equals the downstream compute budget: `budget_epochs`
   when given (the evaluator's --budget-epochs), else K = E_down·ipc·C / |D| (`downstream_epochs` E_down
   epochs over the ipc·C subset). A proxy trains on the FULL split for K epochs with its own LR schedule
   compressed to K (StepLR ×0.1 at round(K·151/300), `ddkit.methods.dynamics`), recording the score S of
   every sample on its clean view at R record points.
2. Record points (documented rule): once per epoch when K is a whole number ≥ J + W; otherwise
   m = ceil((J + W) / K) points per epoch (`points_per_epoch` overrides m), i.e. every ⌊steps/m⌋
   iterations, so R = ⌊K·m⌋ ≥ J + W. A fractional K stops after round(K·steps) iterations with the
   schedule compressed to them (`DynamicsConfig.stop_epochs`): the scoring run costs the budget, no more.
3. Eq. 1: U_k = std(S[k : k+J]) (unbiased, torch.std's default). Eq. 2: CAD = mean of the W windows
   k = R−J−W … R−J−1 over the R recorded points (0-based; the initial weights are not a point), so the last
   window ends at the second-to-last point and the final point is dropped (Dyn-Unc's convention).
4. The span J (hardtruths §2.3): the paper gives J = 6, W = 2 for ImageNet-1K only; elsewhere the default
   (`span` None) is J = R − W ("J = K − W", the reading with which a third-party reproduction recovered the
   paper's CIFAR-100 IPC 50 number, 37.14 vs 31.36 with J = 6): the W windows start at point 0 and the span
   covers the whole run but its final point. `span` None means 6 on ImageNet-1K (≥ 1000 classes) and R − W
   otherwise; an explicit `span` is used as given, with `span_fallback` J' = R − W when R < J + W (else an
   error). (If the initial weights were counted as a point, K_points = R + 1 and R − W = K_points − W − 1.)
   J = R − W needs R ≥ W + 2 (a std of ≥ 2 points). The record plan (2) counts J + W with J = 6 when None.
4b. `early_checkpoint_of` (the paper's Table 14 ablation, §2.4): score the first K epochs of a run whose LR
   schedule is laid out for that many epochs — an early checkpoint of a long training — instead of a
   compute-matched K-epoch run (the paper reports the compute-matched run 7–9 points better).
5. Per class, the `ipc` samples with the HIGHEST CAD (Dyn-Unc's convention), in descending order.

`score`: "p_true" (default, the paper's S = softmax probability of the true class) or "el2n"
(‖softmax − onehot‖₂, what the third-party reproduction used).

CA2D (§3): RDED's patch extraction and stitching (`ddkit.methods.rded`) applied to a CAD-Prune pool
instead of a random one, evaluated with hard labels (meta intended_regime "hl"). `pool`: "coreset"
(default; "crop, select, and stitch patches … from this coreset": the ipc·f² top-CAD images, so every
coreset image gives its best patch) or "top_pool" (the top-`pool_size` (300) images by CAD, then RDED's
lowest-CE selection; the reproduction's "ASSUME 8").
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from ddkit.config import field
from ddkit.data.base import ImageDataset, to_float
from ddkit.methods.base import ClassResult, MethodConfig, check_ipc, register_method
from ddkit.methods.dynamics import DynamicsConfig, dynamics_for, window_std
from ddkit.methods.rded import (NORMALIZATIONS, PatchScorer, check_pools, check_teacher_shape, resolve_factor,
                                run_classes)
from ddkit.utils import DDKitError

SCORES = ("p_true", "el2n")
CA2D_POOLS = ("coreset", "top_pool")


@dataclass(frozen=True)
class CADConfig(MethodConfig):
    """CAD-Prune options (hardtruths §2); `proxy` (--proxy-*) configures the compute-matched scoring run."""

    budget_epochs: Optional[float] = field(None, "K: downstream compute budget in FULL-data epochs (the evaluator's "
                                                 "--budget-epochs); None = downstream_epochs·ipc·C/|D|")
    downstream_epochs: float = field(300, "E_down: student epochs over the ipc·C subset when budget_epochs is None "
                                          "(hard-truths small-scale protocol: 300)")
    span: Optional[int] = field(None, "J: record points per std window; None = 6 on ImageNet-1K (the paper's value), "
                                      "else J = R − W, the whole run (hardtruths §2.3)")
    windows: int = field(2, "W: trailing windows averaged (paper: 2 on ImageNet-1K)")
    span_fallback: bool = field(True, "when the run has R < J+W points use J = R − W ('J = K − W', hardtruths "
                                      "§2.3); off = error")
    score: str = field("p_true", "S: p_true (paper: true-class softmax) or el2n (‖softmax − onehot‖, the "
                                 "reproduction's choice)")
    points_per_epoch: int = field(0, "record points per full-data epoch; 0 = 1 when K is a whole number ≥ J+W, "
                                     "else ceil((J+W)/K)")
    proxy: DynamicsConfig = field(DynamicsConfig(arch="convnet-d3"),
                                  "the compute-matched scoring run (flags --proxy-*): the small-scale HL student "
                                  "ConvNet-D3, SGD lr 0.01 momentum 0.9, wd 5e-4, batch 256, StepLR compressed "
                                  "to K, flip+translate (hard truths HL / DC-DSA); its length follows the budget",
                                  only=("arch", "width", "batch_size", "optimizer", "lr", "momentum",
                                        "weight_decay", "schedule", "augment"))
    dynamics_cache: Optional[str] = field(None, "folder caching the scoring run (shared by cad-prune and ca2d at the "
                                                "same K); None = $DDKIT_CACHE/dynamics, 'none' = no cache")
    early_checkpoint_of: float = field(0.0, "ablation (Table 14): score the first K epochs of a run scheduled for "
                                            "this many epochs (an early checkpoint of a long run); 0 = off")
    amp: bool = field(True, "bf16 autocast for the scoring run on CUDA")

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise DDKitError(f"unknown CAD score {self.score!r}; choose one of {', '.join(SCORES)}")
        if (self.span is not None and self.span < 2) or self.windows < 1:
            raise DDKitError(f"CAD needs --span ≥ 2 and --windows ≥ 1, got J={self.span}, W={self.windows}")
        if self.budget_epochs is not None and self.budget_epochs <= 0:
            raise DDKitError(f"--budget-epochs must be > 0, got {self.budget_epochs}")
        if self.downstream_epochs <= 0 or self.points_per_epoch < 0:
            raise DDKitError("--downstream-epochs must be > 0 and --points-per-epoch ≥ 0")


@dataclass(frozen=True)
class CA2DConfig(CADConfig):
    """CA2D: CAD-Prune's scores choose the pool, RDED extracts and stitches patches (hardtruths §3)."""

    pool: str = field("coreset", "coreset: the ipc·f² top-CAD images per class ('from this coreset'); top_pool: "
                                 "the top-pool_size by CAD, then RDED's lowest-CE pick")
    pool_size: int = field(300, "pool per class for pool=top_pool (RDED's mipc)")
    num_crop: int = field(5, "RandomResizedCrop patches scored per image (RDED: 5)")
    factor: int = field(0, "mosaic side f; 0 = auto: 1 up to 64 px (the paper's CIFAR-100 'CA2D (factor=1)'), 2 above")
    scale_min: float = field(0.08, "smallest crop area fraction (RDED / torchvision default)")
    normalization: str = field("dataset", "patch normalisation for scoring: dataset (the teacher's) or imagenet "
                                          "(RDED's quirk)")
    store_labels: bool = field(False, "also store the teacher's logits of each image as 'soft' (CA2D is HL)")
    max_batch: int = field(256, "most patches in one teacher forward")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pool not in CA2D_POOLS:
            raise DDKitError(f"unknown CA2D pool {self.pool!r}; choose one of {', '.join(CA2D_POOLS)}")
        if self.normalization not in NORMALIZATIONS:
            raise DDKitError(f"unknown normalization {self.normalization!r}; choose one of {', '.join(NORMALIZATIONS)}")
        if self.pool_size < 1 or self.num_crop < 1 or self.max_batch < 1 or self.factor < 0:
            raise DDKitError("--pool-size, --num-crop and --max-batch must be ≥ 1 and --factor ≥ 0")


# ----------------------------------------------------------------------------------------------------
# Pure parts: budget, record plan, Eq. 1–2, class-balanced selection
# ----------------------------------------------------------------------------------------------------

def scoring_epochs(cfg: CADConfig, n_train: int, num_classes: int) -> float:
    """K in full-data epochs: budget_epochs, else E_down·ipc·C/|D| (hardtruths §2.4)."""
    if cfg.budget_epochs is not None:
        return float(cfg.budget_epochs)
    return float(cfg.downstream_epochs) * cfg.ipc * num_classes / n_train


def record_plan(k: float, span: int, windows: int, steps_per_epoch: int, points_per_epoch: int = 0
                ) -> Tuple[int, int]:
    """(whole epochs to train, record_every iterations; 0 = once per epoch) for a K-epoch run (module doc, 2)."""
    epochs = max(1, math.ceil(k - 1e-9))
    whole = abs(k - round(k)) < 1e-9
    m = points_per_epoch or (1 if whole and k >= span + windows else max(1, math.ceil((span + windows) / k - 1e-9)))
    every = max(1, steps_per_epoch // m)
    return epochs, (0 if every >= steps_per_epoch else every)


IMAGENET_SPAN = 6  # J on ImageNet-1K (hardtruths §2.3, the only dataset the paper gives J for)


def resolve_span(span: Optional[int], num_classes: int) -> Optional[int]:
    """J for a dataset: `span` when given; None (J = R − W) outside ImageNet-1K; 6 on ≥ 1000 classes."""
    if span is not None:
        return span
    return IMAGENET_SPAN if num_classes >= 1000 else None


def cad_from_scores(s: torch.Tensor, span: Optional[int], windows: int, fallback: bool = True
                    ) -> Tuple[torch.Tensor, int]:
    """Eq. 1–2 on an R×N score matrix: (CAD per sample (N,), the span J actually used).

    CAD = mean_{k=R−J−W}^{R−J−1} std(s[k:k+J]) (unbiased); span None or (`fallback` and R < J+W): J = R − W.
    """
    r = s.shape[0]
    j = r - windows if span is None else span
    if span is None:
        if j < 2:
            raise DDKitError(f"CAD with J = R − W needs at least W + 2 = {windows + 2} record points, the run has "
                             f"{r}: raise --points-per-epoch or the budget, or lower --proxy-batch-size")
    elif r < span + windows:
        if not fallback:
            raise DDKitError(f"CAD needs R ≥ J + W = {span + windows} record points, the run has {r}: raise the budget, "
                             "--points-per-epoch, or turn --span-fallback on")
        j = r - windows
        if j < 2:
            raise DDKitError(f"CAD needs at least W + 2 = {windows + 2} record points for a std window, the run has "
                             f"{r}: raise --points-per-epoch or the budget, or lower --proxy-batch-size")
    u = window_std(s, j)  # (R−J+1)×N, row k = U_k
    return u[r - j - windows:r - j].mean(0), j


def top_per_class(scores: torch.Tensor, labels: torch.Tensor, num_classes: int, n: int) -> List[torch.Tensor]:
    """Per class, the indices of the n highest scores in descending order (ties: lower index first)."""
    out = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c, as_tuple=False).flatten()
        order = torch.argsort(scores[idx], descending=True, stable=True)[:n]
        out.append(idx[order])
    return out


# ----------------------------------------------------------------------------------------------------
# The scoring run
# ----------------------------------------------------------------------------------------------------

def dynamics_config(cfg: CADConfig, k: float, n_train: int) -> DynamicsConfig:
    """The recorder's config for a K-epoch compute-matched run (all points kept as 'early' so EL2N is R×N)."""
    bs = min(cfg.proxy.batch_size, n_train)
    epochs, every = record_plan(k, cfg.span or IMAGENET_SPAN, cfg.windows, max(1, n_train // bs),
                                cfg.points_per_epoch)
    if cfg.early_checkpoint_of and cfg.early_checkpoint_of < k - 1e-9:
        raise DDKitError(f"--early-checkpoint-of {cfg.early_checkpoint_of} must be ≥ the budget K = {k:g}")
    stop = 0.0 if abs(k - epochs) < 1e-9 else float(k)  # fractional K: stop inside the last epoch
    return dataclasses.replace(cfg.proxy, epochs=epochs, stop_epochs=stop, runs=1, seed=cfg.seed,
                               record_every=every, early_epochs=float(epochs), amp=cfg.amp,
                               schedule_epochs=float(cfg.early_checkpoint_of))


def cad_scores(dataset: ImageDataset, cfg: CADConfig, device: Any, progress: bool = True
               ) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """Run (or load) the compute-matched scoring run and return (CAD per training sample, facts for meta)."""
    k = scoring_epochs(cfg, len(dataset), dataset.num_classes)
    dcfg = dynamics_config(cfg, k, len(dataset))
    # Cached by default so cad-prune and ca2d (and reruns) share one scoring run; "none" turns caching off.
    if cfg.dynamics_cache is None:
        from ddkit.data.cache import default_cache_dir

        cache = default_cache_dir() / "dynamics"
    else:
        cache = None if cfg.dynamics_cache.lower() == "none" else cfg.dynamics_cache
    dyn = dynamics_for(dataset, dcfg, cache, device=device, progress=progress)
    dyn.check_matches(dataset)
    keep = dyn.record_epochs <= k + 1e-6  # guard: points past the budget (none when stop_epochs = K) are not used
    if cfg.score == "p_true":
        s = dyn.p_true[keep]
    else:
        if dyn.el2n.shape[1] != dyn.num_points:
            raise DDKitError("these dynamics hold EL2N only at early points; record with early_epochs = epochs")
        s = dyn.el2n[0][keep]
    span = resolve_span(cfg.span, dataset.num_classes)
    cad, j = cad_from_scores(s, span, cfg.windows, cfg.span_fallback)
    info = {"cad_K": k, "cad_score": cfg.score, "cad_span": j, "cad_span_requested": cfg.span,
            "cad_span_rule": "J = R − W (whole run)" if span is None else f"J = {span}",
            "cad_early_checkpoint_of": cfg.early_checkpoint_of or None,
            "cad_windows": cfg.windows, "cad_span_fallback_used": span is not None and j != span,
            "cad_record_points": int(s.shape[0]),
            "cad_record_epochs": dyn.record_epochs[keep].tolist(), "cad_train_epochs": dcfg.epochs,
            "cad_record_every": dcfg.record_every, "cad_proxy": dcfg.arch,
            "cad_proxy_train_acc": (dyn.meta.get("train_acc") or [None])[-1]}
    return cad, info


# Not class-separable: the scoring run trains on every class at once (sharding by class would redo it).
@register_method("cad-prune", config=CADConfig, aliases=("cad", "cadprune"), class_separable=False)
def cad_prune(dataset: ImageDataset, teacher: Any, cfg: CADConfig, classes: Sequence[int], *,
              device: torch.device, progress: bool = True) -> Iterator[ClassResult]:
    """CAD-Prune: per class the ipc real images with the highest compute-aware difficulty."""
    check_ipc(dataset, cfg.ipc, "cad-prune")
    cad, info = cad_scores(dataset, cfg, device, progress)
    labels = dataset.labels.cpu()
    picks = top_per_class(cad, labels, dataset.num_classes, cfg.ipc)
    set_meta = {"intended_regime": "hl", **info}
    for c in classes:
        yield ClassResult(c, to_float(dataset.get(picks[c])), extras={"source_index": picks[c]},
                          meta={"cad_selected_mean": float(cad[picks[c]].mean()),
                                "cad_class_mean": float(cad[labels == c].mean())}, set_meta=set_meta)


@register_method("ca2d", config=CA2DConfig, needs_teacher=True, class_separable=False)
def ca2d(dataset: ImageDataset, teacher: Any, cfg: CA2DConfig, classes: Sequence[int], *, device: torch.device,
         progress: bool = True) -> Iterator[ClassResult]:
    """CA2D: RDED's lowest-CE patches, stitched f×f, taken from the CAD-Prune pool (hard labels)."""
    factor = resolve_factor(cfg.factor, dataset.image_size)
    need = cfg.ipc * factor ** 2
    pool_n = need if cfg.pool == "coreset" else cfg.pool_size
    check_teacher_shape(dataset, teacher, factor)
    check_pools(dataset, pool_n, need, "ca2d")
    cad, info = cad_scores(dataset, cfg, device, progress)
    pools = top_per_class(cad, dataset.labels.cpu(), dataset.num_classes, pool_n)
    scorer = PatchScorer(teacher, device, cfg.normalization, cfg.max_batch, cfg.amp)
    reading = ("paper text: patches 'from this coreset' (every coreset image gives its best patch)"
               if cfg.pool == "coreset" else "reproduction's ASSUME 8: top-pool_size by CAD, then RDED's lowest-CE pick")
    meta = {"normalization": cfg.normalization, "num_crop": cfg.num_crop, "pool": f"cad-{cfg.pool}",
            "pool_reading": reading,
            "pool_per_class": pool_n, "intended_regime": "hl", "intended_recipe": "hardtruths-hl", **info}
    yield from run_classes(classes, lambda c: (dataset.get(pools[c]), pools[c]), scorer, cfg.ipc, factor,
                           cfg.num_crop, cfg.scale_min, cfg.seed, cfg.store_labels, meta)
