"""Benchmark: EL2N-Best's candidate training on CPU, fp32 vs `search_cpu_amp` vs `search_cpu_amp + search_compile`.

    OMP_NUM_THREADS=1 python bench/el2n_search_fastpath.py --dataset tar:../shared/data/cifar10-jpeg75.tar.gz \
        --cache-dir runs/cache --ipc 50 --epochs 20 --rounds 2 --output bench/results/el2n_search_fastpath_cpu.json

EL2N-Best's whole cost is its window search: one fresh ConvNet-3 student per window, 300 epochs over the
candidate set with DSA (`ddkit.methods.el2n.train_candidate`). Each round runs every variant in a fresh process
(variants in turn, so a background job on the shared machine slows them alike); a process trains TWO candidates
back to back, as the search does: the first carries torch.compile's compile time, the second is the steady state
the remaining windows see. Candidates: `ipc` seeded images per class of the train split; the held-out accuracy
of each trained candidate (1,000 other train images) is kept beside, since bf16 must not change what is learned
beyond noise. `--epochs` is a fraction of the real 300 (the ratio is per sample; the compile time is not).
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

VARIANTS = {"fp32": {}, "bf16": {"search_cpu_amp": True}, "bf16_compile": {"search_cpu_amp": True, "search_compile": True}}


def one(args: argparse.Namespace, variant: str) -> dict:
    """Train two candidates with `variant` in this process: seconds of each and held-out accuracy."""
    import torch

    from ddkit.data import create_dataset
    from ddkit.data.base import to_float
    from ddkit.methods.el2n import El2nBestConfig, train_candidate, val_accuracy
    from ddkit.utils import make_generator

    ds = create_dataset(args.dataset, split="train", cache_dir=args.cache_dir)
    g = make_generator(0, "bench-el2n-search")
    perm = torch.randperm(len(ds.labels), generator=g)
    picks = torch.cat([perm[ds.labels[perm] == c][:args.ipc] for c in range(ds.num_classes)])
    rest = perm[~torch.isin(perm, picks)][:1000]
    cfg = El2nBestConfig(ipc=args.ipc, search_epochs=args.epochs, **VARIANTS[variant])
    x, y, dev = to_float(ds.get(picks)), ds.labels[picks].cpu(), torch.device("cpu")
    out = {"seconds": [], "heldout_acc": []}
    for k in range(2):
        t = time.perf_counter()
        model = train_candidate(x, y, ds, cfg, dev, seed=k)
        out["seconds"].append(round(time.perf_counter() - t, 2))
        out["heldout_acc"].append(round(val_accuracy(model, ds, rest, dev), 4))
    out["steady_samples_per_s"] = round(args.epochs * len(y) / out["seconds"][1], 1)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--ipc", type=int, default=50, help="candidate images per class (the search's set size)")
    p.add_argument("--epochs", type=int, default=20, help="candidate epochs (the real search: 300)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (one process per variant each)")
    p.add_argument("--output", default="bench/results/el2n_search_fastpath_cpu.json")
    p.add_argument("--one", choices=sorted(VARIANTS), help=argparse.SUPPRESS)  # the child process
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args, args.one)))
        return 0
    from ddkit.utils import atomic_write_bytes, cpu_bf16_native, git_revision, machine_info

    base = [sys.executable, __file__, "--dataset", args.dataset, "--ipc", str(args.ipc), "--epochs", str(args.epochs)]
    base += ["--cache-dir", args.cache_dir] if args.cache_dir else []
    runs = {k: [] for k in VARIANTS}
    loads = [round(x, 2) for x in os.getloadavg()]
    for r in range(args.rounds):
        for name in VARIANTS:
            # A private, empty inductor cache per process: every first candidate pays the whole compile, as the
            # first window of a real search on a fresh machine does.
            with tempfile.TemporaryDirectory() as tmp:
                env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), TORCHINDUCTOR_CACHE_DIR=tmp)
                res = subprocess.run(base + ["--one", name], check=True, capture_output=True, text=True, env=env)
            runs[name].append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(r, name, runs[name][-1], flush=True)
    summary = {k: {"median_first_s": statistics.median(x["seconds"][0] for x in v),
                   "median_steady_s": statistics.median(x["seconds"][1] for x in v),
                   "median_steady_samples_per_s": statistics.median(x["steady_samples_per_s"] for x in v),
                   "heldout_acc": [x["heldout_acc"] for x in v]} for k, v in runs.items()}
    f = summary["fp32"]["median_steady_s"]
    out = {"command": " ".join(["python", *sys.argv]), "git_revision": git_revision(), "machine": machine_info(),
           "threads": os.environ.get("OMP_NUM_THREADS"), "cpu_bf16_native": cpu_bf16_native(), "load_before": loads,
           "ipc": args.ipc, "epochs": args.epochs, "variants": VARIANTS, "runs": runs, "summary": summary,
           "steady_speedup_vs_fp32": {k: round(f / v["median_steady_s"], 2) for k, v in summary.items()}}
    atomic_write_bytes(Path(args.output), (json.dumps(out, indent=1) + "\n").encode())
    print(json.dumps(out["summary"], indent=1), "\nsteady speed-up vs fp32", out["steady_speedup_vs_fp32"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
