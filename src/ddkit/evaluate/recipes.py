"""Evaluation recipes as data: one frozen `Recipe` per peer protocol, in a registry.

Each preset reproduces what a reference repository calls "accuracy" (peers.md §1.5, §2.2, §3.4,
§7b; hardtruths.md §5.1), with the loss of each regime explicit. Values that depend on the set
(batch size by set size, RDED's crop factor by image size, CIM's shorter ImageNet-1K schedule)
are rules resolved by the named pure functions below, and the resolved recipe is logged.

`hardtruths-sl` leaves the KL's T² factor OFF: whether the paper scales by T² is unverified
(hardtruths.md §5.1; its reproduction did, RDED and Xiao et al. do not); `--t2-scale` turns it on.
It gives every image ONE fixed soft label (the paper's SL rule, hardtruths §1, §5.1: "one fixed
teacher-assigned soft label per image"): `sl_labels` "image". "region" adds LIC's per-cell labels
when the factor crop picks a cell (five labels for a 2×2 mosaic: CIM's region-level reading); any
other value names a stored soft key (e.g. "learned").

`hardtruths-slkd` is the study's SL+KD: the paper's SL+KD is "cutmix-augmented soft labels" from an
online teacher (hardtruths §1, Table 1 caption), evaluated with KL as RDED/SRe2L do (peers §2.2:
KL T = 20, no T², CutMix β = 1). The paper gives no small-scale SL+KD protocol (§5.1), so its
optimiser, schedule, DSA, epochs and batch are the small-scale SL column of Table 4 [I].

`cim`'s quadrant-or-whole crop uses the factor of the SET being evaluated (its meta "factor", 1
when absent, which means no crop): CIM only ever evaluates its own 2×2 mosaics, and applying the
f = 2 crop to a non-mosaic set (random, RDED at f = 1, coresets) trains on zoomed quarters of whole
images, a handicap (issue #16: −24.5 points for random IPC 10 on another dataset). An explicit
--factor, or `crop_factor_from_set` off, restores the recipe's factor.

Every field can be overridden through the EvalConfig field of the same name (`--lr 2e-3`,
`--mix cutmix`, ...); `--loss` replaces the loss of the regime being run.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

from ddkit.augment.randaug import make_randaug
from ddkit.evaluate.protocol import EvalConfig, resolve_regime
from ddkit.evaluate.losses import LOSSES
from ddkit.geometry import auto_factor
from ddkit.registry import Registry, UnknownNameError
from ddkit.utils import DDKitError

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("constant", "multistep", "cosine", "quarter_cosine")
CROPS = ("none", "factor", "rded", "rrc", "pad")
MIXES = ("none", "cutmix", "mixup")
BATCH_RULES = ("cim", "rded", "fixed")


@dataclass(frozen=True)
class Recipe:
    """A student-training protocol. Augmentations run in the order listed here:
    crop → flip → normalise → DSA (per sample) → batch mixing."""

    name: str
    description: str
    # optimisation ------------------------------------------------------------------------------
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    wd_norm_bias: bool = False        # RDED/SRe2L exclude 1-d params from decay; CIM decays all
    momentum: float = 0.9             # SGD only
    schedule: str = "cosine"          # stepped per epoch, as every peer does
    milestones: Tuple[float, ...] = ()
    milestone_offset: int = 0         # DC's "Epoch//2 + 1"
    gamma: float = 0.1
    epochs: int = 300
    epochs_large: int = 0             # epochs for sets with >= 1000 classes (0: same as epochs)
    batch_rule: str = "fixed"
    batch_size: int = 256
    # augmentation --------------------------------------------------------------------------------
    crop: str = "none"
    factor: int = 0                   # 0: 1 at <= 64 px, else 2 (RDED)
    rrc_min: float = 0.08
    randaug: str = ""                 # timm RandAugment config, applied first on [0,1] images (DELT); "" = none
    pad: int = 4                      # crop "pad": RandomCrop(size, padding=pad), zero (black) fill
    flip: bool = False
    dsa: str = "none"
    dsa_mode: str = "chain"
    mix: str = "none"
    mix_alpha: float = 1.0
    # loss per regime -----------------------------------------------------------------------------
    hl_loss: str = "ce"
    sl_loss: str = "kl"
    slkd_loss: str = "kl"
    temperature: float = 20.0
    t2_scale: bool = False
    mse_weight: float = 1.0
    ce_weight: float = 0.025
    ce_unmixed: bool = False          # mse_ce: CE on each image's own label, not the mixed one (G-VBSM)
    sl_labels: str = "image"          # SL targets: image (one per image), region (+ LIC cells) or a soft key
    ema_decay: float = 0.0            # > 0: test with an EMA of the student's parameters (EDC: 0.99); 0 = off
    # reporting -----------------------------------------------------------------------------------
    num_evals: int = 1                # evenly spaced test evaluations, the last at the end

    def loss_for(self, regime: str) -> str:
        """The loss name used under `regime` ('hl' | 'sl' | 'slkd')."""
        return {"hl": self.hl_loss, "sl": self.sl_loss, "slkd": self.slkd_loss}[resolve_regime(regime)]

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


RECIPES: Registry[Recipe] = Registry("recipe")


def _add(r: Recipe, aliases: Tuple[str, ...] = ()) -> None:
    RECIPES.register(r.name, aliases=aliases, obj=r)


_add(Recipe(
    "cim", "CIM/LIC evaluator: MSE to online-teacher logits, quadrant-or-whole crop + per-sample DiffAug",
    optimizer="adamw", lr=1e-3, weight_decay=1e-4, wd_norm_bias=True, schedule="multistep",
    milestones=(2 / 3, 5 / 6), gamma=0.2, epochs=1000, epochs_large=300, batch_rule="cim",
    crop="factor", factor=2, dsa="color_crop_cutout_flip_scale_rotate", dsa_mode="chain",
    hl_loss="ce", sl_loss="mse", slkd_loss="mse", sl_labels="region", num_evals=4), aliases=("lic",))
_add(Recipe(
    "rded", "RDED validation: ShufflePatches + RRC(1/f..1) + flip + CutMix, KL T=20 (no T^2), quarter-cosine",
    optimizer="adamw", lr=1e-3, weight_decay=0.01, wd_norm_bias=False, schedule="quarter_cosine", epochs=300,
    batch_rule="rded", crop="rded", factor=0, flip=True, mix="cutmix", mix_alpha=1.0,
    hl_loss="ce", sl_loss="kl", slkd_loss="kl", temperature=20.0))
_add(Recipe(
    "sre2l", "SRe2L validation: RRC(0.08..1) + flip + CutMix, KL T=20 (no T^2), full cosine",
    optimizer="adamw", lr=1e-3, weight_decay=0.01, wd_norm_bias=False, schedule="cosine", epochs=300,
    batch_rule="fixed", batch_size=1024, crop="rrc", rrc_min=0.08, flip=True, mix="cutmix", mix_alpha=1.0,
    hl_loss="ce", sl_loss="kl", slkd_loss="kl", temperature=20.0), aliases=("cda",))
_add(Recipe(
    "hardtruths-hl", "Hard Truths small-scale HL (Table 4): CE, SGD 0.01 + step x0.1 at E/2+1, DSA, 300 ep, bs 256",
    optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, wd_norm_bias=True, schedule="multistep",
    milestones=(0.5,), milestone_offset=1, gamma=0.1, epochs=300, batch_rule="fixed", batch_size=256,
    dsa="color_crop_cutout_flip_scale_rotate", dsa_mode="single",
    hl_loss="ce", sl_loss="kl", slkd_loss="kl", temperature=20.0))
_add(Recipe(
    # T^2 scaling is UNVERIFIED (hardtruths.md §5.1): the reproduction used it, RDED/Xiao et al. do not.
    "hardtruths-sl", "Hard Truths small-scale SL (Table 4): KL T=20, AdamW 1e-3, cosine, DSA, 300 ep, bs 256 "
                     "(T^2 scaling unverified, off)",
    optimizer="adamw", lr=1e-3, weight_decay=0.01, wd_norm_bias=False, schedule="cosine", epochs=300,
    batch_rule="fixed", batch_size=256, dsa="color_crop_cutout_flip_scale_rotate", dsa_mode="single",
    hl_loss="ce", sl_loss="kl", slkd_loss="kl", temperature=20.0, t2_scale=False, sl_labels="image"))
_add(Recipe(
    # Small-scale SL+KD is not defined in the paper (hardtruths §5.1): Table 4's SL column + CutMix and an
    # online teacher, KL T=20 without T^2 as RDED/SRe2L evaluate (peers §2.2).
    "hardtruths-slkd", "Hard Truths SL+KD: CutMix(1) views relabelled online by the teacher, KL T=20 (no T^2), "
                       "AdamW 1e-3, cosine, DSA, 300 ep, bs 256",
    optimizer="adamw", lr=1e-3, weight_decay=0.01, wd_norm_bias=False, schedule="cosine", epochs=300,
    batch_rule="fixed", batch_size=256, dsa="color_crop_cutout_flip_scale_rotate", dsa_mode="single",
    mix="cutmix", mix_alpha=1.0, hl_loss="ce", sl_loss="kl", slkd_loss="kl", temperature=20.0, t2_scale=False))
_add(Recipe(
    "dc", "DC/DSA/DM protocol: CE, SGD 0.01 momentum 0.9 wd 5e-4, x0.1 at E/2, DSA, 1000 ep, bs 256",
    optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, wd_norm_bias=True, schedule="multistep",
    milestones=(0.5,), gamma=0.1, epochs=1000, batch_rule="fixed", batch_size=256,
    dsa="color_crop_cutout_flip_scale_rotate", dsa_mode="single",
    hl_loss="ce", sl_loss="kl", slkd_loss="kl", temperature=20.0), aliases=("dsa", "dm", "mtt"))
_add(Recipe(
    # DC main.py:117-123 (CIFAR-10 ConvNet: dc_aug_param strategy 'none' -> epoch_eval_train 300) and
    # utils.py:337-361 (SGD 0.01 m 0.9 wd 5e-4, lr x0.1 at epoch Epoch//2+1, batch 256, last-epoch test).
    "dc-noaug", "DC protocol (CIFAR ConvNet): CE, SGD 0.01 momentum 0.9 wd 5e-4, x0.1 at E/2+1, no augmentation, "
                "300 ep, bs 256",
    optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, wd_norm_bias=True, schedule="multistep",
    milestones=(0.5,), milestone_offset=1, gamma=0.1, epochs=300, batch_rule="fixed", batch_size=256,
    hl_loss="ce", sl_loss="kl", slkd_loss="kl", temperature=20.0))
_add(Recipe(
    # DATM DATM.py:344-387 and distill/evaluation.py: the DSA protocol (SGD m 0.9 wd 5e-4, 1000 ep, x0.1 at
    # 501) with batch_train 128 (configs/*.yaml) and SoftCrossEntropy on the learned labels, no temperature
    # (DATM.py:255-262, 370); the lr is the set's learned syn_lr under --protocol native.
    "datm", "DATM protocol: soft CE (T=1) on the set's learned labels, SGD 0.01 momentum 0.9 wd 5e-4, x0.1 at "
            "E/2+1, DSA, 1000 ep, bs 128",
    optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, wd_norm_bias=True, schedule="multistep",
    milestones=(0.5,), milestone_offset=1, gamma=0.1, epochs=1000, batch_rule="fixed", batch_size=128,
    dsa="color_crop_cutout_flip_scale_rotate", dsa_mode="single",
    hl_loss="ce", sl_loss="softce", slkd_loss="softce", temperature=1.0, sl_labels="learned"))
_add(Recipe(
    # SRe2L *small_dataset/relabel_cifar.py@8d00cba: RandomCrop(32, padding=4) + flip (:51-52), AdamW lr 1e-3
    # wd 0.01 on every parameter (:104), CosineAnnealingLR(T_max=epochs) stepped per epoch (:106), T = 30 (:107),
    # KLDivLoss batchmean without T^2 (:108, :138-141), Mixup alpha 0.8 (:111), the teacher labels the mixed
    # batch online (:138); relabel_cifar.sh: --epochs 400 --batch-size 128. DWA validation/validation_cifar.py
    # @c5b125f has the same values (:72-73, :170-187, :203-207) and readme.md:77-78 the same 400 / 128.
    "sre2l-cifar", "SRe2L/CDA/DWA CIFAR relabel: online teacher on Mixup(0.8) views, KL T=30 (no T^2), AdamW 1e-3 "
                   "wd 0.01, cosine, RandomCrop(pad 4) + flip, 400 ep, bs 128",
    optimizer="adamw", lr=1e-3, weight_decay=0.01, wd_norm_bias=True, schedule="cosine", epochs=400,
    batch_rule="fixed", batch_size=128, crop="pad", pad=4, flip=True, mix="mixup", mix_alpha=0.8,
    hl_loss="ce", sl_loss="kl", slkd_loss="kl", temperature=30.0, t2_scale=False), aliases=("dwa-cifar", "cda-cifar"))

_add(Recipe(
    # FADRM@f445e38 validate/train_fkd.py (CV-DD@24097e9 validate/train_fkd.py is the same code, other rows of its
    # table): RRC(0.08..1) + flip views of the FKD store (relabel.py:259-271) + CutMix, KL T = 20 without T^2
    # (:487-493, scripts -T 20), AdamW wd 0.01 on multi-dimensional weights only (utils_validate.py:67-81),
    # lr x 0.5(1 + cos(pi e / (E eta))) per epoch (:401-403); IN-1K ResNet-18 IPC 1/10: lr 1e-3, eta 2
    # (= quarter_cosine, :268-283); IPC 50 / other rows eta 1 (--schedule cosine) and lr 5e-4..1e-3 by (dataset,
    # model, IPC) (:82-310); batch 16 (constants.sh), which the code splits into gradient-accumulation halves of 8.
    "fadrm", "FADRM/FADRM+ validation: RRC(0.08..1) + flip + CutMix, KL T=20 (no T^2), AdamW 1e-3, "
             "0.5(1+cos(pi e/2E)), batch 16",
    optimizer="adamw", lr=1e-3, weight_decay=0.01, wd_norm_bias=False, schedule="quarter_cosine", epochs=300,
    batch_rule="fixed", batch_size=16, crop="rrc", rrc_min=0.08, flip=True, mix="cutmix", mix_alpha=1.0,
    hl_loss="ce", sl_loss="kl", slkd_loss="kl", temperature=20.0), aliases=("fadrm+",))

_add(Recipe(
    # CV-DD validate/train_fkd.py@24097e9 with validate/scripts/cifar10_experiment (constants.sh bs=16, --epochs 300
    # --mix-type cutmix --cos -T 20): RRC(scale 0.08-1) + flip (:230-233), KLDivLoss batchmean of log_softmax(out/T)
    # vs softmax(label/T), no T^2 (:381-384), AdamW wd 0.01 on weights of dim > 1 only (utils_validate.py:67-80),
    # lr 1e-3 and eta 1 for ResNet-18 at 300 epochs on CIFAR-10 (:84-96), so 0.5(1+cos(pi e/E)) per epoch (:289-291);
    # CutMix alpha 1 (relabel.py:86). ddkit steps once per batch of 16; the official script splits each batch into
    # gradient-accumulation halves of 8 (--gradient-accumulation-steps 2, :363-385), so its BN sees 8 images.
    "cvdd", "CV-DD validation: RRC(0.08..1) + flip + CutMix, KL T=20 (no T^2), AdamW 1e-3 wd 0.01, cosine, "
            "300 ep, bs 16",
    optimizer="adamw", lr=1e-3, weight_decay=0.01, wd_norm_bias=False, schedule="cosine", epochs=300,
    batch_rule="fixed", batch_size=16, crop="rrc", rrc_min=0.08, flip=True, mix="cutmix", mix_alpha=1.0,
    hl_loss="ce", sl_loss="kl", slkd_loss="kl", temperature=20.0, t2_scale=False))

_add(Recipe(
    # WMDD train/train_FKD.py@45c2962 with run.sh (--batch-size 100, --epochs 300, --cos, --temperature 20,
    # --mix-type cutmix): RRC(0.08-1) + flip (:113-116), per-sample KL(T) summed over classes times
    # weights/mean(weights) then averaged (:255-272; uniform weights under run.sh's --weight-wb false, so batchmean
    # KL, no T^2), AdamW 1e-3 wd 0.01 on weights of dim > 1 (:62-65, 178), cosine per epoch (:182-184); batch 100
    # (10·IPC for 10-class sets below IPC 10, run.sh:60-64).
    "wmdd", "WMDD validation: RRC(0.08..1) + flip + CutMix, KL T=20 (no T^2), AdamW 1e-3 wd 0.01, cosine, 300 ep, "
            "bs 100",
    optimizer="adamw", lr=1e-3, weight_decay=0.01, wd_norm_bias=False, schedule="cosine", epochs=300,
    batch_rule="fixed", batch_size=100, crop="rrc", rrc_min=0.08, flip=True, mix="cutmix", mix_alpha=1.0,
    hl_loss="ce", sl_loss="kl", slkd_loss="kl", temperature=20.0, t2_scale=False))

_add(Recipe(
    # DELT evaluation/validation/main.py@f2f81ca:113-140 with scripts/resnet18_imagenet1k_validation.sh: timm
    # RandAugment rand-m6-n2-mstd1.0 (fill img_mean 124/116/104) first, random erasing 0, RRC(0.25-1), flip,
    # ImageNet mean/std; AdamW betas (0.9, 0.999) lr 1e-3 (ResNet-18 and ConvNets, argument.py:258-297) wd 0.01 on
    # weights of dim > 1 (get_parameters); 0.5(1+cos(pi e/(2E))) per epoch (:96-104); CutMix -> T = 20
    # (argument.py:252-256), the online teacher on the mixed view (RDED's validation loop); RDED's batch rule
    # (argument.py:214-246); 300 epochs (--re-epochs).
    "delt", "DELT validation: RandAugment(m6, n2, mstd1) + RRC(0.25..1) + flip + CutMix, KL T=20 (no T^2), AdamW "
            "1e-3, quarter-cosine, 300 ep, RDED batch rule",
    optimizer="adamw", lr=1e-3, weight_decay=0.01, wd_norm_bias=False, schedule="quarter_cosine", epochs=300,
    batch_rule="rded", crop="rrc", rrc_min=0.25, randaug="rand-m6-n2-mstd1.0", flip=True, mix="cutmix",
    mix_alpha=1.0, hl_loss="ce", sl_loss="kl", slkd_loss="kl", temperature=20.0, t2_scale=False))

_add(Recipe(
    # G_VBSM@1ed80b0 Branch_CIFAR_10/train/train_FKD.py with train.sh (--batch-size 100 --cos --loss-type mse_gt
    # --ce-weight 0.15 --adamw-lr 0.001 --mix-type cutmix): RRC(32, 0.08-1) + flip views of the FKD store (:154-157),
    # MSE(student, soft label) + 0.15·CE(student, the image's own hard label) (:307-308), AdamW wd 0 (argparse
    # default :104-105; no decay on 1-d params either way), 0.5(1 + cos(pi e/E)) per epoch (:203-206, 233), 1000
    # epochs (:78, the relabel's 1000). ce_unmixed: the CE's label is the image's own, not CutMix's mixed one.
    "gvbsm", "G-VBSM CIFAR-10 training: RRC(0.08..1) + flip + CutMix, MSE + 0.15 CE, AdamW 1e-3 wd 0, cosine, "
             "1000 ep, bs 100",
    optimizer="adamw", lr=1e-3, weight_decay=0.0, wd_norm_bias=False, schedule="cosine", epochs=1000,
    batch_rule="fixed", batch_size=100, crop="rrc", rrc_min=0.08, flip=True, mix="cutmix", mix_alpha=1.0,
    hl_loss="ce", sl_loss="mse_ce", slkd_loss="mse_ce", mse_weight=1.0, ce_weight=0.15, ce_unmixed=True),
    aliases=("g-vbsm",))
_add(Recipe(
    # G_VBSM@1ed80b0 Branch_full_ImageNet_1k/train/train_FKD_parallel.py with train.sh (--batch-size 1024 --cos
    # --loss-type mse_gt --ce-weight 0.1 --mix-type cutmix): RRC(224) + flip (:177), AdamW 1e-3 wd 0.01 on weights of
    # dim > 1 (:105-108), cosine per epoch (:223-227), 300 epochs (:85).
    "gvbsm-in1k", "G-VBSM ImageNet-1K training: RRC(0.08..1) + flip + CutMix, MSE + 0.1 CE, AdamW 1e-3 wd 0.01, "
                  "cosine, 300 ep, bs 1024",
    optimizer="adamw", lr=1e-3, weight_decay=0.01, wd_norm_bias=False, schedule="cosine", epochs=300,
    batch_rule="fixed", batch_size=1024, crop="rrc", rrc_min=0.08, flip=True, mix="cutmix", mix_alpha=1.0,
    hl_loss="ce", sl_loss="mse_ce", slkd_loss="mse_ce", mse_weight=1.0, ce_weight=0.1, ce_unmixed=True))

_add(Recipe(
    # EDC@80116a7 Branch_CIFAR_10/train/direct_train.py with train.sh (--batch-size 10 --epochs 1000 --ls-type
    # multisteplr --loss-type mse_gt --ce-weight 0.025, AdamW 1e-3 wd 0.01, --mix-type cutmix): RRC(32, 0.08-1) + flip
    # (:232-236), MSE(student, mean of the teachers' logits) + 0.025·CE(student, the image's own label) (:421-422),
    # AdamW on get_parameters (no decay on 1-d params, :312-315), MultiStepLR [800, 900, 950] x0.5 (:330-332).
    # torchvision's RandAugment() first, on the PIL image (:230); the official code tests the EMA of the student's
    # parameters (--ema-dr 0.99, :79-98, 351-354, 437-438).
    "edc", "EDC CIFAR-10 training: torchvision RandAugment + RRC(0.08..1) + flip + CutMix, MSE + 0.025 CE (own "
           "label), AdamW 1e-3 wd 0.01, x0.5 at epochs 800/900/950, 1000 ep, bs 10, tested with the parameters' EMA "
           "0.99",
    optimizer="adamw", lr=1e-3, weight_decay=0.01, wd_norm_bias=False, schedule="multistep",
    milestones=(0.8, 0.9, 0.95), gamma=0.5, epochs=1000, batch_rule="fixed", batch_size=10, crop="rrc",
    rrc_min=0.08, randaug="torchvision", flip=True, mix="cutmix", mix_alpha=1.0, hl_loss="ce", sl_loss="mse_ce",
    slkd_loss="mse_ce", mse_weight=1.0, ce_weight=0.025, ce_unmixed=True, ema_decay=0.99))
_add(Recipe(
    # EDC@80116a7 Branch_full_ImageNet_1k/train/train_FKD_parallel.py with train.sh (--batch-size 100 --ls-type cos
    # --st 2 --loss-type mse_gt --ce-weight 0.025 --mix-type cutmix): ShufflePatches(2) (the identity as coded, see
    # methods/edc.py) + RRC(224, 0.5-1) + flip (:225-233), MSE + 0.025·CE on the own label (:400-401), AdamW 1e-3 wd
    # 0.01 (:154-157, 270), 0.5(1 + cos(pi e/(2E))) (:274-278), 300 epochs (:127), tested with the parameters' EMA
    # (decay 0.99 in its script, stepped each iteration, :414, 305-308).
    "edc-in1k", "EDC ImageNet-1K training: RRC(0.5..1) + flip + CutMix, MSE + 0.025 CE (own label), AdamW 1e-3 wd "
                "0.01, half-cosine (ends at 0.5x), 300 ep, bs 100, tested with the parameters' EMA 0.99",
    optimizer="adamw", lr=1e-3, weight_decay=0.01, wd_norm_bias=False, schedule="quarter_cosine", epochs=300,
    batch_rule="fixed", batch_size=100, crop="rrc", rrc_min=0.5, flip=True, mix="cutmix", mix_alpha=1.0,
    hl_loss="ce", sl_loss="mse_ce", slkd_loss="mse_ce", mse_weight=1.0, ce_weight=0.025, ce_unmixed=True,
    ema_decay=0.99))


def list_recipes() -> List[str]:
    """Names of the registered recipes."""
    return RECIPES.names()


def get_recipe(name: str) -> Recipe:
    """The preset `name` (aliases accepted); DDKitError listing the recipes when unknown."""
    try:
        return RECIPES.get(name)
    except UnknownNameError as e:
        raise DDKitError(str(e)) from None


# -------------------------------------------------------------------------------------------------------
# Rules that depend on the set (named pure functions, so the resolved values can be logged and tested)
# -------------------------------------------------------------------------------------------------------

def cim_batch_size(n_images: int) -> int:
    """CIM's rule on the number of stored images N: ≤10 → 10, ≤500 → 50, ≤20000 → 100, else 200."""
    if n_images <= 10:
        return 10
    if n_images <= 500:
        return 50
    if n_images <= 20000:
        return 100
    return 200


