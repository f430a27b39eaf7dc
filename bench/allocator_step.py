"""CPU seconds of one ConvNet-3 training step with glibc's defaults vs ddkit.allocator.keep_freed_memory().

A student-like step (DSA 'single' draw per batch, cross-entropy, SGD momentum; random pixels and labels,
batch 256, 32 px) in child processes alternating the two settings (DDKIT_KEEP_FREED_MEMORY=0/1), three
warm-up steps then `--steps` timed ones. Reports user and system CPU seconds per step (os.times): under
load the wall clock measures the queue, CPU time the work. Read the ratio.

    OMP_NUM_THREADS=1 python bench/allocator_step.py --output bench/results/allocator_step_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(steps: int, batch: int) -> dict:
    import torch
    import torch.nn.functional as F

    from ddkit.allocator import keep_freed_memory
    from ddkit.augment import dsa
    from ddkit.models import create_model
    keep = keep_freed_memory() if os.environ.get("DDKIT_KEEP_FREED_MEMORY") != "0" else False
    torch.manual_seed(0)
    net = create_model("convnet-d3", num_classes=10, image_size=32, channels=3)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    aug = dsa("color_crop_cutout_flip_scale_rotate", mode="single")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))

    def step() -> None:
        loss = F.cross_entropy(net(aug.apply(x, aug.sample(batch, x.shape, generator=g))), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    t0, w0 = os.times(), time.perf_counter()
    for _ in range(steps):
        step()
    t1 = os.times()
    return {"keep_freed_memory": keep, "user_s": (t1.user - t0.user) / steps,
            "sys_s": (t1.system - t0.system) / steps, "wall_s": (time.perf_counter() - w0) / steps}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--output", default="")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.steps, a.batch)))
        return 0
    runs = []
    for r in range(a.rounds):
        for keep in ("0", "1"):
            env = dict(os.environ, DDKIT_KEEP_FREED_MEMORY=keep, PYTHONPATH=str(ROOT / "src"))
            out = subprocess.run([sys.executable, __file__, "--child", "--steps", str(a.steps), "--batch",
                                  str(a.batch)], env=env, capture_output=True, text=True, check=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            res.update(round=r, loadavg_1_5_15=[round(v, 1) for v in os.getloadavg()])
            runs.append(res)
            print(json.dumps(res), flush=True)
    cpu = {k: sorted(x["user_s"] + x["sys_s"] for x in runs if x["keep_freed_memory"] == k) for k in (False, True)}
    med = {k: v[len(v) // 2] for k, v in cpu.items()}
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), "")
    flags = next((ln.split(":", 1)[1].split() for ln in lscpu.splitlines() if ln.startswith("Flags")), [])
    state = {"command": " ".join([Path(sys.executable).name] + sys.argv),
             "git_revision": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                            capture_output=True, text=True).stdout.strip(),
             "machine": {"cpu_model": model, "cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                         "isa": [f for f in flags if f.startswith(("avx", "amx", "fma"))]},
             "runs": runs, "median_cpu_s_per_step": {"glibc_default": med[False], "keep_freed_memory": med[True]},
             "speedup_cpu": med[False] / med[True]}
    if a.output:
        Path(a.output).write_text(json.dumps(state, indent=1) + "\n")
    print(json.dumps({k: state[k] for k in ("median_cpu_s_per_step", "speedup_cpu")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
