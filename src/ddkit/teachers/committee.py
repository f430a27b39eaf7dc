"""A set of teachers as one object: who recovers at step t, and how a committee labels a view.

The SRe2L descendants observe several teachers (largescale-methods.md §0). What they do with them,
read in each official repository at the commit of the reference sheet:

* **round robin** (G-VBSM, EDC, FADRM+): one teacher per optimisation step, `members[t mod K]`, in the
  order given. G-VBSM and EDC keep one counter over every batch of the run
  (G-VBSM `Branch_full_ImageNet_1k/recover/data_synthesis_with_svd_with_db_with_all_statistic.py:109,147-148`
  @1ed80b0; EDC `Branch_full_ImageNet_1k/recover/recover.py:170,216-221` @80116a7); FADRM+ restarts it at every
  batch and carries it across its resolution stages (`recover/recover.py:63,74-78` @f445e38). `at(t)` takes the
  step count the caller keeps, so both are one call: pass the run's step or the batch's.
* **committee per IPC index** (CV-DD): image index i of every class is recovered by the pair
  `combinations(members, 2)[i]` — the ten pairs of its five-model `--model-setting 5` list, in that order,
  indexed by the absolute IPC index (CV-DD `recover/recover.py:25-26,319-329,363` @24097e9) — whose losses are summed with weights
  softmax(prior / 5) over the pair (`recover/utils_recover.py:297-303`, `--weight-temperature 5`, recover.py:233);
  `voters(i)`. Past the last pair the index cycles (the official list stops at IPC 10; its IPC-50 setting
  draws a random pair per index instead, recover.py:28).
* **committee soft labels** (`logits`): `mean` — plain mean of the members' logits (EDC relabel
  `Branch_full_ImageNet_1k/relabel/generate_soft_label_with_db.py:266`; FADRM+ relabel without `--model-weight`
  `relabel/relabel.py:299-300,322-326`); `weighted` — Σ_k softmax(prior/10)_k · logits_k (CV-DD
  `relabel/relabel.py:298-305,322-326`, the scripts pass the priors with `--model-weight`); `norm_mean` —
  each member's B×K logit matrix rescaled to the members' mean Frobenius norm over the batch, then averaged
  (G-VBSM `Branch_full_ImageNet_1k/relabel/generate_soft_label_with_db.py:262-264`). `norm_mean` is the one
  rule whose label of a view depends on the other views of its batch (as coded).
* **batch statistics** (CV-DD/FADRM+ `--eval-mode F`, "BSSL", CV-DD `relabel/relabel.py:281-285`): the members'
  BatchNorm layers normalise with the statistics of each half of the relabel batch (`:311-320`, two forwards).
  Here only BN layers switch to batch statistics, on a private copy: the official scripts put the whole net in
  train mode, which also draws dropout (MobileNetV2) from the global RNG; dropout stays off so a store is a
  function of its seed.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ddkit.config import field
from ddkit.loaders import read_teacher_list
from ddkit.teachers.core import Teacher
from ddkit.teachers.frozen import FrozenTeacher
from ddkit.utils import DDKitError

VOTES = ("mean", "weighted", "norm_mean")


@dataclass(frozen=True)
class CommitteeConfig:
    """How several `--teacher`s label a view together (one teacher: these are ignored)."""

    vote: str = field("mean", "how member logits combine: mean (EDC, FADRM+), weighted (CV-DD: softmax(prior/T)"
                              "-weighted sum) or norm_mean (G-VBSM: rescale each to the mean Frobenius norm, average)")
    teacher_prior: Optional[Tuple[float, ...]] = field(None, "one prior accuracy per teacher, in order, for "
                                                             "vote=weighted (CV-DD IN-1K: 56.4,42.3,52.5,44.2,40.6)")
    vote_temperature: float = field(10.0, "temperature of the prior softmax in relabel (CV-DD relabel.py:303: 10)")
    batch_stats: bool = field(False, "members' BatchNorm uses each half-batch's statistics (CV-DD/FADRM+ "
                                     "--eval-mode F, 'BSSL'); the label of a view then depends on its batch")


def softmax_weights(priors: Sequence[float], temperature: float) -> torch.Tensor:
    """softmax(prior / temperature) as float64 (CV-DD: recover T = 5, relabel T = 10)."""
    p = torch.tensor([float(x) for x in priors], dtype=torch.float64) / float(temperature)
    return torch.softmax(p, dim=0)


class Committee:
    """Several teachers of one dataset, in a fixed order, seen as one.

    Args:
        teachers: the members (same class list; each keeps its own normalisation and input size).
        vote: how `logits` combines the members (see `VOTES` and the module docstring).
        priors: one prior accuracy per member (CV-DD's voter weights); needed for vote="weighted".
        temperature: of softmax(prior / T) in `logits` (CV-DD relabel: 10).
        batch_stats: BN layers use the statistics of each half-batch in `FrozenCommittee` (BSSL).

    Example:
        >>> c = Committee([t_a, t_b, t_c])
        >>> c.at(0) is t_a, c.at(4) is t_b            # round robin
        >>> [t for t, w in c.voters(3)]                # CV-DD pair 3 of combinations(members, 2)
        >>> c.logits(images01)                         # the committee's soft labels
    """

    def __init__(self, teachers: Sequence[Teacher], *, vote: str = "mean", priors: Optional[Sequence[float]] = None,
                 temperature: float = 10.0, batch_stats: bool = False) -> None:
        members = list(teachers)
        if not members:
            raise DDKitError("a committee needs at least one teacher")
        if vote not in VOTES:
            raise DDKitError(f"unknown vote {vote!r}; choose one of {', '.join(VOTES)}")
        for t in members[1:]:
            if list(t.classes) != list(members[0].classes):
                raise DDKitError(f"committee members disagree on the classes: {members[0].arch} has "
                                 f"{members[0].num_classes}, {t.arch} {t.num_classes} (or another order); "
                                 f"use teachers of one dataset")
        if priors is not None and len(priors) != len(members):
            raise DDKitError(f"{len(priors)} prior accuracies for {len(members)} teachers: give one per teacher")
        if vote == "weighted" and priors is None:
            raise DDKitError("vote=weighted needs one prior accuracy per teacher (--teacher-prior 56.4,42.3,…)")
        if not temperature > 0:
            raise DDKitError(f"the vote temperature must be > 0, got {temperature}")
        self.members: List[Teacher] = members
        self.vote, self.temperature, self.batch_stats = vote, float(temperature), bool(batch_stats)
        self.priors: Optional[Tuple[float, ...]] = tuple(float(p) for p in priors) if priors is not None else None
        self.pairs: List[Tuple[int, int]] = list(itertools.combinations(range(len(members)), 2))

    # -- facts a Teacher also has (the label store and relabel read these) ---------------------------------
    @property
    def classes(self) -> List[str]:
        return list(self.members[0].classes)

    @property
    def num_classes(self) -> int:
        return self.members[0].num_classes

    @property
    def arch(self) -> str:
        """e.g. 'committee[mean](convnet-d3,resnet18)': names the members and the rule (store meta, resume check)."""
        rule = self.vote + (",bn=batch" if self.batch_stats else "")
        if self.vote == "weighted":
            rule += f",T={self.temperature:g},prior=" + "/".join(f"{p:g}" for p in self.priors or ())
        return f"committee[{rule}](" + ",".join(t.arch for t in self.members) + ")"

    @property
    def batch_dependent(self) -> bool:
        """True when a view's committee label depends on the other views of its batch (norm_mean, batch_stats)."""
        return self.vote == "norm_mean" or self.batch_stats

    @property
    def model(self) -> nn.ModuleList:
        """The members' networks as one module (its state_dict fingerprints the whole committee)."""
        return nn.ModuleList([t.model for t in self.members])

    @property
    def meta(self) -> Dict[str, Any]:
        return {"path": "+".join(str(t.meta.get("path") or t.arch) for t in self.members)}

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self):
        return iter(self.members)

    def __getitem__(self, k: int) -> Teacher:
        return self.members[k]

    def to(self, device: Union[str, torch.device]) -> "Committee":
        for t in self.members:
            t.to(device)
        return self

    # -- who recovers ----------------------------------------------------------------------------------
    def index(self, step: int) -> int:
        """Round robin: the member index at optimisation step `step` (step mod K)."""
        return int(step) % len(self.members)

    def at(self, step: int) -> Teacher:
        """The teacher of step `step` under round robin (G-VBSM, EDC, FADRM+)."""
        return self.members[self.index(step)]

    def voters(self, ipc_index: int, temperature: float = 5.0) -> List[Tuple[Teacher, float]]:
        """CV-DD's committee of image index `ipc_index`: the pair combinations(members, 2)[ipc_index mod #pairs]
        with weights softmax(prior / temperature) over the pair (equal without priors)."""
        if len(self.members) < 2:
            raise DDKitError("a CV-DD committee needs at least two teachers")
        a, b = self.pairs[int(ipc_index) % len(self.pairs)]
        if self.priors is None:
            w = [0.5, 0.5]
        else:
            w = softmax_weights([self.priors[a], self.priors[b]], temperature).tolist()
        return [(self.members[a], w[0]), (self.members[b], w[1])]

    # -- committee soft labels ------------------------------------------------------------------------
    def weights(self) -> torch.Tensor:
        """The members' weights in `logits` (float64): uniform for mean/norm_mean, softmax(prior/T) for weighted."""
        if self.vote == "weighted":
            return softmax_weights(self.priors or (), self.temperature)
        return torch.full((len(self.members),), 1.0 / len(self.members), dtype=torch.float64)

    def combine(self, logits: Sequence[torch.Tensor]) -> torch.Tensor:
        """One B×K label from the members' B×K logits (same order as the members), by `vote`."""
        z = torch.stack([x.float() for x in logits])  # K_members × B × C
        if self.vote == "norm_mean":
            norm = z.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1)
            return (z / norm * norm.mean()).mean(0)
        w = self.weights().to(z.device, z.dtype).view(-1, 1, 1)
        return (z * w).sum(0)

    def logits(self, x01: torch.Tensor) -> torch.Tensor:
        """The committee's logits of [0, 1] images (no grad; members in eval mode — see FrozenCommittee for
        the batch-statistics relabel)."""
        return self.combine([t.logits(x01.to(t.device)).to(x01.device) for t in self.members])

    def __repr__(self) -> str:
        return f"Committee({self.arch}, {self.num_classes} classes)"


