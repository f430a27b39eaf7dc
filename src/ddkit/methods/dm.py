"""`dm`: Distribution Matching (Zhao & Bilen 2023) as the official `main_DM.py` codes it (non-BN branch,
matching-synthesis.md §3, VICO-UoE/DatasetCondensation commit 53f63a6):

    per class c, for it in 0..iterations (inclusive, main_DM.py:106):
        net = fresh random ConvNet, parameters frozen, kept in train mode        (main_DM.py:139-144)
        A = ONE DSA draw shared by the real batch and the synthetic images (siamese, main_DM.py:152-156)
        loss = ‖mean(embed(A(real_c))) − mean(embed(A(syn_c)))‖²   (sum, not divided by classes, :158-163)
        one SGD step (lr_img, momentum 0.5) on the synthetic images             (main_DM.py:102,191-193)

Pixels are optimised normalised with DC's statistics (`norm=official`, DatasetCondensation utils.py:46-73),
or the dataset's own (`norm=true`); see matching_ops.working_space.

No gradient reaches the network and classes never interact (the official code sums the class losses
before one step; SGD is per-element, so a per-class step is the same update), hence class-separable.
Each class draws its own networks from (seed, class, iteration), so a class's result does not depend on
which other classes run beside it. BN networks: the official code forwards all classes in one batch
(main_DM.py:165-187); here every class is embedded alone (a documented difference; the default ConvNet
uses instancenorm, where the two agree).

Compute path (not an algorithm setting): the real batch's embedding is compiled on CPU for long runs, bf16 on
request, fp32 eager with `exact` (methods/fast_embed.py); the path taken is in the set's meta.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Sequence

import torch
import torch.nn as nn

from ddkit.allocator import keep_freed_memory
from ddkit.augment import DEFAULT_STRATEGY, Augment, dsa
from ddkit.config import field
from ddkit.data.base import ImageDataset
from ddkit.methods.base import ClassResult, MethodConfig, register_method
from ddkit.methods.fast_embed import EXACT_EMBED, RealEmbedder, choose
from ddkit.methods.matching_ops import (NORM_HELP, LossLog, RealPool, check_real_init, fresh_net, has_batchnorm,
                                        init_images, net_seed, resolve_settings, working_space)
from ddkit.models import create_model
from ddkit.models.features import penultimate
from ddkit.utils import DDKitError, make_generator

#: CPU preset: fewer iterations and a smaller real batch (not a paper setting; recorded in meta).
DM_CPU = {"iterations": 100, "batch_real": 32}


@dataclass(frozen=True)
class DMConfig(MethodConfig):
    """DM options; defaults are main_DM.py's and the README's (matching-synthesis.md §3(b))."""

    preset: str = field("paper", "paper: official defaults; cpu: 100 iterations, 32 real images per class; "
                                 "explicit options override both")
    iterations: Optional[int] = field(None, "iterations, inclusive range as main_DM.py:106 (paper 20000, "
                                            "main_DM.py:20; cpu 100)")
    batch_real: Optional[int] = field(None, "real images per class per iteration (paper 256, main_DM.py:25; "
                                            "cpu 32)")
    lr_img: Optional[float] = field(None, "SGD lr on the normalised pixels (paper: 1 for IPC ≤ 50, 10 for IPC "
                                          "≥ 100, CIFAR-10 README)")
    momentum_img: float = field(0.5, "SGD momentum of the image optimiser (main_DM.py:102)")
    init: str = field("real", "real (main_DM.py:27) or noise")
    dsa_strategy: str = field(DEFAULT_STRATEGY, "siamese DSA ops, one drawn per call ('none' = no augmentation; "
                                                "main_DM.py:30)")
    model: str = field("convnet-d3", "embedding network: ConvNet-3 with instancenorm (utils.py:118-120)")
    norm: str = field("official", NORM_HELP + "; DM uses DC's utils.py:46-73")
    # compute path, not algorithm (methods/fast_embed.py)
    compile: Optional[bool] = field(None, "torch.compile the real batch's embedding (default: on CPU when the run "
                                          "embeds >= 100,000 real images; not for BatchNorm networks)")
    cpu_amp: Optional[bool] = field(None, "bf16 autocast of the embeddings where the CPU has native bf16 (default "
                                          "off)")
    exact: bool = field(False, "fp32 eager whatever else is set (bit-identity checks)")

    def __post_init__(self) -> None:
        if self.init not in ("noise", "real"):
            raise DDKitError(f"unknown init {self.init!r}; use noise or real")


def settings(cfg: DMConfig) -> Dict[str, Any]:
    """Effective iterations / real batch / lr for this config's IPC and preset."""
    paper = {"iterations": 20000, "batch_real": 256, "lr_img": 1.0 if cfg.ipc < 100 else 10.0}
    return resolve_settings(cfg, ("iterations", "batch_real", "lr_img"), paper, DM_CPU)


