"""LIC/CIM information compensation: optimise a residual Δx so expanded cells match their real images.

One step for the classes of a step (peers.md §1.4 steps 4-9):

    X̃ = normalise(F⁻¹(x* + Δx))                      (class-major, row k·ipc+m ↔ real rank k·ipc+m)
    ξ_c ~ flip · translate · cutout, ONE draw per class from the class's own generator
    loss = Σ_c Σ_pairs d(φ(ξ_c(x_r)), φ(ξ_c(x̃_r)))    (φ = teacher truncated at the feature layer)

The gradient is computed in two stages so forwards can be chunked without keeping the whole graph:
the teacher passes run chunk by chunk on a detached copy of X̃ (each chunk's input gradient is written
to its own rows, no accumulation), then that gradient is pushed through the cheap, linear expand and
normalise in one backward call. Δx holds one fp32 tensor per class, so AdamW's per-tensor arithmetic
is the same whatever number of classes share a step.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn as nn

from ddkit.augment import Augment, Normalize
from ddkit.methods.lic_ops import expand, pair_distance
from ddkit.utils import autocast, stage


class Compensator:
    """Runs the M-step residual optimisation for a group of classes (see the module docstring).

    Args:
        extractor: the teacher truncated at the feature layer (eval mode, frozen).
        norm: the teacher's normalisation (applied before augmentation, as in the reference).
        aug: the shared observer (`cim_condense_aug()` or `Identity()`).
        cfg: an LICConfig (factor, iterations, lr, weight_decay, distance, max_batch, amp).
        device: where the work runs.
        packed: share forwards between classes (throughput) instead of one class per forward.
        prep: memory-format hook applied to every teacher input (channels_last on CUDA).
    """

    def __init__(self, extractor: nn.Module, norm: Normalize, aug: Augment, cfg: Any, device: torch.device,
                 packed: bool, prep: Callable[[torch.Tensor], torch.Tensor] = lambda x: x) -> None:
        self.extractor, self.norm, self.aug, self.cfg = extractor, norm, aug, cfg
        self.device, self.packed, self.prep = device, packed, prep
        self.amp = bool(cfg.amp) and device.type == "cuda"
        self.shared_draw = bool(getattr(cfg, "augment", True))

    # ---------------------------------------------------------------------------------------------
    def chunks(self, groups: int, n: int) -> List[Tuple[int, int]]:
        """Row ranges of the teacher forwards: ≤ max_batch rows each; never across classes unless packed."""
        mb = self.cfg.max_batch
        if self.packed:
            total = groups * n
            return [(a, min(a + mb, total)) for a in range(0, total, mb)]
        return [(g * n + a, g * n + min(a + mb, n)) for g in range(groups) for a in range(0, n, mb)]

    def draw(self, gens: Sequence[torch.Generator], n: int, size: Tuple[int, int], steps: int
             ) -> Dict[str, torch.Tensor]:
        """All `steps` draws up front: per class one shared draw per step from its own generator,
        expanded to per-sample rows (class-major, n rows per class); tensors steps×rows on the device.

        Drawing ahead keeps the loop free of host→device copies (a pageable copy would stall the
        GPU queue every step); per-class generators make the result the same as drawing per step.
        """
        if not self.shared_draw:
            return {}
        per_class = [[self.aug.sample(1, size, generator=g) for _ in range(steps)] for g in gens]
        keys = list(per_class[0][0]) if steps else []
        out = {}
        for k in keys:
            # per class: steps×…; repeated over the class's n rows → steps × classes × n × … → steps × rows × …
            rows = [torch.cat([draws[t][k] for t in range(steps)]) for draws in per_class]
            rest = tuple(rows[0].shape[1:])
            stacked = torch.stack([r[:, None].expand(steps, n, *rest) for r in rows], 1)
            out[k] = stacked.reshape(steps, len(rows) * n, *rest)
        return {k: v.to(self.device) for k, v in out.items()}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.amp):
            return self.extractor(self.prep(x))

    # ---------------------------------------------------------------------------------------------
    def run(self, reals: List[torch.Tensor], mosaics: List[torch.Tensor], gens: Sequence[torch.Generator]
            ) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Optimise the residuals of `mosaics` (one ipc×C×H×W tensor per class) against `reals`
        (the class's n = f²·ipc ranked images in [0,1]); returns (final mosaics, losses M×classes on CPU).

        With iterations = 0 the squeezed mosaics come back unchanged.
        """
        cfg = self.cfg
        groups = len(mosaics)
        if cfg.iterations == 0:
            return [m.detach().clone() for m in mosaics], torch.empty(0, groups)
        n = reals[0].shape[0]
        size = tuple(mosaics[0].shape[-2:])
        real_n = self.norm.apply(torch.cat(reals).float(), {})
        mos = [m.detach().float() for m in mosaics]
        deltas = [torch.zeros_like(m, requires_grad=True) for m in mos]
        # fused AdamW on CUDA (one kernel for all classes); the plain per-tensor loop on CPU.
        opt = torch.optim.AdamW(deltas, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                fused=True if self.device.type == "cuda" else None)
        spans = self.chunks(groups, n)
        fixed_real = None
        if not self.shared_draw:  # no observer: the real features never change, compute them once
            with torch.no_grad():
                fixed_real = [self.features(real_n[a:b]) for a, b in spans]
        drawn = self.draw(gens, n, size, cfg.iterations)
        losses = []
        for it in range(cfg.iterations):
            params = {k: v[it] for k, v in drawn.items()}
            with stage("lic.residual_forward"):
                x = self.norm.apply(expand(torch.cat([m + d for m, d in zip(mos, deltas)]), cfg.factor, groups), {})
            leaf = x.detach()
            grad = torch.empty_like(leaf)
            dist = torch.empty(len(leaf), device=leaf.device)
            for i, (a, b) in enumerate(spans):
                p = {k: v[a:b] for k, v in params.items()}
                if fixed_real is None:
                    with torch.no_grad():
                        with stage("lic.augment"):
                            v_real = self.aug.apply(real_n[a:b], p)
                        with stage("lic.teacher_forward_real"):
                            f_real = self.features(v_real)
                else:
                    f_real = fixed_real[i]
                e = leaf[a:b].detach().requires_grad_(True)
                with stage("lic.augment"):
                    v_syn = self.aug.apply(e, p)
                with stage("lic.teacher_forward_synthetic"):
                    f_syn = self.features(v_syn)
                with stage("lic.loss"):
                    d = pair_distance(f_real, f_syn, cfg.distance)
                with stage("lic.backward_teacher"):
                    (g,) = torch.autograd.grad(d.sum(), e)
                grad[a:b] = g
                dist[a:b] = d.detach()
            with stage("lic.backward_residual"):
                opt.zero_grad(set_to_none=True)
                x.backward(grad)
            with stage("lic.optimizer"):
                opt.step()
            losses.append(dist.view(groups, n).sum(1))
        finals = [(m + d).detach() for m, d in zip(mos, deltas)]
        return finals, torch.stack(losses).cpu()
