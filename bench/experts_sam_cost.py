"""What `ddkit experts train --sam` (DATM's FTD experts: one GSAM step = two forward/backward passes) costs
against plain SGD experts (MTT's buffer.py), per training epoch, at the CPU preset on CIFAR-10 (JPEG q75).

Each round trains one expert for `--epochs` epochs in a fresh folder, once with SGD and once with --sam,
through the same function the CLI calls (`train_experts`), without a test split so that only the training
steps are timed (the CLI adds the same per-epoch test pass to both). Seconds come from the expert's own
record (`seconds_this_process`). Writes bench/results/experts_sam_cost_cpu.json with the command, git
revision and machine (lscpu model and flags).

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/experts_sam_cost.py --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_time import lscpu  # noqa: E402  (one lscpu reader for every bench script)

ROOT = Path(__file__).resolve().parents[1]
DATA = "tar:/work/shared/data/cifar10-jpeg75.tar.gz"


def revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--dataset", default=DATA)
    ap.add_argument("--cache-dir", default="/work/runs/cache")
    ap.add_argument("--work", default="/work/runs/matching/sam_cost")
    ap.add_argument("--output", default=str(ROOT / "bench/results/experts_sam_cost_cpu.json"))
    args = ap.parse_args()

    import torch

    from ddkit.data import create_dataset
    from ddkit.teachers.experts import ExpertConfig, resolve_expert_config, train_experts

    train = create_dataset(args.dataset, split="train", cache_dir=args.cache_dir, progress=False)
    work = Path(args.work)
    rows: Dict[str, List[float]] = {"sgd": [], "sam": []}
    for r in range(args.rounds):
        for mode in ("sgd", "sam"):
            out = work / f"{mode}{r}"
            shutil.rmtree(out, ignore_errors=True)
            cfg = ExpertConfig(preset="cpu", num_experts=1, epochs=args.epochs, sam=mode == "sam", seed=r)
            train_experts(train, None, cfg, out, device=torch.device("cpu"), progress=False)
            facts = json.loads((out / "expert_0000.json").read_text())
            rows[mode].append(facts["seconds_this_process"] / facts["epochs_this_process"])
            print(f"round {r} {mode}: {rows[mode][-1]:.2f} s/epoch", flush=True)
    eff = resolve_expert_config(ExpertConfig(preset="cpu", num_experts=1, epochs=args.epochs, sam=True))
    med = {k: statistics.median(v) for k, v in rows.items()}
    doc: Dict[str, Any] = {
        "what": "seconds per expert training epoch, SGD (MTT buffer.py) vs --sam (DATM FTD: GSAM, 2 passes/step)",
        "command": " ".join([sys.executable, *sys.argv]),
        "cli_equivalent": f"ddkit experts train --dataset {args.dataset} --preset cpu --num-experts 1 --epochs "
                          f"{args.epochs} [--sam] --output BUF (the CLI also scores the test split each epoch)",
        "revision": revision(), "machine": lscpu(), "threads": os.environ.get("OMP_NUM_THREADS"),
        "torch_threads": torch.get_num_threads(), "load_average_at_end": list(os.getloadavg()),
        "setting": {"dataset": args.dataset, "images": eff["subset_per_class"] * train.num_classes,
                    "batch": eff["batch_size"], "arch": eff["arch"], "dsa": eff["dsa_strategy"],
                    "rho": eff["rho"], "alpha": eff["alpha"], "adaptive": eff["adaptive"], "epochs": args.epochs,
                    "rounds": args.rounds},
        "seconds_per_epoch": {k: [round(x, 3) for x in v] for k, v in rows.items()},
        "median_seconds_per_epoch": {k: round(v, 3) for k, v in med.items()},
        "sam_over_sgd": round(med["sam"] / med["sgd"], 2),
    }
    Path(args.output).write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({k: doc[k] for k in ("median_seconds_per_epoch", "sam_over_sgd")}))


if __name__ == "__main__":
    main()
