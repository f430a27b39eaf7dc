"""Benchmark: wall and CPU seconds of the instant CLI commands, interleaved, against a baseline tree.

    python bench/cli_startup.py --baseline-src /work/runs/interop/base_src --repeats 7 \
        --output bench/results/cli_startup.json

Each repeat runs every (tree, command) pair once in a fresh interpreter, in the same order, so a
background job slowing the shared machine hits both trees alike (interleaved, not back-to-back
blocks). CPU seconds are the child's user+sys from resource.getrusage (what the command costs
on an idle box); wall seconds include waiting for the shared CPUs. Reports median and min.
`--src` / `--baseline-src` are `src/` folders of two revisions (e.g. `git archive REV src | tar -x`),
so the measured code cannot change while the bench runs.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = (["--help"], ["--version"], ["methods"], ["models"], ["datasets"], ["recipes"],
            ["distill", "--method", "lic", "--help"])


def run_once(src: Path, argv: list) -> tuple:
    """(wall s, cpu s, return code) of `python -m ddkit ARGV` with `src` first on the path."""
    env = dict(os.environ, PYTHONPATH=str(src))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "ddkit", *argv], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, r.returncode


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", default=str(ROOT / "src"), help="src/ folder measured as 'this' (default: this checkout's)")
    p.add_argument("--baseline-src", default=None, help="src/ folder of the revision to compare against")
    p.add_argument("--repeats", type=int, default=7, help="interleaved repeats per (tree, command)")
    p.add_argument("--output", default="bench/results/cli_startup.json", help="JSON result path")
    args = p.parse_args(argv)
    trees = {"this": Path(args.src).resolve()}
    if args.baseline_src:
        trees["baseline"] = Path(args.baseline_src).resolve()
    samples = {(t, " ".join(c)): [] for t in trees for c in COMMANDS}
    loads = [round(x, 2) for x in os.getloadavg()]
    for _ in range(args.repeats):
        for c in COMMANDS:
            for t, src in trees.items():
                samples[(t, " ".join(c))].append(run_once(src, c))
    rows = []
    for (t, c), s in samples.items():
        wall, cpu = [x[0] for x in s], [x[1] for x in s]
        rows.append({"tree": t, "command": f"ddkit {c}", "return_codes": sorted({x[2] for x in s}),
                     "wall_s_median": round(statistics.median(wall), 3), "wall_s_min": round(min(wall), 3),
                     "cpu_s_median": round(statistics.median(cpu), 3), "cpu_s_min": round(min(cpu), 3)})
        print(f"{t:8s} ddkit {c:28s} wall median {rows[-1]['wall_s_median']:6.3f} s   "
              f"cpu median {rows[-1]['cpu_s_median']:6.3f} s")
    sys.path.insert(0, str(ROOT / "src"))
    from ddkit.utils import machine_info

    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    out = {"command": " ".join([sys.executable, *sys.argv]), "git_revision": rev, "machine": machine_info(),
           "src": args.src, "baseline_src": args.baseline_src, "repeats": args.repeats, "interleaved": True,
           "load_average_1_5_15min_before": loads, "load_average_1_5_15min_after": [round(x, 2) for x in os.getloadavg()],
           "results": rows}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
