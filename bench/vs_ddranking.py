"""ddkit's student training loop vs a plain loop built like DD-Ranking's, same work, interleaved.

The plain loop follows the structure of DD-Ranking 0.2.0's evaluators (`train_one_epoch` in
ddranking/utils/train_and_eval.py, the `DSA` class in ddranking/aug/dsa.py; re-implemented here, not
copied): a TensorDataset in a DataLoader (RandomSampler, batch = their syn_batch_size 256, workers 0
on this 2-core machine), per batch one DSA op drawn from {scale, rotate, flip, color, crop, cutout}
with per-sample parameters (the affine thetas built per sample in Python, as theirs are), under SL+KD
the teacher on the augmented batch, ConvNet-3 student, CE (HL) or KL at T (SL+KD), SGD 0.01 /
momentum 0.9 / wd 5e-4, `loss.item()` and a top-1 accuracy every step, the scheduler stepped per epoch.

ddkit runs the same work through `StudentTrainer` (what `ddkit evaluate` trains with) under the `dc`
recipe: DSA single mode over the same six ops, SGD with the same values, batch min(256, N), KL at
T = 20 under SL+KD. Variants: `ddkit` (`--exact`: fp32, eager, NCHW), `ddkit_bf16` (`--cpu-amp true --compile
false`), `ddkit_bf16_compile` (`--cpu-amp true --compile true`), `ddkit_default` (what `ddkit evaluate` picks on
this machine for a full-length run, evaluate/fastpath.py; recorded as `default_path`), and `ddranking`: the
real DD-Ranking 0.2.0
`train_one_epoch` + `DSA` + `KLDivergenceLoss` when the package is importable (install it in a separate venv
for this bench only: it pins numpy < 2). Each round runs --epochs epochs of every
variant in turn (same images per variant); the report gives images/s (median over rounds) and
each variant's ratio to the plain loop, round by round, on wall time and on process CPU time.
Random pixels and random teacher weights: speed only (accuracy: bench/bf16_accuracy.py).

    OMP_NUM_THREADS=1 nice -n 10 python bench/vs_ddranking.py --regime hl --ipc 10 --threads 1 \
        --output bench/results/vs_ddranking_cpu.json
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from ddkit.evaluate import EvalConfig, make_criterion, make_plan, resolve_recipe
from ddkit.evaluate.losses import LOSSES
from ddkit.evaluate.student import StudentTrainer, Targets, Views, teacher_forward
from ddkit.models import create_model
from ddkit.teachers import Teacher
from ddkit.utils import git_revision, machine_info, make_generator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_time import lscpu  # noqa: E402  (one lscpu reader for every bench script)

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
T = 20.0


class PlainDSA:
    """DSA as DD-Ranking's evaluators call it ('S' mode, not siamese): one op per batch, per-sample draws."""

    def __init__(self) -> None:
        self.ops = [self.scale, self.rotate, self.flip, self.color, self.crop, self.cutout]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        op = self.ops[int(torch.randint(0, len(self.ops), (1,)).item())]
        return op(x).contiguous()

    @staticmethod
    def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        grid = F.affine_grid(theta, list(x.shape), align_corners=True)
        return F.grid_sample(x, grid, align_corners=True)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        r = 1.2
        sx = torch.rand(x.shape[0]) * (r - 1 / r) + 1 / r
        sy = torch.rand(x.shape[0]) * (r - 1 / r) + 1 / r
        theta = torch.tensor([[[float(sx[i]), 0.0, 0.0], [0.0, float(sy[i]), 0.0]] for i in range(x.shape[0])])
        return self._affine(x, theta)

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        a = (torch.rand(x.shape[0]) - 0.5) * 2 * 15.0 / 180 * math.pi
        theta = torch.tensor([[[math.cos(float(a[i])), -math.sin(float(a[i])), 0.0],
                               [math.sin(float(a[i])), math.cos(float(a[i])), 0.0]] for i in range(x.shape[0])])
        return self._affine(x, theta)

    def flip(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(torch.rand(x.shape[0], 1, 1, 1) < 0.5, x.flip(3), x)

    def color(self, x: torch.Tensor) -> torch.Tensor:
        x = x + (torch.rand(x.shape[0], 1, 1, 1) - 0.5)
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * (torch.rand(x.shape[0], 1, 1, 1) * 2.0) + m
        m = x.mean(dim=[1, 2, 3], keepdim=True)
        return (x - m) * (torch.rand(x.shape[0], 1, 1, 1) + 0.5) + m

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        s = int(h * 0.125 + 0.5)
        tx = torch.randint(-s, s + 1, (b, 1, 1))
        ty = torch.randint(-s, s + 1, (b, 1, 1))
        gb, gx, gy = torch.meshgrid(torch.arange(b), torch.arange(h), torch.arange(w), indexing="ij")
        gx = torch.clamp(gx + tx + 1, 0, h + 1)
        gy = torch.clamp(gy + ty + 1, 0, w + 1)
        xp = F.pad(x, [1, 1, 1, 1])
        return xp.permute(0, 2, 3, 1).contiguous()[gb, gx, gy].permute(0, 3, 1, 2)

    def cutout(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        c = int(h * 0.5 + 0.5)
        ox = torch.randint(0, h + (1 - c % 2), (b, 1, 1))
        oy = torch.randint(0, w + (1 - c % 2), (b, 1, 1))
        gb, gx, gy = torch.meshgrid(torch.arange(b), torch.arange(c), torch.arange(c), indexing="ij")
        gx = torch.clamp(gx + ox - c // 2, 0, h - 1)
        gy = torch.clamp(gy + oy - c // 2, 0, w - 1)
        mask = torch.ones(b, h, w)
        mask[gb, gx, gy] = 0
        return x * mask.unsqueeze(1)


def _plain_setup(images, labels):
    """The student, SGD, StepLR and DataLoader both DD-Ranking loops (plain and real) train with."""
    torch.manual_seed(1)
    model = create_model("convnet-d3", num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10 ** 6, gamma=0.1)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    ds = TensorDataset((images - mean) / std, labels)  # their sets are stored normalised
    loader = DataLoader(ds, batch_size=256, sampler=RandomSampler(ds), num_workers=0)
    return model, opt, sched, ds, loader


def plain_epoch_fn(images, labels, teacher, regime: str) -> Callable[[], int]:
    """One epoch of the DD-Ranking-style loop per call; returns the images seen."""
    model, opt, sched, ds, loader = _plain_setup(images, labels)
    aug = PlainDSA()
    stats = {"loss": [], "acc": []}

    def epoch() -> int:
        model.train()
        seen = 0
        for x, y in loader:
            x = aug(x)
            if regime == "slkd":
                with torch.no_grad():
                    t = torch.stack([teacher(x)], 0).mean(0)
            out = model(x)
            if regime == "slkd":
                loss = F.kl_div(F.log_softmax(out / T, 1), F.softmax(t / T, 1), reduction="batchmean")
            else:
                loss = F.cross_entropy(out, y)
            stats["loss"].append(loss.item())
            loss.backward()
            opt.step()
            opt.zero_grad()
            stats["acc"].append((out.argmax(1) == y).float().mean().item())
            seen += x.shape[0]
        sched.step()
        return seen

    return epoch


def ddranking_epoch_fn(images, labels, teacher, regime: str) -> Callable[[], int]:
    """One epoch of the real DD-Ranking 0.2.0 loop (`ddranking.utils.train_one_epoch` with its `DSA`, 'S' mode,
    and its `KLDivergenceLoss`); needs the package importable (a separate venv for this bench, never a ddkit
    dependency). Same model, optimiser, batch and data as the plain loop; the teacher as DD-Ranking holds it
    (eval mode, parameters not frozen)."""
    from ddranking.aug import DSA
    from ddranking.loss import KLDivergenceLoss
    from ddranking.utils import train_one_epoch
    model, opt, sched, ds, loader = _plain_setup(images, labels)
    # DC/DSA's ParamDiffAug values, the ones DD-Ranking's configs pass as aug_params
    aug = DSA({"scale": 1.2, "rotate": 15.0, "crop": 0.125, "cutout": 0.5, "flip": 0.5, "brightness": 1.0,
               "saturation": 2.0, "contrast": 0.5}, seed=-1, aug_mode="S")
    loss_fn = KLDivergenceLoss(temperature=T) if regime == "slkd" else torch.nn.CrossEntropyLoss()
    count = [0]

    def epoch() -> int:
        train_one_epoch(count[0], model, loader, loss_fn, opt, soft_label_mode="M" if regime == "slkd" else "S",
                        aug_func=aug, tea_models=[teacher] if regime == "slkd" else None, lr_scheduler=sched,
                        log_interval=10 ** 9, device="cpu")
        count[0] += 1
        return len(ds)

    return epoch


def ddkit_epoch_fn(images, labels, tnet, regime: str, bf16: bool, compiled: bool) -> Callable[[], int]:
    """The same images per call through StudentTrainer (dc recipe; KL at T = 20 under SL+KD)."""
    n, k = len(images), 10
    cfg = EvalConfig(recipe="dc", regime=regime, epochs=10 ** 6, cpu_amp=bf16, compile=compiled)
    recipe = resolve_recipe(cfg, n_images=n, num_classes=k, ipc=n // k, image_size=32)
    plan = make_plan(recipe, n)
    spec = LOSSES.get(recipe.loss_for(regime))
    dev = torch.device("cpu")
    fmt = torch.channels_last if compiled else torch.contiguous_format
    fn = None
    if regime == "slkd":
        teacher = Teacher(tnet.to(memory_format=fmt), "convnet-d3", [str(i) for i in range(k)], MEAN, STD,
                          image_size=32)
        fn = teacher_forward(teacher, MEAN, STD, 32, dev, True, cpu_amp=bf16, compile=compiled)
    targets = Targets(regime, k, spec, recipe.temperature, teacher_fn=fn)
    crit = make_criterion(spec.name, temperature=recipe.temperature)
    torch.manual_seed(1)
    model = create_model("convnet-d3", num_classes=k).to(memory_format=fmt)
    tr = StudentTrainer(torch.compile(model) if compiled else model, images, labels, recipe, plan,
                        Views(recipe, 32, MEAN, STD), targets, crit, device=dev, order_gen=make_generator(0, "order"),
                        aug_gen=make_generator(0, "aug"), cpu_amp=bf16, cpu_channels_last=compiled)
    steps = max(1, round(n / plan.batch_size))
    acc = torch.zeros(())

    def epoch() -> int:
        nonlocal acc
        for _ in range(steps):
            acc = acc + tr.step()
        float(acc)  # one sync per epoch, as train_run does
        return steps * plan.batch_size

    return epoch


def default_path():
    """What `ddkit evaluate` runs here for a full-length evaluation (evaluate/fastpath.py, DDKIT_EXACT ignored)."""
    import os

    from ddkit.evaluate import fastpath

    saved = os.environ.pop(fastpath.EXACT_ENV, None)
    try:
        return fastpath.choose(EvalConfig(), torch.device("cpu"), 10 * fastpath.COMPILE_MIN_IMAGES)
    finally:
        if saved is not None:
            os.environ[fastpath.EXACT_ENV] = saved


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--regime", default="hl", choices=("hl", "slkd"))
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", default="plain,ddkit,ddkit_bf16")
    p.add_argument("--epochs", type=int, default=2, help="epochs per variant per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    n = args.ipc * 10
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(n, 3, 32, 32, generator=g), torch.arange(n) % 10
    torch.manual_seed(0)
    tnet = create_model("convnet-d3", num_classes=10).eval()
    names = [v for v in args.variants.split(",") if v]
    default = default_path()
    fns: Dict[str, Callable[[], int]] = {}
    setup: Dict[str, float] = {}
    for v in names:
        c0 = time.process_time()
        if v == "plain":
            fns[v] = plain_epoch_fn(images, labels, tnet, args.regime)
        elif v == "ddranking":
            fns[v] = ddranking_epoch_fn(images, labels, tnet, args.regime)
        else:
            torch.manual_seed(0)  # the same teacher weights, a fresh copy (a compiled variant converts its layout)
            bf16, comp = (default.bf16, default.compile) if v == "ddkit_default" else ("bf16" in v, "compile" in v)
            fns[v] = ddkit_epoch_fn(images, labels, create_model("convnet-d3", num_classes=10).eval(), args.regime,
                                    bf16, comp)
        fns[v]()  # warm-up epoch (compiles when asked)
        setup[v] = time.process_time() - c0
    wall: Dict[str, List[float]] = {v: [] for v in names}
    cpu: Dict[str, List[float]] = {v: [] for v in names}
    for _ in range(args.rounds):
        for v in names:
            t0, c0, seen = time.perf_counter(), time.process_time(), 0
            for _ in range(args.epochs):
                seen += fns[v]()
            wall[v].append(seen / (time.perf_counter() - t0))
            cpu[v].append(seen / max(time.process_time() - c0, 1e-9))
    res = {"command": " ".join(["python", "bench/vs_ddranking.py"] + list(argv if argv is not None else sys.argv[1:])),
           "git_revision": git_revision(), "machine": {**machine_info(), "lscpu": lscpu()},
           "data": "synthetic random pixels (speed only)", "default_path": default.to_dict(),
           "regime": args.regime, "ipc": args.ipc, "threads": args.threads, "epochs_per_round": args.epochs,
           "rounds": args.rounds, "setup_and_warmup_cpu_seconds": setup, "variants": {}}
    for v in names:
        rw = [a / b for a, b in zip(wall[v], wall[names[0]])]
        rc = [a / b for a, b in zip(cpu[v], cpu[names[0]])]
        res["variants"][v] = {"images_per_s_median": statistics.median(wall[v]), "rounds_images_per_s": wall[v],
                              "images_per_cpu_s_median": statistics.median(cpu[v]),
                              f"wall_ratio_to_{names[0]}_median": statistics.median(rw),
                              f"wall_ratio_to_{names[0]}_range": [min(rw), max(rw)],
                              f"cpu_ratio_to_{names[0]}_median": statistics.median(rc),
                              f"cpu_ratio_to_{names[0]}_range": [min(rc), max(rc)]}
        print(f"{args.regime} ipc{args.ipc} t{args.threads} {v:20s} {statistics.median(wall[v]):7.1f} img/s  "
              f"x{statistics.median(rw):.2f} wall ({min(rw):.2f}-{max(rw):.2f})  x{statistics.median(rc):.2f} CPU "
              f"({min(rc):.2f}-{max(rc):.2f})", flush=True)
    if args.output:
        out = Path(args.output)
        state = json.loads(out.read_text()) if out.exists() else {"runs": []}
        state["runs"] = [r for r in state["runs"] if (r["regime"], r["ipc"], r["threads"]) !=
                         (args.regime, args.ipc, args.threads)] + [res]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(state, indent=2, default=str))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
