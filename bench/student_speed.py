"""Student-step speed A/B on one machine: variants interleaved round by round, in one process.

Every variant is one `StudentTrainer.step()` of `ddkit evaluate` (the library's code path) on a
synthetic CIFAR-shape set (random pixels, random weights: only speed is measured), built as
`evaluate()` builds it, with one setting changed:
  * `translate_view`: the DSA translate as it was before the layout fix (it returned the permuted,
    channels_last gather, so steps that draw a translate ran the whole network channels_last);
  * `fp32`: the library's CPU default; `bf16`: bf16 autocast on CPU (student and online teacher);
    `bf16_translate_view`: bf16 with the old translate;
  * `cl`, `bf16_cl`: channels_last student, teacher and views (the CUDA layout, forced on the CPU);
  * `compile`, `bf16_compile`: torch.compile of the student (and teacher) forward, channels_last.
Variants run the same draws (same seeds), so each sees the same sequence of DSA ops. The report
gives the median images/s over rounds and each variant's ratio to the first, computed round by round
(the machine is shared: read the ratios, not the absolute rates).

    OMP_NUM_THREADS=1 nice -n 10 python bench/student_speed.py --regime hl --recipe dc --ipc 10 \
        --variants translate_view,fp32 --output bench/results/layout_cpu.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

from ddkit.augment import Compose, OneOf, Translate
from ddkit.evaluate import EvalConfig, make_criterion, make_plan, resolve_recipe
from ddkit.evaluate.losses import LOSSES
from ddkit.evaluate.student import StudentTrainer, Targets, Views, teacher_forward
from ddkit.models import create_model
from ddkit.teachers import Teacher
from ddkit.utils import git_revision, machine_info, make_generator

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class ViewTranslate(Translate):
    """The translate before the layout fix: the b×h×w×C gather permuted back, returned as a view."""

    def apply(self, x, params):
        b, _, h, w = x.shape
        ty, tx = params["ty"].expand(b), params["tx"].expand(b)
        rows = (torch.arange(h) + ty[:, None] + 1).clamp(0, h + 1)
        cols = (torch.arange(w) + tx[:, None] + 1).clamp(0, w + 1)
        xp = F.pad(x, (1, 1, 1, 1))
        out = xp[torch.arange(b)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
        return out.permute(0, 3, 1, 2)


def swap_translate(aug) -> None:
    """Replace every Translate inside a Compose/OneOf tree by ViewTranslate (in place)."""
    for i, op in enumerate(getattr(aug, "ops", [])):
        if type(op) is Translate:
            aug.ops[i] = ViewTranslate(op.ratio)
        elif isinstance(op, (Compose, OneOf)):
            swap_translate(op)


VARIANTS = ("translate_view", "fp32", "bf16", "bf16_translate_view", "cl", "bf16_cl", "compile", "bf16_compile")


def build(variant: str, args, images, labels) -> Callable[[], torch.Tensor]:
    """One trainer's step for `variant` (fresh student, same seeds as every other variant)."""
    k, size = args.num_classes, 32
    n = len(images)
    cfg = EvalConfig(recipe=args.recipe, regime=args.regime, epochs=10 ** 6)
    recipe = resolve_recipe(cfg, n_images=n, num_classes=k, ipc=n // k, image_size=size)
    plan = make_plan(recipe, n)
    spec = LOSSES.get(recipe.loss_for(args.regime))
    bf16 = variant.startswith("bf16")
    cl = variant.endswith("cl") or variant.endswith("compile")
    compiled = variant.endswith("compile")
    dev = torch.device("cpu")
    fmt = torch.channels_last if cl else torch.contiguous_format
    teacher_fn = None
    if args.regime == "slkd":
        torch.manual_seed(0)
        tnet = create_model("convnet-d3", num_classes=k).to(memory_format=fmt).eval()
        teacher = Teacher(tnet, "convnet-d3", [str(i) for i in range(k)], MEAN, STD, image_size=size)
        teacher_fn = teacher_forward(teacher, MEAN, STD, size, dev, bf16, cpu_amp=bf16, compile=compiled)
    targets = Targets(args.regime, k, spec, recipe.temperature, teacher_fn=teacher_fn)
    crit = make_criterion(spec.name, temperature=recipe.temperature)
    torch.manual_seed(1)
    model = create_model("convnet-d3", num_classes=k).to(memory_format=fmt)
    views = Views(recipe, size, MEAN, STD)
    if variant.endswith("translate_view"):
        swap_translate(views.post)
    net = torch.compile(model) if compiled else model
    tr = StudentTrainer(net, images, labels, recipe, plan, views, targets, crit, device=dev,
                        order_gen=make_generator(0, "order"), aug_gen=make_generator(0, "aug"),
                        amp=bf16, channels_last=cl, cpu_amp=bf16, cpu_channels_last=cl)
    return tr


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default="fp32,bf16", help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--recipe", default="dc")
    p.add_argument("--regime", default="hl", choices=("hl", "slkd"))
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--steps", type=int, default=6, help="timed steps per variant per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [v for v in args.variants.split(",") if v]
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        p.error(f"unknown variants {bad}")
    g = torch.Generator().manual_seed(0)
    n = args.ipc * args.num_classes
    images = torch.rand(n, 3, 32, 32, generator=g)
    labels = torch.arange(n) % args.num_classes
    trainers, setup_s, setup_cpu_s = {}, {}, {}
    for v in names:
        t0, c0 = time.perf_counter(), time.process_time()
        trainers[v] = build(v, args, images, labels)
        for _ in range(args.warmup):  # includes torch.compile's first (compiling) steps
            trainers[v].step()
        setup_s[v], setup_cpu_s[v] = time.perf_counter() - t0, time.process_time() - c0
    batch = trainers[names[0]].plan.batch_size
    # FLOPs of one step (student forward + backward, and the teacher's forward under SL+KD), counted by
    # torch's FlopCounterMode on an eager fp32 trainer: the same work for every variant.
    from torch.utils.flop_counter import FlopCounterMode

    counter = build("fp32", args, images, labels)
    counter.step()
    with FlopCounterMode(display=False) as fc:
        counter.step()
    flop_per_image = fc.get_total_flops() / batch
    rates: Dict[str, List[float]] = {v: [] for v in names}
    cpu_rates: Dict[str, List[float]] = {v: [] for v in names}  # per CPU second: robust to other processes
    for _ in range(args.rounds):
        for v in names:
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                trainers[v].step()
            rates[v].append(args.steps * batch / (time.perf_counter() - t0))
            cpu_rates[v].append(args.steps * batch / max(time.process_time() - c0, 1e-9))
    base = names[0]
    res = {"command": " ".join(["python", "bench/student_speed.py"] + list(argv if argv is not None else sys.argv[1:])),
           "git_revision": git_revision(), "machine": machine_info(), "data": "synthetic random pixels (speed only)",
           "recipe": args.recipe, "regime": args.regime, "ipc": args.ipc, "batch": batch, "threads": args.threads,
           "steps_per_round": args.steps, "rounds": args.rounds, "gflop_per_image_step": flop_per_image / 1e9,
           "gflops_note": "achieved GFLOP/s = FlopCounterMode FLOPs per image x images per CPU second (one thread)", "setup_and_warmup_seconds": setup_s,
           "setup_and_warmup_cpu_seconds": setup_cpu_s,
           "variants": {}}
    for v in names:
        ratio = [a / b for a, b in zip(rates[v], rates[base])]
        cratio = [a / b for a, b in zip(cpu_rates[v], cpu_rates[base])]
        res["variants"][v] = {"images_per_s_median": statistics.median(rates[v]), "rounds": rates[v],
                              f"ratio_to_{base}_median": statistics.median(ratio),
                              f"ratio_to_{base}_range": [min(ratio), max(ratio)],
                              "images_per_cpu_s_median": statistics.median(cpu_rates[v]),
                              "achieved_gflops_per_cpu_s": statistics.median(cpu_rates[v]) * flop_per_image / 1e9,
                              f"cpu_time_ratio_to_{base}_median": statistics.median(cratio),
                              f"cpu_time_ratio_to_{base}_range": [min(cratio), max(cratio)]}
        print(f"{v:16s} {statistics.median(rates[v]):8.1f} img/s   x{statistics.median(ratio):.2f} "
              f"({min(ratio):.2f}-{max(ratio):.2f}) wall, x{statistics.median(cratio):.2f} "
              f"({min(cratio):.2f}-{max(cratio):.2f}) CPU time vs {base}   "
              f"{statistics.median(cpu_rates[v]) * flop_per_image / 1e9:.0f} GFLOP/CPU-s   setup {setup_s[v]:.1f}s "
              f"({setup_cpu_s[v]:.1f} CPU s)", flush=True)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(res, indent=2, default=str))
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
