"""Real-patch initialisation of the recover descendants that start from patches (SRe2L++, FADRM, FADRM+; CV-DD).

The official code of CV-DD and FADRM (Jiacheng8/CV-DD@24097e9 `recover/utils_recover.py:205-239`,
Jiacheng8/FADRM@f445e38 `recover/utils_recover.py:208-252`) starts image `i` of class `c` from a pre-made file
`patches/<dataset>/<difficulty>/<c:05d>/class<c:05d>_id<i:05d>.jpg`, `--patch-diff medium` in every script
(choices easy / medium / hard). How those files were made is not in either repository (largescale-methods.md §7:
[unverified]); they are downloaded from a Drive folder. ddkit builds them from the data with RDED's patch
machinery (`methods.rded`), which both papers name as the source of their real patches:

1. pool: `pool_size` real images of the class, drawn from (seed, method, "patches", class);
2. each pool image keeps its lowest-CE RandomResizedCrop patch of `num_crop` (RDED's step 2–3, side size // f);
3. the kept patches are ranked by the teacher's CE, and the ipc·f² of the requested difficulty are taken:
   `easy` the lowest CE (= RDED), `hard` the highest, `medium` the window centred on the median rank
   (ddkit's reading of "medium" difficulty) [unverified];
4. stitched f × f into ipc images (RDED's layout, f = 1 up to 64 px, else 2); image `i` starts IPC index `i`.

A class's patches depend only on (seed, method, class), so they are computed once per process, on first use,
and a unit's starting batch never depends on which units share the process.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch

from ddkit.config import field
from ddkit.data.base import ImageDataset
from ddkit.methods.rded import PatchScorer, best_patches, check_pools, resolve_factor, stitch
from ddkit.methods.sre2l import RecoverConfig
from ddkit.utils import DDKitError, make_generator

DIFFICULTIES = ("easy", "medium", "hard")


@dataclass(frozen=True)
class PatchInitConfig(RecoverConfig):
    """Recover options plus the real-patch start of CV-DD / SRe2L++ / FADRM."""

    init: str = field("patch", "patch: real patches of --patch-difficulty (CV-DD/FADRM --initialisation-method "
                               "Patches); real: whole real images; noise: N(0,1) (their 'Guassian' option)")
    patch_difficulty: str = field("medium", "which ranked patches start the images: easy (lowest teacher CE, as "
                                            "RDED), medium (around the median rank) or hard (--patch-diff medium "
                                            "in every official script; how the official files were ranked is "
                                            "unverified)")
    pool_size: int = field(300, "real images per class whose best patch is ranked (RDED's mipc 300)")
    num_crop: int = field(5, "RandomResizedCrop patches scored per pool image, the best kept (RDED: 5)")
    factor: int = field(0, "patches per image side (f² per image); 0 = RDED's rule: 1 up to 64 px, else 2")
    norm: str = field("true", "working-space statistics: true (the dataset's own mean/std, what CV-DD and FADRM "
                              "normalise CIFAR-10/100 with: CV-DD recover.py:254-268, FADRM recover.py:293-298; "
                              "ImageNet's for Tiny/IN-1K) or official (SRe2L's table)")


def select_ranked(ce: torch.Tensor, n: int, difficulty: str) -> torch.Tensor:
    """Indices of the `n` entries of `ce` of the given difficulty, in ascending-CE order (ties: stable).

    easy: the n lowest; hard: the n highest; medium: n consecutive ranks centred on the median rank.
    """
    if difficulty not in DIFFICULTIES:
        raise DDKitError(f"unknown patch difficulty {difficulty!r}; use {', '.join(DIFFICULTIES)}")
    if not 1 <= n <= len(ce):
        raise DDKitError(f"need {n} ranked patches, the pool gives {len(ce)}")
    order = torch.argsort(ce, stable=True)
    first = {"easy": 0, "hard": len(ce) - n, "medium": (len(ce) - n) // 2}[difficulty]
    return order[first:first + n]


class PatchInit:
    """The starting images of a run: per class, ipc images of ranked real patches (computed once per class)."""

    def __init__(self, dataset: ImageDataset, teacher: Any, cfg: PatchInitConfig, method: str,
                 device: torch.device) -> None:
        if cfg.pool_size < 1 or cfg.num_crop < 1 or cfg.factor < 0:
            raise DDKitError("pool_size and num_crop must be >= 1, factor >= 0")
        self.dataset, self.cfg, self.method, self.device = dataset, cfg, method, device
        self.factor = resolve_factor(cfg.factor, dataset.image_size)
        if self.factor > dataset.image_size:
            raise DDKitError(f"--factor {self.factor} exceeds the image side ({dataset.image_size} px)")
        select_ranked(torch.zeros(1), 1, cfg.patch_difficulty)  # refuse an unknown difficulty before any work
        check_pools(dataset, cfg.pool_size, cfg.ipc * self.factor ** 2, what=method)
        self.scorer = PatchScorer(teacher, device)
        self._done: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}

    def facts(self) -> Dict[str, Any]:
        return {"init": "patch", "patch_difficulty": self.cfg.patch_difficulty, "pool_size": self.cfg.pool_size,
                "num_crop": self.cfg.num_crop, "factor": self.factor}

    def of_class(self, c: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(ipc×C×H×W images in [0,1] on the CPU, ipc×f² dataset indices: image m cell k = rank k·ipc + m)."""
        if c not in self._done:
            cfg, f = self.cfg, self.factor
            pool, idx = self.dataset.class_images(c, cfg.pool_size,
                                                  generator=make_generator(cfg.seed, self.method, "patches", c))
            size = pool.shape[-1]
            patches, ce, _ = best_patches(pool, c, self.scorer, cfg.num_crop, size // f, 0.08,
                                          make_generator(cfg.seed, self.method, "crop", c))
            pick = select_ranked(ce, cfg.ipc * f * f, cfg.patch_difficulty)
            images = stitch(patches[pick.to(patches.device)], f, size).float().cpu()
            self._done[c] = (images, idx[pick].view(f * f, cfg.ipc).t().contiguous())
        return self._done[c]

    def image(self, c: int, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Image `index` (an IPC index) of class `c` and its source: one dataset index (f = 1) or f² (a mosaic)."""
        images, src = self.of_class(c)
        return images[index], (src[index, 0] if self.factor == 1 else src[index])


def patch_init_or_none(dataset: ImageDataset, teacher: Any, cfg: RecoverConfig, method: str,
                       device: torch.device) -> Optional[PatchInit]:
    """A PatchInit when cfg.init is "patch", else None (the engine's noise / real starts)."""
    if getattr(cfg, "init", None) != "patch":
        return None
    return PatchInit(dataset, teacher, cfg, method, device)  # type: ignore[arg-type]
