"""WMDD's feature target: the Wasserstein barycenter of a class's teacher features, and the distance to it.

WMDD (Liu et al., ICCV 2025; Liu-Hy/WMDD @45c2962, largescale-methods.md §6) recovers images whose penultimate
teacher features sit on the k = IPC support points of the empirical distribution's Wasserstein-2 barycenter:

* target (`recover/data_synthesis_new.py:255-297`, `recover/barycenter.py:5-26`): the avgpool features of every
  train image of the class (clean, no augmentation), a free-support barycenter with k support points started
  from N(0, 1), uniform weights on both sides (POT `ot.lp.free_support_barycenter`; run.sh passes
  `--weight-wb false`, so the weighted mirror-descent variant is off and every support point weighs 1/k);
* loss (`data_synthesis_new.py:154-165`): ‖F(x̃) − B‖_F, one unsquared Frobenius norm over the batch × d matrix,
  row i of the batch paired with support point i (the recover engine adds it to r_wb·CE + r_bn·per-class BN).

POT is an optional extra (`pip install 'ddkit[wmdd]'`). This module is the part of WMDD that does not depend on
the recover engine; the method itself (per-class BN matching, m₁ = 1, the batch layout) is left to that engine.
"""
from __future__ import annotations

import importlib.util
from typing import Any, Optional

import numpy as np
import torch

from ddkit.utils import DDKitError


def feature_barycenter(features: torch.Tensor, k: int, generator: Optional[torch.Generator] = None,
                       max_iter: int = 100) -> torch.Tensor:
    """k×d free-support Wasserstein barycenter of the n×d `features` (uniform weights), started from N(0, 1)
    drawn with `generator` (WMDD draws it from numpy's global RNG)."""
    if importlib.util.find_spec("ot") is None:
        raise DDKitError("the WMDD barycenter needs POT: pip install 'ddkit[wmdd]'")
    import ot

    x = features.detach().double().cpu().reshape(len(features), -1).numpy()
    n, d = x.shape
    if not 1 <= k or n < 1:
        raise DDKitError(f"a barycenter needs k ≥ 1 support points and at least one feature, got k={k}, n={n}")
    init = torch.randn(k, d, generator=generator, dtype=torch.float64).numpy()
    bary = ot.lp.free_support_barycenter([x], [np.full(n, 1.0 / n)], init, b=np.full(k, 1.0 / k),
                                         numItermax=max_iter)
    return torch.from_numpy(np.asarray(bary)).float()


@torch.no_grad()
def class_feature_barycenter(teacher: Any, images01: torch.Tensor, k: int, *, layer: str = "penultimate",
                             batch_size: int = 100, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The barycenter of a teacher's `layer` features of one class's clean images (a `FrozenTeacher` or anything
    with `.features(x01, layer, max_batch=…)`); WMDD scores batches of 100 (`--batch-size`)."""
    feats = teacher.features(images01, layer, max_batch=batch_size)
    return feature_barycenter(feats, k, generator=generator)


def barycenter_loss(features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """‖F − B‖_F over the whole batch (unsquared; data_synthesis_new.py:154-165), row i against support point i."""
    if features.shape != targets.shape:
        raise DDKitError(f"features {tuple(features.shape)} and barycenter rows {tuple(targets.shape)} differ")
    return torch.linalg.norm((features - targets.to(features)).reshape(-1))
