"""G-VBSM's statistic matching ("GSM") and data densification, as hooks on a frozen teacher (helper of `gvbsm`;
`edc` adds its class-aware targets, `ClassStatHooks`, documented at the end of this file).

Read in shaoshitong/G_VBSM_Dataset_Condensation@1ed80b0, `Branch_<DS>/recover/utils.py` ("U", CIFAR-10 line
numbers; the other branches differ only where said) and `data_synthesis_with_svd_with_db_with_all_statistic.py`
("DS"):

* Every BatchNorm2d and every Conv2d of a teacher gets a hook, in `named_modules()` order (DS:54-65); the first hook
  of the list carries the multiplier (10, DS:157-159), so in a ResNet or ConvNet it is the first convolution's.
* BN hook (U:103-126): channel mean and biased variance of the BN input, ‖running_var − v‖₂ + ‖running_mean − m‖₂.
* Conv hook (U:187-234): of the conv's INPUT, the channel mean and biased variance, and "patch" statistics: the
  map is bilinearly resized to the next multiple of the cell side (`div_four_mul`, U:27-30; ImageNet-1K
  `div_sixteen_mul`) and cut into cell×cell-pixel cells; each cell's mean and biased variance is taken over
  batch × channels × cell pixels (einops "b c (u h) (v w) -> (u v) (b c h w)"). Cells are 4 px on CIFAR/Tiny
  (U:196, 214) and 16 px on ImageNet-1K (IN-1K utils.py:195, 213). Loss: four unsquared L2 norms to the dataset
  targets (U:229-232). With probability `drop_rate` a conv hook contributes 0 and its EMA is not updated (U:205-207).
* Targets of the conv hooks (U:187-202): over one pass of the train set, Σ_batches stat(batch)·|batch| / N.
* EMA with a straight-through gradient (U:116-125, 218-232): ema ← α·ema + (1 − α)·stat (no gradient; the first
  value is the stat itself) and the loss sees ema + stat − sg(stat): the value of the EMA, the gradient of the
  current batch's statistic.
* Densification (DS:161-181): views average-pooled to 32×32 and flattened; per class of the batch the Gram matrix
  G = X Xᵀ of its images, eigenvalues λ, KL_sum(softmax(λ/τ) ‖ log_softmax(λ)) with the softmax(λ/τ) side
  detached, summed over classes. torch.linalg.eigvals(G).real in the code; G is symmetric, so eigvalsh gives the
  same values (KL pairs the two vectors entrywise, so the order does not matter).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ddkit.utils import DDKitError

Stats = Tuple[torch.Tensor, ...]


def channel_stats(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance over batch and positions (C each)."""
    v = x.float().transpose(0, 1).reshape(x.shape[1], -1)
    return v.mean(1), v.var(1, unbiased=False)