def embed(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The network's penultimate features (ConvNet/MLP `embed`, main_DM.py:144; the official networks.py gives
    its ResNets an `embed` too: here torchvision ResNets and other nets through models.features.penultimate)."""
    return penultimate(net, x)


def dm_loss(net: nn.Module, real: torch.Tensor, syn: torch.Tensor, aug: Augment, g: torch.Generator,
            embed_real: Optional[RealEmbedder] = None) -> torch.Tensor:
    """‖mean embedding of A(real) − mean embedding of A(syn)‖² with one shared draw A (`embed_real`: the real
    batch's path; default fp32 eager)."""
    embed_real = embed_real or RealEmbedder(EXACT_EMBED)
    p = aug.sample(1, real.shape, generator=g)
    f_real = embed_real(net, aug.apply(real, p))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=embed_real.path.bf16):  # both sides at one precision
        f_syn = embed(net, aug.apply(syn, p)).float()
    return ((f_real.mean(0) - f_syn.mean(0)) ** 2).sum()


def distribution_matching(pool: RealPool, c: int, syn: torch.Tensor, cfg: DMConfig, s: Dict[str, Any],
                          g: torch.Generator, log: LossLog, embed_real: Optional[RealEmbedder] = None
                          ) -> torch.Tensor:
    """Optimise class `c`'s encoded synthetic images `syn` (ipc×C×H×W); returns them detached."""
    syn = syn.clone().requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=s["lr_img"], momentum=cfg.momentum_img)
    aug: Augment = dsa(cfg.dsa_strategy, mode="single")
    for it in range(s["iterations"] + 1):
        net = fresh_net(cfg.model, pool.dataset, net_seed(cfg.seed, "dm", c, it), syn.device)
        net.train().requires_grad_(False)
        real, _ = pool.batch(c, s["batch_real"], g)
        loss = dm_loss(net, real, syn, aug, g, embed_real)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log.step(it, float(loss.detach()), {"lr_img": s["lr_img"]})
    log.close()
    return syn.detach()


@register_method("dm", config=DMConfig, aliases=("distribution-matching",), class_separable=True,
                 quick={"preset": "cpu"}, native="dsa")
def dm(dataset: ImageDataset, teacher: Any, cfg: DMConfig, classes: Sequence[int], *, device: torch.device,
       progress: bool = True) -> Iterator[ClassResult]:
    """DM: match mean embeddings of real and synthetic images under fresh random ConvNets (Zhao & Bilen 2023)."""
    keep_freed_memory()  # reuse the heap across iterations: no per-step page faults (ddkit.allocator)
    s = settings(cfg)
    if cfg.init == "real":
        check_real_init(dataset, classes, cfg.ipc)
    space, ws = working_space(dataset, "dc", cfg.norm, device)
    pool = RealPool(dataset, space, device)
    # a throw-away network (not fresh_net: bench/matching_speed.py times one fresh_net call per iteration), drawn
    # without touching the caller's RNG
    with torch.random.fork_rng(devices=[]):
        has_bn = has_batchnorm(create_model(cfg.model, num_classes=dataset.num_classes,
                                            image_size=dataset.image_size, channels=dataset.channels))
    path = choose(cfg.exact, cfg.compile, cfg.cpu_amp, device, (s["iterations"] + 1) * s["batch_real"] * len(classes),
                  has_bn)
    embed_real = RealEmbedder(path)
    set_meta = {"preset": cfg.preset, "settings": s, "space": "meanstd", "working_stats": ws.meta()}
    for c in classes:
        g = make_generator(cfg.seed, "dm", c)
        syn, src = init_images(pool, c, cfg.ipc, cfg.init, g)
        log = LossLog(s["iterations"] + 1, f"dm class {c}", progress, "dm")
        syn = distribution_matching(pool, c, syn, cfg, s, g, log, embed_real)
        # the path is per process (shards may differ), so it is a per-class fact
        yield ClassResult(c, pool.space.decode(syn), extras={"source_index": src},
                          meta={**log.meta(), "compute_path": path.why},
                          set_meta=set_meta)
