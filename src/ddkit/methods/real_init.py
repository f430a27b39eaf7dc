"""Median-confidence real initialisation ("medium"): DELT's selection, also CV-DD's starting images.

DELT (VILA-Lab/DELT@f2f81ca, `data_selection.py`) scores every train image of a class by the teacher's softmax
probability of its own class, p_y (`rank`, :193-219), sorts the class ascending and takes the image at
⌈n/2⌉ first, then alternates above and below it: ⌈n/2⌉, +1, −1, +2, −2, … (`store_medium`, :247-262). It copies
them as `{rank:03d}_{name}`, so the recover's sorted file order (recover/utils.py:145-170) is this order: image 0
of a class is the one nearest the median, and DELT's early-late rounds give it the most steps.

CV-DD (Jiacheng8/CV-DD@24097e9) starts from pre-made "medium" patch images (`recover/utils_recover.py:205-239`,
`--patch-diff medium`, from the authors' Drive); how they were made is not in the code [unverified]. ddkit builds
them with DELT's rule above, the authors' group's published "medium" selection, on whole real images.

Differences from DELT, by design: p_y is the teacher's on its own normalisation (DELT normalises every dataset
with ImageNet's mean/std, :178-190), on the images as the dataset loads them (DELT: Resize(s·8/7) + CenterCrop(s),
the identity at 32 px), with a stable sort (pandas' default sort is not stable); `pool` > 0 scores a seeded random
pool of the class instead of all of it (the CPU preset).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch

from ddkit.data.base import ImageDataset, to_float
from ddkit.teachers.frozen import FrozenTeacher
from ddkit.utils import DDKitError


def medium_order(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k images DELT's `medium` rule takes, in its order: sort ascending, start at ⌈n/2⌉, then
    +1, −1, +2, −2, … (data_selection.py:247-262)."""
    n = len(scores)
    ranked = torch.argsort(scores.float(), stable=True)
    mid = math.ceil(n / 2)
    pos = [mid + int((1 if j % 2 else -1) * (j + 1) / 2) for j in range(k)]  # int() truncates toward 0
    if k > n or min(pos) < 0 or max(pos) >= n:
        raise DDKitError(f"the medium selection needs more images than {n} for {k} of them")
    return ranked[torch.tensor(pos)]


def select_order(scores: torch.Tensor, k: int, rule: str = "medium") -> torch.Tensor:
    """DELT's selection rules (data_selection.py:221-262): medium (above), top (highest p_y first) or min (lowest
    p_y first)."""
    if rule == "medium":
        return medium_order(scores, k)
    if k > len(scores):
        raise DDKitError(f"the {rule} selection needs more images than {len(scores)} for {k} of them")
    if rule == "top":
        return torch.argsort(scores.float(), descending=True, stable=True)[:k]
    if rule == "min":
        return torch.argsort(scores.float(), stable=True)[:k]
    raise DDKitError(f"unknown selection rule {rule!r}; use medium, top or min")


@torch.no_grad()
def class_confidence(scorer: FrozenTeacher, images01: torch.Tensor, cls: int) -> torch.Tensor:
    """The teacher's softmax probability of class `cls` for each [0, 1] image (DELT `rank`, :193-219)."""
    return torch.softmax(scorer.logits(images01).float(), dim=1)[:, cls].cpu()


class MediumInit:
    """Per class, the ipc real images DELT's `medium` rule picks, nearest the median first (cached per class).

    Example:
        >>> init = MediumInit(dataset, teacher, device, ipc=10, pool=0, seed=0, name="delt")
        >>> images01, index = init(3)   # class 3: row 0 nearest the median p_y
    """

    def __init__(self, dataset: ImageDataset, teacher: Any, device: torch.device, ipc: int, pool: int,
                 seed: int, name: str, rule: str = "medium") -> None:
        from ddkit.utils import make_generator

        self.dataset, self.ipc, self.pool, self.seed, self.name = dataset, int(ipc), int(pool), seed, name
        self.rule = rule
        member = teacher.members[0] if hasattr(teacher, "members") else teacher  # a committee: its first member
        self.scorer = FrozenTeacher(member, device, amp=False, channels_last=False)
        self._gen = lambda c: make_generator(seed, name, "medium", c)
        self._cache: Dict[int, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def __call__(self, cls: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(ipc×C×H×W float images in [0, 1], their dataset indices) of class `cls`, in selection order."""
        if cls not in self._cache:
            count = self.dataset.class_counts()[cls]
            n = count if self.pool <= 0 else min(self.pool, count)
            imgs, idx = self.dataset.class_images(cls, n, generator=self._gen(cls))
            p = torch.cat([class_confidence(self.scorer, to_float(imgs[a:a + 256]), cls)
                           for a in range(0, len(imgs), 256)])  # in chunks: a whole ImageNet class as floats is big
            pick = select_order(p, self.ipc, self.rule)
            self._cache[cls] = (to_float(imgs[pick]), idx[pick], p[pick])
        x, idx, _ = self._cache[cls]
        return x, idx

    def confidence(self, cls: int) -> Optional[torch.Tensor]:
        """p_y of the picked images of `cls` (after a call), for the set's meta."""
        got = self._cache.get(cls)
        return None if got is None else got[2]
