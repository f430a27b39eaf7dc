"""`dc` (Dataset Condensation with gradient matching, Zhao et al. 2021) and `dsa` (DC with Differentiable
Siamese Augmentation, Zhao & Bilen 2021), as the official VICO-UoE/DatasetCondensation `main.py` codes them
(matching-synthesis.md §0-2, commit 53f63a6):

    for it in 0..iterations (inclusive, main.py:105):
        net = fresh random ConvNet; opt_net = SGD(lr_net), no momentum           (main.py:147-150)
        for ol in range(outer_loop):                                               (main.py:156)
            loss = Σ_c D(∇θ CE(net(A(real_c))), ∇θ CE(net(A(syn_c))))             (main.py:179-199)
            one SGD step (lr_img, momentum 0.5) on the synthetic images            (main.py:100,201-203)
            unless last ol: train net inner_loop epochs on the whole synthetic set (main.py:206-215)

D is `distance_wb` summed over layers: conv weights as [out, in·h·w], linear as [out, in], rows compared
by 1 − cos (1e-6 in the denominator), 1-d tensors (biases, norm weights) contribute 0 (utils.py:218-235).
For DSA, A is ONE augmentation draw shared by the real and the synthetic batch of a class (siamese,
utils.py:487-536), and the inner-loop training uses per-sample DSA; for DC, A is the identity.

Working space: pixels are optimised normalised with DC's own statistics (`norm=official`, utils.py:46-73,
e.g. CIFAR-10 std 0.2023/0.1994/0.2010), so N(0,1) noise init, lr_img and DSA's additive brightness act as
in the official code; `norm=true` uses the dataset's measured mean/std (its noise init is ~1.22× wider in pixels).

Coupling: for IPC > 1 the inner loop trains the network on every class's synthetic images, so classes
are optimised jointly, not independently; sharding by class would change the result, hence
class_separable=False (at IPC 1 there is no inner loop and the per-class results are independent).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ddkit.allocator import keep_freed_memory
from ddkit.augment import DEFAULT_STRATEGY, Augment, Identity, dsa
from ddkit.config import field
from ddkit.data.base import ImageDataset
from ddkit.methods.base import ClassResult, MethodConfig, register_method
from ddkit.methods.matching_ops import (NORM_HELP, LossLog, RealPool, check_real_init, fresh_net, has_batchnorm,
                                        init_images, net_seed, resolve_settings, working_space)
from ddkit.utils import DDKitError, make_generator

#: get_loops (utils.py:275-293): IPC -> (outer_loop, inner_loop); any other IPC exits in the official code.
DC_LOOPS: Dict[int, tuple] = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
#: CPU preset: the same algorithm, shrunk (iterations, real batch, loop counts capped) so a CIFAR-10
#: ConvNet-3 run takes minutes on one core. Not a paper setting; every result records the preset.
DC_CPU = {"iterations": 10, "batch_real": 32, "outer_cap": 2, "inner_cap": 5}
DISTANCES = ("ours", "mse", "cos")


@dataclass(frozen=True)
class DCConfig(MethodConfig):
    """DC options; defaults are the official main.py's (matching-synthesis.md §1(b))."""

    preset: str = field("paper", "paper: official defaults; cpu: CPU-sized run (10 iterations, 32 real images "
                                 "per class, outer loop ≤ 2, inner loop ≤ 5); explicit options override both")
    iterations: Optional[int] = field(None, "outer iterations, inclusive range as main.py:105 (paper 1000, "
                                            "main.py:20; cpu 10)")
    outer_loop: Optional[int] = field(None, "image updates per fresh network (paper: get_loops by IPC, "
                                            "utils.py:275-293: 1/10/20/30/40/50 for IPC 1/10/20/30/40/50)")
    inner_loop: Optional[int] = field(None, "network epochs on the synthetic set between image updates (paper: "
                                            "get_loops: 1/50/25/20/15/10)")
    batch_real: Optional[int] = field(None, "real images per class per matching step (paper 256, main.py:27; "
                                            "cpu 32)")
    lr_img: float = field(0.1, "SGD lr on the normalised synthetic pixels (main.py:22)")
    momentum_img: float = field(0.5, "SGD momentum of the image optimiser (main.py:100)")
    lr_net: float = field(0.01, "SGD lr of the matching network, no momentum (main.py:23,150)")
    batch_train: int = field(256, "batch of the inner-loop network training (main.py:28)")
    init: str = field("noise", "noise (DC default, main.py:26) or real (random real images per class)")
    dis_metric: str = field("ours", "ours: per-output-node 1-cos over conv/linear layers (utils.py:218-235); "
                                    "mse or cos over the concatenated gradients")
    dsa: bool = field(False, "siamese DSA on the real and synthetic batch (the DSA method)")
    dsa_strategy: str = field(DEFAULT_STRATEGY, "DSA ops, one drawn per call ('S' mode, utils.py:495-520)")
    model: str = field("convnet-d3", "matching network: ConvNet-3 with instancenorm (utils.py:118-120)")
    norm: str = field("official", NORM_HELP + "; DC: utils.py:46-73")

    def __post_init__(self) -> None:
        if self.dis_metric not in DISTANCES:
            raise DDKitError(f"unknown dis_metric {self.dis_metric!r}; use one of {', '.join(DISTANCES)}")
        if self.init not in ("noise", "real"):
            raise DDKitError(f"unknown init {self.init!r}; use noise or real")


