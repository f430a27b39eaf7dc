"""Training one student on a small set: the plan (iterations, schedule), the on-device data path, the loop.

Data path per step, all batched on the device (no DataLoader, no per-sample Python loop):
gather a batch by index from the device-resident set → crop / flip (per-sample params) → normalise
→ DSA (per-sample params) → CutMix/Mixup (one draw per batch) → targets (hard, stored soft or the
online teacher on the final view) → student forward/backward under bf16 autocast on CUDA.
Every random draw comes from explicit CPU generators, so a seeded run replays exactly on CPU and
draws the same augmentations on any device.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ddkit.augment import (Augment, Compose, CutMix, FactorCrop, Flip, Identity, Mixup, Normalize,
                           RandomResizedCrop, ShufflePatches, Translate, dsa)
from ddkit.augment.ahead import DrawAhead
from ddkit.augment.base import Params
from ddkit.augment.randaug import make_randaug
from ddkit.evaluate.ema import ParamEMA
from ddkit.evaluate.losses import LossSpec, make_criterion
from ddkit.evaluate.recipes import Recipe
from ddkit.optim import make_optimizer
from ddkit.teachers.frozen import FrozenTeacher
from ddkit.trackers import record
from ddkit.utils import DDKitError, autocast, stage

MAX_LOG_LINES = 2000  # per run; a 1-iteration "epoch" of an IPC-1 set under a budget would flood the log
READ_EVERY = 64  # steps between reads of the line losses (train_run), unless a line evaluates sooner
DRAW_AHEAD = 32  # steps whose random draws reach the device in one copy (StudentTrainer's draw_ahead)


# ---------------------------------------------------------------------------------------------------------
# The plan: how many iterations, which epochs are evaluated, the lr at each iteration
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """Resolved training length. Batches are cut from a stream of fresh permutations of the set, so every
    iteration has exactly `batch_size` samples and an "epoch" is n_images samples (the last may be partial)."""

    n_images: int
    batch_size: int
    iterations: int
    epochs: float                    # iterations · batch / n_images
    eval_epochs: Tuple[int, ...]     # completed-epoch counts after which test accuracy is recorded

    @property
    def total_epochs(self) -> int:
        return math.ceil(self.epochs - 1e-9)

    @property
    def log_every(self) -> int:
        """Epochs per metrics.jsonl line: 1 unless a budget on a tiny set makes > 2000 epochs (then coarser)."""
        return max(1, math.ceil(self.total_epochs / MAX_LOG_LINES))

    @property
    def samples(self) -> int:
        return self.iterations * self.batch_size

    def epoch_of(self, it: int) -> int:
        """0-based epoch in which iteration `it` starts."""
        return (it * self.batch_size) // self.n_images


def budget_iterations(budget_epochs: float, full_train_size: int, batch_size: int) -> int:
    """Iterations for a compute budget of `budget_epochs` full-dataset epochs: ceil(E·|D| / batch)."""
    return max(1, math.ceil(budget_epochs * full_train_size / batch_size - 1e-9))


def make_plan(recipe: Recipe, n_images: int, *, budget_epochs: Optional[float] = None,
              full_train_size: Optional[int] = None, eval_every: Optional[int] = None) -> Plan:
    """Iterations from the recipe's epochs over the set, or from a full-dataset compute budget."""
    b = recipe.batch_size
    if budget_epochs is not None:
        if not full_train_size:
            raise DDKitError("--budget-epochs needs the size of the full train split (pass the train set)")
        if budget_epochs <= 0:
            raise DDKitError(f"--budget-epochs must be > 0, got {budget_epochs}")
        iters = budget_iterations(budget_epochs, full_train_size, b)
    else:
        iters = max(1, math.ceil(recipe.epochs * n_images / b - 1e-9))
    epochs = iters * b / n_images
    total = math.ceil(epochs - 1e-9)
    if eval_every:
        evals = set(range(eval_every, total + 1, eval_every))
    else:
        m = max(1, recipe.num_evals)
        evals = {max(1, round(total * j / m)) for j in range(1, m + 1)}
    evals.add(total)
    return Plan(n_images, b, iters, epochs, tuple(sorted(e for e in evals if 1 <= e <= total)))


