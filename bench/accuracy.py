"""Accuracy grid: methods × IPC × regime under one recipe and compute budget, resumable.

Each finished cell is written to the JSON immediately (command, git revision, machine, data, protocol), and
a rerun skips finished cells, so an interrupted grid keeps its partial results. Distilled sets are cached
under --set-dir. The headline per cell is the last-epoch test accuracy, mean ± std (ddof 0) over seeds.

Example (the CPU run committed in bench/results/accuracy_cifar10_cpu.json):
    python bench/accuracy.py --dataset tar:../shared/data/cifar10-jpeg75.tar.gz \
        --teacher runs/teachers/cifar10_jpeg75_convnet3 --methods random,lic --ipcs 1,10,50 \
        --regimes hl,sl,slkd --recipe cim --budget-epochs 0.2 --seeds 3 --output bench/results/accuracy_cifar10_cpu.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


from ddkit.config import parse_key_values, to_dict
from ddkit.data import create_dataset
from ddkit.distilled import DistilledSet
from ddkit.evaluate import EvalConfig, evaluate
from ddkit.methods import create_method, method_spec
from ddkit.teachers import check_teacher, load_teacher
from ddkit.utils import atomic_write_bytes, get_device, git_revision, machine_info


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default="runs/cache")
    p.add_argument("--teacher", required=True)
    p.add_argument("--methods", default="random,lic")
    p.add_argument("--ipcs", default="1,10,50")
    p.add_argument("--regimes", default="hl,sl,slkd")
    p.add_argument("--recipe", default="cim")
    p.add_argument("--student", default=None, help="default: the teacher's architecture")
    p.add_argument("--budget-epochs", type=float, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--method-opt", action="append", default=[], help="per-method option, e.g. lic.iterations=50; "
                   "name@ipc.key=v applies to one IPC only")
    p.add_argument("--label", default=None, help="suffix for set names (ablations)")
    p.add_argument("--set-dir", default="runs/bench/sets")
    p.add_argument("--output", required=True)
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    dev = get_device(args.device)
    out = Path(args.output)
    state = json.loads(out.read_text()) if out.exists() else {"cells": []}
    state.update(command=" ".join([Path(sys.executable).name] + sys.argv), git_revision=git_revision(),
                 machine=machine_info(dev))
    done = {(c["set"], c["regime"], c["recipe"], c.get("budget_epochs"), c.get("epochs"), c["student"])
            for c in state["cells"]}
    train = create_dataset(args.dataset, root=args.data_root, split="train", cache_dir=args.cache_dir)
    test = create_dataset(args.dataset, root=args.data_root, split="test", cache_dir=args.cache_dir)
    teacher = load_teacher(args.teacher, dataset=train, device=dev)
    state["teacher"] = {"path": args.teacher, "arch": teacher.arch, "sanity_acc": check_teacher(teacher, test, device=dev),
                        "test_acc": teacher.meta.get("accuracy")}
    student = args.student or teacher.arch
    opts = parse_key_values(args.method_opt, dotted=True)
    for method in args.methods.split(","):
        for ipc in [int(x) for x in args.ipcs.split(",")]:
            mopts = {**opts.get(method, {}), **opts.get(f"{method}@{ipc}", {})}
            name = f"{method}_ipc{ipc}" + (f"_{args.label}" if args.label else "")
            set_dir = Path(args.set_dir) / name
            if set_dir.exists():
                ds = DistilledSet.load(set_dir)
            else:
                spec = method_spec(method)
                ds = create_method(method, ipc=ipc, seed=0, **mopts)(train, teacher if spec.needs_teacher else None,
                                                                     device=dev)
                ds.save(set_dir)
            for regime in args.regimes.split(","):
                key = (name, regime, args.recipe, args.budget_epochs, args.epochs, student)
                if key in done:
                    continue
                cfg = EvalConfig(recipe=args.recipe, regime=regime, student=student, seeds=args.seeds,
                                 budget_epochs=args.budget_epochs, epochs=args.epochs)
                t0 = time.perf_counter()
                res = evaluate(ds, test, cfg, teacher, full_train_size=len(train), device=dev)
                cell = {"set": name, "method": method, "ipc": ipc, "method_options": mopts, "regime": regime,
                        "recipe": args.recipe, "budget_epochs": args.budget_epochs, "epochs": args.epochs,
                        "student": student, "accs": res.accs, "seeds": res.seeds, "mean": res.mean, "std": res.std,
                        "plan": {"iterations": res.plan.iterations, "batch_size": res.plan.batch_size,
                                 "epochs": res.plan.epochs, "samples": res.plan.samples},
                        "soft_labels": res.soft_label_source, "eval_seconds": time.perf_counter() - t0,
                        "distill_seconds": ds.meta.get("wall_seconds"), "eval_config": to_dict(cfg),
                        "command": state["command"], "git_revision": state["git_revision"]}
                state["cells"].append(cell)
                atomic_write_bytes(out, json.dumps(state, indent=1, default=str).encode())
                print(f"{name:22s} {regime:5s} {100 * res.mean:5.1f} ± {100 * res.std:.1f}  "
                      f"({cell['eval_seconds']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
