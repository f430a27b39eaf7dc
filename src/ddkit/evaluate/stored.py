"""Training from a stored label store (`ddkit relabel` → `ddkit evaluate SET --labels stored`).

SRe2L evaluates with FKD: the teacher labels E epochs of augmented views once, and students train on
exactly those views and logits (peers.md §3.3-3.4). Here the store is `ddkit.labels` (views addressed
by (epoch, image), so any batch size works and no loader is patched), and the views are the recipe's
own per-sample chain — crop → flip → [DSA, run in normalised space] — so a stored run sees the views
an online SL+KD run of the same recipe would draw, only fixed in advance:

* relabel: `relabel()` resolves the recipe like `evaluate` does, builds `view_aug(recipe)` and calls
  `build_label_store` into `<SET>/fkd` (default). The store records the augmentation's repr.
* evaluate: student epoch p (the p-th fresh permutation of the set) trains on store epoch p mod E;
  a batch that straddles two permutations takes each sample's view from its own epoch. Batch mixing
  (CutMix/Mixup) is drawn at training time and mixes the two stored targets (in probability space for
  KL), because a stored view must not depend on its batch-mates (the one difference from SRe2L, which
  stores the logits of the mixed batch and so fixes the batch size).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from ddkit.augment import (Augment, Compose, FactorCrop, Flip, Identity, Normalize, Params, RandomResizedCrop,
                           ShufflePatches, Translate, dsa)
from ddkit.augment.randaug import make_randaug
from ddkit.config import dump, field
from ddkit.distilled import DistilledSet
from ddkit.evaluate.protocol import EvalConfig
from ddkit.evaluate.losses import LOSSES
from ddkit.evaluate.recipes import Recipe, resolve_recipe
from ddkit.evaluate.student import StudentTrainer, Targets, Views, mix_soft_targets
from ddkit.labels import LabelStore, build_label_store
from ddkit.safe_paths import DEFAULT_STORE  # <SET>/fkd: beside the set's files, replaced with the set
from ddkit.utils import DDKitError, get_device, make_generator


class InNormalised(Augment):
    """Run `op` on normalised pixels and map back (DSA ops are defined on normalised tensors)."""

    def __init__(self, op: Augment, mean, std) -> None:
        self.op, self.mean, self.std = op, tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.needs_batch = op.needs_batch

    def sample(self, n, image_size, *, generator=None, device=None) -> Params:
        return self.op.sample(n, image_size, generator=generator, device=device)

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        m = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        s = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return self.op.apply((x - m) / s, params) * s + m


def view_aug(recipe: Recipe, image_size: int, mean, std) -> Augment:
    """The recipe's per-sample view chain on [0,1] images, in `train.Views` order (no batch mixing)."""
    ops: List[Augment] = [make_randaug(recipe.randaug)] if recipe.randaug else []
    if recipe.crop == "factor":
        ops.append(FactorCrop(recipe.factor))
    elif recipe.crop == "rded":
        ops += [ShufflePatches(recipe.factor), RandomResizedCrop(image_size, scale=(1.0 / recipe.factor, 1.0))]
    elif recipe.crop == "rrc":
        ops.append(RandomResizedCrop(image_size, scale=(recipe.rrc_min, 1.0)))
    elif recipe.crop == "pad":
        ops.append(Translate(recipe.pad / image_size))
    if recipe.flip:
        ops.append(Flip())
    post = dsa(recipe.dsa, mode=recipe.dsa_mode)
    if not isinstance(post, Identity):
        ops.append(InNormalised(post, mean, std))
    return Compose(ops) if ops else Identity()


def set_recipe(cfg: EvalConfig, distilled: DistilledSet) -> Recipe:
    """The recipe `evaluate` resolves for this set (with its mosaic-decoding rule; keep in step with
    core.evaluate: a drift shows as a refused store, never as wrong views)."""
    mosaic = int(distilled.meta.get("factor") or 1)
    recipe = resolve_recipe(cfg, n_images=len(distilled), num_classes=distilled.num_classes, ipc=distilled.ipc,
                            image_size=distilled.images.shape[-1], set_factor=mosaic)
    if cfg.decode_mosaic and mosaic > 1 and recipe.crop == "none":
        recipe = dataclasses.replace(recipe, crop="factor", factor=mosaic)
    return recipe


