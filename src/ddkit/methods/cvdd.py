"""`cvdd`: Dataset Distillation via Committee Voting (Cui et al., 2025) on the SRe2L recover engine.

As its code runs it (Jiacheng8/CV-DD@24097e9, `recover/recover.py` "R", `recover/utils_recover.py` "U"; sheet
largescale-methods.md §7): the unit of work is SRe2L's batch, one per IPC index, holding one image of every
class of a group (`--batch-size`: all 10 classes for CIFAR-10 and ImageNette, groups of 100 otherwise; R:37-49,
constants.sh). Image index i of every class is recovered by a committee of two teachers: with `--model-setting 5`
(IPC 10, every script's setting) the pair `combinations(members, 2)[i]` of its five-model list, in that order
(R:25-26, 319-329; `teachers.committee.Committee.voters`, which cycles past the last pair). Each step one view
of the batch (RandomResizedCrop + flip with `--apply-data-augmentation`, every script; then a roll of
0..jitter px, R:60-75) goes through both members, and the loss is

    Σ_k w_k · (CE_k + r_bn · Σ_l m_l (‖μ_l − running_mean_l,k‖₂ + ‖σ²_l − running_var_l,k‖₂))       (R:79-95)

with w = softmax(prior / 5) over the pair (U:297-303, `--weight-temperature 5` R:233), where prior is each
teacher's prior accuracy: the accuracy of data distilled by that model alone (R:254-293). Adam(0.5, 0.9),
cosine lr, clip after each step, the last iterate is kept (R:54-121). The batch starts from real "medium"
images (`--initialisation-method Patches --patch-diff medium`, U:205-239; ddkit's selection is DELT's
median-p_y rule, `methods.real_init`, scored by the first teacher — the official patches come from a Drive
folder whose construction is not in the code [unverified]).

Other committee settings (`--committee`): `random` = setting 3 (IPC 50: two members drawn at random per IPC
index, R:27-28, 308-309; ddkit draws from the unit's seeded generator), `best` = setting 4 (IPC 1: the two
members with the highest prior, R:311-317). Voter weights `--voting equal` = `--voter-type equal`. One teacher
is CV-DD's `--model-setting 0` (SRe2L++: one model, weight 1, R:299-302), run as such and recorded in the meta.

Relabel and evaluation, CV-DD's protocol (not part of this file): `ddkit relabel SET --teacher A … --teacher E
--vote weighted --teacher-prior … --batch-stats --batch-size 16 --epochs 300` (relabel.py:281-326: five
teachers, softmax(prior/10)-weighted sum of logits, BN in train mode over each half-batch), then `ddkit evaluate`
under the set's native protocol `cvdd` (train_fkd.py: KL T=20, AdamW, batch 16).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ddkit.config import field
from ddkit.data.base import ImageDataset
from ddkit.data.facts import official_name
from ddkit.methods.base import Unit, register_method
from ddkit.methods.recover import Voter, bn_layers
from ddkit.methods.sre2l import RecoverConfig, recover_units, resolve_spec, run_recover
from ddkit.teachers.committee import softmax_weights
from ddkit.utils import DDKitError, make_generator

_AUG = "--apply-data-augmentation in every script: RRC(s) scale 0.08-1 + flip for the whole batch (R:63-71)"
CVDD_PRESETS: Dict[str, Dict[str, Dict[str, Any]]] = {"cvdd": {
    "cifar": dict(iterations=4000, lr=0.25, r_bn=0.01, jitter=4, rrc=True, flip=True,
                  source="CV-DD@24097e9 recover/scripts/cifar10_experiments/recover_voter_ipc10.sh: --iteration 4000 "
                         "--lr 0.25 --r-bn 0.01, bs 10 (constants.sh; CIFAR-100 100); jitter 4 (recover.py:258,268); "
                         + _AUG),
    "tiny": dict(iterations=4000, lr=0.25, r_bn=0.01, jitter=4, rrc=True, flip=True,
                 source="CV-DD tiny_imagenet_experiments/recover_voter_ipc10.sh: 4000 it, lr 0.25, r_bn 0.01, bs 100; "
                        "jitter 4 (recover.py:291); " + _AUG),
    "imagenet": dict(iterations=4000, lr=0.25, r_bn=0.01, jitter=32, rrc=True, flip=True,
                     source="CV-DD imagenet1k_experiments/recover_voter_ipc10.sh: 4000 it, lr 0.25, r_bn 0.01, bs 100; "
                            "jitter 32 (recover.py:275); " + _AUG),
    "cpu": dict(iterations=200, lr=0.25, r_bn=0.01, jitter=4, rrc=True, flip=True,
                source="ddkit CPU preset (not an official setting): the CIFAR values at 200 iterations instead of "
                       "4000, 500 scored images per class for the medium init"),
}}
CPU_SELECT_POOL = 500

#: Prior accuracies by official dataset and model (recover.py:254-293): the voter weights' source.
PRIORS: Dict[str, Dict[str, float]] = {
    "cifar10": {"ResNet18": 63, "ResNet50": 65.3, "ShuffleNetV2": 68.5, "MobileNetV2": 67.6, "Densenet121": 67.4},
    "cifar100": {"ResNet18": 64, "ResNet50": 60.6, "ShuffleNetV2": 51.6, "MobileNetV2": 59.4, "Densenet121": 56.4},
    "tiny-imagenet": {"ResNet18": 46.5, "ResNet50": 28.3, "ShuffleNetV2": 43.6, "MobileNetV2": 44.8,
                      "Densenet121": 41.5},
    "imagenette": {"ResNet18": 62.4, "ResNet50": 52, "ShuffleNetV2": 57.2, "MobileNetV2": 54, "Densenet121": 60.8},
    "imagenet": {"ResNet18": 56.4, "ResNet50": 42.3, "ShuffleNetV2": 52.5, "MobileNetV2": 44.2, "Densenet121": 40.6},
}
#: ddkit architecture name prefixes -> the official model names of PRIORS
ARCH_NAMES = (("resnet18", "ResNet18"), ("resnet50", "ResNet50"), ("shufflenet", "ShuffleNetV2"),
              ("mobilenet", "MobileNetV2"), ("densenet121", "Densenet121"))
COMMITTEES = ("pairs", "random", "best")


@dataclass(frozen=True)
class CVDDConfig(RecoverConfig):
    """CV-DD: SRe2L recover through a prior-weighted committee of two teachers per IPC index."""

    preset: str = field("auto", "per-dataset defaults: auto (by image size), cifar, tiny, imagenet, or cpu (a short "
                                "CPU run, not an official setting)")
    iterations: Optional[int] = field(None, "Adam steps per batch (preset: 4000 everywhere, cpu 200)")
    init: str = field("medium", "medium: real images nearest the teacher's median p_y (CV-DD's 'medium' patches, "
                                "U:205-239); noise (--initialisation-method Guassian) or real (random real)")
    committee: str = field("pairs", "which two teachers recover IPC index i: pairs = combinations(teachers, 2)[i] "
                                    "(--model-setting 5, IPC 10); random = two drawn per index (setting 3, IPC 50); "
                                    "best = the two highest priors (setting 4, IPC 1)")
    voting: str = field("prior", "voter weights: prior = softmax(prior / voter_temperature) over the committee "
                                 "(--voter-type prior, every voter script); equal = 1/2 each")
    voter_prior: Optional[Tuple[float, ...]] = field(None, "one prior accuracy per teacher, in --teacher order "
                                                          "(default: a --teacher-list file's, else the official "
                                                          "table of the dataset by architecture, recover.py:254-293)")
    voter_temperature: float = field(5.0, "temperature of the prior softmax in recover (--weight-temperature 5)")
    norm: str = field("true", "working-space statistics: true (the dataset's own mean/std, what CV-DD normalises "
                              "CIFAR-10/100 with, recover.py:254-268; ImageNet's for Tiny/IN-1K) or official "
                              "(SRe2L's table); each teacher sees it through its own affine map")


def _priors(cfg: CVDDConfig, teacher: Any, dataset: ImageDataset) -> Tuple[Optional[List[float]], str]:
    """The members' prior accuracies and where they came from (None: unknown, equal weights)."""
    members = list(getattr(teacher, "members", [teacher]))
    if cfg.voter_prior is not None:
        if len(cfg.voter_prior) != len(members):
            raise DDKitError(f"--voter-prior gives {len(cfg.voter_prior)} accuracies for {len(members)} teachers")
        return [float(p) for p in cfg.voter_prior], "--voter-prior"
    if getattr(teacher, "priors", None) is not None:
        return list(teacher.priors), "teacher list"
    table = PRIORS.get((official_name(dataset) or "").lower().replace("_", "-"), {})
    names = [next((o for pre, o in ARCH_NAMES if str(t.arch).lower().startswith(pre)), None) for t in members]
    if table and all(n in table for n in names):
        return [float(table[n]) for n in names], f"official table ({official_name(dataset)}: {', '.join(names)})"
    return None, "none known (equal weights): pass --voter-prior"


