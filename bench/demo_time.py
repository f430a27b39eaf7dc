"""The front door, timed: `make demo` (and optionally `ddkit demo --all`) as a new user runs them, from the venv.

Runs each command as a whole process in a fresh output folder, `rounds` times, and writes the wall and CPU
seconds, the exit code, the demo's own measured total and method statuses, with the exact command, git revision
and machine (CPU model and flags from lscpu) to bench/results/demo_time_cpu.json. README and docs quote this file.

    .venv/bin/python bench/demo_time.py                 # make demo's demo (the representative default)
    .venv/bin/python bench/demo_time.py --all           # also every registered method
    .venv/bin/python bench/demo_time.py --all --fresh-clone /tmp/ddkit-fresh   # first: a new user's make demo
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]


def lscpu() -> Dict[str, str]:
    """Model name and flags as lscpu prints them (speed claims name the CPU they ran on)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    facts = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in facts.items() if k.strip() in ("Model name", "Flags", "CPU(s)",
                                                                            "Vendor ID")}


def time_command(argv: List[str], output: Path, cwd: Path = ROOT) -> Dict[str, Any]:
    """Run argv once in `cwd` (output folder removed first); wall seconds, children's CPU seconds, rc, the demo's
    facts."""
    shutil.rmtree(output, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    rc = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    row: Dict[str, Any] = {"command": " ".join(argv), "rc": rc, "wall_s": round(wall, 1),
                           "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1)}
    res = output / "results.json"
    if res.is_file():
        doc = json.loads(res.read_text())
        row.update(demo_wall_s=round(doc["wall_seconds"], 1), status=doc.get("status"),
                   report_html=(output / "report.html").is_file())
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all", action="store_true", help="also time `ddkit demo --all`")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--fresh-clone", default=None, metavar="DIR", help="first time `make demo` in a fresh clone "
                    "of HEAD at DIR, its virtualenv build included (a new user's first command)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "demo_time_cpu.json"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from ddkit.utils import git_revision

    ddkit = str(ROOT / ".venv" / "bin" / "ddkit")
    runs: List[Dict[str, Any]] = []
    if args.fresh_clone:
        clone = Path(args.fresh_clone)
        shutil.rmtree(clone, ignore_errors=True)
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        runs.append({"round": 0, "what": "make demo in a fresh clone (venv build included)",
                     **time_command(["make", "demo"], clone / "runs" / "demo", cwd=clone)})
        print(json.dumps(runs[-1])[:300], flush=True)
    for r in range(args.rounds):
        runs.append({"round": r, "what": "make demo", **time_command(["make", "demo"], ROOT / "runs" / "demo")})
        if args.all:
            out = ROOT / "runs" / "demo-all"
            runs.append({"round": r, "what": "ddkit demo --all",
                         **time_command([ddkit, "demo", "--all", "--no-progress", "--output", str(out)], out)})
        print(json.dumps(runs[-1])[:300], flush=True)
    doc = {"bench": "demo_time", "command": " ".join([sys.executable, *sys.argv]), "git_revision": git_revision(),
           "machine": {**lscpu(), "nproc": os.cpu_count()}, "note": "the 'make demo' rows in this checkout run "
           "with its venv already built; the fresh-clone row includes the venv's build", "runs": runs}
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
