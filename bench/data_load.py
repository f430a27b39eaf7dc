"""Benchmark: cold (decode + cache) and cached loads of a tar of JPEGs through ddkit.data.

    python bench/data_load.py --tar ../shared/data/cifar10-jpeg75.tar.gz --cache-dir /tmp/ddkit-bench \
        --output bench/results/data_load.json

For each decode-worker setting (serial, and the default pool size), in a fresh empty cache folder:
train cold (archive pass + decode + mean/std + cache write), test cold (its mean/std come from the
now-cached train entry), then both cached (memory-mapped open) and one full read of the cached
train pixels (page-in cost). Imports (torch, torchvision's decoders) are timed separately so they
do not hide inside the first load. Writes timings, counts and the computed mean/std with the
command line, git revision, machine and the load average (the box may be shared).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t, 3)


def run_once(name: str, cache: Path, workers: int, progress: bool) -> dict:
    """Cold then cached loads of train and test with `workers` decode processes."""
    import torch

    from ddkit.data import create_dataset

    os.environ["DDKIT_DECODE_WORKERS"] = str(workers)
    load = lambda split: create_dataset(name, split=split, cache_dir=cache, progress=progress)  # noqa: E731
    load_before = [round(x, 2) for x in os.getloadavg()]
    train, train_cold = _timed(lambda: load("train"))
    test, test_cold = _timed(lambda: load("test"))
    train2, train_cached = _timed(lambda: load("train"))
    test2, test_cached = _timed(lambda: load("test"))
    checksum, touch = _timed(lambda: int(train2.images.sum(dtype=torch.int64)))
    return {
        "decode_workers": workers,
        "load_average_1_5_15min_before": load_before,
        "timings_s": {"train_cold": train_cold, "test_cold": test_cold, "train_cached": train_cached,
                      "test_cached": test_cached, "train_cached_read_all_pixels": touch},
        "images_per_s_cold": round((len(train) + len(test)) / (train_cold + test_cold), 1),
        "cached_equals_cold": bool(torch.equal(train.images, train2.images) and torch.equal(test.images, test2.images)),
        "cache_bytes": sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()),
        "_datasets": (train, test, checksum),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tar", default="../shared/data/cifar10-jpeg75.tar.gz", help="tar(.gz) of <split>/<class>/ images")
    p.add_argument("--cache-dir", default=None, help="empty or absent folder for the caches (default: a temp dir)")
    p.add_argument("--output", default="bench/results/data_load.json", help="where to write the JSON result")
    p.add_argument("--workers", type=int, nargs="*", default=None,
                   help="decode worker settings to time (default: 1 and the usable CPUs, ≤8)")
    p.add_argument("--no-progress", action="store_true", help="hide the tqdm bars")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    import torchvision.io  # noqa: F401  (the decoders; every ddkit run pays this import once)

    from ddkit.data.decode import num_workers
    from ddkit.utils import DDKitError, atomic_write_bytes, git_revision, machine_info

    import_s = round(time.perf_counter() - t0, 3)
    tar = Path(args.tar).expanduser().resolve()
    if not tar.is_file():
        raise SystemExit(f"error: {tar} not found; pass --tar <path to a .tar.gz of <split>/<class>/ images>")
    own_tmp = args.cache_dir is None
    cache = Path(args.cache_dir or tempfile.mkdtemp(prefix="ddkit-bench-")).expanduser()
    if cache.exists() and any(cache.iterdir()):
        raise SystemExit(f"error: cache dir {cache} is not empty; a cold load needs an empty one")
    settings = args.workers or sorted({1, num_workers()})

    runs = []
    try:
        for w in settings:
            runs.append(run_once(f"tar:{tar}", cache / f"workers{w}", w, not args.no_progress))
    except DDKitError as e:
        raise SystemExit(f"error: {e}")
    finally:
        if own_tmp:
            shutil.rmtree(cache, ignore_errors=True)
    train, test, checksum = runs[-1].pop("_datasets")
    for r in runs[:-1]:
        a, b, _ = r.pop("_datasets")
        assert torch_equal(a.images, train.images) and torch_equal(b.images, test.images), "serial != pool"

    result = {
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "git_revision": git_revision(),
        "machine": machine_info(),
        "tar": str(tar),
        "tar_bytes": tar.stat().st_size,
        "import_s": import_s,
        "runs": runs,
        "counts": {"train": len(train), "test": len(test), "train_per_class": train.class_counts(),
                   "test_per_class": test.class_counts()},
        "classes": train.classes,
        "image_shape": list(train.images.shape[1:]),
        "mean": list(train.mean),
        "std": list(train.std),
        "train_pixel_sum": checksum,
    }
    text = json.dumps(result, indent=1)
    print(text)
    atomic_write_bytes(args.output, (text + "\n").encode())
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


if __name__ == "__main__":
    sys.exit(main())
