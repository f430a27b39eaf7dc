"""Where one LIC compensation step and one SL+KD student step spend their time, and what the speed-ups
built into them buy, measured on the same machine in the same process.

Workloads (random weights and random images: only speed is measured, nothing is trained):
  * `lic_step`: the information-compensation loop of `ddkit.methods.lic` (`Compensator.run` from
    methods/lic_optim.py, built exactly as `lic()` builds it) at CIFAR shape: 32 px, ConvNet-3 teacher
    truncated at block3, IPC 10, factor 2 (40 real/synthetic pairs), one class, the shared
    flip/translate/cutout observer;
  * `slkd_step`: one `StudentTrainer.step()` of `ddkit evaluate` with the cim recipe under SL+KD:
    gather from a 100-image set (CIFAR-10 IPC 10, batch 50 by CIM's rule) → FactorCrop(2) → normalise →
    per-sample DSA → online ConvNet-3 teacher → MSE → AdamW; ConvNet-3 student.
For each: the wall time per step (median of interleaved rounds, no profiler running) and a torch.profiler
run giving the top ops by self CPU time and the time per stage. Stages are the profiler labels the library
sets while a profiler runs (`lic.*` in methods/lic_optim.py, `eval.*` in evaluate/student.py).

Before/after pairs (medians over interleaved rounds; "before" variants are emulated here, the "after"
one is always the library's code path):
  * LIC, 32 px and `--large-size` (224: torchvision ResNet-18 matched at layer2, IPC 1): the teacher
    truncated at the feature layer vs the whole teacher run with a forward hook on that layer (the
    reference's way); real features under no_grad in their own forward vs real and synthetic rows
    concatenated through one forward with grad (the reference's way); both together;
  * LIC without the observer (augment off): real features computed once vs recomputed every step;
  * LIC: all augmentation draws made up front (`Compensator.draw` for M steps at once) vs one call per step;
  * SL+KD: the teacher forward under no_grad (library) vs with grad mode on (frozen weights; and trainable
    weights with the logits detached); DSA+crop batched with per-sample parameters (library) vs one
    sample at a time.
Layout (not a before/after: the library's CPU setting vs its CUDA one, channels_last, forced on the CPU):
the LIC step without the observer, and the SL+KD step (student, teacher and views channels_last).

    OMP_NUM_THREADS=1 nice -n 5 python bench/profile_steps.py --device cpu --threads 1
    python bench/profile_steps.py --device cuda --lic-iterations 50 --eval-steps 50
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import statistics
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile

from ddkit.augment import Identity, cim_condense_aug
from ddkit.evaluate import EvalConfig, make_criterion, make_plan, resolve_recipe
from ddkit.evaluate.losses import LOSSES
from ddkit.evaluate.student import StudentTrainer, Targets, Views, teacher_forward
from ddkit.methods.lic import LICConfig
from ddkit.methods.lic_ops import expand, pair_distance, squeeze
from ddkit.methods.lic_optim import Compensator
from ddkit.models import create_model, default_feature_layer
from ddkit.teachers import Teacher
from ddkit.teachers.frozen import FrozenTeacher
from ddkit.utils import autocast, get_device, git_revision, machine_info, make_generator


def _lic_teacher(teacher: Teacher, cfg: LICConfig, dev: torch.device, layer: str) -> SimpleNamespace:
    """LIC's view of the teacher (ddkit.teachers.frozen), with the matched layer's extractor as `.extractor`."""
    ft = FrozenTeacher(teacher, dev, amp=cfg.amp, channels_last=cfg.channels_last, max_batch=cfg.max_batch)
    return SimpleNamespace(net=ft.net, norm=ft.norm, prep=ft.prep, extractor=ft.extractor(layer))


MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
STAGE_PREFIXES = ("lic.", "eval.")
NO_KERNEL = {f"aten::{n}" for n in (
    "empty", "empty_strided", "as_strided", "view", "_unsafe_view", "_reshape_alias", "reshape", "t", "transpose",
    "permute", "expand", "unsqueeze", "squeeze", "select", "slice", "narrow", "split", "chunk", "unbind",
    "flatten", "unflatten", "detach", "alias", "lift_fresh", "resolve_conj", "resolve_neg", "result_type")}
# coarse stage → the library's profiler labels
LIC_STAGES = {
    "augmentation": ("lic.augment",),
    "teacher_forward": ("lic.teacher_forward_real", "lic.teacher_forward_synthetic"),
    "residual_forward": ("lic.residual_forward",),
    "loss": ("lic.loss",),
    "backward": ("lic.backward_teacher", "lic.backward_residual"),
    "optimizer": ("lic.optimizer",),
}
EVAL_STAGES = {
    "batch_gather": ("eval.batch",),
    "augmentation": ("eval.augment",),
    "teacher_forward": ("eval.targets",),
    "student_forward": ("eval.student_forward",),
    "loss": ("eval.loss",),
    "backward": ("eval.backward",),
    "optimizer": ("eval.optimizer",),
}


# ---------------------------------------------------------------------------------------------------------
# Timing and profiling helpers
# ---------------------------------------------------------------------------------------------------------

def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(fn: Callable[[], object], calls: int, dev: torch.device) -> Tuple[float, float]:
    """(wall seconds, process CPU seconds) of `calls` calls."""
    _sync(dev)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(calls):
        fn()
    _sync(dev)
    return time.perf_counter() - t0, time.process_time() - c0


def compare(variants: Dict[str, Tuple[Callable[[], object], int]], *, rounds: int, calls: int, warmup: int,
            dev: torch.device) -> Dict[str, dict]:
    """ms per step of each variant: (callable, steps it runs per call). Variants are interleaved round by
    round and the median kept, so load from other processes hits them alike. The process CPU time per
    step is kept too: with one thread on a shared machine it is the less load-sensitive of the two."""
    for fn, _ in variants.values():
        for _ in range(warmup):
            fn()
    ms: Dict[str, List[float]] = {k: [] for k in variants}
    cpu: Dict[str, List[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, (fn, steps) in variants.items():
            wall, proc = _timed(fn, calls, dev)
            ms[name].append(1e3 * wall / (calls * steps))
            cpu[name].append(1e3 * proc / (calls * steps))
    return {k: {"ms_per_step": statistics.median(v), "cpu_ms_per_step": statistics.median(cpu[k]), "rounds_ms": v}
            for k, v in ms.items()}


def _with_speedup(res: Dict[str, dict], after: str) -> Dict[str, dict]:
    """Adds to every variant `after_speedup` = its ms / the library's ms (> 1: the library is faster)."""
    base, base_cpu = res[after]["ms_per_step"], res[after]["cpu_ms_per_step"]
    for v in res.values():
        v["after_speedup"] = v["ms_per_step"] / base
        v["after_speedup_cpu_time"] = v["cpu_ms_per_step"] / max(base_cpu, 1e-9)
    return res


