"""`FrozenTeacher`: the one device-resident, frozen view of a Teacher that methods observe through.

Before it, LIC, RDED/CA2D, the feature coresets, the soft-label store and the evaluator each kept a
private copy of the teacher with its own normalisation and chunking. This object does that once:
a private copy on `device` only when the weights live elsewhere or the caller asks for one (`private`:
SRe2L/DWA hook and perturb the net; the caller's teacher never moves), eval mode with gradients off, the teacher's own normalisation, chunked no-grad logits and flattened
features, truncated feature extractors for gradient paths (LIC), and a stable identity string for
provenance and fingerprints. bf16 autocast and channels_last apply on CUDA only (CPU stays fp32, so
CPU results are bit-identical to the earlier per-module copies: the evaluator's online teacher, the
soft-label store, DCS's feature loss, `predict_logits`; the evaluator's `--cpu-amp` is the constructor's
`cpu_amp`); `shared_logits` / `shared_features`
score the candidates of several classes in fixed-shape shared forwards (`ddkit.teachers.shared`), in
bf16 on CPU too when asked (`cpu_amp`) and the CPU computes bf16 natively.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from ddkit.augment import Normalize
from ddkit.data.base import to_float
from ddkit.models import feature_extractor
from ddkit.teachers.shared import shared_forward, tensor_rows
from ddkit.utils import autocast, compiled


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
                 max_batch: int = 256, cpu_amp: bool = False, compile: bool = False, private: bool = False) -> None:
        self.teacher = teacher
        self.device = device
        cuda = device.type == "cuda"
        self.amp = amp and cuda
        self.cpu_amp = cpu_amp
        self.channels_last = channels_last and cuda
        self.max_batch = int(max_batch)
        same = next(teacher.model.parameters()).device == device and not self.channels_last and not private
        net = teacher.model if same else copy.deepcopy(teacher.model).to(device)
        net = net.eval().requires_grad_(False)
        self.net = net.to(memory_format=torch.channels_last) if self.channels_last else net
        # compiled only for whole-net forwards; extractors truncate the plain net (see `extractor`)
        self._forward = compiled(self.net) if compile else self.net
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
    def forward_normalized(self, x: torch.Tensor) -> torch.Tensor:
        """fp32 logits of one batch that is already normalised with the teacher's stats and on this device
        (the evaluator's online teacher: student views arrive normalised, in the student's layout)."""
        with autocast(self.device, self.amp, cpu=self.cpu_amp):
            return self._forward(x).float()

    @torch.no_grad()
    def logits(self, x01: torch.Tensor, max_batch: Optional[int] = None) -> torch.Tensor:
        """fp32 logits of [0,1] images, chunked to at most `max_batch` per forward."""
        return self._chunked(self._forward, x01, max_batch)

    @torch.no_grad()
    def features(self, x01: torch.Tensor, layer: str = "penultimate", max_batch: Optional[int] = None
                 ) -> torch.Tensor:
        """fp32 flattened features at `layer` of [0,1] images, chunked."""
        return self._chunked(self.extractor(layer), x01, max_batch).flatten(1)

    @torch.no_grad()
    def shared_logits(self, pools: Sequence[torch.Tensor], cpu_amp: bool = False,
                      max_batch: Optional[int] = None) -> List[torch.Tensor]:
        """fp32 logits of each [0,1] (or uint8) image set in `pools`, all sets streamed through shared
        forwards of exactly `max_batch` rows (the last zero-padded), so each set's logits are the same
        bytes whichever other sets share its forwards. `cpu_amp`: bf16 autocast on a CPU with native bf16."""
        return self._shared(self.net, pools, cpu_amp, max_batch)

    @torch.no_grad()
    def shared_features(self, pools: Sequence[torch.Tensor], layer: str = "penultimate", cpu_amp: bool = False,
                        max_batch: Optional[int] = None) -> List[torch.Tensor]:
        """fp32 flattened features at `layer` of each image set, in shared fixed-shape forwards."""
        return [f.flatten(1) for f in self._shared(self.extractor(layer), pools, cpu_amp, max_batch)]

    def _shared(self, net: nn.Module, pools: Sequence[torch.Tensor], cpu_amp: bool,
                max_batch: Optional[int]) -> List[torch.Tensor]:
        def fn(x: torch.Tensor) -> torch.Tensor:
            with autocast(self.device, self.amp, cpu=cpu_amp):
                return net(self.prep(x)).float()

        return shared_forward(fn, [tensor_rows(p, self.normalize) for p in pools], int(max_batch or self.max_batch))

    def _chunked(self, net: nn.Module, x01: torch.Tensor, max_batch: Optional[int]) -> torch.Tensor:
        step = int(max_batch or self.max_batch)
        out = []
        for i in range(0, len(x01), step):
            x = self.normalize(x01[i:i + step])
            with autocast(self.device, self.amp, cpu=self.cpu_amp):
                out.append(net(self.prep(x)).float())
        return torch.cat(out) if out else torch.empty(0, 0, device=self.device)
