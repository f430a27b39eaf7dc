"""Plot one IPC of a hard-truths study: every method's last-epoch accuracy per regime, random dashed.

    python bench/plot_study_cells.py RESULTS_CSV --ipc 10 [--budget 0.6] --output docs/fig.png

Reads the study's results.csv (all rows of that IPC, or of one budget), draws `ddkit.plots.acc_vs_ipc`'s
one-IPC panels (one dot per method with its std over seeds; red: below the baseline's mean) and writes a PNG.
Panels run HL, SL, SL+KD; methods are ordered by their HL accuracy (else the first regime's), the baseline first.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ddkit.plots import acc_vs_ipc
from ddkit.study import read_results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="a study's results.csv")
    ap.add_argument("--ipc", type=int, required=True, help="the IPC to draw")
    ap.add_argument("--budget", type=float, default=None, help="only this budget (default: the IPC's only one)")
    ap.add_argument("--baseline", default="random", help="method drawn as the dashed line (default: random)")
    ap.add_argument("--output", type=Path, required=True, help="PNG to write")
    a = ap.parse_args(argv)
    if not a.results.is_file():
        sys.exit(f"{a.results}: no such file (a study's results.csv)")
    rows = [r for r in read_results(a.results) if int(r["ipc"]) == a.ipc
            and (a.budget is None or abs(float(r["budget"]) - a.budget) < 1e-9)]
    budgets = sorted({float(r["budget"]) for r in rows})
    if not rows:
        sys.exit(f"no rows with IPC {a.ipc}" + (f" and budget {a.budget:g}" if a.budget is not None else "")
                 + f" in {a.results}")
    if len(budgets) > 1:
        sys.exit(f"IPC {a.ipc} has budgets {budgets}: choose one with --budget")
    regimes = list(dict.fromkeys(r["regime"] for r in rows))
    key = "hl" if "hl" in regimes else regimes[0]
    acc = {r["method"]: r["mean"] for r in rows if r["regime"] == key}
    order = sorted(dict.fromkeys(r["method"] for r in rows),
                   key=lambda m: (m != a.baseline, -acc.get(m, float("-inf"))))
    # Panels in the paper's order (HL, SL, SL+KD, then any other), methods in `order` inside each.
    rank = {g: i for i, g in enumerate(("hl", "sl", "slkd"))}
    rows.sort(key=lambda r: (rank.get(r["regime"], len(rank)), order.index(r["method"])))
    fig = acc_vs_ipc(rows, baseline=a.baseline)
    a.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.output, dpi=110)
    print(f"wrote {a.output} ({len(order)} methods × {len(regimes)} regimes, IPC {a.ipc}, budget {budgets[0]:g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
