"""`EvalConfig`: the flat, frozen configuration of `ddkit evaluate` (one flag per field).

Fields left at None mean "the recipe's value": a recipe (see `recipes.py`) is a named preset and
every one of its fields can be overridden here, flag by flag. `protocol` picks the recipe and regime
when they are left at None (`native.py`): native (default) = the set's own paper's protocol, hard-truths =
one protocol for every set. The resolved values (recipe after
overrides, batch size, iteration count, evaluation epochs) are printed and saved in config.yaml.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional, Tuple

from ddkit.config import field
from ddkit.utils import DDKitError

#: the evaluation protocols (evaluate/native.py); the first is the default
PROTOCOLS = ("native", "hard-truths")
#: canonical regime names and the spellings accepted for them
REGIMES = {"hl": "hl", "hard": "hl", "sl": "sl", "soft": "sl", "slkd": "slkd", "sl+kd": "slkd", "sl-kd": "slkd",
           "sl_kd": "slkd", "kd": "slkd"}


class Regime(str, enum.Enum):
    """The three label regimes of the hard-truths paper; a str, so `regime == "hl"` reads naturally."""

    HL = "hl"  # hard labels
    SL = "sl"  # one fixed teacher soft label per image
    SLKD = "slkd"  # the teacher labels every augmented view online

    @classmethod
    def parse(cls, name: "str | Regime") -> "Regime":
        """The regime of any accepted spelling (hl/hard, sl/soft, slkd/sl+kd/kd…); DDKitError otherwise."""
        key = REGIMES.get(str(getattr(name, "value", name)).strip().lower())
        if key is None:
            raise DDKitError(f"unknown regime {name!r}; use hl (hard labels), sl (one fixed soft label per image) "
                             "or slkd (teacher relabels every augmented view)")
        return cls(key)


def resolve_regime(name: str) -> str:
    """'hl' | 'sl' | 'slkd' (plain str) for any accepted spelling; DDKitError listing the regimes otherwise."""
    return Regime.parse(name).value


@dataclass(frozen=True)
class EvalConfig:
    """How students are trained on a distilled set and scored (defaults: the set's native protocol, 3 seeds)."""

    protocol: str = field("native", "native (default): train each set the way its paper does (the set's declared "
                                    "protocol, ZCA inputs, learned lr and labels when it stores them; undeclared "
                                    "sets: hard-truths HL); hard-truths: one protocol for every set (recipe "
                                    "hardtruths-<regime>, regime hl unless --regime; the study's fair comparison)")
    recipe: Optional[str] = field(None, "named evaluation preset overriding the protocol's (see `ddkit recipes`): "
                                        "cim, rded, sre2l, sre2l-cifar, hardtruths-hl, hardtruths-sl, "
                                        "hardtruths-slkd, dc, dc-noaug, datm")
    regime: Optional[str] = field(None, "override the protocol's regime: hl: hard labels; sl: one fixed soft label "
                                        "per image; slkd: the teacher labels every augmented view online")
    zca: Optional[bool] = field(None, "whiten inputs (train views and test split) with the set's stored ZCA "
                                      "transform (None: native uses it when the set stores one, hard-truths never)")
    student: Optional[str] = field(None, "student architecture (None: the teacher's, else ConvNet-3)")
    student_width: Optional[int] = field(None, "width of ConvNet/MLP students (None: the model's default)")
    seeds: int = field(3, "number of students trained with seeds seed, seed+1, ... (CIM uses 3)")
    seed: int = field(0, "base seed: init, batch order and augmentation draws derive from seed + run index")
    epochs: Optional[int] = field(None, "epochs over the distilled set (None: the recipe's)")
    budget_epochs: Optional[float] = field(None, "compute budget in FULL-dataset epochs: the student sees "
                                                 "budget_epochs x |train| samples whatever the IPC")
    batch_size: Optional[int] = field(None, "batch size (None: the recipe's rule on the set size)")
    optimizer: Optional[str] = field(None, "adamw or sgd")
    lr: Optional[float] = field(None, "base learning rate")
    weight_decay: Optional[float] = field(None, "weight decay")
    wd_norm_bias: Optional[bool] = field(None, "also decay 1-d params (norm weights, biases)")
    momentum: Optional[float] = field(None, "SGD momentum")
    schedule: Optional[str] = field(None, "constant, multistep, cosine or quarter_cosine (per epoch)")
    milestones: Optional[Tuple[float, ...]] = field(None, "multistep milestones as fractions of the epochs")
    gamma: Optional[float] = field(None, "multistep decay factor")
    crop: Optional[str] = field(None, "none, factor (CIM quadrant-or-whole), rded (ShufflePatches+RRC(1/f..1)) "
                                      "rrc (RandomResizedCrop(rrc_min..1)) or pad (RandomCrop with --pad px of "
                                      "zero padding, SRe2L's CIFAR crop)")
    pad: Optional[int] = field(None, "zero padding of crop=pad (RandomCrop(size, padding=pad))")
    factor: Optional[int] = field(None, "crop factor f (0: 1 at <= 64 px, else 2)")
    rrc_min: Optional[float] = field(None, "smallest RandomResizedCrop area fraction for crop=rrc")
    randaug: Optional[str] = field(None, "RandAugment applied first, on [0, 1] images: a timm config (DELT: "
                                         "rand-m6-n2-mstd1.0) or torchvision[-n2-m9] (torchvision's, per image as "
                                         "8-bit PIL: EDC's CIFAR training); '' = none")
    flip: Optional[bool] = field(None, "random horizontal flip before normalisation")
    dsa: Optional[str] = field(None, "DSA strategy applied per sample after normalisation ('none' to disable)")
    dsa_mode: Optional[str] = field(None, "chain (CIM DiffAug) or single (DC/DSA: one op per batch)")
    mix: Optional[str] = field(None, "none, cutmix or mixup (one lam and box per batch)")
    mix_alpha: Optional[float] = field(None, "Beta parameter of CutMix / Mixup")
    loss: Optional[str] = field(None, "loss of the chosen regime: ce, kl, softce, mse, mse_ce or gift")
    temperature: Optional[float] = field(None, "temperature T of kl / softce")
    t2_scale: Optional[bool] = field(None, "multiply the KL by T^2")
    mse_weight: Optional[float] = field(None, "weight of the MSE term of mse_ce (EDC)")
    ce_weight: Optional[float] = field(None, "weight of the CE term of mse_ce (EDC: 0.025)")
    ce_unmixed: Optional[bool] = field(None, "mse_ce: the CE term takes each image's own label, not the "
                                             "CutMix/Mixup-mixed one (G-VBSM train_FKD.py:307-308)")
    ema_decay: Optional[float] = field(None, "> 0: test the student with an EMA of its parameters (decay per step; "
                                             "its BatchNorm statistics stay live), as EDC does with 0.99; 0 = off")
    crop_factor_from_set: bool = field(True, "the factor crop (cim) uses the set's own mosaic factor (meta 'factor'; "
                                             "1 = no crop: random/RDED f=1/coresets); false = the recipe's f=2 for "
                                             "every set (issue #16: handicaps non-mosaic sets)")
    sl_labels: Optional[str] = field(None, "SL targets: image (one fixed soft label per image: the hard-truths "
                                           "rule), region (+ LIC's per-cell labels under the factor crop) or a "
                                           "stored soft key such as learned (None: the recipe's)")
    decode_mosaic: bool = field(True, "a set stored as f×f mosaics (meta factor > 1: LIC, RDED at 224 px) gets "
                                      "CIM's quadrant-or-whole crop when the recipe has no crop of its own "
                                      "(else students train on undecoded mosaics); false = as stored")
    labels: str = field("online", "online: the regime's own targets; stored: train from the label store of "
                                  "`ddkit relabel` (exactly its views and logits; replaces the teacher of slkd)")
    label_store: Optional[str] = field(None, "label store folder for --labels stored (default: SET/fkd)")
    eval_every: Optional[int] = field(None, "test every N epochs (recorded only; the headline is the last epoch)")
    num_evals: Optional[int] = field(None, "number of evenly spaced test evaluations (recipe's; last = end)")
    val_fraction: float = field(0.0, "hold out this fraction of the train split per class as validation "
                                     "(only when a choice must be made; nothing is ever chosen on test)")
    full_acc: Optional[float] = field(None, "accuracy (fraction) of the full train set under HL, for HLR")
    test_batch_size: int = field(500, "batch size for test/validation inference")
    amp: bool = field(True, "bf16 autocast on CUDA (no effect on CPU)")
    channels_last: bool = field(True, "channels_last memory format on CUDA")
    compile: Optional[bool] = field(None, "torch.compile the student (on CPU also the online teacher; both then "
                                          "run channels_last). None: automatic, on CPU where inductor and a C++ "
                                          "compiler work and the students see >= 50,000 images (enough to pay "
                                          "the first compile; evaluate/fastpath.py), off on CUDA")
    cpu_amp: Optional[bool] = field(None, "bf16 autocast on CPU for the student and the online teacher, where the "
                                          "CPU computes bf16 natively (AVX512-BF16/AMX, checked at run time; else "
                                          "fp32). None: automatic, on wherever the CPU has native bf16 and the "
                                          "images are >= 16 px (equal accuracy: "
                                          "bench/results/bf16_accuracy_hardtruths_cpu.json)")
    exact: bool = field(False, "fp32 eager students whatever the machine (no bf16 autocast on CPU or CUDA, no "
                               "compile; overrides --cpu-amp/--compile/--amp): the path of bit-identity checks. "
                               "DDKIT_EXACT=1 makes it the automatic choice")
    stack: int = field(1, "train up to N seeds of this evaluation as one stacked model (torch.func vmap; nets "
                          "without BatchNorm or dropout, else one at a time); results equal the one-at-a-time "
                          "runs within float tolerance. 1: one at a time (on CPU stacking measured slower, "
                          "bench/results/stacked_cpu.json)")
    ddp: bool = field(False, "under torchrun: train each seed data-parallel (DDP, the global batch split over "
                             "ranks) instead of one seed per rank; for single runs too slow for one GPU")
    sync_bn: bool = field(False, "with --ddp: SyncBatchNorm, so BatchNorm sees the global batch as in one "
                                 "process (CUDA only)")

    def __post_init__(self) -> None:
        # The regime is parsed once, here: every later reader sees the canonical "hl" | "sl" | "slkd" (or None:
        # the protocol's, filled in by evaluate.native.resolve_protocol).
        if self.regime is not None:
            object.__setattr__(self, "regime", resolve_regime(self.regime))
        key = str(self.protocol).strip().lower().replace("_", "-")
        key = {"hardtruths": "hard-truths", "ht": "hard-truths"}.get(key, key)
        if key not in PROTOCOLS:
            raise DDKitError(f"unknown protocol {self.protocol!r}; use native (each set as its paper trains it) or "
                             "hard-truths (one protocol for every set)")
        object.__setattr__(self, "protocol", key)
