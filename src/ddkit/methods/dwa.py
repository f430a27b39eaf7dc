"""`dwa`: Directed Weight Adjustment (Du et al., NeurIPS 2024) on top of SRe2L recover, as its code runs it.

AngusDujw/Diversity-Driven-Synthesis@c5b125f, `distillation/distillation_cifar.py` and `perterb.py`: the unit of
work is SRe2L's batch, one per IPC index, holding one image of every class of a group (all classes for CIFAR).
The batch starts as one real image of every class (a class-balanced real batch; the official code loads a
saved tensor of random real images per IPC index, `distillation_cifar.py:36-38`). At iteration 0 a private copy
of the teacher's weights is moved K = `steps` times UP the CE loss of that batch's view, by +ρ/K · g/‖g‖₂ (g over
every parameter, BN affine included, one global L2 norm; running statistics untouched: `perterb.py:20-32`,
"climb to the local maximum"); the batch is then recovered through the perturbed teacher with SRe2L's loss
(`r_var` on the variance part of each BN term, ONE set of BN statistics over the mixed batch), and the weights
are restored before the next IPC index (the official code reloads the checkpoint per IPC index, :129-154). So
each of a class's images is recovered through a differently perturbed teacher: the method's diversity mechanism.

The images' first Adam step, as the code runs it: the official loop zeroes the image gradient BEFORE its K
adjustment passes, so their CE gradients w.r.t. the view land in that step too (it sums K + 1 CE gradients,
matching-synthesis.md §6d). That is the default (`first_step=official`, with the official batch unit), since the
published numbers were made with it; `first_step=clean` leaves them out (ddkit's earlier default; at the
recover-loop parity settings 0.037 mean |pixel| from the official images, ~30 % of the images' whole move:
bench/parity/dwa_recover.py). The class-unit variant below has no such step and runs `clean`.
Working space: DWA's own statistics (`norm=official`, distillation/utils.py:14-21@c5b125f: CIFAR-10 std
(0.2023, 0.1994, 0.2010), CIFAR-100 (0.2675, 0.2565, 0.2761)) or the dataset's (`norm=true`); the teacher is fed
through the exact affine map into its own statistics (sre2l.WorkingInput).
ddkit's earlier variant (before issue #26) is `unit=class bn_target=class direction=descent`: a move DOWN the loss
once per class on that class's own real images, with per-class BN statistics matched to real per-class targets.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Sequence

import torch

from ddkit.config import field
from ddkit.data.base import ImageDataset
from ddkit.methods.base import register_method
from ddkit.methods.sre2l import Perturb, RecoverConfig, recover_units, resolve_spec, run_recover
from ddkit.utils import DDKitError

#: DWA defaults by dataset family (same keys as sre2l.PRESETS), from the official README/scripts.
DWA_PRESETS: Dict[str, Dict[str, Dict[str, Any]]] = {"dwa": {
    "cifar": dict(iterations=1000, lr=0.25, r_bn=0.01, r_var=11.0, jitter=4, rrc=False, flip=False,
                  steps=12, rho=0.015,
                  source="DWA@c5b125f README / scripts/run_cifar.sh (CIFAR-100): --iteration 1000 --r-bn 0.01 "
                         "--lr 0.25 --batch-size 100 --steps 12 --rho 15e-3 --r-var 11; one roll 0-4 per batch "
                         "(distillation_cifar.py:55-57); first BN x10 (:170)"),
    "tiny": dict(iterations=2000, lr=0.1, r_bn=0.05, r_var=11.0, jitter=4, rrc=False, flip=False,
                 steps=12, rho=0.015,
                 source="DWA README (Tiny): --iteration 2000 --lr 0.1 --steps 12 --rho 15e-3 --r-var 11; "
                        "r_bn and jitter are the argparse defaults 0.05 / 4 [crops unverified]"),
    "imagenet": dict(iterations=2000, lr=0.25, r_bn=0.01, r_var=2.0, jitter=32, rrc=True, flip=True,
                     steps=15, rho=0.015,
                     source="DWA README (IN-1K): --iteration 2000 --lr 0.25 --r-bn 0.01 --r-var 2 --steps 15 "
                            "--rho 15e-3; RRC(224) + flip + roll 0-32 (distillation_imgnet.py)"),
}}


@dataclass(frozen=True)
class DWAConfig(RecoverConfig):
    """DWA: SRe2L recover from real images through a teacher whose weights are moved up the loss per IPC index."""

    init: str = field("real", "noise or real: DWA starts from real images, one of every class per batch")
    steps: Optional[int] = field(None, "K adjustment steps (preset: 12 CIFAR/Tiny, 15 IN-1K; argparse default 1)")
    rho: Optional[float] = field(None, "total adjustment size ρ, in steps of ρ/K (preset: 0.015; argparse 0.05)")
    direction: str = field("ascent", "ascent: +ρ·g/‖g‖, up the CE of the real batch (perterb.py first_step); "
                                     "descent: down it (ddkit's earlier variant, with unit=class)")
    first_step: Optional[str] = field(None, "official: the K adjustment passes' CE gradients w.r.t. the view are "
                                            "added to the images' first Adam step, as distillation_cifar.py:60-66 "
                                            "does (its optimizer.zero_grad() at :60 comes before them); clean: "
                                            "left out. Default: official with --unit batch, clean with --unit class")


@register_method("dwa", config=DWAConfig, aliases=("DWA", "directed-weight-adjustment"),
                 needs_teacher=True, needs=("bn-teacher",), native="sre2l", units=recover_units)
def dwa(dataset: ImageDataset, teacher: Any, cfg: DWAConfig, work: Sequence[Any], *,
        device: torch.device, progress: bool = True) -> Iterator[Any]:
    """DWA: SRe2L recover from a real class-balanced batch per IPC index through a teacher moved up its loss."""
    spec, facts = resolve_spec(cfg, "dwa", dataset.image_size, presets=DWA_PRESETS)
    preset = DWA_PRESETS["dwa"][facts["preset"]]
    steps = int(cfg.steps if cfg.steps is not None else preset["steps"])
    rho = float(cfg.rho if cfg.rho is not None else preset["rho"])
    if steps < 1 or rho < 0:
        raise DDKitError(f"--steps must be >= 1 and --rho >= 0, got {steps} and {rho}")
    if cfg.direction not in ("ascent", "descent"):
        raise DDKitError(f"unknown direction {cfg.direction!r}; use ascent or descent")
    if cfg.init != "real":
        raise DDKitError("dwa moves the teacher on a batch of real images: use --init real")
    first = cfg.first_step or ("official" if cfg.unit == "batch" else "clean")  # the code's, where it exists
    if first not in ("clean", "official"):
        raise DDKitError(f"unknown first_step {first!r}; use clean or official")
    perturb = Perturb(steps, rho, cfg.direction, leak=first == "official")
    facts.update(perturb.facts())
    yield from run_recover("dwa", dataset, teacher, cfg, work, spec, facts, device=device, progress=progress,
                           perturb=perturb, family="dwa")
