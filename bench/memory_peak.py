"""Benchmark: host memory of staging a large float set (issue #31), the one-shot exactness check vs the chunked one.

    python bench/memory_peak.py --images 1000 --size 224 --output bench/results/memory_peak_cpu.json

`evaluate` stages a set above 8 GiB of float32 as a lossless uint8 copy (exact k/255 pixels) or float16. Its
exactness check used to build whole-set temporaries (x·255, its rounding, their difference, the mask); the
chunked check (`stage_images(..., chunk=1024)`) holds one chunk's. Each variant runs in a fresh process on the
same set (N images of 3×S×S float32 with exact k/255 values, the worst case: the check reads every pixel):
peak RSS (ru_maxrss) minus the RSS once the set is built = the staging's own temporaries. The device copy is
written to torch's "meta" device (shapes only), so this measures host memory alone. The result scales linearly
with N, which docs/performance.md uses for ImageNet-1K at IPC 10/50/100.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _old_stage(images, device):
    """The one-shot rule `stage_images` had before issue #31 (kept here only to measure it)."""
    import torch

    x255 = images * 255.0
    if bool(((x255 - x255.round()).abs() < 1e-4).all()) and float(images.min()) >= 0 and float(images.max()) <= 1:
        return x255.round().to(torch.uint8).to(device)
    return images.half().to(device)


def child(variant: str, n: int, size: int) -> dict:
    """Build the set, then stage it with `variant`; report the RSS facts of this process."""
    import torch

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    images = torch.empty(n, 3, size, size)
    for a in range(0, n, 256):  # filled in place: no whole-set temporary before the baseline
        images[a:a + 256] = torch.randint(0, 256, images[a:a + 256].shape, generator=g, dtype=torch.uint8).float() / 255
    set_mb = images.numel() * 4 / 2**20
    base = _rss_mb()
    peak_before = _peak_mb()  # imports and the fill; staging must rise above it to show
    meta = torch.device("meta")
    if variant == "one-shot":
        out = _old_stage(images, meta)
    else:
        from ddkit.evaluate.evaluator import stage_images

        import ddkit.evaluate.evaluator as ev

        ev._STAGE_LIMIT_BYTES = 0  # this small set takes the large-set path, as a >8 GiB set would
        out = stage_images(images, meta)
    return {"variant": variant, "images": n, "size": size, "set_mb": round(set_mb, 1), "rss_after_set_mb": round(base, 1),
            "peak_rss_before_staging_mb": round(peak_before, 1),
            "peak_rss_mb": round(_peak_mb(), 1), "staging_extra_mb": round(_peak_mb() - base, 1),
            "staging_extra_in_sets": round((_peak_mb() - base) / set_mb, 3), "staged_dtype": str(out.dtype)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1000, help="set size N (1000 = 100 classes × IPC 10)")
    p.add_argument("--size", type=int, default=224, help="image side in px")
    p.add_argument("--output", default="bench/results/memory_peak_cpu.json")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.images, args.size)))
        return 0
    from ddkit.utils import atomic_write_bytes, git_revision, machine_info

    runs = []
    for variant in ("one-shot", "chunked"):
        cmd = [sys.executable, __file__, "--child", variant, "--images", str(args.images), "--size", str(args.size)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(runs[-1], file=sys.stderr)
    result = {"command": " ".join([Path(sys.executable).name] + sys.argv), "git_revision": git_revision(),
              "machine": machine_info(), "what": __doc__.split("\n\n")[2].replace("\n", " "), "runs": runs,
              "chunk_images": 1024}
    text = json.dumps(result, indent=1)
    print(text)
    atomic_write_bytes(args.output, (text + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
