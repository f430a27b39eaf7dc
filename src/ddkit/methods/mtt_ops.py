"""Trajectory-matching machinery shared by MTT and DATM: the flat-parameter student, the differentiable
unroll, the normalised parameter loss, DATM's sampling-range rule, correct-sample init and label init.

References (matching-synthesis.md §4-5): MTT `distill.py` (commit 50dccea) and DATM `distill/DATM.py`
(commit 97ae510). The student is a fresh network whose parameters are ONE flat vector (MTT's
ReparamModule), so every student step θ ← θ − α·∇θ ℓ stays differentiable w.r.t. the images, the
learnable step size α and (DATM) the label logits.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ddkit.augment import Augment, Identity
from ddkit.data.base import ImageDataset
from ddkit.teachers.experts import ExpertBuffer
from ddkit.utils import DDKitError


class FlatNet:
    """Call a module with its parameters given as one flat vector (MTT's ReparamModule)."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        named = list(net.named_parameters())
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.num_params = sum(self.numels)

    def __call__(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if flat.numel() != self.num_params:
            raise DDKitError(f"expert parameters have {flat.numel()} values but the student network has "
                             f"{self.num_params}: the buffer was made with another architecture or class count")
        params = {n: t.view(s) for n, t, s in zip(self.names, flat.split(self.numels), self.shapes)}
        return torch.func.functional_call(self.net, params, (x,))


def soft_cross_entropy(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """DATM's SoftCrossEntropy (DATM.py:255-262): Σ −log_softmax(student)·softmax(labels) / batch, no T."""
    return -(F.log_softmax(logits, 1) * F.softmax(target_logits, 1)).sum() / len(logits)


class Batches:
    """MTT's `indices_chunks` (a new one every iteration): pop chunks of batch_syn from a fresh random permutation
    when empty."""

    def __init__(self, n: int, batch: Optional[int], g: torch.Generator) -> None:
        self.n, self.batch, self.g = n, batch or n, g
        self.chunks: List[torch.Tensor] = []

    def next(self) -> torch.Tensor:
        if not self.chunks:
            self.chunks = list(torch.randperm(self.n, generator=self.g).split(self.batch))
        return self.chunks.pop()


def unroll(fnet: FlatNet, start: torch.Tensor, syn: torch.Tensor, targets: torch.Tensor, syn_lr: torch.Tensor,
           steps: int, batches: Batches, aug: Augment, g: torch.Generator) -> torch.Tensor:
    """`steps` differentiable SGD steps of the student from `start` on the synthetic set (distill.py:342-370).

    targets: int64 hard labels (CE) or float label logits (soft CE). Augmentation is per-sample
    (non-siamese), drawn from `g`.
    """
    params = start.detach().clone().requires_grad_(True)
    soft = targets.is_floating_point()
    for _ in range(steps):
        idx = batches.next().to(syn.device)
        x = syn[idx]
        if not isinstance(aug, Identity):
            x = aug.apply(x, aug.sample(len(x), x.shape, generator=g))
        out = fnet(params, x)
        loss = soft_cross_entropy(out, targets[idx]) if soft else F.cross_entropy(out, targets[idx])
        grad = torch.autograd.grad(loss, params, create_graph=True)[0]
        params = params - syn_lr * grad
    return params


def param_loss(student: torch.Tensor, start: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """‖θ̂_{t+N} − θ*_{t+M}‖² / ‖θ*_t − θ*_{t+M}‖² (distill.py:376-388; the /num_params cancels)."""
    return ((student - target) ** 2).sum() / ((start - target) ** 2).sum()


def datm_upper_bound(it: int, max_start_epoch: int, current_max_start_epoch: int, expansion_end_epoch: int,
                     sequential: bool) -> int:
    """DATM's (exclusive) upper bound of the start epoch at iteration `it` (DATM.py:485-491)."""
    if not sequential:
        return max_start_epoch
    up = current_max_start_epoch + int((max_start_epoch - current_max_start_epoch) * it / expansion_end_epoch)
    return min(up, max_start_epoch)


def expert_logits(fnet: FlatNet, params: torch.Tensor, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fnet(params, x[i:i + batch]) for i in range(0, len(x), batch)])


def correct_init(dataset: ImageDataset, classes: Sequence[int], ipc: int, buffer: ExpertBuffer, fnet: FlatNet,
                 device: torch.device, g: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """DATM's `samples_predicted_correctly` init (DATM.py:185-236): per class, walk a shuffled list of its
    real images in batches of 256 and keep those the last snapshot of expert 0 classifies correctly; when
    the class runs out, move on to the next expert. Returns (encoded images class-major, source indices)."""
    space = buffer.space.to(device)
    images, sources = [], []
    for c in classes:
        idx = dataset.class_indices(c)
        order = idx[torch.randperm(len(idx), generator=g)]
        chosen: List[int] = []  # kept across experts, without duplicates (DATM's index list)
        for e in range(buffer.num_experts):
            params = buffer.trajectory(e)[-1].to(device)
            for i in range(0, len(order), 256):
                chunk = order[i:i + 256]
                pred = expert_logits(fnet, params, space.encode(dataset.get(chunk).to(device))).argmax(1).cpu()
                for j in chunk[pred == c].tolist():
                    if len(chosen) < ipc and j not in chosen:
                        chosen.append(j)
                if len(chosen) >= ipc:
                    break
            if len(chosen) >= ipc:
                break
        if len(chosen) < ipc:
            raise DDKitError(f"init=correct: only {len(chosen)} images of class {c} ({dataset.classes[c]!r}) are "
                             f"classified correctly by the experts, fewer than ipc={ipc}; use init=real")
        pick = torch.tensor(chosen, dtype=torch.long)
        images.append(space.encode(dataset.get(pick).to(device)))
        sources.append(pick)
    return torch.cat(images), torch.cat(sources)


def init_label_logits(buffer: ExpertBuffer, fnet: FlatNet, syn: torch.Tensor, labels: torch.Tensor,
                      correct_only: bool, max_experts: Optional[int] = None) -> torch.Tensor:
    """DATM's soft-label init (DATM.py:270-319): the logits of the experts' last snapshots on the initial
    images, averaged over the experts that classify each image correctly (correct_only, the
    samples_predicted_correctly path), else expert 0's logits (the pix_init=real path)."""
    n = buffer.num_experts if not max_experts else min(max_experts, buffer.num_experts)
    if not correct_only:
        return expert_logits(fnet, buffer.trajectory(0)[-1].to(syn.device), syn)
    total = count = None
    for e in range(n):
        z = expert_logits(fnet, buffer.trajectory(e)[-1].to(syn.device), syn)
        ok = (z.argmax(1) == labels).float()[:, None]
        total = z * ok if total is None else total + z * ok
        count = ok if count is None else count + ok
    if bool((count == 0).any()):  # only possible when an image was not chosen by an expert in the pool
        raise DDKitError("label init: some initial image is misclassified by every expert used; use init=correct")
    return total / count