def profile_steps(fn: Callable[[], object], steps_per_call: int, calls: int, dev: torch.device,
                  stages: Dict[str, Sequence[str]], top: int) -> dict:
    """Profile `calls` calls of fn (already warmed up): top ops by self CPU time and time per stage, per step."""
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    steps = calls * steps_per_call
    _sync(dev)
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        _sync(dev)
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    wall_ms = 1e3 * wall / steps
    cuda = dev.type == "cuda"

    def dev_us(e) -> float:
        return float(getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0.0)))

    labels = {e.key: e for e in events if e.key.startswith(STAGE_PREFIXES)}
    fine = {}
    for key, e in sorted(labels.items()):
        row = {"ms_per_step": e.cpu_time_total / 1e3 / steps, "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
               "calls_per_step": e.count / steps}
        if cuda:
            row["device_ms_per_step"] = dev_us(e) / 1e3 / steps
        fine[key] = row
    coarse = {}
    for name, keys in stages.items():
        ms = sum(fine[k]["ms_per_step"] for k in keys if k in fine)
        coarse[name] = {"ms_per_step": ms, "pct_of_step": 100 * ms / wall_ms}
    covered = sum(v["ms_per_step"] for v in coarse.values())
    coarse["other"] = {"ms_per_step": wall_ms - covered, "pct_of_step": 100 * (wall_ms - covered) / wall_ms,
                       "what": "outside the labels: Python between stages, setup of the call"}

    ops = [e for e in events if not e.key.startswith(STAGE_PREFIXES) and not e.key.startswith("ProfilerStep")]
    total_self = sum(e.self_cpu_time_total for e in events)
    ops.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    top_ops = []
    for e in ops[:top]:
        row = {"name": e.key, "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
               "pct_of_self_cpu": 100 * e.self_cpu_time_total / max(total_self, 1e-9), "calls_per_step": e.count / steps}
        if cuda:
            row["self_device_ms_per_step"] = float(getattr(e, "self_device_time_total", 0.0)) / 1e3 / steps
        top_ops.append(row)
    # leaf aten ops (no aten op below them) that are not pure views/allocations ≈ the kernels a GPU would
    # launch per step (approximate: a few leaves launch several kernels, scalar CPU ops launch none)
    leaves = sum(1 for e in prof.events() if e.name.startswith("aten::") and e.name not in NO_KERNEL
                 and not any(c.name.startswith("aten::") for c in e.cpu_children))
    extra = {"compute_ops_per_step": leaves / steps}
    if cuda:
        extra["cuda_kernels_per_step"] = sum(1 for e in prof.events()
                                             if str(getattr(e, "device_type", "")).endswith("CUDA")) / steps
    return {"profiled_steps": steps, "profiled_wall_ms_per_step": wall_ms, **extra,
            "self_cpu_ms_per_step_total": total_self / 1e3 / steps, "stages": coarse, "labels": fine,
            "top_ops": top_ops}


