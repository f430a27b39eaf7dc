"""Two evaluation protocols behind `--protocol`: `native` (each set trained the way its paper trains it) and
`hard-truths` (one protocol for every set: the study's fair comparison).

`native` reads what the set says about itself (`ddkit.distilled`: meta "native", zca.safetensors, meta
"learned_lr", meta "learned_labels"), never which method made it:

| native       | declared by             | recipe, regime                    | source (official code)               |
|--------------|-------------------------|-----------------------------------|--------------------------------------|
| `dc-noaug`   | DC                      | `dc-noaug`, HL                    | DC main.py:117-123, utils.py:337-361 |
| `dsa`        | DSA, DM                 | `dc`, HL                          | DC main.py:111-121 (DSA, 1000 ep)    |
| `mtt`        | MTT                     | `dc`, HL (+ ZCA, learned lr)      | MTT distill.py:191-226               |
| `datm`       | DATM                    | `datm`, SL on the learned labels  | DATM DATM.py:344-387 (batch 128)     |
| `sre2l`      | SRe2L, CDA, DWA         | `sre2l-cifar` (≤ 32 px) or `sre2l`, SL+KD | relabel_cifar.py, validation_cifar.py |
| `rded`       | RDED                    | `rded`, SL+KD                     | peers.md §2.2                        |
| `cim`        | LIC / CIM               | `cim`, SL+KD                      | peers.md §7b                         |
| `fadrm`      | FADRM, FADRM+, SRe2L++  | `fadrm`, SL+KD (batch 16)         | FADRM validate/train_fkd.py          |
| `cvdd`       | CV-DD                   | `cvdd`, SL+KD (batch 16)          | CV-DD validate/train_fkd.py          |
| `wmdd`       | WMDD                    | `wmdd`, SL+KD (batch 100)         | WMDD train/train_FKD.py              |
| `delt`       | DELT                    | `delt`, SL+KD (RandAugment)       | DELT evaluation/validation/main.py   |
| `gvbsm`      | G-VBSM                  | `gvbsm` (`gvbsm-in1k` > 32 px), SL+KD | G-VBSM train/train_FKD.py    |
| `edc`        | EDC                     | `edc` (`edc-in1k` > 32 px), SL+KD | EDC train/direct_train.py            |
| `hard-truths`| undeclared (random, coresets, imports) | `hardtruths-hl`, HL | hardtruths.md §5.1 (no paper protocol) |

On top of the recipe, `native` applies what the set carries: its ZCA transform (train views AND the test split
are whitened with it, in place of mean/std normalisation; MTT utils.py:137-165), its learned learning rate
(`--lr` wins) and, under SL, its learned labels (soft cross-entropy, DATM.py:255-262). A set whose protocol is
SL on learned labels but which stores none falls back to HL (and says so).

`hard-truths` ignores all of that: recipe `hardtruths-<regime>` (regime HL unless `--regime`), mean/std inputs,
the recipe's lr, teacher or hard labels.

Explicit `--recipe` / `--regime` / `--lr` / `--sl-labels` / `--zca` override either protocol; the summary says
what ran. The random baseline always follows the protocol resolved for the set it is compared with (`follow`):
the same recipe, regime, lr and ZCA transform; a baseline without the set's learned labels trains on its hard
labels (DATM's soft cross-entropy on one-hot targets is cross-entropy).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ddkit.augment import Augment, Params
from ddkit.augment.zca import ZCA
from ddkit.distilled import DistilledSet
from ddkit.evaluate.protocol import PROTOCOLS, EvalConfig, resolve_regime
from ddkit.evaluate.recipes import get_recipe
from ddkit.registry import Registry, UnknownNameError
from ddkit.utils import DDKitError

Scorer = Callable[[nn.Module], float]
#: the native name a set gets when it declares none (random subsets, coresets, imported sets)
UNDECLARED = "hard-truths"
#: images up to this side count as "small-scale" (CIFAR): the SRe2L family's CIFAR relabel protocol
SMALL_IMAGE = 32


@dataclass(frozen=True)
class Native:
    """One paper's evaluation protocol: a recipe and a regime (recipe_large for sets above SMALL_IMAGE px)."""

    name: str
    recipe: str
    regime: str
    description: str
    recipe_large: str = ""


