"""Distill time per iteration of DC, DSA, DM, MTT and DATM versus IPC (and classes), CPU preset.

Each (method, IPC, classes) cell runs the registered method with its `cpu` preset and `iterations` fixed
(so iterations + 1 passes, the official inclusive range), on the first `classes` classes of the data, and
records wall and process-CPU seconds, seconds per pass and the peak RSS. Setup (init, label init, network
creation) is included, so a per-pass figure slightly overstates the pure iteration cost.

Example (bench/results/matching_timing_cpu.json):
    OMP_NUM_THREADS=1 nice -n 10 python bench/matching_timing.py --dataset tar:/work/shared/data/cifar10-jpeg75.tar.gz \
        --cache-dir /work/runs/cache --buffer /work/runs/matching/experts_cpu --ipcs 1,10,50 --iterations 1 \
        --output bench/results/matching_timing_cpu.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ddkit.data import create_dataset
from ddkit.methods import create_method
from ddkit.utils import atomic_write_bytes, get_device, git_revision, machine_info, peak_memory_mb


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--cache-dir", default="runs/cache")
    p.add_argument("--buffer", required=True, help="expert buffer for mtt/datm")
    p.add_argument("--methods", default="dc,dsa,dm,mtt,datm")
    p.add_argument("--ipcs", default="1,10,50")
    p.add_argument("--classes", default="10", help="comma-separated class counts (first k classes)")
    p.add_argument("--iterations", type=int, default=1)
    p.add_argument("--output", required=True)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    dev = get_device(args.device)
    out = Path(args.output)
    state = json.loads(out.read_text()) if out.exists() else {"cells": []}
    state.update(command=" ".join([Path(sys.executable).name] + sys.argv), git_revision=git_revision(),
                 machine=machine_info(dev), data="CIFAR-10 (JPEG q75): " + args.dataset)
    done = {(c["method"], c["ipc"], c["classes"]) for c in state["cells"]}
    train = create_dataset(args.dataset, split="train", cache_dir=args.cache_dir)
    for k in [int(x) for x in args.classes.split(",")]:
        for method in args.methods.split(","):
            for ipc in [int(x) for x in args.ipcs.split(",")]:
                if (method, ipc, k) in done:
                    continue
                opts = {"ipc": ipc, "preset": "cpu", "iterations": args.iterations}
                if method in ("mtt", "datm"):
                    opts["buffer"] = args.buffer
                data = train
                if k < train.num_classes:
                    if method in ("mtt", "datm"):
                        continue  # the experts know all classes; a class subset needs its own buffer
                    data = train.subset(torch.nonzero(train.labels < k).flatten())
                    data.classes = train.classes[:k]
                cpu0, t0 = time.process_time(), time.perf_counter()
                create_method(method, **opts)(data, None, device=dev, progress=False)
                wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
                passes = args.iterations + 1
                cell = {"method": method, "ipc": ipc, "classes": k, "iterations": args.iterations, "passes": passes,
                        "wall_seconds": wall, "cpu_seconds": cpu, "cpu_seconds_per_pass": cpu / passes,
                        "peak_rss_mb": peak_memory_mb(dev)}
                state["cells"].append(cell)
                atomic_write_bytes(out, json.dumps(state, indent=1).encode())
                print(f"{method:5s} ipc {ipc:3d} classes {k:3d}: {cpu / passes:7.2f} CPU s per pass "
                      f"({wall:.0f} s wall)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