# ---------------------------------------------------------------------------------------------------------
# LIC: the library's compensator and the emulated "before" variants
# ---------------------------------------------------------------------------------------------------------

class HookedTeacher(nn.Module):
    """'before' truncation: the whole teacher runs forward and a hook keeps `module`'s output (the
    reference's feature capture; the layers after it are computed and thrown away)."""

    def __init__(self, net: nn.Module, module: str) -> None:
        super().__init__()
        self.net = copy.deepcopy(net)  # own copy: the hook must not fire in the library's extractor
        self._out: Optional[torch.Tensor] = None
        dict(self.net.named_modules())[module].register_forward_hook(self._keep)

    def _keep(self, mod, inp, out) -> None:
        self._out = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.net(x)
        out, self._out = self._out, None
        return out


class RealInGraph:
    """'before' real features: each step runs aug(cat[real, synthetic]) through ONE teacher forward with
    grad and backpropagates through both halves (the reference's loop: CIM condense.py, peers.md §1.4 step 6).
    Same library pieces otherwise: expand, normalise, the shared draw, pair_distance, AdamW on Δx."""

    def __init__(self, comp: Compensator) -> None:
        self.c = comp

    def run(self, reals: List[torch.Tensor], mosaics: List[torch.Tensor], gens: Sequence[torch.Generator]) -> None:
        c, cfg = self.c, self.c.cfg
        n, size = reals[0].shape[0], tuple(mosaics[0].shape[-2:])
        real_n = c.norm.apply(torch.cat(reals).float(), {})
        mos = [m.detach().float() for m in mosaics]
        deltas = [torch.zeros_like(m, requires_grad=True) for m in mos]
        opt = torch.optim.AdamW(deltas, lr=cfg.lr, weight_decay=cfg.weight_decay)
        drawn = c.draw(gens, n, size, cfg.iterations)
        for it in range(cfg.iterations):
            p = {k: torch.cat([v[it], v[it]]) for k, v in drawn.items()}
            x = c.norm.apply(expand(torch.cat([m + d for m, d in zip(mos, deltas)]), cfg.factor, len(mos)), {})
            f = c.features(c.aug.apply(torch.cat([real_n, x]), p))
            d = pair_distance(f[:n], f[n:], cfg.distance)
            opt.zero_grad(set_to_none=True)
            d.sum().backward()
            opt.step()