NATIVE: Registry[Native] = Registry("native protocol")
for _n in (
    Native("dc-noaug", "dc-noaug", "hl", "DC: no augmentation, 300 epochs, SGD 0.01 (x0.1 at E/2+1), batch 256"),
    Native("dsa", "dc", "hl", "DSA / DM: per-sample DSA, 1000 epochs, SGD 0.01 (x0.1 at E/2+1), batch 256"),
    Native("mtt", "dc", "hl", "MTT: the DSA protocol at the set's learned lr, on its ZCA-whitened inputs"),
    Native("datm", "datm", "sl", "DATM: the DSA protocol at the learned lr, ZCA inputs, soft cross-entropy on "
                                 "the learned labels, batch 128"),
    Native("sre2l", "sre2l-cifar", "slkd", "SRe2L / CDA / DWA: online teacher on Mixup(0.8) views, KL T=30, "
                                           "AdamW 1e-3, cosine, 400 epochs, batch 128, RandomCrop(pad 4) + flip "
                                           "(ImageNet-size sets: the sre2l recipe)", recipe_large="sre2l"),
    Native("rded", "rded", "slkd", "RDED: its validation recipe with the online teacher"),
    Native("cim", "cim", "slkd", "LIC / CIM: CIM's evaluator (MSE to online-teacher logits)"),
    Native("fadrm", "fadrm", "slkd", "FADRM / FADRM+ / SRe2L++: RRC + flip + CutMix views, KL T=20, AdamW 1e-3, "
                                     "batch 16 (labels as coded: `ddkit relabel --batch-stats --batch-size 16 "
                                     "--recipe fadrm`, then --labels stored)"),
    Native("cvdd", "cvdd", "slkd", "CV-DD: KL T=20 on CutMix views (its committee's stored labels from `ddkit "
                                   "relabel`, else the online teacher), AdamW 1e-3, cosine, 300 epochs, batch 16"),
    Native("delt", "delt", "slkd", "DELT: timm RandAugment (m6, n2, mstd 1) + RRC(0.25-1) + flip + CutMix, KL T=20 "
                                   "with the online teacher, AdamW 1e-3, quarter-cosine, 300 epochs, RDED's batch"),
    Native("wmdd", "wmdd", "slkd", "WMDD: KL T=20 on CutMix views (FKD labels of its one teacher), AdamW 1e-3, "
                                   "cosine, 300 epochs, batch 100"),
    Native("gvbsm", "gvbsm", "slkd", "G-VBSM: MSE to the teacher logits + 0.15 CE on CutMix views (its committee's "
                                     "stored labels from `ddkit relabel --teacher … --vote mean`, IN-1K norm_mean), "
                                     "AdamW 1e-3, cosine, 1000 epochs, batch 100 (ImageNet-size sets: gvbsm-in1k)",
           recipe_large="gvbsm-in1k"),
    Native("edc", "edc", "slkd", "EDC: MSE to the teachers' mean logits + 0.025 CE of the own label on CutMix views "
                                 "(labels from `ddkit relabel --teacher … --vote mean`, else the online teacher), "
                                 "AdamW 1e-3, x0.5 at 80/90/95 %, 1000 epochs, batch 10 (ImageNet-size sets: "
                                 "edc-in1k), torchvision RandAugment first (CIFAR), tested with the parameters' "
                                 "EMA 0.99",
           recipe_large="edc-in1k"),
    Native(UNDECLARED, "hardtruths-hl", "hl", "no paper protocol declared: the hard-truths HL recipe"),
):
    NATIVE.register(_n.name, obj=_n)


def list_protocols() -> List[str]:
    """Names of the native protocols a set may declare."""
    return NATIVE.names()


@dataclass(frozen=True)
class SetProtocol:
    """What `evaluate` runs for one set: the EvalConfig with recipe and regime filled in, the ZCA transform
    (None: mean/std inputs) and, in words, where each choice came from."""

    protocol: str
    native: Optional[str]
    cfg: EvalConfig
    zca: Optional[ZCA] = None
    notes: Tuple[str, ...] = ()

    def describe(self) -> Dict[str, Any]:
        """JSON facts for summary.json / config.yaml: which protocol ran and what it took from the set."""
        return {"protocol": self.protocol, "native": self.native, "recipe": self.cfg.recipe,
                "regime": self.cfg.regime, "inputs": "zca" if self.zca is not None else "meanstd",
                "lr": self.cfg.lr, "sl_labels": self.cfg.sl_labels, "notes": list(self.notes)}


