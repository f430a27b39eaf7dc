"""Replayable, batched, differentiable augmentations: sample explicit params, then apply them.

    aug = dsa()                                   # DSA/CIM chain
    p = aug.sample(1, x.shape, generator=g)       # one draw shared by any batch (siamese)
    xr, xs = aug.apply(real, p), aug.apply(syn, p)
    y = aug(syn)                                  # per-sample draws (training students)
"""
from ddkit.augment.base import (Augment, Compose, Identity, Normalize, OneOf, Params, expand_batch, hw,
                                params_to, select)
from ddkit.augment.crops import FactorCrop, RandomResizedCrop, ShufflePatches, resized_crop
from ddkit.augment.dsa import (DEFAULT_STRATEGY, DSA_TOKENS, Color, Cutout, Flip, Rotate, Scale, Translate,
                               cim_condense_aug, dsa)
from ddkit.augment.mixing import CutMix, Mixup

__all__ = [
    "Augment", "Params", "Compose", "OneOf", "Identity", "Normalize", "params_to", "select", "hw", "expand_batch",
    "Flip", "Color", "Translate", "Scale", "Rotate", "Cutout", "dsa", "cim_condense_aug", "DSA_TOKENS",
    "DEFAULT_STRATEGY", "RandomResizedCrop", "FactorCrop", "ShufflePatches", "resized_crop", "CutMix", "Mixup",
]