def lic_bench(size: int, arch: str, arch_kw: dict, ipc: int, iterations: int, args: argparse.Namespace,
              dev: torch.device, hook_module: str) -> Tuple[dict, dict, Callable[[], object]]:
    """The library's compensator at this shape; returns (shape facts, A/B results, the library callable)."""
    torch.manual_seed(0)
    net = create_model(arch, num_classes=10, image_size=size, **arch_kw)
    teacher = Teacher(net, arch, [f"c{i}" for i in range(10)], MEAN, STD, image_size=size, arch_kw=arch_kw)
    layer = default_feature_layer(arch, size)
    cfg = LICConfig(ipc=ipc, iterations=iterations, store_labels=False)
    tch = _lic_teacher(teacher, cfg, dev, layer)
    n = ipc * cfg.factor ** 2
    g = torch.Generator().manual_seed(0)
    reals = [torch.rand(n, 3, size, size, generator=g).to(dev)]
    mosaics = [squeeze(reals[0], cfg.factor, cfg.downsample)]

    def gens() -> List[torch.Generator]:
        return [make_generator(cfg.seed, "lic", "augment", 0)]

    def comp(extractor: nn.Module) -> Compensator:
        return Compensator(extractor, tch.norm, cim_condense_aug(), cfg, dev, packed=False, prep=tch.prep)

    lib = comp(tch.extractor)
    full = comp(HookedTeacher(tch.net, hook_module))
    variants = {
        "library (truncated teacher, real features no_grad)": (lambda: lib.run(reals, mosaics, gens()), iterations),
        "whole teacher + hook": (lambda: full.run(reals, mosaics, gens()), iterations),
        "real rows in the graph (cat real+syn)": (lambda: RealInGraph(lib).run(reals, mosaics, gens()), iterations),
        "reference pattern (both)": (lambda: RealInGraph(full).run(reals, mosaics, gens()), iterations),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = compare(variants, rounds=args.rounds, calls=1, warmup=1, dev=dev)
    shape = {"size": size, "arch": arch, "arch_kw": arch_kw, "feature_layer": layer, "hooked_module": hook_module,
             "ipc": ipc, "factor": cfg.factor, "pairs": n, "classes": 1, "iterations_per_call": iterations}
    return shape, _with_speedup(res, next(iter(variants))), variants[next(iter(variants))][0]


def lic_fixed_real_bench(size: int, arch: str, arch_kw: dict, ipc: int, iterations: int,
                         args: argparse.Namespace, dev: torch.device) -> dict:
    """No observer (augment off): the library computes the real features once; 'before' recomputes them
    every step (the same library loop with its shared-draw switch forced on). A third variant feeds the
    teacher channels_last, the library's CUDA setting, on this device too (without the observer the
    teacher's input is plain NCHW; the observer's translate returns channels_last strides)."""
    torch.manual_seed(0)
    net = create_model(arch, num_classes=10, image_size=size, **arch_kw)
    teacher = Teacher(net, arch, [f"c{i}" for i in range(10)], MEAN, STD, image_size=size, arch_kw=arch_kw)
    cfg = LICConfig(ipc=ipc, iterations=iterations, store_labels=False, augment=False)
    tch = _lic_teacher(teacher, cfg, dev, default_feature_layer(arch, size))
    n = ipc * cfg.factor ** 2
    reals = [torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)).to(dev)]
    mosaics = [squeeze(reals[0], cfg.factor, cfg.downsample)]
    once = Compensator(tch.extractor, tch.norm, Identity(), cfg, dev, packed=False, prep=tch.prep)
    every = Compensator(tch.extractor, tch.norm, Identity(), cfg, dev, packed=False, prep=tch.prep)
    every.shared_draw = True  # Identity draws nothing, so the loop recomputes the real features each step
    tch_cl = _lic_teacher(teacher, cfg, dev, default_feature_layer(arch, size))
    tch_cl.net.to(memory_format=torch.channels_last)  # the extractor shares these modules
    cl = Compensator(tch_cl.extractor, tch_cl.norm, Identity(), cfg, dev, packed=False,
                     prep=lambda x: x.contiguous(memory_format=torch.channels_last))
    gens = [make_generator(0, "lic", "augment", 0)]
    res = compare({"library (real features once)": (lambda: once.run(reals, mosaics, gens), iterations),
                   "recomputed every step": (lambda: every.run(reals, mosaics, gens), iterations),
                   "real features once, channels_last teacher": (lambda: cl.run(reals, mosaics, gens), iterations)},
                  rounds=args.rounds, calls=1, warmup=1, dev=dev)
    return {"iterations_per_call": iterations, "variants": _with_speedup(res, "library (real features once)")}


