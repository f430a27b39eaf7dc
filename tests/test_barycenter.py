"""WMDD's feature target (POT free-support barycenter) and its Frobenius loss, by hand on tiny inputs."""
from __future__ import annotations

import pytest
import torch

from ddkit.utils import DDKitError

pytest.importorskip("ot")

from ddkit.teachers.barycenter import barycenter_loss, class_feature_barycenter, feature_barycenter  # noqa: E402


def test_one_support_point_is_the_mean():
    x = torch.randn(9, 5, generator=torch.Generator().manual_seed(0))
    b = feature_barycenter(x, 1, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(b[0], x.mean(0), atol=1e-5)


def test_as_many_support_points_as_features_recovers_the_features():
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    b = feature_barycenter(x, 6, generator=torch.Generator().manual_seed(1))
    # every barycenter point is one of the features, each used once (the optimal plan is a permutation)
    d = torch.cdist(b, x)
    assert d.min(1).values.max() < 1e-5 and sorted(d.argmin(1).tolist()) == list(range(6))


def test_two_clusters_get_one_point_each():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(10, 2, generator=g) * 0.01 + 5, torch.randn(10, 2, generator=g) * 0.01 - 5])
    b = feature_barycenter(x, 2, generator=torch.Generator().manual_seed(3))
    centres = torch.tensor([[5.0, 5.0], [-5.0, -5.0]])
    assert torch.cdist(b, centres).min(0).values.max() < 0.05


def test_frobenius_loss_by_hand():
    f = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    t = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    assert barycenter_loss(f, t).item() == pytest.approx((4.0 + 9.0) ** 0.5)
    with pytest.raises(DDKitError, match="differ"):
        barycenter_loss(f, t[:1])


def test_class_barycenter_uses_the_teachers_features():
    class Feats:
        def features(self, x, layer, max_batch=100):
            assert layer == "penultimate"
            return x.mean(dim=(2, 3))

    imgs = torch.rand(8, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    b = class_feature_barycenter(Feats(), imgs, 1)
    assert torch.allclose(b[0], imgs.mean(dim=(2, 3)).mean(0), atol=1e-5)
