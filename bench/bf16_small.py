"""bf16 autocast against fp32 on small student steps: where on CPU does native bf16 stop paying?

A bare training step (forward, cross-entropy, backward, SGD) of a ConvNet at a given image size, width and batch,
fp32 and under `ddkit.utils.autocast(cpu=True)` (bf16 where the CPU has it natively), interleaved round by round;
images per process-CPU second and their ratio. It sets `evaluate/fastpath.py`'s BF16_MIN_SIZE: the demo's
students (ConvNet-2, width 32, 8-px digits) against CIFAR-shape ConvNet-3 ones.

    OMP_NUM_THREADS=1 python bench/bf16_small.py --cases convnet-d2:8:32:20,convnet-d2:16:32:20,convnet-d3:16:128:50 \
        --output bench/results/bf16_small_cpu.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch
import torch.nn.functional as F

from ddkit.models import create_model
from ddkit.utils import autocast, cpu_bf16_native, git_revision, machine_info

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_time import lscpu  # noqa: E402  (one lscpu reader for every bench script)


def case(arch: str, size: int, width: int, batch: int, rounds: int, steps: int) -> dict:
    dev = torch.device("cpu")
    x, y = torch.rand(batch, 3, size, size), torch.arange(batch) % 10
    nets = {}
    for v in ("fp32", "bf16"):
        torch.manual_seed(0)
        m = create_model(arch, num_classes=10, image_size=size, width=width)
        nets[v] = (m, torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9))

    def step(v: str) -> None:
        m, opt = nets[v]
        with autocast(dev, False, cpu=v == "bf16"):
            loss = F.cross_entropy(m(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for v in nets:  # warm-up
        step(v)
        step(v)
    cpu = {v: [] for v in nets}
    for _ in range(rounds):
        for v in nets:
            c0 = time.process_time()
            for _ in range(steps):
                step(v)
            cpu[v].append(batch * steps / max(time.process_time() - c0, 1e-9))
    ratio = [b / a for a, b in zip(cpu["fp32"], cpu["bf16"])]
    return {"arch": arch, "size": size, "width": width, "batch": batch,
            "fp32_images_per_cpu_s": statistics.median(cpu["fp32"]),
            "bf16_images_per_cpu_s": statistics.median(cpu["bf16"]),
            "bf16_over_fp32_median": statistics.median(ratio), "bf16_over_fp32_range": [min(ratio), max(ratio)]}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="convnet-d2:8:32:20,convnet-d2:16:32:20,convnet-d3:16:128:50",
                   help="arch:size:width:batch, comma-separated")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--output", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for c in args.cases.split(","):
        arch, size, width, batch = c.split(":")
        rows.append(case(arch, int(size), int(width), int(batch), args.rounds, args.steps))
        r = rows[-1]
        print(f"{arch} {size}px w{width} b{batch}: bf16/fp32 = {r['bf16_over_fp32_median']:.2f} "
              f"({r['bf16_over_fp32_range'][0]:.2f}-{r['bf16_over_fp32_range'][1]:.2f})", flush=True)
    res = {"command": " ".join(["python", "bench/bf16_small.py"] + list(argv if argv is not None else sys.argv[1:])),
           "git_revision": git_revision(), "machine": {**machine_info(), "lscpu": lscpu()},
           "cpu_bf16_native": cpu_bf16_native(), "threads": 1, "rounds": args.rounds, "steps": args.steps,
           "data": "random pixels and weights (speed only)", "cases": rows}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(res, indent=1, default=str))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
