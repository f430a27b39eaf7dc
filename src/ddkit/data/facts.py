"""The facts table: what each named dataset is (classes, size, channels, normalisation, where to get it).

One row per name, as data: loaders read their row instead of branching on the name, and
`ddkit list datasets` / `dataset_info` print it. Normalisation numbers are the ones the
literature uses for each set (computed on its train split), so teachers trained elsewhere
see the inputs they were trained on.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from .base import DatasetInfo

IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)

# Computed once from the digits train split used here (80/20 stratified, random_state=0) after the
# 0..16 -> uint8 conversion: mean/std of x/255 over all 1437×64 pixels (population std).
DIGITS_MEAN: Tuple[float] = (0.3054,)
DIGITS_STD: Tuple[float] = (0.3760,)

FACTS: Dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("digits", 10, 8, 1, DIGITS_MEAN, DIGITS_STD,
                    "embedded in scikit-learn (sklearn.datasets.load_digits); nothing to download"),
        DatasetInfo("mnist", 10, 28, 1, (0.1307,), (0.3081,),
                    "pass --download (torchvision) or put the 4 IDX files (train-images-idx3-ubyte.gz, ...) "
                    "under --data-root"),
        DatasetInfo("fashion-mnist", 10, 28, 1, (0.2860,), (0.3530,),
                    "apt-get install -y dataset-fashion-mnist (offline, /usr/share/datasets/fashion-mnist), "
                    "pass --download, or put the IDX files under --data-root"),
        DatasetInfo("cifar10", 10, 32, 3, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                    "pass --download (torchvision, 163 MB) or point --data-root at cifar-10-batches-py's "
                    "parent, an ImageFolder (train/<class>/...) or a .tar.gz of one"),
        DatasetInfo("cifar100", 100, 32, 3, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                    "pass --download (torchvision, 161 MB) or point --data-root at cifar-100-python's parent"),
        DatasetInfo("svhn", 10, 32, 3, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
                    "pass --download (torchvision, train/test_32x32.mat) or point --data-root at them"),
        DatasetInfo("tiny-imagenet", 200, 64, 3, IMAGENET_MEAN, IMAGENET_STD,
                    "download and unzip http://cs231n.stanford.edu/tiny-imagenet-200.zip; point --data-root "
                    "at tiny-imagenet-200/"),
        DatasetInfo("imagenet", 1000, 224, 3, IMAGENET_MEAN, IMAGENET_STD,
                    "get ILSVRC2012 from image-net.org; --data-root must hold train/<wnid>/ and val/<wnid>/ "
                    "(val sorted into class folders)"),
        DatasetInfo("imagenette", 10, 224, 3, IMAGENET_MEAN, IMAGENET_STD,
                    "download and untar https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz; "
                    "point --data-root at imagenette2/"),
        DatasetInfo("imagewoof", 10, 224, 3, IMAGENET_MEAN, IMAGENET_STD,
                    "download and untar https://s3.amazonaws.com/fast-ai-imageclas/imagewoof2.tgz; "
                    "point --data-root at imagewoof2/"),
    )
}

# Peers' spellings, resolved by the registry (case and '_' vs '-' are already ignored there).
ALIASES: Dict[str, Tuple[str, ...]] = {
    "digits": ("sklearn-digits",),
    "mnist": (),
    "fashion-mnist": ("fashionmnist", "fmnist"),
    "cifar10": ("cifar-10",),
    "cifar100": ("cifar-100",),
    "svhn": (),
    "tiny-imagenet": ("tinyimagenet", "tiny-imagenet-200", "tiny"),
    "imagenet": ("imagenet-1k", "imagenet1k", "ilsvrc2012"),
    "imagenette": ("imagenette2",),
    "imagewoof": ("imagewoof2",),
}

# Class names in label order for sets whose files carry only integer labels.
CLASS_NAMES: Dict[str, Tuple[str, ...]] = {
    "digits": tuple(str(i) for i in range(10)),
    "mnist": tuple(str(i) for i in range(10)),
    "svhn": tuple(str(i) for i in range(10)),
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                      "Bag", "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}

SPLITS = ("train", "test", "val")


def normalize_split(split: str) -> str:
    """'train' | 'test' | 'val' (case-insensitive; 'validation' -> 'val'); anything else is a user error."""
    from ..utils import DDKitError

    s = split.strip().lower()
    s = {"validation": "val", "valid": "val", "eval": "test"}.get(s, s)
    if s not in SPLITS:
        raise DDKitError(f"unknown split {split!r}; use one of: train, test, val (val and test are aliases)")
    return s


def split_dir_candidates(split: str) -> Tuple[str, ...]:
    """Folder names to try for a split, best first: 'val' prefers val/ then test/, 'test' the reverse."""
    return {"train": ("train",), "val": ("val", "test"), "test": ("test", "val")}[split]


# -- working space of the official codes ------------------------------------------------------------------
# The matching and recover methods optimise pixels in the space their official code normalises with, which
# is not always the set's true statistics: DC/MTT/SRe2L divide CIFAR-10 by the long-circulated
# (0.2023, 0.1994, 0.2010) where the true pixel std is (0.2470, 0.2435, 0.2616), so N(0,1) noise, lr_img
# and DSA's additive brightness act ~1.22× larger in pixel units under the true statistics. Families:
# "dc" (DC, DSA, DM: VICO-UoE/DatasetCondensation utils.py@53f63a6), "mtt" (MTT distill/buffer and DATM:
# mtt-distillation utils.py@50dccea, DATM utils/utils_baseline.py@97ae510), "sre2l" (SRe2L and CDA:
# VILA-Lab/SRe2L@8d00cba), "dwa" (AngusDujw/Diversity-Driven-Synthesis@c5b125f), "gvbsm"
# (shaoshitong/G_VBSM_Dataset_Condensation@1ed80b0), "edc" (shaoshitong/EDC@80116a7).
Stats = Tuple[Tuple[float, ...], Tuple[float, ...]]
_C10: Stats = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
_IMNET: Stats = (IMAGENET_MEAN, IMAGENET_STD)
OFFICIAL_STATS: Dict[str, Dict[str, Tuple[Stats, str]]] = {
    "dc": {
        "mnist": (((0.1307,), (0.3081,)), "DatasetCondensation utils.py:17-18@53f63a6"),
        "fashion-mnist": (((0.2861,), (0.3530,)), "DatasetCondensation utils.py:28-29@53f63a6"),
        "svhn": (((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)), "DatasetCondensation utils.py:39-40@53f63a6"),
        "cifar10": (_C10, "DatasetCondensation utils.py:50-51@53f63a6"),
        "cifar100": (((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
                     "DatasetCondensation utils.py:61-62@53f63a6"),
        "tiny-imagenet": (_IMNET, "DatasetCondensation utils.py:72-73@53f63a6"),
    },
    "mtt": {  # CIFAR-100 reuses CIFAR-10's numbers in both repositories
        "cifar10": (_C10, "mtt-distillation utils.py:56-57@50dccea; DATM utils/utils_baseline.py:97-98@97ae510"),
        "cifar100": (_C10, "mtt-distillation utils.py:122-123@50dccea; DATM utils/utils_baseline.py:179-180@97ae510"),
        "tiny-imagenet": (_IMNET, "mtt-distillation utils.py:72-73@50dccea; DATM utils/utils_baseline.py:121-122"
                                  "@97ae510"),
        "imagenet": (_IMNET, "mtt-distillation utils.py:91-92@50dccea (ImageNet subsets)"),
        "imagenette": (_IMNET, "mtt-distillation utils.py:91-92@50dccea (ImageNet subsets)"),
        "imagewoof": (_IMNET, "mtt-distillation utils.py:91-92@50dccea (ImageNet subsets)"),
    },
    "sre2l": {  # the CIFAR recover is written for CIFAR-100 and normalises with CIFAR-10's numbers
        "cifar10": (_C10, "SRe2L *small_dataset/recover_cifar.py:22-23@8d00cba"),
        "cifar100": (_C10, "SRe2L *small_dataset/recover_cifar.py:22-23@8d00cba"),
        "tiny-imagenet": (((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
                          "SRe2L *small_dataset/utils.py:12-13@8d00cba"),
        "imagenet": (_IMNET, "SRe2L recover/utils.py:63-66@8d00cba"),
    },
    "dwa": {
        "cifar10": (_C10, "Diversity-Driven-Synthesis distillation/utils.py:17-18@c5b125f"),
        "cifar100": (((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
                     "Diversity-Driven-Synthesis distillation/utils.py:14-15@c5b125f"),
        "tiny-imagenet": (((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
                          "Diversity-Driven-Synthesis distillation/distillation_tiny.py:25-27@c5b125f"),
        "imagenet": (_IMNET, "Diversity-Driven-Synthesis distillation/utils.py:20-21@c5b125f"),
    },
    "gvbsm": {  # CIFAR-10 is normalised with CIFAR-100's numbers (recover, relabel and train alike)
        "cifar10": (((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
                    "G_VBSM Branch_CIFAR_10/recover/utils.py:74-75@1ed80b0"),
        "cifar100": (((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
                     "G_VBSM Branch_CIFAR_100/recover/utils.py:74-75@1ed80b0"),
        "tiny-imagenet": (_IMNET, "G_VBSM Branch_Tiny_ImageNet/recover/utils.py:74-75@1ed80b0"),
        "imagenet": (_IMNET, "G_VBSM Branch_full_ImageNet_1k/recover/utils.py:75-76@1ed80b0"),
    },
    "edc": {  # as G-VBSM: CIFAR-10 is normalised with CIFAR-100's numbers
        "cifar10": (((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
                    "EDC Branch_CIFAR_10/recover/utils.py:77-78, recover.py:142-143@80116a7"),
        "imagenet": (_IMNET, "EDC Branch_full_ImageNet_1k/recover/recover.py:122-123@80116a7"),
    },
}
NORMS = ("official", "true")
#: The first CIFAR-100 fine labels in label order (a folder/tar copy lists its class folders sorted, the same).
_CIFAR100_HEAD = ("apple", "aquarium_fish", "baby", "bear", "beaver")


def official_name(dataset: Any) -> Optional[str]:
    """The named dataset `dataset` is, for looking up official settings: its facts-table name, or, for a
    folder:/tar: copy, the set its shape and class names identify (CIFAR-10 by its class names, CIFAR-100
    by its first fine labels, Tiny-ImageNet by 200 WordNet-id classes at 64 px); None when unknown."""
    name = getattr(dataset, "name", "")
    if name in FACTS:
        return name
    classes = tuple(getattr(dataset, "classes", ()))
    shape = (getattr(dataset, "channels", 0), getattr(dataset, "image_size", 0))
    if shape == (3, 32) and classes == CLASS_NAMES["cifar10"]:
        return "cifar10"
    if shape == (3, 32) and len(classes) == 100 and classes[:len(_CIFAR100_HEAD)] == _CIFAR100_HEAD:
        return "cifar100"
    if shape == (3, 64) and len(classes) == 200 and all(re.fullmatch(r"n\d{8}", c) for c in classes):
        return "tiny-imagenet"
    return None


@dataclass(frozen=True)
class WorkingStats:
    """The mean/std a method normalises with, what they are (official or true) and where they come from."""

    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    kind: str      # "official" or "true"
    source: str

    def meta(self) -> Dict[str, Any]:
        return {"norm": self.kind, "mean": list(self.mean), "std": list(self.std), "source": self.source}


def working_stats(dataset: Any, family: str, norm: str = "official") -> WorkingStats:
    """The statistics `family`'s official code normalises `dataset` with (norm="official"), or the set's own
    (norm="true"). A dataset the official code never ran on has no official statistics: its own are used,
    and `source` says so (an unknown custom set is not refused)."""
    from ..utils import DDKitError

    if norm not in NORMS:
        raise DDKitError(f"unknown norm {norm!r}; use official (the statistics the official code normalises with) "
                         "or true (the dataset's own mean/std)")
    if family not in OFFICIAL_STATS:
        raise DDKitError(f"unknown statistics family {family!r}; use one of {', '.join(OFFICIAL_STATS)}")
    own = (tuple(dataset.mean), tuple(dataset.std))
    name = official_name(dataset)
    row = OFFICIAL_STATS[family].get(name) if name else None
    if norm == "true":
        return WorkingStats(own[0], own[1], "true", "the dataset's own mean/std")
    if row is None or len(row[0][0]) != len(own[0]):
        return WorkingStats(own[0], own[1], "true", f"the dataset's own mean/std (the {family} code has no "
                                                    f"statistics for {name or getattr(dataset, 'name', '?')!r})")
    return WorkingStats(row[0][0], row[0][1], "official", f"{name}: {row[1]}")