def lr_factor(recipe: Recipe, epoch: int, total_epochs: float) -> float:
    """Multiplier of the base lr during 0-based `epoch` of `total_epochs` (a float under a budget)."""
    E = max(total_epochs, 1e-9)
    if recipe.schedule == "constant":
        return 1.0
    if recipe.schedule == "multistep":
        ms = [math.floor(f * E) + recipe.milestone_offset for f in recipe.milestones]
        return recipe.gamma ** sum(epoch >= m for m in ms)
    if recipe.schedule == "cosine":          # SRe2L: full cosine to 0
        return 0.5 * (1.0 + math.cos(math.pi * epoch / E))
    if recipe.schedule == "quarter_cosine":  # RDED/EDC: ends at 0.5x the base lr
        return 0.5 * (1.0 + math.cos(math.pi * epoch / (2.0 * E)))
    raise DDKitError(f"unknown schedule {recipe.schedule!r}")


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's AdamW or SGD (ddkit.optim); weight decay on every parameter, or only ndim > 1 (RDED/SRe2L)."""
    return make_optimizer(model, recipe.optimizer, recipe.lr, weight_decay=recipe.weight_decay,
                          momentum=recipe.momentum, decay_norm_bias=recipe.wd_norm_bias)


# ---------------------------------------------------------------------------------------------------------
# Views and targets
# ---------------------------------------------------------------------------------------------------------

class Views:
    """The recipe's augmentation chain on a batch of [0,1] images; returns the normalised view, the
    FactorCrop cell per sample (-1 = whole image; None without FactorCrop) and the mixing params.
    `norm` replaces the mean/std normalisation (a set's ZCA whitening, evaluate/native.py)."""

    def __init__(self, recipe: Recipe, image_size: int, mean, std, norm: Optional[Augment] = None) -> None:
        ops: List[Augment] = [make_randaug(recipe.randaug)] if recipe.randaug else []  # DELT: first, on pixels
        self.factor_crop: Optional[FactorCrop] = None
        if recipe.crop == "factor":
            self.factor_crop = FactorCrop(recipe.factor)
        elif recipe.crop == "rded":
            ops += [ShufflePatches(recipe.factor),
                    RandomResizedCrop(image_size, scale=(1.0 / recipe.factor, 1.0))]
        elif recipe.crop == "rrc":
            ops.append(RandomResizedCrop(image_size, scale=(recipe.rrc_min, 1.0)))
        elif recipe.crop == "pad":  # RandomCrop(size, padding=p) with zero fill = a shift in [-p, p], zero fill
            ops.append(Translate(recipe.pad / image_size))
        if recipe.flip:
            ops.append(Flip())
        self.pre: Augment = Compose(ops) if ops else Identity()
        self.norm: Augment = norm if norm is not None else Normalize(mean, std)
        self.post: Augment = dsa(recipe.dsa, mode=recipe.dsa_mode)
        self.mixer: Optional[Any] = (CutMix(recipe.mix_alpha) if recipe.mix == "cutmix"
                                     else Mixup(recipe.mix_alpha) if recipe.mix == "mixup" else None)

    def draw(self, b: int, shape: Tuple[int, ...], g: torch.Generator) -> Params:
        """One step's params for a batch of b images of `shape`, drawn from `g` in the order the ops run
        (crop, pre, DSA, mixing), namespaced "crop.", "pre.", "post.", "mix." (a `DrawAhead` stacks them)."""
        p: Params = {}
        if self.factor_crop is not None:
            p.update(_prefixed("crop.", self.factor_crop.sample(b, shape, generator=g)))
        p.update(_prefixed("pre.", self.pre.sample(b, shape, generator=g)))
        p.update(_prefixed("post.", self.post.sample(b, shape, generator=g)))
        if self.mixer is not None:
            p.update(_prefixed("mix.", self.mixer.sample(b, shape, generator=g)))
        return p

    def apply(self, x: torch.Tensor, p: Params):
        """(normalised view, FactorCrop cell per sample or None, mixing params or None) for params `p`."""
        cell = None
        if self.factor_crop is not None:
            fp = _unprefixed("crop.", p)
            cell = fp["cell"]
            x = self.factor_crop.apply(x, fp)
        x = self.pre.apply(x, _unprefixed("pre.", p))
        x = self.norm.apply(x, {})
        x = self.post.apply(x, _unprefixed("post.", p))
        mp = None
        if self.mixer is not None:
            mp = _unprefixed("mix.", p)
            x = self.mixer.apply(x, mp)
        return x, cell, mp

    def __call__(self, x: torch.Tensor, g: torch.Generator):
        return self.apply(x, self.draw(x.shape[0], tuple(x.shape), g))


def _prefixed(prefix: str, p: Params) -> Params:
    return {prefix + k: v for k, v in p.items()}


def _unprefixed(prefix: str, p: Params) -> Params:
    return {k[len(prefix):]: v for k, v in p.items() if k.startswith(prefix)}


