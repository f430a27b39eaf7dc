"""Throughput of the evaluator's SL+KD training step vs the bare student fwd+bwd, per image size.

Measures, in the same process and on the same device, images/s of
  * `slkd`: one `StudentTrainer.step()` exactly as `ddkit evaluate` runs it with the `cim` recipe and
    regime slkd: gather by index from the device-resident set → FactorCrop(2) → normalise → per-sample
    DSA (color_crop_cutout_flip_scale_rotate) → online teacher on the augmented view → MSE → AdamW step;
  * `bare`: the same student on one fixed, already-normalised batch: forward, backward, AdamW step
    (no augmentation, no teacher);
and reports their ratio (1.0 = the data path and the teacher are free). bf16 autocast and
channels_last on CUDA, as in the evaluator. Random weights and random images: only speed is measured.

    python bench/evaluate_throughput.py --device cuda --student resnet18_modified --sizes 32,64,224
    python bench/evaluate_throughput.py --device cpu --student convnet-d3 --sizes 32,64 --batch 32 --steps 5 --threads 1

On CPU, sizes above --cpu-max-size (default 64) are skipped and listed under "skipped".
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch

from ddkit.evaluate import EvalConfig, make_criterion, make_plan, resolve_recipe
from ddkit.evaluate.losses import LOSSES
from ddkit.evaluate.student import StudentTrainer, Targets, Views, build_optimizer, teacher_forward
from ddkit.models import create_model
from ddkit.teachers import Teacher
from ddkit.utils import autocast, get_device, git_revision, machine_info, make_generator, peak_memory_mb

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(fn, steps: int, warmup: int, dev: torch.device) -> float:
    for _ in range(warmup):
        fn()
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(dev)
    return time.perf_counter() - t0


def bench_size(size: int, args: argparse.Namespace, dev: torch.device) -> dict:
    k, b = args.num_classes, args.batch
    g = torch.Generator().manual_seed(0)
    n = max(b, args.set_size)
    images = torch.rand(n, 3, size, size, generator=g).to(dev)
    labels = (torch.arange(n) % k).to(dev)
    classes = [f"c{i}" for i in range(k)]
    cl = dev.type == "cuda"

    torch.manual_seed(0)
    tnet = create_model(args.teacher_arch, num_classes=k, image_size=size).to(dev)
    if cl:
        tnet.to(memory_format=torch.channels_last)
    teacher = Teacher(tnet, args.teacher_arch, classes, MEAN, STD, image_size=size)

    cfg = EvalConfig(recipe="cim", regime="slkd", batch_size=b, epochs=10**6)
    recipe = resolve_recipe(cfg, n_images=n, num_classes=k, ipc=n // k, image_size=size)
    plan = make_plan(recipe, n)
    spec = LOSSES.get(recipe.slkd_loss)
    targets = Targets("slkd", k, spec, recipe.temperature, teacher_fn=teacher_forward(teacher, MEAN, STD, size, dev, True))
    crit = make_criterion(spec.name, temperature=recipe.temperature)

    def student():
        torch.manual_seed(1)
        m = create_model(args.student, num_classes=k, image_size=size).to(dev)
        return m.to(memory_format=torch.channels_last) if cl else m

    trainer = StudentTrainer(student(), images, labels, recipe, plan, Views(recipe, size, MEAN, STD), targets, crit,
                             device=dev, order_gen=make_generator(0, "order"), aug_gen=make_generator(0, "aug"))
    model = student()
    opt = build_optimizer(model, recipe)
    x = ((images[:b] - torch.tensor(MEAN, device=dev).view(1, 3, 1, 1)) / torch.tensor(STD, device=dev).view(1, 3, 1, 1))
    x = x.contiguous(memory_format=torch.channels_last) if cl else x
    y = labels[:b]

    def bare():
        with autocast(dev):
            out = model(x)
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # Interleave the two measurements in rounds and keep the median of each, so that load from other
    # processes on a shared machine hits both rates alike.
    r_slkd, r_bare = [], []
    for _ in range(args.rounds):
        r_slkd.append(args.steps * b / _timed(trainer.step, args.steps, args.warmup, dev))
        r_bare.append(args.steps * b / _timed(bare, args.steps, args.warmup, dev))
    slkd, plain = statistics.median(r_slkd), statistics.median(r_bare)
    return {"slkd_images_per_s": slkd, "bare_images_per_s": plain, "ratio": slkd / plain,
            "slkd_rounds": r_slkd, "bare_rounds": r_bare, "peak_memory_mb": peak_memory_mb(dev)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--student", default="resnet18_modified")
    p.add_argument("--teacher-arch", default=None, help="default: the student's architecture (CIM's setting)")
    p.add_argument("--sizes", default="32,64,224")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per rate; the median is reported")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--set-size", type=int, default=1000, help="images in the synthetic device-resident set")
    p.add_argument("--cpu-max-size", type=int, default=64, help="on CPU, skip sizes above this")
    p.add_argument("--output", default=None, help="default: bench/results/evaluate_throughput_<device>.json")
    args = p.parse_args(argv)
    args.teacher_arch = args.teacher_arch or args.student
    dev = get_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    tag = "cpu" if dev.type == "cpu" else re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name(dev)).strip("-").lower()
    out = Path(args.output or Path(__file__).parent / "results" / f"evaluate_throughput_{tag}.json")
    res = {"command": " ".join(["python", sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
           "git_revision": git_revision(), "machine": machine_info(dev), "device": str(dev), "student": args.student,
           "teacher_arch": args.teacher_arch, "batch": args.batch, "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds,
           "num_classes": args.num_classes, "recipe": "cim (FactorCrop(2) + per-sample DSA, MSE to online teacher)",
           "sizes": {}, "skipped": {}}
    for s in (int(v) for v in args.sizes.split(",") if v):
        if dev.type == "cpu" and s > args.cpu_max_size:
            res["skipped"][str(s)] = f"CPU run: size above --cpu-max-size {args.cpu_max_size}"
            continue
        r = bench_size(s, args, dev)
        res["sizes"][str(s)] = r
        print(f"{s:4d} px  slkd {r['slkd_images_per_s']:9.1f} img/s   bare {r['bare_images_per_s']:9.1f} img/s   "
              f"ratio {r['ratio']:.2f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json.loads(json.dumps(res, default=str)), indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