def patch_stats(x: torch.Tensor, cell: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance of each cell×cell cell (row-major, (H'/cell)·(W'/cell) each) of `x` bilinearly
    resized to the next multiples H', W' of `cell`, each over batch × channels × the cell's pixels."""
    b, c, h, w = x.shape
    nh, nw = cell * math.ceil(h / cell), cell * math.ceil(w / cell)
    y = F.interpolate(x.float(), size=(nh, nw), mode="bilinear", align_corners=False)
    u, v = nh // cell, nw // cell
    cells = y.reshape(b, c, u, cell, v, cell).permute(2, 4, 0, 1, 3, 5).reshape(u * v, -1)
    return cells.mean(1), cells.var(1, unbiased=False)


def ema_straight_through(ema: Optional[torch.Tensor], stat: torch.Tensor, alpha: float
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(new EMA, detached; the value the loss sees: the new EMA with the gradient of `stat`)."""
    cur = stat.detach()
    new = cur if ema is None else alpha * ema + (1.0 - alpha) * cur
    return new, new + stat - cur


def distance(targets: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ_i ‖target_i − value_i‖₂, unsquared (U:124-125, 229-232)."""
    return sum((t.to(v) - v).norm() for t, v in zip(targets, values))


class _Hook:
    """One hooked layer: "bn" (targets: running mean/var) or "conv" (targets: dataset statistics)."""

    def __init__(self, kind: str, module: nn.Module) -> None:
        self.kind, self.module = kind, module
        self.ema: Optional[List[torch.Tensor]] = None
        self.target: Optional[List[torch.Tensor]] = None  # conv: (mean, var, patch mean, patch var)
        self.acc: Optional[List[torch.Tensor]] = None
        self.term: Optional[torch.Tensor] = None


class StatHooks:
    """G-VBSM's hooks on one network. `collect()` mode accumulates the conv targets over a pass of real data;
    `match` mode (after `finish_targets`) leaves each hook's loss term for `loss()`."""

    def __init__(self, net: nn.Module, cell: int, alpha: float, drop_rate: float,
                 drop_gen: Optional[torch.Generator] = None) -> None:
        self.cell, self.alpha, self.drop_rate, self.drop_gen = cell, float(alpha), float(drop_rate), drop_gen
        self.hooks: List[_Hook] = []
        for m in net.modules():  # named_modules() order, as DS:54-65
            if isinstance(m, nn.BatchNorm2d):
                self.hooks.append(_Hook("bn", m))
            elif isinstance(m, nn.Conv2d):
                self.hooks.append(_Hook("conv", m))
        if not any(h.kind == "bn" for h in self.hooks):
            raise DDKitError("gvbsm matches BatchNorm running statistics but a teacher has no BatchNorm2d layer")
        self.mode, self.seen = "collect", 0
        self.handles = [h.module.register_forward_hook(self._fn(h)) for h in self.hooks]

    def _fn(self, h: _Hook) -> Callable[..., None]:
        def fn(module: nn.Module, inputs: Tuple[torch.Tensor, ...], output: Any) -> None:
            x = inputs[0]
            if self.mode == "off":
                return
            if self.mode == "collect":
                if h.kind == "conv":
                    with torch.no_grad():
                        part = [s.double() * x.shape[0] for s in (*channel_stats(x), *patch_stats(x, self.cell))]
                    h.acc = part if h.acc is None else [a + p for a, p in zip(h.acc, part)]
                return
            h.term = self._bn_term(h, x) if h.kind == "bn" else self._conv_term(h, x)
        return fn

    def _bn_term(self, h: _Hook, x: torch.Tensor) -> torch.Tensor:
        mean, var = channel_stats(x)
        rm, rv = h.module.running_mean.float(), h.module.running_var.float()
        return self._ema(h, (var, mean), (rv, rm))

    def _conv_term(self, h: _Hook, x: torch.Tensor) -> torch.Tensor:
        if self.drop_rate > 0 and float(torch.rand((), generator=self.drop_gen)) < self.drop_rate:
            return x.new_zeros((), dtype=torch.float32)  # dropped: no term, no EMA update (U:205-207)
        mean, var = channel_stats(x)
        pm, pv = patch_stats(x, self.cell)
        tm, tv, tpm, tpv = h.target
        return self._ema(h, (var, mean, pm, pv), (tv, tm, tpm, tpv))

    def _ema(self, h: _Hook, stats: Tuple[torch.Tensor, ...], targets: Tuple[torch.Tensor, ...]) -> torch.Tensor:
        return distance(targets, self._advance(h, stats))

    def _advance(self, h: _Hook, stats: Tuple[torch.Tensor, ...]) -> List[torch.Tensor]:
        """Step the hook's EMAs with this forward's statistics; the values the loss sees (straight-through)."""
        pairs = [ema_straight_through(None if h.ema is None else h.ema[i], s, self.alpha) for i, s in enumerate(stats)]
        h.ema = [p[0] for p in pairs]
        return [p[1] for p in pairs]

    def finish_targets(self) -> None:
        """End of the target pass: conv targets = the batch-size-weighted means; switch to matching."""
        for h in self.hooks:
            if h.kind == "conv":
                if h.acc is None:
                    raise DDKitError("gvbsm: a convolution of a teacher saw no real image in the statistics pass")
                h.target = [(a / self.seen).float() for a in h.acc]
                h.acc = None
        self.mode = "match"

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Forwards inside leave the hooks untouched (EDC scores its mosaic crops through the hooked teachers)."""
        mode, self.mode = self.mode, "off"
        try:
            yield
        finally:
            self.mode = mode

    def reset(self) -> None:
        """Forget the EMAs (a new unit starts from its own first batch statistics)."""
        for h in self.hooks:
            h.ema, h.term = None, None

    def loss(self, first_multiplier: float) -> torch.Tensor:
        """Σ_i m_i·term_i of the last forward, m_0 = first_multiplier (DS:157-159)."""
        terms = [h.term for h in self.hooks]
        if any(t is None for t in terms):
            raise DDKitError("gvbsm: a hooked layer was not reached by the forward")
        total = terms[0] * first_multiplier
        for t in terms[1:]:
            total = total + t
        for h in self.hooks:
            h.term = None
        return total.reshape(())

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def collect_targets(hooks: StatHooks, net: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Forward every batch (already augmented and in `net`'s input space) through `net` and finish the targets."""
    hooks.mode, hooks.seen = "collect", 0
    for xb in batches:
        net(xb)
        hooks.seen += len(xb)
    hooks.finish_targets()


def densify_loss(view: torch.Tensor, y: torch.Tensor, tau: float, pool: int = 32) -> torch.Tensor:
    """Σ over the classes of the batch of KL_sum(softmax(λ/τ) ‖ log_softmax(λ)), λ the eigenvalues of the Gram
    matrix of the class's views pooled to pool×pool (softmax(λ/τ) detached, DS:161-181)."""
    flat = F.adaptive_avg_pool2d(view.float(), (pool, pool)).reshape(len(view), -1)
    total = view.new_zeros((), dtype=torch.float32)
    for c in torch.unique(y).tolist():
        xc = flat[y == c]
        lam = torch.linalg.eigvalsh(xc @ xc.t())
        tea = torch.softmax(lam / tau, dim=0).detach()
        total = total + F.kl_div(torch.log_softmax(lam, dim=0), tea, reduction="sum")
    return total


# -- EDC's "soft category-aware matching" (shaoshitong/EDC@80116a7, Branch_CIFAR_10/recover/utils.py "E") ----------
def image_stats(x: torch.Tensor, cell: Optional[int] = None) -> Tuple[torch.Tensor, ...]:
    """Per image: the channel variance and mean within the image (B×C each, biased, E:196-201, 403-404) and, with
    `cell`, each cell's mean and variance over channels × the cell's pixels of the map resized as `patch_stats`
    (B×cells, E:391-393, 405-406). Order (var, mean[, patch mean, patch var]): the order of the hooks' terms."""
    b, c, h, w = x.shape
    v = x.float().reshape(b, c, -1)
    out: Tuple[torch.Tensor, ...] = (v.var(2, unbiased=False), v.mean(2))
    if cell is not None:
        nh, nw = cell * math.ceil(h / cell), cell * math.ceil(w / cell)
        y = F.interpolate(x.float(), size=(nh, nw), mode="bilinear", align_corners=False)
        u, q = nh // cell, nw // cell
        cells = y.reshape(b, c, u, cell, q, cell).permute(0, 2, 4, 1, 3, 5).reshape(b, u * q, -1)
        out = out + (cells.mean(2), cells.var(2, unbiased=False))
    return out


class ClassStatHooks(StatHooks):
    """EDC's hooks: G-VBSM's, plus per-class targets. The statistics pass also accumulates, per class, the sums of
    `image_stats` of every image (E:194-206, 402-414); the targets are their per-class means (E:184-187, 361-365).
    At a step, `labels` holds the batch's classes and the class target is the mean of the per-class targets over
    the batch's rows (a class present twice counts twice, E:226-227, 506-509); each hook's term is
    0.5·(G-VBSM's global term) + 0.5·(the same distances to the class target), both from the one EMA'd,
    straight-through value (E:224-230, 501-514). `swap_patch`: the class targets' patch mean and variance trade
    places, as the official files store them (E:370-373) and a run that loads them uses them."""

    def __init__(self, net: nn.Module, cell: int, alpha: float, drop_rate: float, num_classes: int,
                 drop_gen: Optional[torch.Generator] = None, swap_patch: bool = False) -> None:
        self.num_classes, self.swap_patch = int(num_classes), bool(swap_patch)
        self.labels: Optional[torch.Tensor] = None
        self.counts = torch.zeros(self.num_classes, dtype=torch.float64)
        super().__init__(net, cell, alpha, drop_rate, drop_gen)
        for h in self.hooks:
            h.cls_acc, h.cls_target = None, None  # type: ignore[attr-defined]

    def _fn(self, h: _Hook) -> Callable[..., None]:
        base = super()._fn(h)

        def fn(module: nn.Module, inputs: Tuple[torch.Tensor, ...], output: Any) -> None:
            if self.mode == "collect":
                with torch.no_grad():
                    x, y = inputs[0], self.labels.to(inputs[0].device)
                    part = [torch.zeros(self.num_classes, s.shape[1], dtype=torch.float64, device=x.device)
                            .index_add_(0, y, s.double()) for s in image_stats(x, self.cell if h.kind == "conv"
                                                                                else None)]
                h.cls_acc = part if h.cls_acc is None else [a + p for a, p in zip(h.cls_acc, part)]
            base(module, inputs, output)
        return fn

    def finish_targets(self) -> None:
        empty = (self.counts == 0).nonzero().flatten().tolist()
        if empty:
            raise DDKitError(f"edc: class {empty[0]} had no image in the statistics pass (its class target "
                             "would be 0/0)")
        for h in self.hooks:
            n = self.counts.to(h.cls_acc[0].device)[:, None]
            t = [(a / n).float() for a in h.cls_acc]
            if self.swap_patch and h.kind == "conv":
                t = [t[0], t[1], t[3], t[2]]
            h.cls_target, h.cls_acc = t, None
        super().finish_targets()

    def _ema(self, h: _Hook, stats: Tuple[torch.Tensor, ...], targets: Tuple[torch.Tensor, ...]) -> torch.Tensor:
        values = self._advance(h, stats)
        rows = self.labels.to(h.cls_target[0].device)
        return 0.5 * distance(targets, values) + 0.5 * distance([t[rows].mean(0) for t in h.cls_target], values)


@torch.no_grad()
def collect_class_targets(hooks: ClassStatHooks, net: nn.Module,
                          batches: Iterable[Tuple[torch.Tensor, torch.Tensor]]) -> None:
    """`collect_targets` with labels: forward every (images, labels) batch and finish the global and class targets."""
    hooks.mode, hooks.seen = "collect", 0
    hooks.counts.zero_()
    for xb, yb in batches:
        hooks.labels = yb
        net(xb)
        hooks.seen += len(xb)
        hooks.counts += torch.bincount(yb.cpu(), minlength=hooks.num_classes).double()
    hooks.finish_targets()
