"""The matching family on CIFAR-10 under HL / SL, beside random and k-center from the same run, resumable.

For each method × IPC the set is distilled once (cached under --set-dir; distill wall and CPU seconds and
seconds per iteration recorded), then students are trained under each regime. Every finished cell is
written to the JSON at once (command, git revision, machine, data, protocol); a rerun skips finished cells.
CPU-sized on purpose: methods run their `preset` (default cpu), the test split can be cut to a seeded
class-balanced subset (--test-per-class) and students get a small compute budget. Headline: last-epoch
test accuracy, mean ± std (ddof 0) over student seeds.

Example (the run committed in bench/results/matching_cifar10_cpu.json):
    OMP_NUM_THREADS=1 nice -n 10 python bench/matching_grid.py --dataset tar:/work/shared/data/cifar10-jpeg75.tar.gz \
        --cache-dir /work/runs/cache --teacher /work/runs/teachers/cifar10_jpeg75_convnet3_e8 \
        --buffer /work/runs/matching/experts_cpu --methods random,kcenter,dc,dsa,dm,mtt,datm --ipcs 1,10 \
        --regimes hl,sl --budget-epochs 0.02 --seeds 3 --test-per-class 200 --output bench/results/matching_cifar10_cpu.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ddkit.config import to_dict
from ddkit.data import create_dataset
from ddkit.distilled import DistilledSet
from ddkit.evaluate import EvalConfig, evaluate
from ddkit.methods import create_method, method_spec
from ddkit.teachers import check_teacher, load_teacher
from ddkit.utils import atomic_write_bytes, get_device, git_revision, machine_info, make_generator

MATCHING = ("dc", "dsa", "dm", "mtt", "datm")
RECIPES = {"hl": "hardtruths-hl", "sl": "hardtruths-sl"}


def _iterations(ds: DistilledSet) -> int:
    """Iterations run in total: an int for coupled methods, a list over classes for DM (one run per class)."""
    v = ds.meta.get("iterations_run", 0)
    return int(sum(v)) if isinstance(v, list) else int(v or 0)


def _save(out: Path, state: dict) -> None:
    """Write `state`, merged with what other processes of the same grid wrote meanwhile (cells by set and
    regime, sets by name), so several processes can fill one file."""
    if out.exists():
        disk = json.loads(out.read_text())
        have = {(c["set"], c["regime"]) for c in state["cells"]}
        state["cells"] += [c for c in disk.get("cells", []) if (c["set"], c["regime"]) not in have]
        state["sets"] = {**disk.get("sets", {}), **state["sets"]}
        state.setdefault("teacher", disk.get("teacher"))
    atomic_write_bytes(out, json.dumps(state, indent=1, default=str).encode())


def _distill(args, method: str, ipc: int, train, teacher, buffer: str, dev):
    name = f"{method}_ipc{ipc}"
    set_dir = Path(args.set_dir) / name
    if set_dir.exists():
        return name, DistilledSet.load(set_dir)
    opts = {"ipc": ipc, "seed": 0}
    if method in MATCHING:
        opts["preset"] = args.preset
    if method in ("mtt", "datm"):
        opts["buffer"] = buffer
    spec = method_spec(method)
    use_teacher = teacher if (spec.needs_teacher or method == "datm") else None
    cpu0, t0 = time.process_time(), time.perf_counter()
    ds = create_method(method, **opts)(train, use_teacher, device=dev)
    ds.meta["bench_distill_wall_seconds"] = time.perf_counter() - t0
    ds.meta["bench_distill_cpu_seconds"] = time.process_time() - cpu0
    ds.save(set_dir)
    return name, ds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--cache-dir", default="runs/cache")
    p.add_argument("--teacher", default=None, help="teacher for k-center features and SL labels (without one: "
                   "only sets that need no teacher are distilled, and only HL is evaluated)")
    p.add_argument("--buffer", required=True, help="expert buffer for mtt/datm (ddkit experts train)")
    p.add_argument("--methods", default="random,kcenter," + ",".join(MATCHING))
    p.add_argument("--ipcs", default="1,10")
    p.add_argument("--regimes", default="hl,sl")
    p.add_argument("--preset", default="cpu", help="preset of the matching methods")
    p.add_argument("--budget-epochs", type=float, default=0.02)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--test-per-class", type=int, default=0, help="seeded class-balanced test subset (0 = all)")
    p.add_argument("--set-dir", default="/work/runs/matching/sets")
    p.add_argument("--output", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--distill-only", action="store_true")
    args = p.parse_args()

    dev = get_device(args.device)
    out = Path(args.output)
    state = json.loads(out.read_text()) if out.exists() else {"cells": [], "sets": {}}
    state.update(command=" ".join([Path(sys.executable).name] + sys.argv), git_revision=git_revision(),
                 machine=machine_info(dev), data="CIFAR-10 (JPEG q75): " + args.dataset,
                 torch_threads=torch.get_num_threads())
    train = create_dataset(args.dataset, split="train", cache_dir=args.cache_dir)
    test = create_dataset(args.dataset, split="test", cache_dir=args.cache_dir)
    if args.test_per_class:
        g = make_generator(0, "bench-test-subset")
        idx = torch.cat([test.class_images(c, args.test_per_class, generator=g)[1] for c in range(test.num_classes)])
        test = test.subset(idx.sort().values)
    state["test_images"] = len(test)
    teacher = load_teacher(args.teacher, dataset=train, device=dev) if args.teacher else None
    if teacher is not None:
        state["teacher"] = {"path": args.teacher, "arch": teacher.arch, "test_acc": teacher.meta.get("accuracy"),
                            "sanity_acc": check_teacher(teacher, test, device=dev)}
    done = {(c["set"], c["regime"]) for c in state["cells"]}
    for method in args.methods.split(","):
        for ipc in [int(x) for x in args.ipcs.split(",")]:
            if teacher is None and method_spec(method).needs_teacher:
                print(f"{method}: skipped (needs --teacher)", flush=True)
                continue
            name, ds = _distill(args, method, ipc, train, teacher, args.buffer, dev)
            iters = _iterations(ds)
            wall = ds.meta.get("bench_distill_wall_seconds")
            state["sets"][name] = {
                "method": method, "ipc": ipc, "preset": ds.meta.get("preset"),
                "distill_wall_seconds": wall, "distill_cpu_seconds": ds.meta.get("bench_distill_cpu_seconds"),
                "iterations_run": iters, "wall_seconds_per_iteration": (wall / iters) if wall and iters else None,
                "settings": ds.meta.get("settings"), "git_revision": ds.meta.get("git_revision"),
                "command": state["command"]}
            _save(out, state)
            if args.distill_only:
                print(f"{name:14s} distilled in {wall or 0:.0f} s ({iters} iterations)", flush=True)
                continue
            for regime in args.regimes.split(","):
                if (name, regime) in done or (regime != "hl" and teacher is None):
                    continue
                cfg = EvalConfig(recipe=RECIPES[regime], regime=regime, student="convnet-d3", seeds=args.seeds,
                                 budget_epochs=args.budget_epochs, num_evals=1)
                t0 = time.perf_counter()
                res = evaluate(ds, test, cfg, teacher, full_train_size=len(train), device=dev, progress=False,
                               set_name=name)
                cell = {"set": name, "method": method, "ipc": ipc, "regime": regime, "recipe": cfg.recipe,
                        "budget_epochs": args.budget_epochs, "accs": res.accs, "seeds": res.seeds, "mean": res.mean,
                        "std": res.std, "soft_labels": res.soft_label_source, "distill_seconds": wall,
                        "plan": {"iterations": res.plan.iterations, "batch_size": res.plan.batch_size,
                                 "epochs": res.plan.epochs, "samples": res.plan.samples},
                        "eval_seconds": time.perf_counter() - t0, "eval_config": to_dict(cfg),
                        "command": state["command"], "git_revision": state["git_revision"]}
                state["cells"].append(cell)
                _save(out, state)
                print(f"{name:14s} {regime:3s} {100 * res.mean:5.1f} ± {100 * res.std:.1f}  "
                      f"({cell['eval_seconds']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