INPUT_NAMES = {"zca": "ZCA-whitened (the set's transform)", "meanstd": "mean/std-normalised"}


def protocol_fields(d: Optional[Mapping[str, Any]]) -> Dict[str, str]:
    """SetProtocol.describe()'s dict (summary.json's "protocol") as the words the reports print: which protocol
    ran (and the paper protocol a native set declared), recipe, regime, inputs, lr, SL labels, notes."""
    d = d or {}
    lr = d.get("lr")
    return {"protocol": f"{d.get('protocol', '?')}" + (f" ({d['native']})" if d.get("native") else ""),
            "recipe": str(d.get("recipe") or "–"), "regime": str(d.get("regime") or "–"),
            "inputs": INPUT_NAMES.get(d.get("inputs"), str(d.get("inputs") or "–")),
            "lr": "the recipe's" if lr is None else f"{float(lr):.4g}",
            "labels": str(d.get("sl_labels") or "the recipe's"),
            "notes": "; ".join(d.get("notes") or []) or "–"}


def protocol_line(d: Optional[Mapping[str, Any]]) -> str:
    """One line of protocol_fields: 'protocol native (dsa): recipe dc, regime hl, inputs …, lr …, labels …'."""
    f, native = protocol_fields(d), (d or {}).get("native")
    return (f"protocol **{(d or {}).get('protocol', '?')}**" + (f" ({native})" if native else "")
            + f": recipe `{f['recipe']}`, regime {f['regime']}, inputs {f['inputs']}, lr {f['lr']}, "
              f"SL labels {f['labels']}")


def _native_spec(name: str) -> Native:
    try:
        return NATIVE.get(name)
    except UnknownNameError:
        raise DDKitError(f"the set declares the native protocol {name!r}, which this ddkit does not know (known: "
                         f"{', '.join(NATIVE.names())}); use --protocol hard-truths or pass --recipe") from None


def resolve_protocol(cfg: EvalConfig, distilled: DistilledSet) -> SetProtocol:
    """The protocol `cfg.protocol` resolved against what `distilled` says about itself (module docstring)."""
    if cfg.protocol not in PROTOCOLS:  # EvalConfig checks it too; a replace() may have skipped nothing else
        raise DDKitError(f"unknown protocol {cfg.protocol!r}; use {' or '.join(PROTOCOLS)}")
    notes: List[str] = []
    over: Dict[str, Any] = {}
    zca: Optional[ZCA] = None
    if cfg.protocol == "hard-truths":
        regime = cfg.regime or "hl"
        over.update(regime=regime, recipe=cfg.recipe or f"hardtruths-{regime}")
        carried = [w for w, v in (("ZCA", distilled.zca), ("learned lr", distilled.learned_lr),
                                  ("learned labels", distilled.learned_labels)) if v is not None]
        if carried and cfg.zca is not True:
            notes.append(f"hard-truths: the set's {', '.join(carried)} not used (one protocol for every set)")
        if cfg.zca:
            zca = _set_zca(distilled)
        return SetProtocol("hard-truths", None, dataclasses.replace(cfg, **over), zca, tuple(notes))
    name = distilled.native or UNDECLARED
    if distilled.native is None:
        notes.append(f"the set declares no native protocol: {UNDECLARED} ({NATIVE.get(UNDECLARED).recipe}, HL)")
    spec = _native_spec(name)
    small = distilled.images.shape[-1] <= SMALL_IMAGE
    recipe = cfg.recipe or (spec.recipe_large if spec.recipe_large and not small else spec.recipe)
    regime = cfg.regime or spec.regime
    if regime == "sl" and cfg.sl_labels is None:
        if distilled.learned_labels is not None:
            over["sl_labels"] = distilled.learned_labels
            notes.append(f"labels: the set's learned labels soft[{distilled.learned_labels!r}]")
        elif cfg.regime is None:  # the protocol trains on learned labels and the set has none
            regime = "hl"
            notes.append("the set stores no learned labels: hard labels (HL)")
    if distilled.learned_lr is not None:
        if cfg.lr is None:
            if not distilled.learned_lr > 0:
                raise DDKitError(f"the set's learned lr is {distilled.learned_lr:g} (not > 0): students cannot "
                                 "train with it; pass --lr or use --protocol hard-truths")
            over["lr"] = distilled.learned_lr
            notes.append(f"lr: the set's learned lr {distilled.learned_lr:.4g}")
        else:
            notes.append(f"lr: --lr {cfg.lr:g} (the set's learned lr {distilled.learned_lr:.4g} not used)")
    if cfg.zca is not False and distilled.zca is not None:
        zca = distilled.zca
        notes.append("inputs: ZCA-whitened with the set's transform (train views and test split)")
    elif cfg.zca:
        zca = _set_zca(distilled)
    over.update(recipe=recipe, regime=regime)
    return SetProtocol("native", name, dataclasses.replace(cfg, **over), zca, tuple(notes))