def mix_soft_targets(t: torch.Tensor, mixer, params, prob_space: bool, temperature: float) -> torch.Tensor:
    """Mix stored logits like the images. Probability-space losses (kl/softce) mix softmax(t/T) and return
    T·log of the mixture, whose softmax at T is exactly the mixed distribution; others mix logits."""
    if not prob_space:
        return mixer.mix_targets(t, params)
    T = float(temperature)
    p = mixer.mix_targets(F.softmax(t.float() / T, dim=1), params)
    return T * torch.log(p.clamp_min(1e-12))


def teacher_forward(teacher, set_mean, set_std, image_size: int, device: torch.device, amp: bool,
                    cpu_amp: bool = False, compile: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """Teacher logits of student views (normalised with the SET's stats) through the one `FrozenTeacher`
    (no grad, eval mode, the same autocast). Views are mapped back to pixels and renormalised with the
    teacher's own stats when they differ (e.g. RDED's ImageNet stats on CIFAR), and resized when the
    teacher expects another size. The views keep the student's layout (channels_last is set on the
    teacher's net by the caller), so the frozen view is asked for no layout of its own."""
    ft = FrozenTeacher(teacher, device, amp=amp, channels_last=False, cpu_amp=cpu_amp, compile=compile)
    same = (tuple(map(float, teacher.mean)) == tuple(map(float, set_mean))
            and tuple(map(float, teacher.std)) == tuple(map(float, set_std)))
    m = torch.tensor(set_mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.tensor(set_std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    size = int(getattr(teacher, "image_size", image_size) or image_size)

    def fn(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if not same:
                x = ft.normalize(x * s + m)
            if size != x.shape[-1]:
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            return ft.forward_normalized(x)

    return fn


class Targets:
    """What the loss compares with, per regime: hard (mixed) one-hot for HL; stored soft logits (region
    logits for FactorCrop cells when the set has them) for SL; the online teacher's logits for SL+KD."""

    def __init__(self, regime: str, num_classes: int, spec: LossSpec, temperature: float, *,
                 soft: Optional[torch.Tensor] = None, region: Optional[torch.Tensor] = None,
                 teacher_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, ce_unmixed: bool = False) -> None:
        self.regime, self.k, self.spec, self.T = regime, num_classes, spec, temperature
        # G-VBSM's mse_gt: the CE of MSE + w·CE takes the image's own label under CutMix (recipe ce_unmixed)
        self.ce_unmixed = bool(ce_unmixed) and spec.name == "mse_ce"
        self.soft, self.region, self.teacher_fn = soft, region, teacher_fn

    def __call__(self, view: torch.Tensor, idx: torch.Tensor, y: torch.Tensor, cell: Optional[torch.Tensor],
                 mixer, mp) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
        y_probs = F.one_hot(y, self.k).float()
        if mixer is not None and not self.ce_unmixed:
            y_probs = mixer.mix_targets(y_probs, mp)
        if not self.spec.needs_logits:
            return None, y_probs
        if self.regime == "slkd":
            return self.teacher_fn(view), y_probs
        t = self.soft[idx]
        if self.region is not None and cell is not None:
            c = cell.to(t.device)
            reg = self.region[idx, c.clamp(min=0)]
            t = torch.where((c >= 0)[:, None], reg, t)
        if mixer is not None:
            t = mix_soft_targets(t, mixer, mp, self.spec.prob_space, self.T)
        return t, y_probs


class BatchStream:
    """Indices cut from a stream of fresh permutations (drawn with `generator`), `batch` at a time."""

    def __init__(self, n: int, batch: int, generator: torch.Generator) -> None:
        self.n, self.batch, self.g = n, batch, generator
        self.buf = torch.empty(0, dtype=torch.long)

    def next(self) -> torch.Tensor:
        while len(self.buf) < self.batch:
            self.buf = torch.cat([self.buf, torch.randperm(self.n, generator=self.g)])
        out, self.buf = self.buf[:self.batch], self.buf[self.batch:]
        return out


# ---------------------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------------------

@dataclass
class RunResult:
    """One student: the headline (last-epoch test accuracy) plus everything recorded on the way."""

    seed: int
    final_acc: float
    final_loss: float
    test_history: List[Tuple[int, float]] = field(default_factory=list)   # (epoch, acc)
    val_history: List[Tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0
    images_per_s: float = 0.0
    class_accs: Optional[List[float]] = None  # per class at the last evaluation (None in a DDP run)

    @property
    def best_test_acc(self) -> Optional[float]:
        """Max over recorded test evaluations (selected on test: never a headline)."""
        return max(a for _, a in self.test_history) if len(self.test_history) > 1 else None


class StudentTrainer:
    """Holds a student, its optimiser and the data path; `step()` runs one iteration (the bench times it)."""

    def __init__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, recipe: Recipe, plan: Plan,
                 views: Views, targets: Targets, criterion, *, device: torch.device, order_gen: torch.Generator,
                 aug_gen: torch.Generator, amp: bool = True, channels_last: bool = True,
                 cpu_amp: bool = False, cpu_channels_last: bool = False, draw_ahead: int = DRAW_AHEAD) -> None:
        self.model, self.images, self.labels = model, images, labels
        self.recipe, self.plan, self.views, self.targets, self.crit = recipe, plan, views, targets, criterion
        self.device, self.amp, self.cpu_amp = device, amp, cpu_amp
        # One layout per network: channels_last on CUDA; on CPU only when asked (a compiled student),
        # since eager GroupNorm is several times slower channels_last there.
        self.channels_last = channels_last and (device.type == "cuda" or cpu_channels_last)
        self.stream = BatchStream(plan.n_images, plan.batch_size, order_gen)
        self.aug_gen = aug_gen
        self.opt = build_optimizer(model, recipe)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda it: lr_factor(recipe, plan.epoch_of(it), plan.epochs))
        self.it = 0
        self.last_lr = recipe.lr
        self.ema = ParamEMA(model, recipe.ema_decay) if recipe.ema_decay > 0 else None  # EDC: tested with it
        # Draw-ahead (the default data path): the batch indices and the views' params of `draw_ahead` steps are
        # drawn at once, in the order the steps would draw them, and reach the device in one copy. A subclass
        # with its own batches (stored views) keeps the step-by-step path, as does draw_ahead=0.
        plain = isinstance(views, Views) and type(self).batch is StudentTrainer.batch
        self.ahead = DrawAhead(self._draw, device, draw_ahead) if draw_ahead > 0 and plain else None

    def indices(self) -> torch.Tensor:
        """This step's batch indices (host, from the order generator)."""
        return self.stream.next()

    def _draw(self) -> Params:
        idx = self.indices()
        return {"idx": idx, **self.views.draw(len(idx), (len(idx), *self.images.shape[1:]), self.aug_gen)}

    def _pixels(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.images[idx]
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()

    def batch(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(indices on the device, [0,1] float images) of the next batch, drawn step by step."""
        idx = self.indices().to(self.device, non_blocking=True)
        return idx, self._pixels(idx)

    def step(self) -> torch.Tensor:
        """One iteration; returns the (detached, on-device) loss."""
        with stage("eval.batch"):
            if self.ahead is not None:
                p = self.ahead.next()
                idx = p.pop("idx")
                x = self._pixels(idx)
            else:
                idx, x = self.batch()
            y = self.labels[idx]
        with stage("eval.augment"):
            view, cell, mp = self.views.apply(x, p) if self.ahead is not None else self.views(x, self.aug_gen)
            if self.channels_last:
                view = view.contiguous(memory_format=torch.channels_last)
        with stage("eval.targets"):  # the online teacher's forward under SL+KD
            t, y_probs = self.targets(view, idx, y, cell, self.views.mixer, mp)
        self.model.train()
        with stage("eval.student_forward"), autocast(self.device, self.amp, cpu=self.cpu_amp):
            out = self.model(view)
        with stage("eval.loss"):
            loss = self.crit(out, t, y_probs)
        with stage("eval.backward"):
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
        with stage("eval.optimizer"):
            self.opt.step()
            if self.ema is not None:
                self.ema.step(self.model)
        self.last_lr = float(self.opt.param_groups[0]["lr"])  # the lr this step used (logged)
        self.sched.step()
        self.it += 1
        return loss.detach()

    def lr(self) -> float:
        """The learning rate of the most recent step."""
        return self.last_lr

    def tested_weights(self) -> Any:
        """Context in which `self.model` holds the weights the recipe tests: the EMA's (ema_decay > 0) or its own."""
        return self.ema.swapped(self.model) if self.ema is not None else contextlib.nullcontext()


def epoch_lines(plan: Plan, step: Callable[[], torch.Tensor], loss_sum: torch.Tensor,
                bar: Any) -> Iterator[Tuple[int, int, int, float, bool]]:
    """The epoch loop `train_run` and `train_stacked` share: run `step` plan.iterations times, adding each
    loss into `loss_sum`; at every line the log keeps (each plan.log_every epochs, each evaluation epoch,
    the last iteration) yield (epoch, iteration, steps summed, start time of those steps, evaluate?).
    The caller reads `loss_sum` (its one sync), takes the seconds from the start time, evaluates, and
    resumes; the sum is then cleared and the next line's clock starts, so evaluation time is never
    counted as training."""
    evals = set(plan.eval_epochs)
    n_it, t_start = 0, time.perf_counter()
    for it in range(plan.iterations):
        loss_sum += step()
        n_it += 1
        bar.update(1)
        done = ((it + 1) * plan.batch_size) // plan.n_images
        last = it + 1 == plan.iterations
        if done == (it * plan.batch_size) // plan.n_images and not last:
            continue
        epoch = plan.total_epochs if last else done
        if not (last or epoch in evals or epoch % plan.log_every == 0):
            continue  # keep accumulating: this line will cover several epochs
        yield epoch, it + 1, n_it, t_start, epoch in evals or last
        loss_sum.zero_()
        n_it, t_start = 0, time.perf_counter()


def train_run(trainer: StudentTrainer, seed: int, *, evaluate: Callable[[nn.Module], float],
              validate: Optional[Callable[[nn.Module], float]] = None, log_path: Optional[Path] = None,
              progress: bool = True, desc: str = "student") -> RunResult:
    """Run all iterations; log one JSON line per epoch (per `plan.log_every` epochs on huge runs) with the
    mean loss, lr, training seconds and images/s since the previous line, plus test/val accuracy when
    evaluated. The sync for the loss happens once per line, not per step."""
    plan = trainer.plan
    res = RunResult(seed=seed, final_acc=float("nan"), final_loss=float("nan"))
    fh = open(log_path, "w") if log_path is not None else None
    bar = tqdm(total=plan.iterations, desc=desc, disable=not progress, dynamic_ncols=True, mininterval=0.5,
               leave=False)
    loss_sum = torch.zeros((), device=trainer.device)
    train_s = 0.0
    # Line losses stay on the device until a line must be written: at an evaluation (which syncs anyway), at the
    # end, or READ_EVERY steps after the last read; then all waiting lines are read in one transfer.
    waiting: List[Tuple[Dict[str, Any], torch.Tensor]] = []
    since_read = 0

    def flush() -> None:
        values = torch.stack([v for _, v in waiting]).tolist() if waiting else []  # the one read
        for (rec, _), loss in zip(waiting, values):
            if not math.isfinite(loss):
                raise DDKitError(f"{desc}: the loss became {loss} in epoch {rec['epoch']}; lower --lr or check the "
                                 f"set")
            rec = {"epoch": rec["epoch"], "iteration": rec["iteration"], "loss": loss,
                   **{k: v for k, v in rec.items() if k not in ("epoch", "iteration")}}
            post = {"loss": f"{loss:.4f}"}
            if "test_acc" in rec:
                post["acc"] = f"{rec['test_acc']:.4f}"
            bar.set_postfix(**post, img_s=f"{rec['images_per_s']:.0f}", refresh=False)
            record(desc, rec, plan.total_epochs)  # the one-line-per-epoch log and any --log tracker
            if fh is not None:
                fh.write(json.dumps(rec) + "\n")
            res.final_loss = loss
        waiting.clear()

    try:
        for epoch, iteration, n_it, t_start, evaluated in epoch_lines(plan, trainer.step, loss_sum, bar):
            secs = time.perf_counter() - t_start
            train_s += secs
            rec: Dict[str, Any] = {"epoch": epoch, "iteration": iteration, "lr": trainer.lr(), "seconds": secs,
                                   "images_per_s": n_it * plan.batch_size / max(secs, 1e-9)}
            waiting.append((rec, loss_sum / n_it))  # a new device tensor: loss_sum is cleared for the next line
            since_read += n_it
            if evaluated:
                with trainer.tested_weights():
                    rec["test_acc"] = evaluate(trainer.model)
                    if validate is not None:
                        rec["val_acc"] = validate(trainer.model)
                res.test_history.append((epoch, rec["test_acc"]))
                if validate is not None:
                    res.val_history.append((epoch, rec["val_acc"]))
            if evaluated or since_read >= READ_EVERY or iteration == plan.iterations:
                flush()
                since_read = 0
    finally:
        bar.close()
        if fh is not None:
            fh.close()
    res.final_acc = res.test_history[-1][1]
    res.seconds = train_s
    res.images_per_s = plan.samples / max(train_s, 1e-9)
    return res
