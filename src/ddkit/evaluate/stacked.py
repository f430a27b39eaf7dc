"""Several students in one pass: the seeds of one evaluation trained as ONE stacked model, end to end.

The S students' parameters are stacked along a new leading dim (`torch.func.stack_module_state`) and
one `vmap(functional_call)` forward/backward trains them all, so S small batches become one set of
larger (grouped) kernels. The data path is batched across the students too: each step's S batches are
one batch of S·B samples, gathered with one index, augmented with one call of each op (the S students'
draws merged by `ahead.merge_batches`, K steps of them drawn ahead into one device buffer by `DrawAhead`),
labelled by ONE online-teacher forward under SL+KD, and bf16 is kept inside vmap (`vmap_amp`: autocast
itself does not reach through vmap). Each student keeps everything a one-at-a-time run has:
  * its own init (the same `derive_seed(seed, "init")` draw as `evaluate`'s loop),
  * its own batch order (seed, "order") and augmentation draws (seed, "aug"): each generator is asked for
    the same values in the same order as in the student's own run, so its block of the merged batch is
    exactly its own batch,
  * its own targets (the teacher's logits of ITS views under SL+KD; its own batch's mixing),
  * its own optimiser state: SGD/AdamW update every element independently, so one optimiser over the
    stacked tensors is S optimisers; weight decay follows each tensor's per-student rank,
  * the same schedule (every student of one evaluation shares the plan),
so its numbers equal the one-at-a-time run's within float tolerance (grouped kernels and a larger teacher
batch round differently; tests/test_stacked.py checks it, tests/test_stacked_bf16.py the bf16 step). Test
accuracy is scored on each student copied back into an ordinary module, with the same scorer as `train_run`.

Only nets without batch statistics or randomness inside the forward can be stacked (ConvNet with
instance/no norm, MLP): BatchNorm's running stats and dropout are refused by `stackable` and those
students train one at a time. Default off on CPU: bench/results/stacked_cpu.json measures stacked vs
one at a time there (docs/performance.md); the lever is meant for launch-bound GPUs, not measured yet.
"""
from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from torch.func import functional_call, stack_module_state, vmap
from tqdm.auto import tqdm

from ddkit.augment.ahead import DrawAhead, merge_batches
from ddkit.augment.base import Params
from ddkit.evaluate.recipes import Recipe
from ddkit.evaluate.student import (DRAW_AHEAD, BatchStream, Plan, RunResult, Targets, Views, epoch_lines,
                                    lr_factor)
from ddkit.evaluate.vmap_amp import vmap_autocast
from ddkit.optim import decay_groups, optimizer_for
from ddkit.utils import DDKitError, make_generator, stage

_STATELESS = (nn.Conv2d, nn.Linear, nn.GroupNorm, nn.LayerNorm, nn.ReLU, nn.GELU, nn.SiLU, nn.AvgPool2d,
              nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity, nn.Sequential)


def stackable(model: nn.Module) -> bool:
    """True when the net has no buffers (no batch statistics), no BatchNorm/Dropout, and every leaf layer
    is a plain stateless one (ConvNet-IN/-NN, MLP): then vmap over stacked weights is the S separate nets."""
    if any(True for _ in model.buffers()):
        return False
    for m in model.modules():
        if isinstance(m, (nn.modules.batchnorm._NormBase, nn.Dropout)):
            return False
        if not any(True for _ in m.children()) and not isinstance(m, _STATELESS):
            return False  # an unknown leaf layer: train it one at a time to be safe
    return True