def _set_zca(distilled: DistilledSet) -> ZCA:
    if distilled.zca is None:
        raise DDKitError("--zca true: the set stores no ZCA transform (zca.safetensors)")
    return distilled.zca


def follow(proto: SetProtocol, baseline: DistilledSet) -> SetProtocol:
    """The protocol `proto` (resolved for the set under evaluation) applied to a baseline set: the same recipe,
    regime, lr and ZCA transform; learned labels the baseline lacks become its hard labels."""
    cfg, notes = proto.cfg, [f"follows the evaluated set's {proto.protocol} protocol"]
    key = cfg.sl_labels or get_recipe(cfg.recipe).sl_labels
    if cfg.regime == "sl" and key not in (None, "image", "region") and key not in baseline.soft:
        cfg = dataclasses.replace(cfg, regime="hl", sl_labels=None, loss=None)
        notes.append(f"no soft[{key!r}] labels: hard labels (soft cross-entropy on one-hot targets = CE)")
    return SetProtocol(proto.protocol, proto.native, cfg, proto.zca, tuple(notes))


def check_regime(cfg: EvalConfig) -> str:
    """The canonical regime of a resolved config (DDKitError when the protocol left it empty)."""
    if cfg.regime is None or cfg.recipe is None:
        raise DDKitError("internal: resolve the protocol (evaluate.native.resolve_protocol) before the recipe")
    return resolve_regime(cfg.regime)


# ---------------------------------------------------------------------------------------------------------
# Inputs seen through a set's ZCA transform
# ---------------------------------------------------------------------------------------------------------

class Whiten(Augment):
    """ZCA whitening of [0,1] images in place of mean/std normalisation (the Views' `norm` step)."""

    def __init__(self, zca: ZCA) -> None:
        self.zca = zca

    def sample(self, n, image_size, *, generator=None, device=None) -> Params:
        return {}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        return self.zca.apply(x)


class WhitenedInputs(nn.Module):
    """A trained student seen through the set's ZCA transform, so the test split is whitened exactly as the
    training views were (MTT utils.py:137-165 whitens train and test with one fitted transform)."""

    def __init__(self, net: nn.Module, zca: ZCA) -> None:
        super().__init__()
        self.net, self.zca = net, zca

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.net(self.zca.apply(x01))


def input_space(zca: Optional[ZCA], mean: Sequence[float], std: Sequence[float], device: torch.device
                ) -> Tuple[Optional[Augment], Sequence[float], Sequence[float], Callable[[Scorer], Scorer]]:
    """(norm for Views, mean and std for the scorers, scorer wrapper): mean/std unchanged without a ZCA; with
    one, the scorers pass raw [0,1] pixels (mean 0, std 1) to the student wrapped in `WhitenedInputs`."""
    if zca is None:
        return None, mean, std, lambda score: score
    z = zca.to(device)
    zeros, ones = (0.0,) * len(mean), (1.0,) * len(std)
    return Whiten(z), zeros, ones, lambda score: (lambda model: score(WhitenedInputs(model, z)))