def draw_bench(ipc: int, size: int, steps: int, args: argparse.Namespace, dev: torch.device) -> dict:
    """`Compensator.draw` for all M steps at once (library) vs one call per step, ms per step."""
    cfg = LICConfig(ipc=ipc, iterations=steps)
    comp = Compensator(nn.Identity(), None, cim_condense_aug(), cfg, dev, packed=False)  # draw needs no teacher
    n = ipc * cfg.factor ** 2

    def upfront():
        comp.draw([make_generator(0, "lic", "augment", 0)], n, (size, size), steps)

    def per_step():
        g = [make_generator(0, "lic", "augment", 0)]
        for _ in range(steps):
            comp.draw(g, n, (size, size), 1)

    res = compare({"library (all draws up front)": (upfront, steps), "one draw call per step": (per_step, steps)},
                  rounds=args.rounds, calls=1, warmup=1, dev=dev)
    return {"steps_drawn": steps, "variants": _with_speedup(res, "library (all draws up front)")}


# ---------------------------------------------------------------------------------------------------------
# SL+KD student step
# ---------------------------------------------------------------------------------------------------------

def eval_bench(size: int, arch: str, arch_kw: dict, args: argparse.Namespace, dev: torch.device
               ) -> Tuple[dict, dict, dict, Callable[[], object]]:
    k = 10
    n = k * args.eval_ipc
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, size, size, generator=g).to(dev)
    labels = (torch.arange(n) % k).to(dev)
    cl = dev.type == "cuda"
    torch.manual_seed(0)
    tnet = create_model(arch, num_classes=k, image_size=size, **arch_kw).to(dev)
    if cl:
        tnet.to(memory_format=torch.channels_last)
    teacher = Teacher(tnet, arch, [f"c{i}" for i in range(k)], MEAN, STD, image_size=size, arch_kw=arch_kw)
    cfg = EvalConfig(recipe="cim", regime="slkd", epochs=10**6)
    recipe = resolve_recipe(cfg, n_images=n, num_classes=k, ipc=args.eval_ipc, image_size=size)
    plan = make_plan(recipe, n)
    spec = LOSSES.get(recipe.slkd_loss)
    crit = make_criterion(spec.name, temperature=recipe.temperature)
    views = Views(recipe, size, MEAN, STD)
    b = recipe.batch_size

    # "before" teacher passes: the same model and autocast, without the library's no_grad
    def grad_on(x: torch.Tensor) -> torch.Tensor:
        with autocast(dev, True):
            return tnet(x).float()

    trainable = copy.deepcopy(tnet).requires_grad_(True)

    def grad_on_trainable(x: torch.Tensor) -> torch.Tensor:
        with autocast(dev, True):
            return trainable(x).float().detach()

    def trainer(teacher_fn, channels_last: bool = cl) -> StudentTrainer:
        torch.manual_seed(1)
        m = create_model(arch, num_classes=k, image_size=size, **arch_kw).to(dev)
        m = m.to(memory_format=torch.channels_last) if channels_last else m
        targets = Targets("slkd", k, spec, recipe.temperature, teacher_fn=teacher_fn)
        tr = StudentTrainer(m, images, labels, recipe, plan, views, targets, crit, device=dev,
                            order_gen=make_generator(0, "order"), aug_gen=make_generator(0, "aug"))
        tr.channels_last = channels_last  # the library sets it on CUDA only; forced here for the layout A/B
        return tr

    lib = trainer(teacher_forward(teacher, MEAN, STD, size, dev, True))
    variants = {
        "library (teacher under no_grad)": (lib.step, 1),
        "grad mode on, teacher frozen": (trainer(grad_on).step, 1),
        "grad mode on, teacher trainable, logits detached": (trainer(grad_on_trainable).step, 1),
    }
    res = compare(variants, rounds=args.rounds, calls=args.eval_steps, warmup=2, dev=dev)
    for v in res.values():
        v["images_per_s"] = 1e3 * b / v["ms_per_step"]
    teacher_ab = _with_speedup(res, "library (teacher under no_grad)")

    # augmentation alone: batched per-sample params (library Views) vs one sample at a time
    ag = make_generator(0, "aug")
    x = images[:b]

    def batched():
        views(x, ag)

    def one_by_one():
        torch.cat([views(x[i:i + 1], ag)[0] for i in range(b)])

    aug = compare({"library (batched, per-sample params)": (batched, 1), "one sample at a time": (one_by_one, 1)},
                  rounds=args.rounds, calls=args.eval_steps, warmup=2, dev=dev)
    aug = _with_speedup(aug, "library (batched, per-sample params)")

    # memory layout: the library's setting on this device vs the other one (channels_last is its CUDA setting)
    layout = {}
    if not cl:
        tnet_cl = copy.deepcopy(tnet).to(memory_format=torch.channels_last)
        teacher_cl = Teacher(tnet_cl, arch, teacher.classes, MEAN, STD, image_size=size, arch_kw=arch_kw)
        layout = compare({"library (NCHW on CPU)": (lib.step, 1),
                          "channels_last student, teacher and views": (
                              trainer(teacher_forward(teacher_cl, MEAN, STD, size, dev, True), True).step, 1)},
                         rounds=args.rounds, calls=args.eval_steps, warmup=2, dev=dev)
        layout = _with_speedup(layout, "library (NCHW on CPU)")
    shape = {"size": size, "arch": arch, "arch_kw": arch_kw, "teacher": arch, "set_images": n, "batch": b,
             "recipe": "cim, regime slkd: FactorCrop(2) + per-sample DSA (color_crop_cutout_flip_scale_rotate), "
                       "MSE to the online teacher, AdamW"}
    return shape, teacher_ab, aug, layout, lib.step


