"""LIC/CIM condensation speed at ImageNet-1K shape, projected to a whole dataset, vs its roofline.

For each size (224: torchvision resnet18, feature layer2; 32: resnet18_modified, penultimate), random
weights and random uint8 images generated per class on demand (no data loading cost beyond that):
  * runs `ddkit.methods.lic` on `--classes` classes at `--ipc` with `--iterations` compensation steps
    (fewer than the paper's M=200 is fine: the compensation time is extrapolated linearly to
    `--target-iterations`, which the output says) and reports seconds per class split into
    pool+selection, compensation and labels, the projected total for `--total-classes` classes, and peak
    memory (GPU allocator peak on CUDA; process max RSS on CPU);
  * measures in the same process the roofline: images/s of the truncated teacher forward (no grad) and
    forward+backward to the input at the same batch as one compensation chunk; the ideal time of one
    iteration is n/fwd + n/fwd_bwd per class (n = ipc·f² pairs), compared with the measured one.

    python bench/condense_throughput.py --device cuda --sizes 224,32 --classes 16 --iterations 50 \
        --classes-per-step 1,4,16
    python bench/condense_throughput.py --device cpu --sizes 224 --classes 2 --iterations 5 --ipc 1

Reference figures printed beside: CIM paper, IN-1K IPC 10 in 80 min on one RTX-4090 (end to end); the
reference compute pattern re-implemented on one H100 (fp32): ≈ 2.5 s/class, ≈ 42 min GPU-only
(IN-1K IPC 10) and ≈ 3.5 s/class for CIFAR R18-mod IPC 10 (peers.md §1.8).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from ddkit.methods.base import create_method
from ddkit.models import create_model, feature_extractor
from ddkit.teachers import Teacher
from ddkit.utils import autocast, get_device, git_revision, machine_info, peak_memory_mb, reset_peak_memory

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ARCH = {224: "resnet18", 32: "resnet18_modified", 64: "resnet18_modified"}
REFERENCE = {
    "paper": "CIM README: IN-1K IPC 10 in 80 min on one RTX-4090 (end to end, incl. data loading)",
    "reference_compute_h100_fp32": {"224_ipc10_s_per_class": 2.5, "224_ipc10_total_min": 42,
                                    "32_ipc10_s_per_class": 3.5, "source": "peers.md §1.8"},
}


class RandomClasses:
    """Duck-typed ImageDataset: `classes` classes of random uint8 images made on demand (none held)."""

    def __init__(self, classes: int, per_class: int, size: int) -> None:
        self.classes = [f"c{i:04d}" for i in range(classes)]
        self.per_class, self.size = per_class, size
        self.mean, self.std, self.name, self.split = MEAN, STD, f"random{size}", "train"

    num_classes = property(lambda self: len(self.classes))
    channels = property(lambda self: 3)
    image_size = property(lambda self: self.size)

    def class_counts(self) -> List[int]:
        return [self.per_class] * self.num_classes

    def class_images(self, c: int, n: Optional[int] = None, generator: Optional[torch.Generator] = None
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
        k = min(n or self.per_class, self.per_class)
        g = torch.Generator().manual_seed(1000 + c)
        imgs = torch.randint(0, 256, (k, 3, self.size, self.size), generator=g, dtype=torch.uint8)
        return imgs, torch.arange(k) + c * self.per_class


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def roofline(net: torch.nn.Module, layer: str, batch: int, size: int, dev: torch.device, steps: int) -> dict:
    """Images/s of the truncated teacher: forward without grad, and forward+backward to the input."""
    cuda = dev.type == "cuda"
    net = net.to(dev).eval().requires_grad_(False)
    if cuda:
        net = net.to(memory_format=torch.channels_last)
    ext = feature_extractor(net, layer)
    x = torch.randn(batch, 3, size, size, device=dev)
    x = x.contiguous(memory_format=torch.channels_last) if cuda else x

    def fwd():
        with torch.no_grad(), autocast(dev):
            ext(x)

    def fwd_bwd():
        xi = x.detach().requires_grad_(True)
        with autocast(dev):
            y = ext(xi)
        torch.autograd.grad(y.float().abs().mean(), xi)

    out = {}
    for name, fn in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
        for _ in range(2):
            fn()
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        _sync(dev)
        out[f"{name}_images_per_s"] = steps * batch / (time.perf_counter() - t0)
    return out


def per_size(value: str, size: int) -> int:
    """'10' for every size, or 'SIZE:N,SIZE:N' (e.g. '224:1,32:10') with one entry per size run."""
    if ":" not in value:
        return int(value)
    table = {int(a): int(b) for a, b in (kv.split(":") for kv in value.split(",") if kv)}
    if size not in table:
        raise SystemExit(f"no value for size {size} in {value!r}")
    return table[size]


def bench_size(size: int, cps: int, args: argparse.Namespace, dev: torch.device) -> dict:
    ipc, iters = per_size(args.ipc, size), per_size(args.iterations, size)
    arch = ARCH.get(size, "resnet18" if size > 64 else "resnet18_modified")
    torch.manual_seed(0)
    net = create_model(arch, num_classes=args.total_classes, image_size=size)
    names = [f"c{i:04d}" for i in range(args.classes)]
    teacher = Teacher(net, arch, names, MEAN, STD, image_size=size)  # head: total_classes outputs (IN-1K shape)
    cfg = dict(ipc=ipc, factor=2, pool_size=args.pool_size, classes_per_step=cps, max_batch=args.max_batch,
               store_labels=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # warm-up (fx tracing, cuDNN/oneDNN kernel choice) on one class, one iteration, not timed
        create_method("lic", **{**cfg, "iterations": 1, "classes_per_step": 1})(
            RandomClasses(1, args.pool_size, size), Teacher(net, arch, names[:1], MEAN, STD, image_size=size),
            device=dev, progress=False)
        reset_peak_memory(dev)
        load0, cpu0 = os.getloadavg()[0], time.process_time()
        out = create_method("lic", **cfg, iterations=iters)(
            RandomClasses(args.classes, args.pool_size, size), teacher, device=dev, progress=not args.no_progress)
        cpu_s, load1 = time.process_time() - cpu0, os.getloadavg()[0]
    tm = out.meta["timings"]
    k, target = args.classes, args.target_iterations
    per_iter = tm["compensate_s"] / k / iters
    wait, sel, lab = tm.get("pool_wait_s", 0.0) / k, tm["select_s"] / k, tm["labels_s"] / k
    per_class = wait + sel + lab + per_iter * target
    n = ipc * 4
    batch = min(args.max_batch, n * (cps if out.meta["packed_forwards"] else 1))
    roof = roofline(net, out.meta["feature_layer"], batch, size, dev, args.roofline_steps)
    ideal = n / roof["fwd_images_per_s"] + n / roof["fwd_bwd_images_per_s"]
    return {
        "arch": arch, "feature_layer": out.meta["feature_layer"], "ipc": ipc, "classes_run": k,
        "classes_per_step": cps, "packed_forwards": out.meta["packed_forwards"], "pairs_per_class": n,
        "iterations_run": iters, "iterations_projected": target,
        "extrapolated": iters != target,
        "ms_per_iteration_per_class": 1e3 * per_iter,
        "pool_wait_s_per_class": wait, "select_s_per_class": sel, "labels_s_per_class": lab,
        "s_per_class_projected": per_class,
        f"projected_total_min_{args.total_classes}_classes": per_class * args.total_classes / 60,
        "peak_memory_mb": out.meta["peak_memory_mb"],
        "peak_memory_kind": "cuda max_memory_allocated" if dev.type == "cuda" else "process max RSS (whole run)",
        "wall_seconds_run": out.meta["wall_seconds"],
        # on CPU, cpu/wall far below the thread count (or a high load average) means other processes
        # shared the cores and every wall-clock figure here is inflated
        "process_cpu_seconds_run": cpu_s, "load_average_1min_before_after": [load0, load1],
        "roofline": {"batch": batch, **roof, "ideal_ms_per_iteration_per_class": 1e3 * ideal,
                     "efficiency": ideal / per_iter},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--sizes", default="224,32", help="comma list; 224 → resnet18/layer2, 32/64 → resnet18_modified")
    p.add_argument("--classes", type=int, default=8, help="classes actually condensed and timed")
    p.add_argument("--total-classes", type=int, default=1000, help="projection target and teacher head size")
    p.add_argument("--iterations", default="200", help="compensation steps run (extrapolated if < target); "
                                                       "N or SIZE:N,SIZE:N")
    p.add_argument("--target-iterations", type=int, default=200, help="M of the projection (paper: 200)")
    p.add_argument("--ipc", default="10", help="N or SIZE:N,SIZE:N (e.g. 224:1,32:10)")
    p.add_argument("--pool-size", type=int, default=300)
    p.add_argument("--classes-per-step", default="1", help="comma list, one run each")
    p.add_argument("--max-batch", type=int, default=256)
    p.add_argument("--roofline-steps", type=int, default=10)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--output", default=None, help="default: bench/results/condense_throughput_<device>.json")
    args = p.parse_args(argv)
    dev = get_device(args.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    tag = "cpu" if dev.type == "cpu" else re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name(dev)).strip("-").lower()
    out = Path(args.output or Path(__file__).parent / "results" / f"condense_throughput_{tag}.json")
    res = {"command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
           "git_revision": git_revision(), "machine": machine_info(dev), "device": str(dev),
           "note": "random weights and random images; data loading (JPEG decode) not included; compensation "
                   "time extrapolated linearly from --iterations to --target-iterations",
           "reference": REFERENCE, "runs": []}
    for size in (int(v) for v in args.sizes.split(",") if v):
        for cps in (int(v) for v in args.classes_per_step.split(",") if v):
            r = bench_size(size, cps, args, dev)
            res["runs"].append({"size": size, **r})
            tot = r[f"projected_total_min_{args.total_classes}_classes"]
            print(f"{size:4d} px {r['arch']:18s} ipc {r['ipc']} cps {cps:3d}: {r['ms_per_iteration_per_class']:8.1f} "
                  f"ms/iter/class (ideal {r['roofline']['ideal_ms_per_iteration_per_class']:.1f}, eff "
                  f"{r['roofline']['efficiency']:.2f}); {r['s_per_class_projected']:.2f} s/class at M={args.target_iterations}"
                  f" → {tot:.1f} min for {args.total_classes} classes; peak {r['peak_memory_mb']:.0f} MiB")
    print("reference: paper 80 min (RTX-4090, IN-1K IPC 10); reference compute pattern ≈ 42 min GPU-only "
          "on one H100 fp32 (2.5 s/class at 224 px IPC 10; 3.5 s/class at 32 px IPC 10)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
