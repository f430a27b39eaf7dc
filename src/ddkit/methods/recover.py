"""The SRe2L "recover" engine shared by `sre2l`, `cda` and `dwa`: BN-statistic matching through a frozen teacher
(and DWA's directed weight adjustment, `adjust_weights`).

Images are optimised in a normalised *working* space (the statistics the official code normalises with, see
sre2l.py; the teacher is fed through `WorkingInput`, the exact affine map into the statistics it was trained
with) with Adam(β = 0.5, 0.9) and a cosine lr (peers.md §3.2). Per iteration each image group gets one view (RandomResizedCrop + flip when enabled,
then a random roll jitter), the teacher runs in eval mode, and the loss of group g is

    CE_g + r_bn · Σ_l m_l (‖μ_l(g) − μ*_l(g)‖₂ + r_var · ‖σ²_l(g) − σ²*_l(g)‖₂) + tv_l2 · TV_g + l2 · ‖x_g‖₂

where μ_l(g), σ²_l(g) are the mean and biased variance of the *input* of BatchNorm layer l over the
group's images and positions (forward hooks on every BatchNorm), m_1 = first_bn_multiplier and 1 for
the other layers, and (μ*, σ²*) the target statistics (the running statistics, or per-class ones).
After each Adam step pixels are clipped to the valid normalised range; the last iterate is kept.

Groups: the rows of `x0` form `groups` equal groups, each with its own BN statistics, loss and view. The
official recover (the default, unit=batch) is ONE group: a batch of one image of every class of a class group,
whose statistics mix the classes, with one view per iteration for the whole batch. ddkit's unit=class variant
makes each class's `ipc` images a group: the loss is a sum of per-group losses, the teacher is in eval mode
(every sample's forward is independent) and Adam is element-wise, so a group's gradient depends on that group
alone and each group draws its views from its own generator; a class's result then does not depend on which
classes share its forward pass (up to float rounding of batched convolutions), `classes_per_batch` only sets
how many groups share one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ddkit.augment import RandomResizedCrop, resized_crop
from ddkit.data.facts import WorkingStats
from ddkit.utils import DDKitError

ADAM_BETAS = (0.5, 0.9)  # SRe2L recover/data_synthesis.py:46-53 (peers.md §3.2); also CDA and DWA
ADAM_EPS = 1e-8
BN_HINT = ("use a BatchNorm teacher such as ConvNet-3-BN or resnet18_modified; train one with "
           "`ddkit teacher train --model ConvNet-3-BN --dataset … --output …`")


def bn_layers(model: nn.Module) -> List[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer (1d/2d/3d) in module order; the first is the one with the multiplier."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def require_bn(model: nn.Module, what: str = "this method", arch: Optional[str] = None) -> None:
    """One-line DDKitError when `model` has no BatchNorm layer with running statistics."""
    layers = [m for m in bn_layers(model) if m.running_mean is not None and m.running_var is not None]
    if not layers:
        name = f"teacher {arch!r}" if arch else "the teacher"
        raise DDKitError(f"{what} matches BatchNorm running statistics but {name} has no BatchNorm layer "
                         f"(instance/group norm): {BN_HINT}")


def group_stats(x: torch.Tensor, groups: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance per channel of a BN input, per group of contiguous rows: G×C each."""
    b, c = x.shape[0], x.shape[1]
    if b % groups:
        raise ValueError(f"batch of {b} rows does not split into {groups} equal groups")
    v = x.float().reshape(groups, b // groups, c, -1).transpose(1, 2).reshape(groups, c, -1)
    mean = v.mean(-1)
    var = (v - mean[..., None]).pow(2).mean(-1)  # biased, as SRe2L's hook (var(unbiased=False))
    return mean, var


class BNHooks:
    """Forward hooks on every BatchNorm of `model` recording per-group input statistics."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = bn_layers(model)
        self.groups = 1
        self.stats: List[Optional[Tuple[torch.Tensor, torch.Tensor]]] = [None] * len(self.layers)
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.layers)]

    def _hook(self, i: int):
        def fn(module: nn.Module, inputs: Tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            self.stats[i] = group_stats(inputs[0], self.groups)
        return fn

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def __enter__(self) -> "BNHooks":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def running_targets(self, groups: int) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """The layers' running (mean, var), repeated for `groups` groups: G×C each."""
        return [(m.running_mean.float()[None].expand(groups, -1), m.running_var.float()[None].expand(groups, -1))
                for m in self.layers]


def bn_loss(stats: Sequence[Tuple[torch.Tensor, torch.Tensor]], targets: Sequence[Tuple[torch.Tensor, torch.Tensor]],
            first_multiplier: float = 10.0, r_var: float = 1.0) -> torch.Tensor:
    """Σ_l m_l (‖μ_l − μ*_l‖₂ + r_var·‖σ²_l − σ²*_l‖₂) per group (G,); norms not squared (SRe2L utils.py:92-104)."""
    total = None
    for i, ((mu, var), (mu_t, var_t)) in enumerate(zip(stats, targets)):
        term = (mu - mu_t.to(mu)).norm(dim=1) + r_var * (var - var_t.to(var)).norm(dim=1)
        term = term * (first_multiplier if i == 0 else 1.0)
        total = term if total is None else total + term
    if total is None:
        raise DDKitError(f"no BatchNorm statistics were recorded: {BN_HINT}")
    return total


def tv_l2(x: torch.Tensor, groups: int) -> torch.Tensor:
    """DeepInversion/SRe2L image prior per group: sum of the L2 norms of the 4 neighbour differences."""
    g = x.reshape(groups, -1, *x.shape[1:])
    diffs = (g[..., :, :-1] - g[..., :, 1:], g[..., :-1, :] - g[..., 1:, :],
             g[..., 1:, :-1] - g[..., :-1, 1:], g[..., :-1, :-1] - g[..., 1:, 1:])
    return sum(d.reshape(groups, -1).norm(dim=1) for d in diffs)


def cda_min_scale(it: int, total: int, milestone: float, mode: str = "cosine", lo: float = 0.08,
                  hi: float = 1.0) -> float:
    """CDA's RandomResizedCrop lower scale at 0-based iteration `it` of `total` (recover_cda_tiny.py:50-65):
    before milestone·total it is 1.0 (step), a linear ramp or a half cosine from `hi` down to `lo`; after, `lo`."""
    end = milestone * total
    if it < end:
        if mode == "step":
            return hi
        if mode == "linear":
            return lo + (hi - lo) * (1.0 - it / end)
        if mode == "cosine":
            return lo + (hi - lo) * (1.0 + math.cos(math.pi * it / end)) / 2.0
        raise DDKitError(f"unknown easy2hard mode {mode!r}; use cosine, linear or step")
    return lo


@dataclass(frozen=True)
class RecoverSpec:
    """Resolved recover hyper-parameters (see the config classes in sre2l.py for the sources)."""

    iterations: int
    lr: float
    r_bn: float
    first_bn_multiplier: float = 10.0
    r_var: float = 1.0
    tv_l2: float = 0.0
    l2_scale: float = 0.0
    jitter: int = 4
    rrc: bool = False
    flip: bool = False
    rrc_min: float = 0.08
    curriculum: Optional[Tuple[float, str]] = None  # CDA: (milestone, mode) anneals the RRC lower bound
    curve_points: int = 50
    ce_weight: float = 1.0  # WMDD's r_wb on the CE term (data_synthesis_new.py:154-165); 1 for the others
    reduce: str = "sum"  # how group losses combine: sum (independent groups) or mean (WMDD: mean over classes)
    one_view: bool = False  # one view for the whole batch even with several groups (WMDD's per-class BN batch)
    pad: int = 0  # > 0: RandomCrop(side, padding=pad), zero fill, in place of the RRC (G-VBSM's CIFAR views)


#: One member of a recover committee: (eval-mode network, weight, its BN targets per layer (mean G×C, var G×C)).
Voter = Tuple[nn.Module, float, Sequence[Tuple[torch.Tensor, torch.Tensor]]]


def _draw_views(gens: Sequence[torch.Generator], spec: RecoverSpec, it: int, hw: Tuple[int, int]) -> Dict[str, torch.Tensor]:
    """One view per group from that group's own generator, in a fixed order: RRC box, flip, roll."""
    boxes, flips, rolls, crops = [], [], [], []
    lo = spec.rrc_min
    if spec.curriculum is not None:
        lo = cda_min_scale(it, spec.iterations, spec.curriculum[0], spec.curriculum[1], lo=spec.rrc_min)
    rrc = RandomResizedCrop(hw, scale=(lo, 1.0)) if spec.rrc else None
    for g in gens:
        if rrc is not None:
            boxes.append(rrc.sample(1, hw, generator=g)["box"][0])
        elif spec.pad:  # torchvision RandomCrop.get_params: top, left uniform in 0..2·pad
            crops.append(torch.randint(0, 2 * spec.pad + 1, (2,), generator=g))
        if spec.flip:
            flips.append(bool(torch.rand(1, generator=g) < 0.5))
        rolls.append(torch.randint(0, spec.jitter + 1, (2,), generator=g))  # random.randint(0, jitter): inclusive
    out = {"roll": torch.stack(rolls), "pad": torch.tensor(spec.pad)}
    if boxes:
        out["box"] = torch.stack(boxes)
    if crops:
        out["crop"] = torch.stack(crops)
    if flips:
        out["flip"] = torch.tensor(flips)
    return out


def pad_crop(x: torch.Tensor, offsets: torch.Tensor, pad: int) -> torch.Tensor:
    """RandomCrop(side, padding=pad) with zero fill, per row: `offsets` (B×2) are each row's top and left in the
    padded image (0..2·pad)."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    off = offsets.to(x.device)
    rows = off[:, :1] + torch.arange(h, device=x.device)[None]
    cols = off[:, 1:] + torch.arange(w, device=x.device)[None]
    xp = xp.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * pad))
    return xp.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def apply_views(x: torch.Tensor, views: Dict[str, torch.Tensor], groups: int) -> torch.Tensor:
    """Apply per-group views (crop+resize or padded crop, flip, torch.roll semantics) to contiguous row groups."""
    b, c, h, w = x.shape
    m = b // groups
    rep = lambda t: t.to(x.device).repeat_interleave(m, 0)  # noqa: E731 - one value per group -> per row
    if "box" in views:
        x = resized_crop(x, rep(views["box"]), (h, w), antialias=False)
    if "crop" in views:
        x = pad_crop(x, rep(views["crop"]), int(views["pad"]))
    if "flip" in views:
        x = torch.where(rep(views["flip"])[:, None, None, None], x.flip(3), x)
    roll = rep(views["roll"])
    rows = (torch.arange(h, device=x.device)[None] - roll[:, :1]) % h  # out[i] = in[(i - shift) % n]
    cols = (torch.arange(w, device=x.device)[None] - roll[:, 1:]) % w
    x = x.gather(2, rows[:, None, :, None].expand(b, c, h, w))
    return x.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def recover(model: Optional[nn.Module], x0: torch.Tensor, y: torch.Tensor, groups: int,
            targets: Sequence[Tuple[torch.Tensor, torch.Tensor]], gens: Sequence[torch.Generator],
            spec: RecoverSpec, bounds: Tuple[torch.Tensor, torch.Tensor], *, progress: bool = False,
            desc: str = "recover", at_start: Optional[Callable[[torch.Tensor], Optional[torch.Tensor]]] = None,
            voters: Optional[Sequence[Voter]] = None, rotate: bool = False, start: int = 0,
            total: Optional[int] = None,
            extra: Optional[Callable[[Optional[torch.Tensor]], torch.Tensor]] = None,
            active: Optional[Callable[[int], Optional[torch.Tensor]]] = None, extra_name: str = "extra",
            stat_loss: Optional[Callable[[int], torch.Tensor]] = None
            ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Optimise `x0` (B×C×H×W, normalised, rows grouped contiguously into `groups` equal groups) through
    the frozen eval-mode `model`; returns the last iterate and per-group curves (ce, bn: G×points; "extra":
    1×points when `extra` is given).

    targets: per BN layer (mean G×C, var G×C); gens: one generator per group; bounds: per-channel
    (low, high) of the valid normalised range (C each). at_start(view): called once with iteration 0's
    (detached) view before its forward — DWA moves the teacher's weights there (distillation_cifar.py:61-66); a
    tensor it returns is a gradient w.r.t. that view added to iteration 0's image gradient (DWA's
    first_step=official: the adjustment passes' CE gradients, which the official code lets reach the images).
    Hooks of the descendants (each off by default, so SRe2L/CDA/DWA run exactly as before):
    voters: several networks (`model`/`targets` are then unused), each step's loss Σ_k w_k (CE_k + r_bn·BN_k) over
    the voters that see the view (CV-DD's committee); the curves hold the weighted sums. rotate: they take turns
    instead, step t forwarding voter t mod K alone (FADRM+'s round robin). A call may be one stage of a longer run
    (FADRM): `start` is the global step of its first iteration (for the turn and the lr) and `total` the length of
    the one cosine lr schedule (default spec.iterations); Adam starts afresh at every call. extra(rows): a scalar
    added to the step's total loss after the forwards (WMDD's feature term; it reads what its own forward hooks
    captured; its progress-bar name `extra_name`). active(it): the rows forwarded at iteration `it` (None: all),
    with groups = 1 — DELT's early-late rounds; Adam holds the whole tensor, so a row not yet active has zero
    moments and does not move. spec.one_view: one view per step for the whole batch, drawn from gens[0], while the
    BN statistics stay per group (WMDD). stat_loss(k): the statistic term (G,) of member k's forward just run, in
    place of the BN term (G-VBSM's BN + Conv-input statistics through its own hooks; the curves' "bn" holds it).
    """
    if len(gens) != groups:
        raise ValueError(f"need one generator per group ({groups}), got {len(gens)}")
    if active is not None and groups != 1:
        raise ValueError("active rows need groups = 1 (one set of BN statistics over the active rows)")
    if spec.reduce not in ("sum", "mean"):
        raise DDKitError(f"unknown group reduction {spec.reduce!r}; use sum or mean")
    members: List[Voter] = list(voters) if voters is not None else [(model, 1.0, targets)]
    for net, _, _ in members:
        net.eval()
    x = x0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=spec.lr, betas=ADAM_BETAS, eps=ADAM_EPS)
    lo, hi = (t.to(x).view(1, -1, 1, 1) for t in bounds)
    every = max(1, spec.iterations // max(1, spec.curve_points))
    curve_ce: List[torch.Tensor] = []
    curve_bn: List[torch.Tensor] = []
    curve_extra: List[torch.Tensor] = []
    hw = (x.shape[-2], x.shape[-1])
    span = total or spec.iterations
    bar = tqdm(range(spec.iterations), desc=desc, disable=not progress, leave=False, dynamic_ncols=True,
               mininterval=1.0)
    all_hooks = [BNHooks(net) for net, _, _ in members]
    try:
        for hooks in all_hooks:
            if not hooks.layers:
                raise DDKitError(f"recover needs a BatchNorm teacher: {BN_HINT}")
            hooks.groups = groups
        for it in bar:
            for pg in opt.param_groups:  # cosine without warm-up, set before the step (SRe2L utils.py:24-34)
                pg["lr"] = 0.5 * (1.0 + math.cos(math.pi * (start + it) / span)) * spec.lr
            rows = active(it) if active is not None else None
            xs, ys = (x, y) if rows is None else (x[rows], y[rows])
            if spec.one_view:
                view = apply_views(xs, _draw_views(gens[:1], spec, it, hw), 1)
            else:
                view = apply_views(xs, _draw_views(gens, spec, it, hw), groups)
            leak = at_start(view.detach()) if it == 0 and at_start is not None else None
            ce = bn = None
            for k in ([(start + it) % len(members)] if rotate else range(len(members))):
                (net, w, tgt), hooks = members[k], all_hooks[k]
                out = net(view)
                ce_k = F.cross_entropy(out.float(), ys, reduction="none").reshape(groups, -1).mean(1)
                bn_k = stat_loss(k) if stat_loss is not None else bn_loss(hooks.stats, tgt, spec.first_bn_multiplier,
                                                                            spec.r_var)
                ce = w * ce_k if ce is None else ce + w * ce_k
                bn = w * bn_k if bn is None else bn + w * bn_k
            loss_g = spec.ce_weight * ce + spec.r_bn * bn
            if spec.tv_l2:
                loss_g = loss_g + spec.tv_l2 * tv_l2(view, groups)
            if spec.l2_scale:
                loss_g = loss_g + spec.l2_scale * view.reshape(groups, -1).norm(dim=1)
            # a sum, so each group's gradient is its own loss's gradient (mean: WMDD's one batch loss)
            loss = loss_g.sum() if spec.reduce == "sum" else loss_g.mean()
            ex = extra(rows) if extra is not None else None
            if ex is not None:
                loss = loss + ex
            if leak is not None:  # d/dx of (view · leak) is the view's vector-Jacobian product with `leak`
                loss = loss + (view * leak.to(view)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, hi), lo))  # clip to the valid range each step
            if it % every == 0 or it == spec.iterations - 1:
                curve_ce.append(ce.detach().cpu())
                curve_bn.append(bn.detach().cpu())
                if ex is not None:
                    curve_extra.append(ex.detach().reshape(1).cpu())
                if progress:
                    post = dict(ce=f"{float(ce.mean()):.3f}", bn=f"{float(bn.mean()):.3f}")
                    if ex is not None:
                        post[extra_name] = f"{float(ex):.3f}"
                    bar.set_postfix(post, refresh=False)
    finally:
        for hooks in all_hooks:
            hooks.remove()
    bar.close()
    curves = {"ce": torch.stack(curve_ce, 1), "bn": torch.stack(curve_bn, 1)}
    if curve_extra:
        curves["extra"] = torch.stack(curve_extra, 1)
    return x.detach(), curves


