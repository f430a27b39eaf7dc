"""`sre2lpp` (SRe2L++): the single-model variant of CV-DD ("Dataset Distillation via Committee Voting", Cui et al. 2025).

CV-DD's recover with `--model-setting 0` (Jiacheng8/CV-DD@24097e9 `recover/recover.py:299-302`: one model, equal
weight, `--selected-size 1 --voter-type equal`), as its `recover_sre2l_ipc50.sh` scripts run it. It is SRe2L's
recover on SRe2L's unit of work (one batch per IPC index holding one image of every class of a group of
`--batch-size` classes: 10 for CIFAR-10, 100 elsewhere, `scripts/*/constants.sh`) with two changes:

* the batch starts from real patches of "medium" difficulty instead of noise (`--initialisation-method Patches
  --patch-diff medium`; `recover/utils_recover.py:205-239`; ddkit builds the patches, `methods.patch_init`);
* every step takes a RandomResizedCrop(input size) + flip of the whole batch before the roll of 0..jitter px
  (`--apply-data-augmentation`, recover.py:62-75), at 4000 iterations, lr 0.25, r_bn 0.01 on every dataset.

The loss is the engine's CE + r_bn·Σ_l m_l(‖μ_l − μ*_l‖₂ + ‖σ²_l − σ²*_l‖₂), m_1 = 10 (recover.py:79-95 with one
model of weight 1; BN hook utils_recover.py:109-121), Adam(0.5, 0.9), cosine lr (recover.py:54-55), clip each step
(:100), the last iterate saved (:118-121). Its labels: FKD relabel with the teacher's BatchNorm in train mode
("BSSL", relabel.py:38 `--eval-mode` default F) at batch 16, then KL T = 20 students at batch 16 (`validate/
train_fkd.py`, `validate/scripts/*/sre2l_*.sh`), the code FADRM's validation copies (other rows of its lr table): the
`fadrm` native protocol — `ddkit relabel SET --teacher T --batch-stats --batch-size 16 --recipe fadrm`, then
`ddkit evaluate SET --labels stored`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterator, Sequence

import torch

from ddkit.data.base import ImageDataset
from ddkit.methods.base import register_method
from ddkit.methods.patch_init import PatchInitConfig, patch_init_or_none
from ddkit.methods.sre2l import recover_units, resolve_spec, run_recover

_SCRIPT = "CV-DD@24097e9 recover/scripts/<ds>_experiments/recover_sre2l_ipc50.sh: --model-setting 0 --lr 0.25 " \
          "--iteration 4000 --r-bn 0.01 --apply-data-augmentation --initialisation-method Patches"
#: SRe2L++ defaults by dataset family (the keys of sre2l.PRESETS, plus ddkit's `cpu`)
PRESETS: Dict[str, Dict[str, Dict[str, Any]]] = {"sre2lpp": {
    "cifar": dict(iterations=4000, lr=0.25, r_bn=0.01, jitter=4, rrc=True, flip=True,
                  source=_SCRIPT + "; jitter 4 at 32 px (recover.py:254-268)"),
    "tiny": dict(iterations=4000, lr=0.25, r_bn=0.01, jitter=4, rrc=True, flip=True,
                 source=_SCRIPT + "; jitter 4 at 64 px (recover.py:287-292)"),
    "imagenet": dict(iterations=4000, lr=0.25, r_bn=0.01, jitter=32, rrc=True, flip=True,
                     source=_SCRIPT + "; jitter 32 at 224 px (recover.py:271-284)"),
    "cpu": dict(iterations=200, lr=0.25, r_bn=0.01, jitter=4, rrc=True, flip=True,
                source="ddkit CPU preset: the CIFAR settings at 200 iterations (a small but real run)"),
}}


@dataclass(frozen=True)
class SRe2LPPConfig(PatchInitConfig):
    """SRe2L++: SRe2L recover from medium real patches with crops (CV-DD --model-setting 0)."""


@register_method("sre2lpp", config=SRe2LPPConfig, aliases=("sre2l++", "SRe2L++", "sre2l-plus-plus"),
                 needs_teacher=True, needs=("bn-teacher",), native="fadrm", units=recover_units,
                 quick={"preset": "cpu", "pool_size": 20})
def sre2l_plus_plus(dataset: ImageDataset, teacher: Any, cfg: SRe2LPPConfig, work: Sequence[Any], *,
                    device: torch.device, progress: bool = True) -> Iterator[Any]:
    """SRe2L++ (CV-DD's single model): SRe2L recover from medium-difficulty real patches with RRC + flip views."""
    spec, facts = resolve_spec(cfg, "sre2lpp", dataset.image_size, presets=PRESETS)
    init = patch_init_or_none(dataset, teacher, cfg, "sre2lpp", device)
    if init is not None:
        facts.update(init.facts())
    yield from run_recover("sre2lpp", dataset, teacher, cfg, work, spec, facts, device=device, progress=progress,
                           init_fn=init.image if init is not None else None)