def rded_batch_size(ipc: int, num_classes: int) -> int:
    """RDED's rule: IPC 1 → 10, ≤10 → 50, else 100; ×2 for ≥ 100 classes; Tiny (200 classes) forced to 100.

    (RDED's CIFAR-100 ConvNet-3 special case, bs 25 with lr 2e-3, is not applied: pass
    --batch-size 25 --lr 2e-3 to reproduce it.)
    """
    if num_classes == 200:
        return 100
    base = 10 if ipc <= 1 else 50 if ipc <= 10 else 100
    return base * (2 if num_classes >= 100 else 1)


def resolve_recipe(cfg: EvalConfig, *, n_images: int, num_classes: int, ipc: int, image_size: int,
                   set_factor: int = 1) -> Recipe:
    """Apply cfg's non-None overrides to cfg.recipe and resolve the set-dependent rules.

    The result has batch_rule 'fixed' with a concrete batch_size (capped at the set size, as RDED
    does), a concrete factor and epochs, and the regime's loss validated. `set_factor` is the mosaic
    side the set says it has (meta "factor"): the factor crop follows it unless --factor is given or
    crop_factor_from_set is off, and a set of factor 1 then gets no crop at all (module doc). Without a
    regime (cfg.regime None: the protocol's, not yet resolved) each regime's loss is checked as the recipe has it.
    """
    if cfg.recipe is None:
        raise DDKitError("no recipe: resolve the protocol first (ddkit.evaluate.native.resolve_protocol) or name one")
    base = get_recipe(cfg.recipe)
    names = {f.name for f in dataclasses.fields(Recipe)}
    over = {k: v for k, v in dataclasses.asdict(cfg).items() if k in names and v is not None and k != "name"}
    regime = cfg.regime  # canonical: EvalConfig parses it once
    if cfg.loss is not None:
        if regime is None:
            raise DDKitError("--loss replaces the loss of one regime: give --regime too")
        over[f"{regime}_loss"] = cfg.loss
    r = dataclasses.replace(base, **over)
    if cfg.epochs is None and r.epochs_large and num_classes >= 1000:
        r = dataclasses.replace(r, epochs=r.epochs_large)
    for what, val, allowed in (("optimizer", r.optimizer, OPTIMIZERS), ("schedule", r.schedule, SCHEDULES),
                               ("crop", r.crop, CROPS), ("mix", r.mix, MIXES), ("batch_rule", r.batch_rule, BATCH_RULES),
                               ("dsa_mode", r.dsa_mode, ("chain", "single", "multiple"))):
        if val not in allowed:
            raise DDKitError(f"unknown {what} {val!r}; choose one of {', '.join(allowed)}")
    losses = {}
    for reg in ((regime,) if regime is not None else ("hl", "sl", "slkd")):
        loss = r.loss_for(reg)
        try:
            losses[f"{reg}_loss"] = LOSSES.get(loss).name
        except UnknownNameError as e:
            raise DDKitError(str(e)) from None
        if reg == "hl" and LOSSES.get(loss).needs_logits:
            raise DDKitError(f"loss {loss!r} needs teacher logits; under --regime hl use --loss ce")
    if cfg.batch_size is not None:
        bs = cfg.batch_size
    elif r.batch_rule == "cim":
        bs = cim_batch_size(n_images)
    elif r.batch_rule == "rded":
        bs = rded_batch_size(ipc, num_classes)
    else:
        bs = r.batch_size
    if r.crop == "pad" and not 0 <= r.pad < image_size:
        raise DDKitError(f"crop pad {r.pad} must be in [0, {image_size}) for {image_size} px images")
    if r.randaug:
        try:
            make_randaug(r.randaug)
        except ValueError as e:
            raise DDKitError(f"--randaug: {e}") from None
    if not 0.0 <= r.ema_decay < 1.0:
        raise DDKitError(f"--ema-decay must be in [0, 1) (0 = no EMA), got {r.ema_decay}")
    if bs < 1 or r.epochs < 1:
        raise DDKitError(f"batch size and epochs must be >= 1 (got {bs}, {r.epochs})")
    factor = r.factor if r.factor > 0 else auto_factor(image_size)
    crop = r.crop
    if crop == "factor" and cfg.factor is None and cfg.crop_factor_from_set:
        factor = max(1, int(set_factor))
        crop = "factor" if factor > 1 else "none"  # a quadrant crop of a non-mosaic is a zoom, not a decode
    return dataclasses.replace(r, batch_rule="fixed", batch_size=min(bs, n_images), factor=factor, crop=crop,
                               epochs_large=0, **losses)