@dataclass(frozen=True)
class RelabelConfig:
    """`ddkit relabel`: which views to label (a recipe's chain) and how many epochs of them."""

    recipe: str = field("sre2l", "evaluation recipe whose per-sample views are stored (see `ddkit recipes`)")
    epochs: int = field(300, "epochs of views to label (SRe2L relabel --epochs 300)")
    seed: int = field(42, "seed of the views (SRe2L --fkd-seed 42)")
    topk: Optional[int] = field(None, "store only the top-k logits (+ log-sum-exp); None = all, fp16")
    batch_size: int = field(256, "teacher batch size (any value gives the same store)")
    crop: Optional[str] = field(None, "override the recipe's crop (none, factor, rded, rrc)")
    rrc_min: Optional[float] = field(None, "override the recipe's RandomResizedCrop smallest area")
    flip: Optional[bool] = field(None, "override the recipe's flip")
    dsa: Optional[str] = field(None, "override the recipe's DSA strategy ('none' to disable)")
    factor: Optional[int] = field(None, "override the recipe's crop factor")
    store: Optional[str] = field(None, "store folder (default: SET/fkd, where `evaluate SET --labels stored` looks)")
    resume: bool = field(False, "continue an interrupted store at its first unfinished epoch")
    overwrite: bool = field(False, "replace an existing store")

    def eval_config(self) -> EvalConfig:
        """The EvalConfig whose recipe resolution gives the same views (`evaluate --labels stored` checks)."""
        over = {k: getattr(self, k) for k in ("crop", "rrc_min", "flip", "dsa", "factor") if getattr(self, k) is not None}
        return EvalConfig(recipe=self.recipe, regime="slkd", **over)


def relabel(distilled_dir: str | Path, teacher: Any, cfg: RelabelConfig, *, device: Any = None,
            progress: bool = True) -> LabelStore:
    """Label `cfg.epochs` epochs of the recipe's views of the set with `teacher`; store at cfg.store
    (default `<SET>/fkd`). With progress, the config and the store's size are printed."""
    distilled = DistilledSet.load(distilled_dir)
    if list(teacher.classes) != list(distilled.classes):
        raise DDKitError(f"the teacher's {len(teacher.classes)} classes differ from the set's "
                         f"{distilled.num_classes}: use the teacher of this dataset")
    recipe = set_recipe(cfg.eval_config(), distilled)
    aug = view_aug(recipe, distilled.images.shape[-1], distilled.mean, distilled.std)
    path = Path(cfg.store) if cfg.store else Path(distilled_dir) / DEFAULT_STORE
    dev = get_device(device) if not isinstance(device, torch.device) else device
    if progress:
        print(dump(cfg, title="relabel"))
        print(f"[relabel] {len(distilled)} images, recipe {recipe.name}, views {aug!r}")
    store = build_label_store(distilled.images, teacher, aug, cfg.epochs, cfg.seed, path, topk=cfg.topk,
                              batch_size=cfg.batch_size, device=dev, progress=progress, resume=cfg.resume,
                              overwrite=cfg.overwrite)
    if progress:
        print(f"[relabel] label store {store.path}: {store.epochs_done} epochs × {store.num_images} images × "
              f"{store.num_classes} classes, {store.nbytes() / 1e6:.2f} MB")
    return store


class StoredViews:
    """Stands in for `train.Views`: the batch is already the stored view; normalise, then mix."""

    def __init__(self, norm: Normalize, mixer: Any) -> None:
        self.norm, self.mixer = norm, mixer

    def __call__(self, x: torch.Tensor, g: torch.Generator):
        x = self.norm.apply(x, {})
        mp = None
        if self.mixer is not None:
            mp = self.mixer.sample(x.shape[0], x.shape, generator=g)
            x = self.mixer.apply(x, mp)
        return x, None, mp


class StoredTargets(Targets):
    """The stored logits of the batch's views (set by the trainer), mixed like the images."""

    current: Optional[torch.Tensor] = None

    def __call__(self, view, idx, y, cell, mixer, mp):
        y_probs = torch.nn.functional.one_hot(y, self.k).float()
        t = self.current
        if mixer is not None:
            if not self.ce_unmixed:
                y_probs = mixer.mix_targets(y_probs, mp)
            t = mix_soft_targets(t, mixer, mp, self.spec.prob_space, self.T)
        return t, y_probs


