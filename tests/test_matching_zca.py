"""ZCA (MTT/DATM): whitening, exact inverse, and a ZCA expert buffer that the distillation reads back."""
from __future__ import annotations

import torch

from ddkit.augment.zca import ZCA, Space, fit_zca
from ddkit.teachers.experts import ExpertConfig, load_buffer, train_experts
from tests.conftest import make_toy


def test_zca_whitens_and_inverts():
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(12, 12, generator=g)
    x = (torch.randn(4000, 12, generator=g) @ mix * 0.05 + 0.5).reshape(4000, 3, 2, 2)
    z = fit_zca(x, eps=1e-6)
    w = z.apply(x).reshape(4000, -1).double()
    cov = torch.cov(w.T)
    assert torch.allclose(cov, torch.eye(12, dtype=torch.float64), atol=2e-2)
    assert torch.allclose(z.matrix, z.matrix.T, atol=1e-4)  # ZCA (not PCA) whitening: symmetric
    assert torch.allclose(z.invert(z.apply(x)), x, atol=1e-4)
    again = ZCA.from_state(z.state())
    assert torch.equal(again.matrix, z.matrix) and again.eps == z.eps
    s = Space([0.5] * 3, [0.25] * 3, z)
    assert s.kind == "zca" and torch.allclose(s.decode(s.encode(x)), x, atol=1e-4)


def test_zca_buffer_stores_its_transform(tmp_path):
    train = make_toy(n_per_class=4, num_classes=3, size=4)
    cfg = ExpertConfig(arch="mlp", num_experts=1, epochs=2, batch_size=12, dsa_strategy="none", zca=True,
                       subset_per_class=0, test_limit=0)
    train_experts(train, None, cfg, tmp_path / "b", device=torch.device("cpu"), progress=False)
    buf = load_buffer(tmp_path / "b", train, arch="mlp", zca=True, need_epochs=2)
    assert buf.space.kind == "zca"
    ref = fit_zca(train.images)
    assert torch.allclose(buf.space.zca.matrix, ref.matrix)
