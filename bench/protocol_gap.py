"""MTT and DATM judged two ways (issue #26): natively (ZCA inputs + learned lr, DATM's learned labels) and under
the hard-truths protocol, each beside its random subset under the same protocol.

    python bench/protocol_gap.py --work /work/runs/protocol/bench            # distil + evaluate (resumable)
    python bench/protocol_gap.py --work /work/runs/protocol/bench --collect  # write the results JSON only

Steps (each skipped when its output exists): a ZCA expert buffer at the CPU preset (`ddkit experts train
--preset cpu --zca true`), MTT and DATM at IPC 10 with their CPU preset on it (`--preset cpu --zca true`), then
`ddkit evaluate SET --protocol native --seeds 3` (the random subset of the same IPC beside each set, trained
under the set's resolved native protocol: its ZCA transform and learned lr) and `--protocol hard-truths --no-random`
(random under hard-truths HL is the hard-truths study's own random cell at the same protocol, student and seeds:
bench/results/synthesis_official_cifar10_cpu/before_ipc10), all on the bf16 + compile student path
(`--cpu-amp --compile`, measured equal to fp32: bench/results/bf16_accuracy_hardtruths_cpu.json). The JSON holds the commands, the git revision, the machine (lscpu), and per
method × protocol the set's last-epoch accuracies per seed (the headline) and what the protocol took from it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_time import lscpu  # noqa: E402  (one lscpu reader for every bench script)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench/results/protocol_gap_mtt_datm_cpu.json"
DATA = ["--dataset", "tar:/work/shared/data/cifar10-jpeg75.tar.gz", "--cache-dir", "/work/runs/cache",
        "--device", "cpu", "--no-progress"]
METHODS = ("mtt", "datm")
#: the load the measurement ran under (the evaluations' wall times in the JSON are not costs)
#: the revision of the code the evaluations ran (a snapshot of main, PYTHONPATH to its src)
CODE_REV = "edb10e1"
NOTE = ("2 cores shared with the session's other jobs (one thread per evaluation, load average 3-8); code pinned at "
        "the revision in `code_revision`")
PROTOCOLS = ("native", "hard-truths")


def commands(work: Path) -> List[List[str]]:
    """The ddkit commands of the measurement, in order."""
    buf = work.parent / "experts_zca_cpu"
    cmds = [["ddkit", "experts", "train", *DATA, "--preset", "cpu", "--zca", "true", "--output", str(buf)]]
    cmds += [["ddkit", "distill", "--method", m, "--ipc", "10", "--preset", "cpu", "--zca", "true", "--buffer",
              str(buf), *DATA, "--output", str(work / "sets" / m), "--resume"] for m in METHODS]
    cmds += [["ddkit", "evaluate", str(work / "sets" / m), *DATA, "--protocol", p, "--seeds", "3",
              *(["--no-random"] if p == "hard-truths" else []), "--cpu-amp", "--compile",
              "--output", str(work / "eval" / f"{m}-{p}"), "--overwrite"] for m in METHODS for p in PROTOCOLS]
    return cmds


def collect(work: Path) -> Dict[str, Any]:
    """The results JSON from the finished evaluation folders."""
    rows = []
    for m in METHODS:
        if not (work / "sets" / m / "meta.json").is_file():
            continue
        meta = json.loads((work / "sets" / m / "meta.json").read_text())
        for p in PROTOCOLS:
            if not (work / "eval" / f"{m}-{p}" / "summary.json").is_file():
                continue  # not finished: the JSON holds what is done, nothing else
            s = json.loads((work / "eval" / f"{m}-{p}" / "summary.json").read_text())
            by = {r["set"]: r for r in s["results"]}
            keep = ("accs", "seeds", "mean", "std", "train_seconds")
            rows.append({"method": m, "protocol": p, "resolved": s["protocol"], "recipe": s["recipe"],
                         "regime": s["regime"], "epochs": by["distilled"]["epochs"],
                         "batch_size": by["distilled"]["batch_size"], "student": by["distilled"]["student"],
                         "iterations": by["distilled"]["iterations"],
                         "distilled": {k: by["distilled"][k] for k in keep},
                         # the random subset of the same IPC under the same resolved protocol (None: not run)
                         "random": {k: by["random"][k] for k in keep} if "random" in by else None,
                         "best_of_test": by["distilled"].get("best_of_test"), "set_meta": {k: meta.get(k) for k in (
                             "preset", "space", "syn_lr", "learned_lr", "learned_labels", "native", "settings",
                             "wall_seconds", "git_revision")}})
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"what": "MTT and DATM IPC 10 at their CPU preset with ZCA, evaluated natively (ZCA + learned lr, "
                    "DATM's learned labels) and under the hard-truths protocol (HL)",
            "data": "CIFAR-10 (JPEG q75), full train split for distillation and random subsets, full test split",
            "expert_buffer": "ddkit experts train --preset cpu --zca true: 2 ConvNet-3 experts x 8 epochs on 100 "
                             "images per class (CPU preset), ZCA eps 0.1",
            "headline": "last-epoch test accuracy (fraction), mean ± std (ddof 0) over 3 student seeds",
            "commands": [" ".join(c) for c in commands(work)],
            "git_revision": rev, "code_revision": CODE_REV, "machine": {**lscpu(), "nproc": os.cpu_count(),
                                             "note": NOTE},
            "rows": rows}


def main(argv: Any = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="scratch folder for sets and evaluations")
    ap.add_argument("--collect", action="store_true", help="only write the JSON from finished runs")
    a = ap.parse_args(argv)
    if not a.collect:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        for cmd in commands(a.work):
            out = Path(cmd[cmd.index("--output") + 1])
            if (out / "summary.json").is_file() or (out / "meta.json").is_file() or (out / "buffer.json").is_file():
                continue
            subprocess.run([str(Path(sys.executable).with_name("ddkit")), *cmd[1:]], check=True, env=env)
    OUT.write_text(json.dumps(collect(a.work), indent=1) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
