"""Seeds in one pass: images/s of S stacked students vs the same S students one after another.

For each regime in --regimes, each S in --stacks and each precision in --amp, in one process and interleaved
round by round (A/B: every variant runs once per round, ratios are taken within a round):
  * `stacked`: one `ddkit.evaluate.stacked.StackedTrainer.step()`, i.e. S student steps end to end: one
    merged batch, one augmentation call per op, one online-teacher forward (SL+KD) over all S·B views, the
    students through torch.func vmap (bf16 inside vmap with `--amp on`, as `--cpu-amp` does);
  * `sequential`: S `StudentTrainer.step()` calls, one per student (what `evaluate` does by default);
  * `grouped` (model step only, no data path; off with --no-grouped): the same S ConvNet-3 students written as
    ONE net with grouped convolutions (students side by side in the channel dim), to tell whether an explicit
    grouped net would beat vmap's batching rules on this CPU; compared with S plain model steps (`plain`).
Synthetic CIFAR-shape set (random pixels; speed only), ConvNet-3 students and (SL+KD) a ConvNet-3 teacher with
random weights, the chosen recipe. Images/s count every student's samples (S·batch per stacked step). The JSON
records the command, git revision and machine (lscpu model and flags, through bench/demo_time.py's reader).

    OMP_NUM_THREADS=1 nice -n 10 python bench/stacked_speed.py --stacks 3 --recipe cim --regimes hl,slkd \
        --amp off,on --no-grouped --stages 1 --output bench/results/stacked_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

from ddkit.evaluate import EvalConfig, make_criterion, make_plan, resolve_recipe
from ddkit.evaluate.losses import LOSSES
from ddkit.evaluate.stacked import StackedTrainer
from ddkit.evaluate.student import StudentTrainer, Targets, Views, teacher_forward
from ddkit.models import create_model
from ddkit.teachers import Teacher
from ddkit.utils import cpu_bf16_native, derive_seed, git_revision, machine_info, make_generator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_time import lscpu  # noqa: E402  (one lscpu reader for every bench script)

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def student(seed: int):
    torch.manual_seed(derive_seed(seed, "init"))
    return create_model("convnet-d3", num_classes=10)


def grouped_step(S: int, B: int) -> Dict[str, Callable[[], None]]:
    """`grouped` and `plain` model steps (SGD, CE) for S ConvNet-3 students on fixed tensors."""
    models = [student(s) for s in range(S)]
    x = torch.randn(S, B, 3, 32, 32)
    y = torch.randint(0, 10, (S, B))
    opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in models]
    gp = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]).requires_grad_()
          for n, _ in models[0].named_parameters()}
    gopt = torch.optim.SGD(list(gp.values()), lr=0.01, momentum=0.9)

    def plain() -> None:
        for i, (m, o) in enumerate(zip(models, opts)):
            loss = F.cross_entropy(m(x[i]), y[i])
            o.zero_grad()
            loss.backward()
            o.step()

    def grouped() -> None:
        h = x.transpose(0, 1).reshape(B, S * 3, 32, 32)  # students side by side in the channel dim
        for d in (1, 2, 3):
            w, b = gp[f"features.block{d}.0.weight"], gp[f"features.block{d}.0.bias"]
            h = F.conv2d(h, w.reshape(-1, *w.shape[2:]), b.reshape(-1), padding=1, groups=S)
            h = F.group_norm(h, h.shape[1], gp[f"features.block{d}.1.weight"].reshape(-1),
                             gp[f"features.block{d}.1.bias"].reshape(-1))
            h = F.avg_pool2d(F.relu(h), 2)
        f = h.reshape(B, S, -1).transpose(0, 1)
        out = torch.baddbmm(gp["classifier.bias"][:, None, :], f, gp["classifier.weight"].transpose(1, 2))
        loss = F.cross_entropy(out.reshape(S * B, -1), y.reshape(-1), reduction="none").view(S, B).mean(1).sum()
        gopt.zero_grad()
        loss.backward()
        gopt.step()

    return {"grouped": grouped, "plain": plain}


def data_path(regime: str, recipe_name: str, ipc: int, amp: bool, S: int) -> Dict[str, Callable[[], object]]:
    """`stacked` and `sequential` steps of S students for one regime and precision on a synthetic set."""
    k, n, dev = 10, ipc * 10, torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(n, 3, 32, 32, generator=g), torch.arange(n) % k
    cfg = EvalConfig(recipe=recipe_name, regime=regime, epochs=10 ** 6)
    recipe = resolve_recipe(cfg, n_images=n, num_classes=k, ipc=ipc, image_size=32)
    plan = make_plan(recipe, n)
    spec = LOSSES.get(recipe.loss_for(regime))
    fn = None
    if regime == "slkd":
        torch.manual_seed(0)
        teacher = Teacher(create_model("convnet-d3", num_classes=k).eval(), "convnet-d3", [str(i) for i in range(k)],
                          MEAN, STD, image_size=32)
        fn = teacher_forward(teacher, MEAN, STD, 32, dev, True, cpu_amp=amp)
    targets = Targets(regime, k, spec, recipe.temperature, teacher_fn=fn)
    crit = make_criterion(spec.name, temperature=recipe.temperature)
    views = Views(recipe, 32, MEAN, STD)
    seeds = list(range(S))
    st = StackedTrainer([student(s) for s in seeds], seeds, images, labels, recipe, plan, views, targets, crit,
                        device=dev, cpu_amp=amp)
    seq = [StudentTrainer(student(s), images, labels, recipe, plan, views, targets, crit, device=dev,
                          order_gen=make_generator(s, "order"), aug_gen=make_generator(s, "aug"), cpu_amp=amp)
           for s in seeds]
    return {"stacked": st.step, "sequential": lambda: [t.step() for t in seq], "batch": plan.batch_size}


def stage_ms(f: Callable[[], object], steps: int) -> Dict[str, float]:
    """Milliseconds per call of `f` spent in each `eval.*` stage label (torch.profiler, CPU time of the labelled
    ranges), to say where a stacked step gains or loses against the S one-student steps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            f()
    out: Dict[str, float] = {}
    for ev in prof.key_averages():
        if ev.key.startswith("eval."):
            out[ev.key] = round(ev.cpu_time_total / 1000.0 / steps, 2)
    return dict(sorted(out.items()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stacks", default="3")
    p.add_argument("--recipe", default="cim")
    p.add_argument("--regimes", default="hl,slkd", help="comma list of hl, slkd")
    p.add_argument("--amp", default="off", help="comma list of off, on (on = bf16 as --cpu-amp)")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-grouped", action="store_true", help="skip the model-only grouped/plain pair")
    p.add_argument("--stages", type=int, default=0, help="after the rounds, profile this many calls of each "
                                                          "data-path variant: ms per call in each eval.* stage")
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps: Dict[str, Callable[[], object]] = {}
    samples: Dict[str, int] = {}
    B = 0
    for regime in (r for r in args.regimes.split(",") if r):
        for amp in (a == "on" for a in args.amp.split(",") if a):
            for S in (int(v) for v in args.stacks.split(",") if v):
                path = data_path(regime, args.recipe, args.ipc, amp, S)
                B = int(path.pop("batch"))
                for kind, f in path.items():
                    name = f"{regime}{'_bf16' if amp else ''}/{kind}_{S}"
                    steps[name], samples[name] = f, S * B
    if not args.no_grouped:
        for S in (int(v) for v in args.stacks.split(",") if v and int(v) > 1):
            for name, f in grouped_step(S, B).items():
                steps[f"model/{name}_{S}"], samples[f"model/{name}_{S}"] = f, S * B
    for f in steps.values():  # warm-up
        f()
    rates: Dict[str, List[float]] = {v: [] for v in steps}
    for _ in range(args.rounds):
        for v, f in steps.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                f()
            rates[v].append(args.steps * samples[v] / (time.perf_counter() - t0))
    cmd = " ".join(["python", "bench/stacked_speed.py"] + list(argv if argv is not None else sys.argv[1:]))
    res = {"command": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} {cmd}",
           "git_revision": git_revision(), "machine": {**machine_info(), **lscpu(), "cpu_bf16_native": cpu_bf16_native()},
           "data": "synthetic random pixels (speed only)", "recipe": args.recipe, "ipc": args.ipc,
           "batch_per_student": B, "threads": args.threads, "steps_per_round": args.steps, "rounds": args.rounds,
           "results": {}}
    for v in steps:
        group, kind_s = v.split("/")
        kind, S = kind_s.rsplit("_", 1)
        ref = {"stacked": "sequential", "grouped": "plain"}.get(kind)
        row = {"images_per_s_median": statistics.median(rates[v]), "rounds": rates[v]}
        if ref:
            ratio = [a / b for a, b in zip(rates[v], rates[f"{group}/{ref}_{S}"])]
            row[f"ratio_to_{ref}_median"] = statistics.median(ratio)
            row[f"ratio_to_{ref}_range"] = [min(ratio), max(ratio)]
        res["results"][v] = row
        extra = f"  x{row[f'ratio_to_{ref}_median']:.2f} vs {ref}" if ref else ""
        print(f"{v:26s} {row['images_per_s_median']:8.1f} img/s{extra}", flush=True)
    if args.stages:
        for v, f in steps.items():
            if not v.startswith("model/"):
                res["results"][v]["stage_ms_per_call"] = stage_ms(f, args.stages)
                print(f"{v:26s} " + ", ".join(f"{k[5:]} {ms:.0f}" for k, ms in
                                              res["results"][v]["stage_ms_per_call"].items()), flush=True)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(res, indent=2, default=str))
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
