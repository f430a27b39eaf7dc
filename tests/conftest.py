"""Shared fixtures: tiny generated datasets (tests never touch ../shared).

The suite runs on the CPU even on a GPU host, on the exact path (DDKIT_EXACT=1, below): its numbers are
calibrated for CPU fp32 (on CUDA the student would train in bf16). CUDA_VISIBLE_DEVICES is emptied before anything initialises CUDA. The CUDA group
(tests marked `cuda`) is the other way round: `DDKIT_TEST_CUDA=1 python -m pytest -m cuda tests` keeps the GPUs
visible and runs only it; without DDKIT_TEST_CUDA those tests are deselected (reported in the summary line).
"""
from __future__ import annotations

import importlib.util
import os
import sys

CUDA_GROUP = os.environ.get("DDKIT_TEST_CUDA") == "1"
if not CUDA_GROUP:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported below: no test can reach a GPU
# Students train on the exact path (fp32 eager) unless a test asks otherwise: the automatic fast path
# (evaluate/fastpath.py: bf16 where the CPU has it, compile on long runs) would make the suite's numbers depend
# on the CPU kind (AVX-512/AMX Xeon vs AVX2-only EPYC). tests/test_fastpath.py checks the choice itself.
os.environ["DDKIT_EXACT"] = "1"
from pathlib import Path
from types import ModuleType
from typing import Iterator, Tuple

import pytest
import torch
import torch.nn as nn

from ddkit.data.base import ImageDataset


def load_bench_script(filename: str) -> ModuleType:
    """bench/<filename> loaded as a module (bench/ is not a package), registered in sys.modules so that
    dataclasses can resolve the script's string annotations."""
    path = Path(__file__).resolve().parents[1] / "bench" / filename
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def make_toy(n_per_class: int = 20, num_classes: int = 4, size: int = 8, channels: int = 3, seed: int = 0,
             split: str = "train") -> ImageDataset:
    """Colour-coded toy images: class c has mean intensity that depends on c plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    base = (labels.float() + 0.5) / num_classes * 200
    noise = torch.randn(len(labels), channels, size, size, generator=g) * 20
    images = (base.view(-1, 1, 1, 1) + noise).clamp(0, 255).to(torch.uint8)
    classes = [f"class{c}" for c in range(num_classes)]
    return ImageDataset(images, labels, classes, [0.5] * channels, [0.25] * channels, name="toy", split=split)


@pytest.fixture
def toy() -> ImageDataset:
    return make_toy()


@pytest.fixture(scope="module")
def toy_pair() -> Tuple[ImageDataset, ImageDataset]:
    """The evaluator tests' train/test pair: 20 train and 10 test images per class, 4 classes, 8 px."""
    return make_toy(20, 4, 8, seed=0), make_toy(10, 4, 8, seed=1, split="test")


class MeanOracle(nn.Module):
    """A constructed teacher for make_toy data: logits fall with the distance of the mean pixel to each class's
    intensity (inputs normalised with the toy set's mean 0.5, std 0.25)."""

    def __init__(self, k: int = 4) -> None:
        super().__init__()
        self.centres = nn.Parameter(((torch.arange(k) + 0.5) / k * 200 / 255 - 0.5) / 0.25)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -(x.float().mean(dim=(1, 2, 3))[:, None] - self.centres[None]) ** 2


@pytest.fixture(scope="module")
def toy_eval(toy_pair):
    """(train, test, a random IPC-2 set of train, the MeanOracle teacher): the evaluator tests' inputs."""
    from ddkit.methods import create_method
    from ddkit.teachers import Teacher

    train, test = toy_pair
    dset = create_method("random", ipc=2, seed=0)(train, progress=False)
    teacher = Teacher(MeanOracle(), "oracle", train.classes, train.mean, train.std, image_size=8)
    return train, test, dset, teacher


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a module (use with `pytestmark = pytest.mark.usefixtures("one_thread")`): tiny nets
    are dominated by thread-pool wake-ups on a shared 2-core box, and extra threads only contend. Restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def cli_teachers(root: Path, n: int = 2, data: Tuple[str, ...] = ("--dataset", "digits", "--device", "cpu",
                                                                    "--no-progress")) -> list:
    """`--teacher P` arguments of n one-epoch ConvNet-1-BN teachers trained through the CLI (seeds 0..n-1) under
    root/t<i>: the committee the multi-teacher methods' CLI tests distil through."""
    from ddkit.cli import main

    args: list = []
    for i in range(n):
        p = root / f"t{i}"
        assert main(["teacher", "train", *data, "--model", "convnet-d1-bn", "--epochs", "1", "--seed", str(i),
                     "--output", str(p)]) == 0
        args += ["--teacher", str(p)]
    return args


def bn_loss_by_hand(net: nn.Module, x: torch.Tensor, first: float = 10.0) -> Tuple[torch.Tensor, float]:
    """(logits, SRe2L's BN term) of one no-grad forward of `net` on x, computed by hand: Σ_l m_l (‖μ_l − running
    mean_l‖₂ + ‖σ²_l − running var_l‖₂) over every BatchNorm2d input (biased variance), m_1 = `first`, else 1."""
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    ins: list = []
    hooks = [m.register_forward_hook(lambda mod, i, o: ins.append(i[0])) for m in bns]
    with torch.no_grad():
        logits = net(x)
    for h in hooks:
        h.remove()
    bn = 0.0
    for k, (a, m) in enumerate(zip(ins, bns)):
        v = a.permute(1, 0, 2, 3).reshape(a.shape[1], -1)
        bn += (first if k == 0 else 1.0) * (float((v.mean(1) - m.running_mean).norm())
                                            + float((v.var(1, unbiased=False) - m.running_var).norm()))
    return logits, bn


#: three ImageNet wnids: the class folders of a generated ImageNet-layout tree
WNIDS = ("n01440764", "n02102040", "n02979186")


def make_imagenet_layout(root: Path, train: int = 12, val: int = 6, side: int = 40, seed: int = 0) -> Path:
    """root/{train,val}/<wnid>/<wnid>_<i>.JPEG: the layout `--dataset imagenette --data-root root` reads.

    Class c's images are noisy with channel c bright, in non-square JPEGs (side × side+8, so the loader's
    resize + centre crop runs), learnable in a few steps."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("val", val)):
        for c, w in enumerate(WNIDS):
            d = root / split / w
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.full((side, side + 8, 3), 40.0)
                base[..., c] = 190
                x = np.clip(base + rng.normal(0, 35, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(x).save(d / f"{w}_{i}.JPEG", quality=90)
    return root


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU; runs only with DDKIT_TEST_CUDA=1 (pytest -m cuda)")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    """Without DDKIT_TEST_CUDA=1 the `cuda` group is deselected (the CPU suite stays CPU-only); with it, every
    other test is (they are calibrated for the CPU)."""
    away = [it for it in items if (it.get_closest_marker("cuda") is None) == CUDA_GROUP]
    if away:
        config.hook.pytest_deselected(items=away)
        items[:] = [it for it in items if it not in away]