@dataclass(frozen=True)
class DSAConfig(DCConfig):
    """DSA = DC + siamese augmentation (README: --init real --dsa_strategy color_crop_cutout_flip_scale_rotate)."""

    init: str = field("real", "real (DSA README command, matching-synthesis.md §2(b)) or noise")
    dsa: bool = field(True, "siamese DSA on the real and synthetic batch (utils.py:487-536)")


def distance_wb(g_real: torch.Tensor, g_syn: torch.Tensor) -> torch.Tensor:
    """DC's per-layer distance: Σ over output rows of 1 − cos(real row, syn row); 0 for 1-d tensors."""
    shape = g_real.shape
    if len(shape) == 1:  # biases and norm weights are ignored (utils.py:228-231)
        return g_real.new_zeros(())
    if len(shape) == 4:
        g_real, g_syn = g_real.reshape(shape[0], -1), g_syn.reshape(shape[0], -1)
    elif len(shape) == 3:
        g_real, g_syn = g_real.reshape(shape[0], -1), g_syn.reshape(shape[0], -1)
    dot = (g_real * g_syn).sum(-1)
    return (1 - dot / (g_real.norm(dim=-1) * g_syn.norm(dim=-1) + 1e-6)).sum()


def match_loss(g_syn: Sequence[torch.Tensor], g_real: Sequence[torch.Tensor], metric: str = "ours") -> torch.Tensor:
    """`match_loss` (utils.py:239-271): layer-wise `distance_wb` summed ('ours'), or mse/cos over all."""
    if metric == "ours":
        return sum(distance_wb(r, s) for r, s in zip(g_real, g_syn))  # type: ignore[return-value]
    r = torch.cat([g.reshape(-1) for g in g_real])
    s = torch.cat([g.reshape(-1) for g in g_syn])
    if metric == "mse":
        return ((s - r) ** 2).sum()
    if metric == "cos":
        return 1 - (r * s).sum() / (r.norm() * s.norm() + 1e-6)
    raise DDKitError(f"unknown dis_metric {metric!r}; use one of {', '.join(DISTANCES)}")


def settings(cfg: DCConfig) -> Dict[str, Any]:
    """Effective iterations / loops / real batch for this config's IPC and preset."""
    loops = DC_LOOPS.get(cfg.ipc)
    if loops is None and (cfg.outer_loop is None or cfg.inner_loop is None):
        raise DDKitError(f"DC/DSA define loop counts only for IPC {sorted(DC_LOOPS)} (get_loops, utils.py:275-293); "
                         f"for ipc={cfg.ipc} set --outer-loop and --inner-loop")
    paper = {"iterations": 1000, "batch_real": 256}
    if loops is not None:
        paper.update(outer_loop=loops[0], inner_loop=loops[1])
    cpu = {k: v for k, v in DC_CPU.items() if not k.endswith("_cap")}
    if loops is not None:
        cpu.update(outer_loop=min(loops[0], DC_CPU["outer_cap"]), inner_loop=min(loops[1], DC_CPU["inner_cap"]))
    return resolve_settings(cfg, ("iterations", "outer_loop", "inner_loop", "batch_real"), paper, cpu)