class StoredTrainer(StudentTrainer):
    """A StudentTrainer whose batches are (epoch, image) views of the store: permutation p of the set
    is store epoch p mod E, each sample keeping its own permutation's epoch."""

    def __init__(self, *args: Any, store: LabelStore, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.store = store
        self.buf = torch.empty(0, dtype=torch.long)
        self.buf_epoch = torch.empty(0, dtype=torch.long)
        self.perms = 0
        self.seen: Optional[List[Tuple[int, torch.Tensor]]] = None  # tests: record (epoch, idx) per batch

    def next_indices(self) -> Tuple[torch.Tensor, torch.Tensor]:
        b = self.plan.batch_size
        while len(self.buf) < b:  # the same stream as BatchStream (fresh permutations of order_gen)
            self.buf = torch.cat([self.buf, torch.randperm(self.plan.n_images, generator=self.stream.g)])
            self.buf_epoch = torch.cat([self.buf_epoch, torch.full((self.plan.n_images,), self.perms)])
            self.perms += 1
        idx, ep = self.buf[:b], self.buf_epoch[:b]
        self.buf, self.buf_epoch = self.buf[b:], self.buf_epoch[b:]
        return idx, ep

    def batch(self) -> Tuple[torch.Tensor, torch.Tensor]:
        idx, ep = self.next_indices()
        x: Optional[torch.Tensor] = None
        logits: Optional[torch.Tensor] = None
        for e in torch.unique(ep).tolist():
            sel = (ep == e).nonzero()[:, 0]
            se = int(e) % self.store.epochs_done
            xe, le = self.store.views(se, idx[sel], device=self.device)
            if x is None:
                x = xe.new_empty((len(idx), *xe.shape[1:]))
                logits = le.new_empty((len(idx), le.shape[1]))
            x[sel.to(self.device)], logits[sel.to(self.device)] = xe, le
            if self.seen is not None:
                self.seen.append((se, idx[sel]))
        self.targets.current = logits
        return idx.to(self.device), x


class StoredLabels:
    """What `evaluate` needs to train from a store: its views, targets, trainer and facts."""

    def __init__(self, store: LabelStore, path: Path, device: torch.device) -> None:
        self.store, self.path, self.device = store, path, device
        self.source = f"stored ({path}, {store.epochs_done} epochs" + (f", top-{store.topk}" if store.topk else "") + ")"

    def use_images(self, images: torch.Tensor) -> None:
        """Regenerate views from `images`, the evaluator's staged copy of the set on the device (float32, or
        the lossless uint8 / float16 copy of a large set)."""
        self.store.images = images

    def views(self, views: Views) -> StoredViews:
        """The online Views' normalisation and mixer around the stored views."""
        return StoredViews(views.norm, views.mixer)

    def targets(self, base: Targets) -> StoredTargets:
        return StoredTargets(base.regime, base.k, base.spec, base.T, ce_unmixed=base.ce_unmixed)

    def make_trainer(self, seed: int, net: torch.nn.Module, *args: Any, **kw: Any) -> StoredTrainer:
        """As EvalDist.make_trainer (single process): order from (seed, "order"), mixing from (seed, "aug")."""
        return StoredTrainer(net, *args, device=self.device, order_gen=make_generator(seed, "order"),
                             aug_gen=make_generator(seed, "aug"), store=self.store, **kw)

    def describe(self, epochs: float) -> Dict[str, Any]:
        """Facts for EvalResult.info: the store, its size and whether the plan cycled through it."""
        return {"label_store": {"path": str(self.path), "epochs": self.store.epochs_done, "topk": self.store.topk,
                                "nbytes": self.store.nbytes(), "student_epochs": epochs,
                                "cycled": epochs > self.store.epochs_done}}


def open_stored(cfg: EvalConfig, distilled: DistilledSet, recipe: Recipe, device: torch.device) -> StoredLabels:
    """Open cfg.label_store for this set and recipe (DDKitError when they do not match)."""
    if cfg.labels != "stored":
        raise DDKitError(f"unknown --labels {cfg.labels!r}; use online (the regime's own targets) or stored")
    if cfg.regime != "slkd" or not LOSSES.get(recipe.slkd_loss).needs_logits:
        raise DDKitError("--labels stored replaces the online teacher of --regime slkd: use --regime slkd "
                         "(with a loss on logits)")
    if cfg.ddp:
        raise DDKitError("--labels stored does not support --ddp yet: spread seeds over ranks instead")
    if not cfg.label_store:
        raise DDKitError("--labels stored needs the store: pass --label-store PATH (ddkit evaluate SET uses "
                         f"SET/{DEFAULT_STORE}, written by `ddkit relabel SET`)")
    path = Path(cfg.label_store)
    if not (path / "meta.json").is_file():
        raise DDKitError(f"no label store at {path}: build it with `ddkit relabel SET --teacher CKPT`")
    aug = view_aug(recipe, distilled.images.shape[-1], distilled.mean, distilled.std)
    store = LabelStore.open(path, images=distilled.images, aug=aug)
    if store.epochs_done < 1:
        raise DDKitError(f"the label store {path} has no finished epoch: finish it with `ddkit relabel --resume`")
    if store.num_images != len(distilled) or store.num_classes != distilled.num_classes:
        raise DDKitError(f"the label store {path} was built for {store.num_images} images × {store.num_classes} "
                         f"classes, the set has {len(distilled)} × {distilled.num_classes}")
    # checked against the set above; `evaluate` hands the store its staged device copy (`use_images`), so the set
    # is on the device once, not twice
    return StoredLabels(store, path, device)