def committee_of(index: int, priors: Optional[Sequence[float]], k: int, how: str,
                 generator: Optional[torch.Generator] = None) -> List[int]:
    """Member indices of IPC index `index`'s committee of two among k teachers (module docstring)."""
    if k == 1:
        return [0]  # --model-setting 0: SRe2L++
    if how == "pairs":
        pairs = [(a, b) for a in range(k) for b in range(a + 1, k)]  # itertools.combinations order
        return list(pairs[index % len(pairs)])
    if how == "random":
        return sorted(torch.randperm(k, generator=generator)[:2].tolist())
    if how == "best":
        if priors is None:
            raise DDKitError("--committee best takes the two highest priors: give --voter-prior")
        order = sorted(range(k), key=lambda j: -float(priors[j]))  # stable: ties keep --teacher order
        return sorted(order[:2])
    raise DDKitError(f"unknown committee {how!r}; use {', '.join(COMMITTEES)}")


def voter_weights(chosen: Sequence[int], priors: Optional[Sequence[float]], voting: str,
                  temperature: float) -> List[float]:
    """softmax(prior / T) over the chosen members (U:297-303), or equal weights."""
    if voting not in ("prior", "equal"):
        raise DDKitError(f"unknown voting {voting!r}; use prior or equal")
    if voting == "equal" or priors is None or len(chosen) == 1:
        return [1.0 / len(chosen)] * len(chosen)
    return softmax_weights([priors[j] for j in chosen], temperature).tolist()


