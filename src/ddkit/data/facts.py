"""The facts table: what each named dataset is (classes, size, channels, normalisation, where to get it).

One row per name, as data: loaders read their row instead of branching on the name, and
`ddkit list datasets` / `dataset_info` print it. Normalisation numbers are the ones the
literature uses for each set (computed on its train split), so teachers trained elsewhere
see the inputs they were trained on.
"""
from __future__ import annotations

from typing import Dict, Tuple

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
