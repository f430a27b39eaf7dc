"""Shared fixtures: tiny generated datasets (tests never touch ../shared)."""
from __future__ import annotations

import pytest
import torch

from ddkit.data.base import ImageDataset


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