@register_method("cvdd", config=CVDDConfig, aliases=("CV-DD", "cv-dd", "committee-voting"), needs_teacher=True,
                 needs=("bn-teacher",), native="cvdd", units=recover_units, committee=True,
                 quick={"preset": "cpu"})
def cvdd(dataset: ImageDataset, teacher: Any, cfg: CVDDConfig, work: Sequence[Any], *,
         device: torch.device, progress: bool = True) -> Iterator[Any]:
    """CV-DD: SRe2L recover from median-confidence real images through a prior-weighted committee of two
    teachers per IPC index."""
    if cfg.unit != "batch":
        raise DDKitError("cvdd chooses its committee per IPC index: use --unit batch")
    if cfg.committee not in COMMITTEES:
        raise DDKitError(f"unknown committee {cfg.committee!r}; use {', '.join(COMMITTEES)}")
    if not cfg.voter_temperature > 0:
        raise DDKitError(f"--voter-temperature must be > 0, got {cfg.voter_temperature}")
    if cfg.preset == "cpu" and cfg.select_pool == 0:
        cfg = dataclasses.replace(cfg, select_pool=CPU_SELECT_POOL)
    spec, facts = resolve_spec(cfg, "cvdd", dataset.image_size, presets=CVDD_PRESETS)
    members = list(getattr(teacher, "members", [teacher]))
    priors, source = _priors(cfg, teacher, dataset)
    voter_weights([0], priors, cfg.voting, cfg.voter_temperature)  # refuse a bad --voting before any work
    facts.update(committee=cfg.committee, voting=cfg.voting, voter_temperature=cfg.voter_temperature,
                 teachers=[t.arch for t in members], priors=priors, prior_source=source,
                 model_setting="0 (SRe2L++: one teacher)" if len(members) == 1 else cfg.committee)

    def voters_for(u: Unit, nets: List[nn.Module]) -> Tuple[List[Voter], Dict[str, Any]]:
        g = make_generator(cfg.seed, "cvdd", "committee", u.index)  # one committee per IPC index, every group
        chosen = committee_of(u.index, priors, len(nets), cfg.committee, g)
        w = voter_weights(chosen, priors, cfg.voting, cfg.voter_temperature)
        voters = [(nets[j], wj, [(m.running_mean.float()[None], m.running_var.float()[None])
                                 for m in bn_layers(nets[j])]) for j, wj in zip(chosen, w)]
        return voters, {"voters": [members[j].arch for j in chosen], "voter_index": chosen,
                        "voter_weights": [round(float(x), 6) for x in w]}

    yield from run_recover("cvdd", dataset, teacher, cfg, work, spec, facts, device=device, progress=progress,
                           voters_for=voters_for)