class FrozenCommittee:
    """The label store's device view of a committee: `logits(x01)` like `FrozenTeacher.logits`."""

    def __init__(self, committee: Committee, device: torch.device, *, amp: bool = False, max_batch: int = 256) -> None:
        self.committee = committee
        bs = committee.batch_stats
        self.views = [FrozenTeacher(t, device, amp=amp, channels_last=False, max_batch=max_batch, private=bs)
                      for t in committee.members]
        if bs:  # BN of the private copies normalises with the statistics of the batch it sees
            for v in self.views:
                for m in v.net.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.train()
        self.identity = committee.arch

    @torch.no_grad()
    def logits(self, x01: torch.Tensor) -> torch.Tensor:
        """fp32 committee logits of one relabel batch (two half-batch forwards per member with batch_stats)."""
        if not self.committee.batch_stats:
            return self.committee.combine([v.logits(x01) for v in self.views])
        half = len(x01) // 2
        parts = [x01[:half], x01[half:]] if half > 0 else [x01]
        return self.committee.combine([torch.cat([v.logits(p, max_batch=max(1, len(p))) for p in parts])
                                       for v in self.views])


def load_committee(paths: Sequence[Union[str, Path]], cfg: Optional[CommitteeConfig] = None, *,
                   priors: Optional[Sequence[float]] = None, arch: Optional[str] = None, dataset: Any = None,
                   device: Union[str, torch.device] = "cpu") -> Committee:
    """Load every checkpoint of `paths` (any layout `load_teacher` reads) into one Committee.

    `cfg.teacher_prior` wins over `priors` (e.g. those of a teacher-list file); `arch` applies to every member.
    """
    from ddkit.teachers.io import load_teacher

    cfg = cfg or CommitteeConfig()
    members = [load_teacher(p, arch=arch, dataset=dataset, device=device) for p in paths]
    prior = cfg.teacher_prior if cfg.teacher_prior is not None else priors
    return Committee(members, vote=cfg.vote, priors=prior, temperature=cfg.vote_temperature,
                     batch_stats=cfg.batch_stats)


def is_committee(obj: Any) -> bool:
    """True for a Committee of two or more teachers (one member behaves as that teacher)."""
    return isinstance(obj, Committee) and len(obj) > 1


__all__ = ["Committee", "CommitteeConfig", "FrozenCommittee", "VOTES", "is_committee", "load_committee",
           "read_teacher_list", "softmax_weights"]