def _train_net(net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, epochs: int,
               batch: int, aug: Augment, g: torch.Generator) -> None:
    """The inner loop: `epochs` shuffled passes over the synthetic set (per-sample augmentation)."""
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g).to(x.device)
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            xb = aug.apply(x[idx], aug.sample(len(idx), x.shape, generator=g))
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def _refresh_bn(net: nn.Module, pool: RealPool, classes: Sequence[int], g: torch.Generator) -> None:
    """BN nets: batch statistics from 16 real images per class, then BN frozen (main.py:163-174)."""
    x = torch.cat([pool.batch(c, 16, g)[0] for c in classes])
    net.train()
    with torch.no_grad():
        net(x)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def gradient_matching(pool: RealPool, classes: Sequence[int], syn: torch.Tensor, cfg: DCConfig,
                      s: Dict[str, Any], g: torch.Generator, log: LossLog, method: str) -> torch.Tensor:
    """Optimise `syn` (len(classes)·ipc encoded images, class-major) in place; returns it detached."""
    ipc = cfg.ipc
    dev = syn.device
    syn.requires_grad_(True)
    labels = torch.tensor(classes, device=dev).repeat_interleave(ipc)
    opt_img = torch.optim.SGD([syn], lr=cfg.lr_img, momentum=cfg.momentum_img)
    match_aug: Augment = dsa(cfg.dsa_strategy, mode="single") if cfg.dsa else Identity()
    for it in range(s["iterations"] + 1):
        net = fresh_net(cfg.model, pool.dataset, net_seed(cfg.seed, method, it), dev)
        net.train()
        params = list(net.parameters())
        opt_net = torch.optim.SGD(net.parameters(), lr=cfg.lr_net)
        total = 0.0
        for ol in range(s["outer_loop"]):
            if has_batchnorm(net):
                _refresh_bn(net, pool, classes, g)
            opt_img.zero_grad(set_to_none=True)
            grad = torch.zeros_like(syn)
            for k, c in enumerate(classes):
                real, _ = pool.batch(c, s["batch_real"], g)
                p = match_aug.sample(1, real.shape, generator=g)  # one draw for both batches (siamese)
                y_real = torch.full((len(real),), c, device=dev)
                g_real = torch.autograd.grad(F.cross_entropy(net(match_aug.apply(real, p)), y_real), params)
                g_real = [t.detach() for t in g_real]
                syn_c = syn[k * ipc:(k + 1) * ipc]
                out = net(match_aug.apply(syn_c, p))
                g_syn = torch.autograd.grad(F.cross_entropy(out, labels[k * ipc:(k + 1) * ipc]), params,
                                            create_graph=True)
                loss = match_loss(g_syn, g_real, cfg.dis_metric)
                # d(Σ_c loss_c)/d syn, one class at a time: same gradient as main.py's summed backward.
                grad += torch.autograd.grad(loss, syn)[0]
                total += float(loss.detach())
            syn.grad = grad
            opt_img.step()
            if ol == s["outer_loop"] - 1:
                break  # the last outer step does not update the network (main.py:206-207)
            train_aug: Augment = dsa(cfg.dsa_strategy, mode="single") if cfg.dsa else Identity()
            _train_net(net, opt_net, syn.detach(), labels, s["inner_loop"], cfg.batch_train, train_aug, g)
        log.step(it, total / (len(classes) * s["outer_loop"]), {"lr_img": cfg.lr_img, "lr_net": cfg.lr_net})
    log.close()
    return syn.detach()


def _run(name: str, dataset: ImageDataset, cfg: DCConfig, classes: Sequence[int], device: torch.device,
         progress: bool) -> Iterator[ClassResult]:
    keep_freed_memory()  # reuse the heap across iterations: no per-step page faults (ddkit.allocator)
    s = settings(cfg)
    classes = list(classes)
    if cfg.init == "real":
        check_real_init(dataset, classes, cfg.ipc)
    space, ws = working_space(dataset, "dc", cfg.norm, device)
    pool = RealPool(dataset, space, device)
    g = make_generator(cfg.seed, name, "run")
    inits, sources = zip(*[init_images(pool, c, cfg.ipc, cfg.init, make_generator(cfg.seed, name, "init", c))
                           for c in classes])
    syn = torch.cat(inits).to(device)
    log = LossLog(s["iterations"] + 1, f"{name} ipc{cfg.ipc}", progress, name)
    syn = gradient_matching(pool, classes, syn, cfg, s, g, log, name)
    pixels = pool.space.decode(syn)
    set_meta = {"preset": cfg.preset, "settings": s, "space": "meanstd", "working_stats": ws.meta(), **log.meta()}
    for k, c in enumerate(classes):
        yield ClassResult(c, pixels[k * cfg.ipc:(k + 1) * cfg.ipc], extras={"source_index": sources[k]},
                          set_meta=set_meta)


@register_method("dc", config=DCConfig, aliases=("gradient-matching", "dataset-condensation"),
                 class_separable=False, quick={"preset": "cpu"}, native="dc-noaug")
def dc(dataset: ImageDataset, teacher: Any, cfg: DCConfig, classes: Sequence[int], *, device: torch.device,
       progress: bool = True) -> Iterator[ClassResult]:
    """DC: gradient matching on fresh random ConvNets (Zhao et al. 2021, official main.py)."""
    yield from _run("dc", dataset, cfg, classes, device, progress)


@register_method("dsa", config=DSAConfig, aliases=("dc-dsa", "siamese-augmentation"), class_separable=False,
                 quick={"preset": "cpu"}, native="dsa")
def dsa_method(dataset: ImageDataset, teacher: Any, cfg: DSAConfig, classes: Sequence[int], *,
               device: torch.device, progress: bool = True) -> Iterator[ClassResult]:
    """DSA: DC with one augmentation draw shared by the real and synthetic batch (Zhao & Bilen 2021)."""
    yield from _run("dsa", dataset, cfg, classes, device, progress)
