"""Seeds in one pass: images/s of S stacked students vs the same S students one after another.

For each S in --stacks, in one process and interleaved round by round:
  * `stacked`: one `ddkit.evaluate.stacked.StackedTrainer.step()` (torch.func vmap over stacked
    weights), i.e. S student steps;
  * `sequential`: S `StudentTrainer.step()` calls, one per student (what `evaluate` does by default);
  * `grouped` (model step only, no data path): the same S ConvNet-3 students written as ONE net with
    grouped convolutions (students side by side in the channel dim), to tell whether an explicit
    grouped net would beat vmap's batching rules on this CPU; compared with S plain model steps
    (`plain`) on the same tensors.
Synthetic CIFAR-shape set (random pixels; speed only), ConvNet-3 students, the chosen recipe/regime.
Images/s count every student's samples (S·batch per stacked step). Ratios are taken round by round.

    OMP_NUM_THREADS=1 nice -n 10 python bench/stacked_speed.py --stacks 1,3,5 --recipe dc --regime hl \
        --output bench/results/stacked_cpu.json
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

from ddkit.evaluate import EvalConfig, make_criterion, make_plan, resolve_recipe
from ddkit.evaluate.losses import LOSSES
from ddkit.evaluate.stacked import StackedTrainer
from ddkit.evaluate.student import StudentTrainer, Targets, Views, teacher_forward
from ddkit.models import create_model
from ddkit.teachers import Teacher
from ddkit.utils import derive_seed, git_revision, machine_info, make_generator

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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stacks", default="1,3,5")
    p.add_argument("--recipe", default="dc")
    p.add_argument("--regime", default="hl", choices=("hl", "slkd"))
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-grouped", action="store_true", help="skip the model-only grouped/plain pair")
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    k, n, dev = 10, args.ipc * 10, torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(n, 3, 32, 32, generator=g), torch.arange(n) % k
    cfg = EvalConfig(recipe=args.recipe, regime=args.regime, epochs=10 ** 6)
    recipe = resolve_recipe(cfg, n_images=n, num_classes=k, ipc=args.ipc, image_size=32)
    plan = make_plan(recipe, n)
    spec = LOSSES.get(recipe.loss_for(args.regime))
    fn = None
    if args.regime == "slkd":
        torch.manual_seed(0)
        teacher = Teacher(create_model("convnet-d3", num_classes=k).eval(), "convnet-d3", [str(i) for i in range(k)],
                          MEAN, STD, image_size=32)
        fn = teacher_forward(teacher, MEAN, STD, 32, dev, True)
    targets = Targets(args.regime, k, spec, recipe.temperature, teacher_fn=fn)
    crit = make_criterion(spec.name, temperature=recipe.temperature)
    views = Views(recipe, 32, MEAN, STD)
    B = plan.batch_size
    steps: Dict[str, Callable[[], None]] = {}
    samples: Dict[str, int] = {}
    for S in (int(v) for v in args.stacks.split(",") if v):
        seeds = list(range(S))
        st = StackedTrainer([student(s) for s in seeds], seeds, images, labels, recipe, plan, views, targets, crit,
                            device=dev)
        seq = [StudentTrainer(student(s), images, labels, recipe, plan, views, targets, crit, device=dev,
                              order_gen=make_generator(s, "order"), aug_gen=make_generator(s, "aug")) for s in seeds]
        steps[f"stacked_{S}"] = st.step
        steps[f"sequential_{S}"] = lambda seq=seq: [t.step() for t in seq]
        samples[f"stacked_{S}"] = samples[f"sequential_{S}"] = S * B
        if S > 1 and not args.no_grouped:
            for name, f in grouped_step(S, B).items():
                steps[f"{name}_{S}"] = f
                samples[f"{name}_{S}"] = S * B
    for f in steps.values():  # warm-up
        f()
    rates: Dict[str, List[float]] = {v: [] for v in steps}
    for _ in range(args.rounds):
        for v, f in steps.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                f()
            rates[v].append(args.steps * samples[v] / (time.perf_counter() - t0))
    res = {"command": " ".join(["python", "bench/stacked_speed.py"] + list(argv if argv is not None else sys.argv[1:])),
           "git_revision": git_revision(), "machine": machine_info(), "data": "synthetic random pixels (speed only)",
           "recipe": args.recipe, "regime": args.regime, "ipc": args.ipc, "batch_per_student": B,
           "threads": args.threads, "steps_per_round": args.steps, "rounds": args.rounds, "results": {}}
    for v in steps:
        kind, S = v.rsplit("_", 1)
        ref = {"stacked": "sequential", "grouped": "plain"}.get(kind)
        row = {"images_per_s_median": statistics.median(rates[v]), "rounds": rates[v]}
        if ref:
            ratio = [a / b for a, b in zip(rates[v], rates[f"{ref}_{S}"])]
            row[f"ratio_to_{ref}_median"] = statistics.median(ratio)
            row[f"ratio_to_{ref}_range"] = [min(ratio), max(ratio)]
        res["results"][v] = row
        extra = f"  x{row[f'ratio_to_{ref}_median']:.2f} vs {ref}" if ref else ""
        print(f"{v:14s} {row['images_per_s_median']:8.1f} img/s{extra}", flush=True)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(res, indent=2, default=str))
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