def run_stacked(build: Callable[[int], nn.Module], seeds: Sequence[int], stack: int, *, images: torch.Tensor,
                labels: torch.Tensor, recipe: Recipe, plan: Plan, views: Views, targets: Targets, criterion,
                device: torch.device, amp: bool, cpu_amp: bool, evaluate: Callable[[nn.Module], float],
                validate: Optional[Callable[[nn.Module], float]], log_path: Callable[[int], Optional[Path]],
                progress: bool, desc: str, class_accs: Optional[Callable[[], Any]] = None) -> List[RunResult]:
    """Train `seeds` in groups of `stack` stacked students (`build(seed)` makes seed's fresh student,
    as evaluate's loop does); [] when the net cannot be stacked, so the caller trains one at a time."""
    out: List[RunResult] = []
    for g0 in range(0, len(seeds), stack):
        group = list(seeds[g0:g0 + stack])
        models = [build(s) for s in group]
        if not stackable(models[0]) or type(views) is not Views or recipe.ema_decay > 0:
            return []  # batch statistics, a data path of its own (stored views) or an EMA: one at a time
        tr = StackedTrainer(models, group, images, labels, recipe, plan, views, targets, criterion, device=device,
                            amp=amp, cpu_amp=cpu_amp)
        res = train_stacked(tr, evaluate=evaluate, validate=validate, log_paths=[log_path(s) for s in group],
                            progress=progress, desc=f"{desc}/seeds{group[0]}-{group[-1]}", class_accs=class_accs)
        out += res
        if progress:
            for r in res:
                print(f"[evaluate] {desc} seed {r.seed}: test acc {r.final_acc:.4f} (loss {r.final_loss:.4f}, "
                      f"{r.images_per_s:.0f} img/s per student, {len(group)} stacked)")
    return out


def _optimizer(params: Dict[str, torch.Tensor], recipe: Recipe) -> torch.optim.Optimizer:
    """`build_optimizer`'s rules (ddkit.optim) for stacked tensors: ndim counts the stacking dim here,
    so the decay split uses each tensor's per-student rank (ndim − 1)."""
    ps = list(params.values())
    groups = decay_groups(ps, recipe.weight_decay, recipe.wd_norm_bias, ranks=[p.ndim - 1 for p in ps])
    return optimizer_for(groups, recipe.optimizer, recipe.lr, momentum=recipe.momentum)


class StackedTrainer:
    """S students of one architecture trained together; `step()` returns their S losses (detached)."""

    def __init__(self, models: Sequence[nn.Module], seeds: Sequence[int], images: torch.Tensor, labels: torch.Tensor,
                 recipe: Recipe, plan: Plan, views: Views, targets: Targets, criterion, *, device: torch.device,
                 amp: bool = True, cpu_amp: bool = False, draw_ahead: int = DRAW_AHEAD) -> None:
        if len(models) != len(seeds) or not models:
            raise ValueError("one model per seed, at least one")
        self.models, self.seeds = list(models), list(seeds)
        self.images, self.labels = images, labels
        self.recipe, self.plan, self.views, self.targets, self.crit = recipe, plan, views, targets, criterion
        self.device, self.amp, self.cpu_amp = device, amp, cpu_amp
        self.base = copy.deepcopy(self.models[0]).to("meta")  # structure only; weights come stacked
        params, _ = stack_module_state(self.models)
        self.params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        self.opt = _optimizer(self.params, recipe)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda it: lr_factor(recipe, plan.epoch_of(it), plan.epochs))
        self.streams = [BatchStream(plan.n_images, plan.batch_size, make_generator(s, "order")) for s in seeds]
        self.aug_gens = [make_generator(s, "aug") for s in seeds]
        self.forward = vmap(lambda p, x: functional_call(self.base, p, (x,)))
        # Every student's batch indices and view params of `draw_ahead` steps, merged into one batch per step,
        # reach the device in one copy (as StudentTrainer's draw-ahead does for one student).
        self.ahead = DrawAhead(self._draw, device, max(1, draw_ahead))
        self.it = 0
        self.last_lr = recipe.lr

    def _draw(self) -> Params:
        """One step's draws of every student (each from its own generators, in its own run's order), merged."""
        B, shape = self.plan.batch_size, tuple(self.images.shape[1:])
        draws = []
        for stream, g in zip(self.streams, self.aug_gens):
            idx = stream.next()
            draws.append({"idx": idx, **self.views.draw(len(idx), (len(idx), *shape), g)})
        return merge_batches(draws, B)

    def step(self) -> torch.Tensor:
        """One iteration of every student; returns the S losses."""
        S, B = len(self.seeds), self.plan.batch_size
        with stage("eval.batch"):
            p = self.ahead.next()
            idx = p.pop("idx")  # S·B: student s's batch is rows s·B … (s+1)·B − 1
            x = self.images[idx]
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
            y = self.labels[idx]
        with stage("eval.augment"):
            view, cell, mp = self.views.apply(x, p)
        with stage("eval.targets"):  # under SL+KD one teacher forward over all S·B views
            t, y_probs = self.targets(view, idx, y, cell, self.views.mixer, mp)
        with stage("eval.student_forward"), vmap_autocast(self.device, self.amp, cpu=self.cpu_amp):
            out = self.forward(self.params, view.reshape(S, B, *view.shape[1:]))
        with stage("eval.loss"):
            rows = [slice(i * B, (i + 1) * B) for i in range(S)]
            losses = torch.stack([self.crit(out[i], None if t is None else t[r], y_probs[r])
                                  for i, r in enumerate(rows)])
        with stage("eval.backward"):
            self.opt.zero_grad(set_to_none=True)
            losses.sum().backward()  # disjoint parameters: each student gets its own loss's gradient
        with stage("eval.optimizer"):
            self.opt.step()
        self.last_lr = float(self.opt.param_groups[0]["lr"])
        self.sched.step()
        self.it += 1
        return losses.detach()

    def student(self, i: int) -> nn.Module:
        """Student i as an ordinary module (its current weights copied into its template)."""
        m = self.models[i]
        with torch.no_grad():
            for name, p in m.named_parameters():
                p.copy_(self.params[name][i])
        return m


