"""Collect the issue-29 study folders (cross-arch, efficiency, continual) into bench/results JSON.

    python bench/collect_studies.py --crossarch RUNS/crossarch --continual RUNS/continual \
        --efficiency RUNS/efficiency_cifar10 [--note KIND=TEXT]   # -> efficiency_cifar10_cpu.json

Each JSON holds the study's finished rows exactly as its results.csv has them (the last row of a cell), the
pinned protocol (study.json), every invocation (runs.jsonl: command, git revision, machine) and the machine as
lscpu prints it (model name, flags). Only finished cells exist in a results.csv, so a partial run gives complete
rows and lists what is missing beside them. docs/results.md renders these files (bench/results_doc_studies.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
from demo_time import lscpu  # noqa: E402  (one lscpu reader for every bench script)


def machine() -> Dict[str, str]:
    """Model name, flags and core count (speed claims name the CPU they ran on), from the one lscpu reader."""
    facts = lscpu()
    return {"model": facts.get("Model name", ""), "flags": facts.get("Flags", ""), "nproc": str(os.cpu_count())}


def _rows(folder: Path, kind: str) -> List[Dict[str, Any]]:
    from ddkit.study_cells import CellTable

    mod = {"crossarch": "ddkit.study_crossarch", "efficiency": "ddkit.study_efficiency",
           "continual": "ddkit.study_continual"}[kind]
    m = __import__(mod, fromlist=["COLUMNS", "KEY"])
    return CellTable(folder / "results.csv", m.COLUMNS, m.KEY).rows()


def collect(folder: Path, kind: str, note: str = "", running: Sequence[str] = (), revision: str = "") -> Dict[str, Any]:
    """One study folder as a JSON-able record; `running`: the commands of invocations still running (a study
    writes its runs.jsonl line when an invocation ends), recorded with `revision` (the code they run)."""
    runs = [json.loads(x) for x in (folder / "runs.jsonl").read_text().splitlines() if x.strip()] \
        if (folder / "runs.jsonl").is_file() else []
    runs += [{"command": c, "git_revision": revision, "status": "still running when collected"} for c in running]
    pinned = json.loads((folder / "study.json").read_text()) if (folder / "study.json").is_file() else {}
    return {"study": kind, "folder": str(folder), "protocol": pinned.get("protocol", {}),
            "rows": _rows(folder, kind), "runs": runs, "machine": machine(), "note": note}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crossarch", type=Path)
    ap.add_argument("--continual", type=Path)
    ap.add_argument("--efficiency", type=Path, nargs="*", default=[])
    ap.add_argument("--note", action="append", default=[], metavar="KIND=TEXT", help="a note per study kind")
    ap.add_argument("--running", action="append", default=[], metavar="KIND=COMMAND",
                    help="an invocation still running (its runs.jsonl line comes when it ends)")
    ap.add_argument("--revision", default="", help="git revision the running invocations run")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    a = ap.parse_args(argv)
    jobs = [("crossarch", a.crossarch, "crossarch_cifar10_cpu.json"),
            ("continual", a.continual, "continual_cifar10_cpu.json")]
    for i, f in enumerate(a.efficiency):
        jobs.append(("efficiency", f, f"efficiency_{f.name.replace('efficiency_', '')}_cpu.json"))
    for kind, folder, name in jobs:
        if folder is None:
            continue
        notes = [n.split("=", 1)[1] for n in a.note if n.split("=", 1)[0] == kind]
        running = [r.split("=", 1)[1] for r in a.running if r.split("=", 1)[0] in (kind, name)]
        rec = collect(folder, kind, " ".join(notes), running, a.revision)
        (a.out / name).write_text(json.dumps(rec, indent=1, default=str) + "\n")
        print(f"wrote {a.out / name}: {len(rec['rows'])} rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