# ---------------------------------------------------------------------------------------------------------

def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--size", type=int, default=32, help="image side of both CIFAR-shape workloads")
    p.add_argument("--arch", default="convnet-d3", help="teacher (and student) of the CIFAR-shape workloads")
    p.add_argument("--width", type=int, default=None, help="ConvNet width (default: the model's, 128)")
    p.add_argument("--ipc", type=int, default=10, help="LIC images per class (pairs = ipc·4)")
    p.add_argument("--lic-iterations", type=int, default=10, help="compensation steps per timed call")
    p.add_argument("--large-size", type=int, default=224,
                   help="second LIC truncation A/B: torchvision resnet18 at this side, matched at layer2 (0: skip)")
    p.add_argument("--large-ipc", type=int, default=1)
    p.add_argument("--large-iterations", type=int, default=3)
    p.add_argument("--eval-ipc", type=int, default=10, help="images per class of the student's set (10 classes)")
    p.add_argument("--eval-steps", type=int, default=10, help="student steps per timed call")
    p.add_argument("--draw-steps", type=int, default=200, help="M of the draw A/B (paper: 200)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per variant; medians reported")
    p.add_argument("--profile-calls", type=int, default=1, help="calls profiled per workload")
    p.add_argument("--top", type=int, default=12, help="ops listed per workload")
    p.add_argument("--output", default=None, help="default: bench/results/profile_<device>.json")
    args = p.parse_args(argv)
    dev = get_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    tag = "cpu" if dev.type == "cpu" else re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name(dev)).strip("-").lower()
    out = Path(args.output or Path(__file__).parent / "results" / f"profile_{tag}.json")
    kw = {"width": args.width} if args.width else {}
    load0, t_start, c_start = os.getloadavg(), time.perf_counter(), time.process_time()
    res: dict = {
        "command": " ".join(["python", "bench/profile_steps.py"] + (argv if argv is not None else sys.argv[1:])),
        "git_revision": git_revision(), "machine": machine_info(dev), "device": str(dev),
        "environment": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "nice": os.nice(0),
                        "torch_threads": torch.get_num_threads()},
        "note": "random weights and random images (speed only). 'before' variants are emulated in this script; "
                "the 'after' one is the library's code path. ms per step are medians of interleaved rounds without "
                "a profiler; stage and op times come from one torch.profiler run (its overhead inflates them a "
                "little: compare profiled_wall_ms_per_step with wall_ms_per_step). after_speedup = variant ms / "
                "library ms (wall), after_speedup_cpu_time the same on process CPU time.",
        "workloads": {}, "before_after": {}}

    # (a) LIC compensation step at CIFAR shape, with the truncation / real-feature A/B
    shape, ab, lic_call = lic_bench(args.size, args.arch, kw, args.ipc, args.lic_iterations, args, dev,
                                    hook_module="features.block3" if args.arch.startswith("convnet") else "layer2")
    prof = profile_steps(lic_call, args.lic_iterations, args.profile_calls, dev, LIC_STAGES, args.top)
    lib_ms = next(iter(ab.values()))["ms_per_step"]
    res["workloads"]["lic_step"] = {"shape": shape, "wall_ms_per_step": lib_ms,
                                    "cpu_ms_per_step": next(iter(ab.values()))["cpu_ms_per_step"], **prof}
    res["before_after"][f"lic_{args.size}px_teacher_and_real_features"] = {"shape": shape, "variants": ab}
    print(f"lic  {args.size} px: {lib_ms:.1f} ms/step; " + ", ".join(f"{k}: {v['after_speedup']:.2f}x" for k, v in ab.items()))

    if args.large_size:
        shape_l, ab_l, _ = lic_bench(args.large_size, "resnet18", {}, args.large_ipc, args.large_iterations, args, dev,
                                     hook_module="layer2")
        res["before_after"][f"lic_{args.large_size}px_teacher_and_real_features"] = {"shape": shape_l, "variants": ab_l}
        print(f"lic {args.large_size} px: " + ", ".join(f"{k}: {v['after_speedup']:.2f}x" for k, v in ab_l.items()))

    fr = lic_fixed_real_bench(args.size, args.arch, kw, args.ipc, args.lic_iterations, args, dev)
    res["before_after"][f"lic_{args.size}px_no_augment_real_features"] = fr
    dr = draw_bench(args.ipc, args.size, args.draw_steps, args, dev)
    dr["lic_step_ms_for_scale"] = lib_ms
    res["before_after"][f"lic_{args.size}px_augmentation_draws"] = dr

    # (b) SL+KD student step
    shape_e, teacher_ab, aug_ab, layout_ab, eval_call = eval_bench(args.size, args.arch, kw, args, dev)
    prof_e = profile_steps(eval_call, 1, max(args.profile_calls, args.eval_steps), dev, EVAL_STAGES, args.top)
    eval_ms = next(iter(teacher_ab.values()))["ms_per_step"]
    res["workloads"]["slkd_step"] = {"shape": shape_e, "wall_ms_per_step": eval_ms,
                                     "cpu_ms_per_step": next(iter(teacher_ab.values()))["cpu_ms_per_step"],
                                     "images_per_s": 1e3 * shape_e["batch"] / eval_ms, **prof_e}
    res["before_after"][f"slkd_{args.size}px_teacher_grad_mode"] = {"shape": shape_e, "variants": teacher_ab}
    res["before_after"][f"slkd_{args.size}px_augmentation"] = {"batch": shape_e["batch"], "variants": aug_ab,
                                                              "student_step_ms_for_scale": eval_ms}
    if layout_ab:
        res["before_after"][f"slkd_{args.size}px_layout"] = {"shape": shape_e, "variants": layout_ab}
    print(f"slkd {args.size} px: {eval_ms:.1f} ms/step; " + ", ".join(
        f"{k}: {v['after_speedup']:.2f}x" for k, v in {**teacher_ab, **aug_ab, **layout_ab}.items()))
    res["load_average_before_after"] = [list(load0), list(os.getloadavg())]
    res["seconds"] = time.perf_counter() - t_start
    res["process_cpu_seconds"] = time.process_time() - c_start  # far below `seconds` × threads: contended
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json.loads(json.dumps(res, default=str)), indent=2))
    print(f"wrote {out} ({res['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
