"""Benchmark: teacher-training throughput on CPU, eager vs `--compile`, interleaved.

    OMP_NUM_THREADS=1 python bench/teacher_compile.py --dataset tar:../shared/data/cifar10-jpeg75.tar.gz \
        --cache-dir runs/cache --max-per-class 500 --epochs 3 --rounds 2 --output bench/results/teacher_compile_cpu.json

Each round trains one teacher per variant (same seed, data and schedule) with `ddkit teacher train` in a fresh
process, variants in turn, so a background job slowing the shared machine hits them alike. The steady-state
speed is the median training images/s over epochs 2.. (epoch 1 carries torch.compile's compile time); the wall
seconds include it, so the JSON says both what compile costs once and what it saves per epoch. The test accuracy
of each run is kept beside: compile must not change what is learned beyond bf16 noise.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ddkit.utils import atomic_write_bytes, git_revision, machine_info  # noqa: E402

#: name -> extra flags of `ddkit teacher train`; bf16 in both so the ratio is compile's alone.
VARIANTS = {"eager_bf16": ["--cpu-amp"], "compile_bf16": ["--cpu-amp", "--compile"]}


def run_once(base: list, extra: list, out: Path) -> dict:
    """Train one teacher; its per-epoch metrics, wall seconds and test accuracy."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ddkit", "teacher", "train", *base, *extra, "--output", str(out),
                    "--overwrite", "--no-progress"], check=True, stdout=subprocess.DEVNULL,
                   env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    wall = time.perf_counter() - t
    epochs = [json.loads(x) for x in (out.parent / (out.name + ".metrics.jsonl")).read_text().splitlines() if x]
    meta = json.loads((out.parent / (out.name + ".json")).read_text())
    steady = [e["images_per_s"] for e in epochs[1:]] or [epochs[0]["images_per_s"]]
    return {"wall_s": round(wall, 1), "epoch_images_per_s": [round(e["images_per_s"], 1) for e in epochs],
            "steady_images_per_s": round(statistics.median(steady), 1), "test_acc": meta.get("accuracy")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--model", default="convnet-d3")
    p.add_argument("--max-per-class", type=int, default=500, help="images per class trained on (speed, not accuracy)")
    p.add_argument("--epochs", type=int, default=3, help="≥ 2: epoch 1 carries the compile time")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (one run per variant each)")
    p.add_argument("--output", default="bench/results/teacher_compile_cpu.json")
    args = p.parse_args(argv)
    base = ["--dataset", args.dataset, "--device", "cpu", "--model", args.model, "--epochs", str(args.epochs),
            "--max-per-class", str(args.max_per_class)] + (["--cache-dir", args.cache_dir] if args.cache_dir else [])
    runs = {k: [] for k in VARIANTS}
    loads = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, extra in VARIANTS.items():
                runs[name].append(run_once(base, extra, Path(tmp) / f"{name}_{r}"))
                print(name, runs[name][-1], flush=True)
    summary = {k: {"median_steady_images_per_s": statistics.median(x["steady_images_per_s"] for x in v),
                   "median_wall_s": statistics.median(x["wall_s"] for x in v),
                   "test_acc": [x["test_acc"] for x in v]} for k, v in runs.items()}
    e, c = summary["eager_bf16"], summary["compile_bf16"]
    out = {"command": " ".join(["python", *sys.argv]), "git_revision": git_revision(), "machine": machine_info(),
           "threads": os.environ.get("OMP_NUM_THREADS"), "load_before": loads, "base_flags": base,
           "variants": VARIANTS, "runs": runs, "summary": summary,
           "steady_speedup_compile": round(c["median_steady_images_per_s"] / e["median_steady_images_per_s"], 2),
           "wall_ratio_eager_over_compile": round(e["median_wall_s"] / c["median_wall_s"], 2)}
    atomic_write_bytes(Path(args.output), (json.dumps(out, indent=1) + "\n").encode())
    print(json.dumps(out["summary"], indent=1), "\nsteady speed-up", out["steady_speedup_compile"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
