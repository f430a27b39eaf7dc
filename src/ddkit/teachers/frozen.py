"""`FrozenTeacher`: the one device-resident, frozen view of a Teacher that methods observe through.

Before it, LIC, RDED/CA2D, the feature coresets, the soft-label store and the evaluator each kept a
private copy of the teacher with its own normalisation and chunking. This object does that once:
a private copy on `device` only when the weights live elsewhere (the caller's teacher never moves),
eval mode with gradients off, the teacher's own normalisation, chunked no-grad logits and flattened
features, truncated feature extractors for gradient paths (LIC), and a stable identity string for
provenance and fingerprints. bf16 autocast and channels_last apply on CUDA only (CPU stays fp32, so
CPU results are bit-identical to the earlier per-method copies).
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from ddkit.augment import Normalize
from ddkit.data.base import to_float
from ddkit.models import feature_extractor
from ddkit.utils import autocast


def teacher_identity(teacher: Any) -> Optional[str]:
    """The string that names a teacher in meta.json and fingerprints: its file path, else its architecture."""
    if teacher is None:
        return None
    return teacher.meta.get("path") or teacher.arch


class FrozenTeacher:
    """A frozen, normalising, chunking view of `teacher` on `device`.

    Example:
        >>> ft = FrozenTeacher(teacher, torch.device("cpu"))
        >>> ft.logits(images01).shape, ft.features(images01, "penultimate").shape
    """

    def __init__(self, teacher: Any, device: torch.device, *, amp: bool = True, channels_last: bool = True,
                 max_batch: int = 256) -> None:
        self.teacher = teacher
        self.device = device
        cuda = device.type == "cuda"
        self.amp = amp and cuda
        self.channels_last = channels_last and cuda
        self.max_batch = int(max_batch)
        same = next(teacher.model.parameters()).device == device and not self.channels_last
        net = teacher.model if same else copy.deepcopy(teacher.model).to(device)
        net = net.eval().requires_grad_(False)
        self.net = net.to(memory_format=torch.channels_last) if self.channels_last else net
        self.norm = Normalize(teacher.mean, teacher.std)
        self.identity = teacher_identity(teacher)
        self._extractors: Dict[str, nn.Module] = {}

    def prep(self, x: torch.Tensor) -> torch.Tensor:
        """The network's input layout (channels_last on CUDA)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """[0,1] (or uint8) images on any device -> normalised float on this device."""
        return self.norm.apply(to_float(x01.to(self.device)), {})

    def extractor(self, layer: str) -> nn.Module:
        """The net truncated at `layer` (shares the weights; cached). ValueError names the valid layers."""
        if layer not in self._extractors:
            self._extractors[layer] = feature_extractor(self.net, layer).eval()
        return self._extractors[layer]

    @torch.no_grad()
    def logits(self, x01: torch.Tensor, max_batch: Optional[int] = None) -> torch.Tensor:
        """fp32 logits of [0,1] images, chunked to at most `max_batch` per forward."""
        return self._chunked(self.net, x01, max_batch)

    @torch.no_grad()
    def features(self, x01: torch.Tensor, layer: str = "penultimate", max_batch: Optional[int] = None
                 ) -> torch.Tensor:
        """fp32 flattened features at `layer` of [0,1] images, chunked."""
        return self._chunked(self.extractor(layer), x01, max_batch).flatten(1)

    def _chunked(self, net: nn.Module, x01: torch.Tensor, max_batch: Optional[int]) -> torch.Tensor:
        step = int(max_batch or self.max_batch)
        out = []
        for i in range(0, len(x01), step):
            x = self.normalize(x01[i:i + step])
            with autocast(self.device, self.amp):
                out.append(net(self.prep(x)).float())
        return torch.cat(out)