def train_stacked(trainer: StackedTrainer, *, evaluate: Callable[[nn.Module], float],
                  validate: Optional[Callable[[nn.Module], float]] = None,
                  log_paths: Optional[Sequence[Optional[Path]]] = None, progress: bool = True,
                  desc: str = "students", class_accs: Optional[Callable[[], Any]] = None) -> List[RunResult]:
    """`train_run` for S stacked students: the same per-student metrics.jsonl lines (images/s counts
    each student's own samples over the shared wall time) and one RunResult per seed. `class_accs`
    reads the per-class accuracies the scorer left behind, taken after each student's last evaluation."""
    plan, S = trainer.plan, len(trainer.seeds)
    res = [RunResult(seed=s, final_acc=float("nan"), final_loss=float("nan")) for s in trainer.seeds]
    paths = list(log_paths) if log_paths is not None else [None] * S
    fhs = [open(p, "w") if p is not None else None for p in paths]
    bar = tqdm(total=plan.iterations, desc=desc, disable=not progress, dynamic_ncols=True, mininterval=0.5,
               leave=False)
    loss_sum = torch.zeros(S, device=trainer.device)
    train_s = 0.0
    try:
        for epoch, iteration, n_it, t_start, evaluated in epoch_lines(plan, trainer.step, loss_sum, bar):
            losses = (loss_sum / n_it).tolist()
            secs = time.perf_counter() - t_start
            train_s += secs
            for i, loss in enumerate(losses):
                if not math.isfinite(loss):
                    raise DDKitError(f"{desc} seed {trainer.seeds[i]}: the loss became {loss} in epoch {epoch}; "
                                     "lower --lr or check the set")
                rec: Dict[str, Any] = {"epoch": epoch, "iteration": iteration, "loss": loss, "lr": trainer.last_lr,
                                       "seconds": secs, "images_per_s": n_it * plan.batch_size / max(secs, 1e-9),
                                       "stacked_students": S}
                if evaluated:
                    model = trainer.student(i)
                    rec["test_acc"] = evaluate(model)
                    res[i].test_history.append((epoch, rec["test_acc"]))
                    if class_accs is not None:
                        res[i].class_accs = class_accs()
                    if validate is not None:
                        rec["val_acc"] = validate(model)
                        res[i].val_history.append((epoch, rec["val_acc"]))
                if fhs[i] is not None:
                    fhs[i].write(json.dumps(rec) + "\n")
                res[i].final_loss = loss
            bar.set_postfix(loss=f"{sum(losses) / S:.4f}", refresh=False)
    finally:
        bar.close()
        for fh in fhs:
            if fh is not None:
                fh.close()
    for r in res:
        r.final_acc = r.test_history[-1][1]
        r.seconds = train_s
        r.images_per_s = plan.samples / max(train_s, 1e-9)
    return res
