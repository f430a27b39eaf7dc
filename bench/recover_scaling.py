"""SRe2L recover cost: seconds per iteration of one class batch, and how it grows with IPC and classes.

For every (classes_per_batch, ipc) pair the recover engine (`ddkit.methods.recover.recover`, the loop
`sre2l`/`cda`/`dwa` run) optimises classes_per_batch × ipc noise images through the teacher for
`--iterations` steps (CIFAR preset views: roll 0–4, no crop; add --rrc for RandomResizedCrop + flip);
the time per iteration is measured after one warm-up step and projected to `--target-iterations`
(the preset's 1000). Also timed: the per-class BN targets (bn_target=class, `--stat-images` real-sized
random images) and one DWA weight adjustment (K = 12 steps on ipc images). Results go to --output.

    OMP_NUM_THREADS=1 python bench/recover_scaling.py --arch convnet-d3-bn --image-size 32 \
        --classes 1,5,10 --ipcs 1,10 --iterations 10 --output bench/results/recover_scaling_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from ddkit.methods.recover import (BNHooks, RecoverSpec, adjust_weights, class_targets, recover, require_bn,
                                   restore_weights, valid_bounds)
from ddkit.models import create_model
from ddkit.teachers import Teacher, load_teacher
from ddkit.utils import get_device, git_revision, machine_info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default=None, help="teacher checkpoint (timing only: weights do not matter)")
    ap.add_argument("--arch", default="convnet-d3-bn", help="without --teacher: random weights of this BN model")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--classes", default="1,5,10", help="classes per batch")
    ap.add_argument("--ipcs", default="1,10")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--target-iterations", type=int, default=1000)
    ap.add_argument("--stat-images", type=int, default=256)
    ap.add_argument("--rrc", action="store_true", help="RandomResizedCrop + flip each step (Tiny/IN-1K presets)")
    ap.add_argument("--output", required=True)
    a = ap.parse_args(argv)
    dev = get_device(a.device)
    if a.teacher:
        teacher = load_teacher(a.teacher, device="cpu")
    else:  # the cost does not depend on the weights: a random BN net of the teacher's shape
        torch.manual_seed(0)
        net = create_model(a.arch, num_classes=a.num_classes, image_size=a.image_size)
        teacher = Teacher(net, a.arch, [str(i) for i in range(a.num_classes)], (0.5,) * 3, (0.25,) * 3, a.image_size)
    require_bn(teacher.model, "recover", teacher.arch)
    model = teacher.model.to(dev).eval().requires_grad_(False)
    lo, hi = valid_bounds(teacher.mean, teacher.std)
    size, ch = teacher.image_size, teacher.channels
    spec = RecoverSpec(iterations=a.iterations + 1, lr=0.25, r_bn=0.01, jitter=4, rrc=a.rrc, flip=a.rrc)
    rows = []
    for ipc in (int(v) for v in a.ipcs.split(",")):
        for k in (int(v) for v in a.classes.split(",")):
            g = torch.Generator().manual_seed(0)
            x0 = torch.randn(k * ipc, ch, size, size, generator=g).to(dev)
            y = torch.arange(k, device=dev).repeat_interleave(ipc) % teacher.num_classes
            with BNHooks(model) as h:
                tg = h.running_targets(k)
            gens = [torch.Generator().manual_seed(c) for c in range(k)]
            one = RecoverSpec(**{**spec.__dict__, "iterations": 1})
            recover(model, x0, y, k, tg, gens, one, (lo, hi))  # warm-up
            t0 = time.perf_counter()
            recover(model, x0, y, k, tg, gens, spec, (lo, hi))
            per_it = (time.perf_counter() - t0) / spec.iterations
            rows.append({"classes_per_batch": k, "ipc": ipc, "images_per_step": k * ipc, "seconds_per_iteration": per_it,
                         "projected_batch_seconds": per_it * a.target_iterations,
                         "projected_seconds_per_class": per_it * a.target_iterations / k})
            print(json.dumps(rows[-1]), flush=True)
    real = torch.randn(a.stat_images, ch, size, size).to(dev)
    t0 = time.perf_counter()
    class_targets(model, real, 10)
    stats_s = time.perf_counter() - t0
    x = torch.randn(10, ch, size, size).to(dev)
    t0 = time.perf_counter()
    saved = adjust_weights(model, x, torch.zeros(10, dtype=torch.long, device=dev), steps=12, rho=0.015)
    dwa_s = time.perf_counter() - t0
    restore_weights(model, saved)
    out = {"command": "python " + " ".join(sys.argv), "git_revision": git_revision(), "machine": machine_info(dev),
           "load_average_1_5_15min": list(os.getloadavg()),
           "teacher": a.teacher or f"random {a.arch}", "teacher_arch": teacher.arch, "image_size": size, "iterations_timed": a.iterations,
           "target_iterations": a.target_iterations, "rrc": a.rrc, "rows": rows,
           "class_stats_seconds": {"images": a.stat_images, "group_size": 10, "seconds": stats_s},
           "dwa_adjust_seconds": {"steps": 12, "images": 10, "seconds": dwa_s}}
    Path(a.output).parent.mkdir(parents=True, exist_ok=True)
    Path(a.output).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {a.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