@torch.no_grad()
def class_targets(model: nn.Module, real: torch.Tensor, group_size: int, chunk: int = 256
                  ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Per-class BN targets: the mean over groups of `group_size` real (normalised) images of the group
    statistics of every BN input, so the target is what a real group of that size looks like (C each)."""
    n_groups = len(real) // group_size
    if n_groups < 1:
        raise DDKitError(f"class statistics need at least {group_size} real images, got {len(real)}")
    real = real[:n_groups * group_size]
    per = max(1, chunk // group_size) * group_size
    sums: Optional[List[List[torch.Tensor]]] = None
    model.eval()
    with BNHooks(model) as hooks:
        for a in range(0, len(real), per):
            xb = real[a:a + per]
            hooks.groups = len(xb) // group_size
            model(xb)
            part = [[m.double().sum(0), v.double().sum(0)] for m, v in hooks.stats]
            sums = part if sums is None else [[s[0] + p[0], s[1] + p[1]] for s, p in zip(sums, part)]
    return [(m / n_groups, v / n_groups) for m, v in sums]


class WorkingInput(nn.Module):
    """The teacher behind the exact affine map from the working space (m_w, s_w) into its own (m_t, s_t):
    a working-space image x of pixels p, x = (p − m_w)/s_w, reaches the teacher as (p − m_t)/s_t =
    x·(s_w/s_t) + (m_w − m_t)/s_t. Only the buffers are added: `parameters()` are the teacher's, in the same
    order (DWA's weight move and restore), and its BatchNorm layers are the teacher's (the BN hooks)."""

    def __init__(self, net: nn.Module, working: WorkingStats, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        sw, mw = torch.tensor(working.std).view(1, -1, 1, 1), torch.tensor(working.mean).view(1, -1, 1, 1)
        st, mt = torch.tensor(list(std)).view(1, -1, 1, 1), torch.tensor(list(mean)).view(1, -1, 1, 1)
        self.register_buffer("scale", sw / st)
        self.register_buffer("shift", (mw - mt) / st)

    def convert(self, x: torch.Tensor) -> torch.Tensor:
        """Working-space images → the teacher's normalised inputs."""
        return x * self.scale + self.shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.convert(x))


def teacher_in_working_space(net: nn.Module, working: WorkingStats, mean: Sequence[float],
                             std: Sequence[float]) -> nn.Module:
    """`net` itself when the working statistics are the teacher's (no map, so no rounding), else WorkingInput."""
    same = (tuple(map(float, working.mean)) == tuple(map(float, mean))
            and tuple(map(float, working.std)) == tuple(map(float, std)))
    return net if same else WorkingInput(net, working, mean, std).to(next(net.parameters()).device)


def valid_bounds(mean: Sequence[float], std: Sequence[float]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (low, high) of [0, 1] pixels in normalised space: (-m/s, (1-m)/s)."""
    m, s = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
    return -m / s, (1 - m) / s


def adjust_weights(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, rho: float,
                   direction: str = "descent", input_grad: Optional[List[torch.Tensor]] = None) -> List[torch.Tensor]:
    """Move every parameter of `model` K = `steps` times by ∓(ρ/K)·g/‖g‖₂ (g: grad of CE(model(x), y),
    one global norm); returns the original weights for `restore_weights`. Eval mode: BN stats untouched.
    input_grad: a list that receives Σ_k ∂CE_k/∂x, the K passes' gradients w.r.t. `x` at the weights of each pass
    (what the official DWA's adjustment backward passes add to the images' gradient)."""
    if direction not in ("descent", "ascent"):
        raise DDKitError(f"unknown direction {direction!r}; use descent or ascent")
    sign = -1.0 if direction == "descent" else 1.0
    params = [p for p in model.parameters()]
    saved = [p.detach().clone() for p in params]
    model.eval()
    wrt_x = input_grad is not None
    xs = x.detach().requires_grad_(True) if wrt_x else x
    acc: Optional[torch.Tensor] = None
    for _ in range(steps):
        with torch.enable_grad():
            for p in params:
                p.requires_grad_(True)
            loss = F.cross_entropy(model(xs).float(), y)
            grads = torch.autograd.grad(loss, params + ([xs] if wrt_x else []), allow_unused=True)
            for p in params:
                p.requires_grad_(False)
        if wrt_x:
            acc = grads[-1] if acc is None else acc + grads[-1]
            grads = grads[:-1]
        live = [(p, g) for p, g in zip(params, grads) if g is not None]
        norm = torch.sqrt(sum(g.pow(2).sum() for _, g in live))
        with torch.no_grad():
            for p, g in live:
                p.add_(g, alpha=sign * (rho / steps) / (float(norm) + 1e-12))
    if wrt_x:
        input_grad.append(acc if acc is not None else torch.zeros_like(x))
    return saved


def restore_weights(model: nn.Module, saved: Sequence[torch.Tensor]) -> None:
    """Put back the weights returned by `adjust_weights`."""
    with torch.no_grad():
        for p, s in zip(model.parameters(), saved):
            p.copy_(s)
