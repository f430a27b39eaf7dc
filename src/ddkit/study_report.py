"""The hard-truths study's report: per-regime tables, mean ranks and the accuracy-vs-budget plot (report.html
adds the per-class heatmap of each method against random, html_report.study_per_class_panels).

`write_report(folder)` rebuilds report.md (+ acc_vs_budget.png) and report.html from every row of results.csv, so
it also works on a partial, resumed grid; cells with best-of-test recorded show it in brackets.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ddkit.html_report import write_study_html
from ddkit.plots import acc_vs_budget
from ddkit.evaluate.native import protocol_line
from ddkit.report import markdown_table, write_markdown
from ddkit.study_rows import cell_protocols


def _ranks(values: Dict[str, float]) -> Dict[str, float]:
    """Rank 1 = highest accuracy; ties share their average rank."""
    items = sorted(values.items(), key=lambda kv: -kv[1])
    out: Dict[str, float] = {}
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1][1] == items[i][1]:
            j += 1
        for m, _ in items[i:j + 1]:
            out[m] = (i + j) / 2 + 1
        i = j + 1
    return out


def rank_table(rows: List[Dict[str, Any]]) -> Dict[str, Dict[str, float]]:
    """{regime: {method: mean rank over the (ipc, budget) cells of that regime}} (1 = best)."""
    cells: Dict[Tuple[str, int, float], Dict[str, float]] = {}
    for r in rows:
        cells.setdefault((r["regime"], r["ipc"], r["budget"]), {})[r["method"]] = r["mean"]
    acc: Dict[str, Dict[str, List[float]]] = {}
    for (regime, _, _), vals in cells.items():
        for m, rk in _ranks(vals).items():
            acc.setdefault(regime, {}).setdefault(m, []).append(rk)
    return {g: {m: sum(v) / len(v) for m, v in ms.items()} for g, ms in acc.items()}


def _plot(rows: List[Dict[str, Any]], path: Path) -> Optional[Path]:
    """Accuracy vs budget, one panel per (ipc, regime), one line per method (error bars: std over seeds)."""
    fig = acc_vs_budget(rows)
    if fig is None:
        return None
    fig.savefig(path, dpi=110)
    return path


def _cell(r: Dict[str, Any]) -> str:
    """'mean ± std' in %, or the accuracy alone for a one-seed cell (a std of 0 there would claim a spread);
    ' [best-of-test b]' after it when best-of-test (chosen on test, never the headline) is higher."""
    text = (f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}" if int(r.get("n") or 1) > 1
            else f"{100 * r['mean']:.2f}")
    best = r.get("best_of_test")
    if isinstance(best, float) and math.isfinite(best) and best > r["mean"] + 1e-9:
        text += f" [{100 * best:.2f}]"
    return text


def _cells_text(cells: List[str], most: int = 6) -> str:
    return ", ".join(cells[:most]) + (f", … ({len(cells) - most} more)" if len(cells) > most else "")


def write_report(output_dir: str | Path) -> Path:
    """report.md (+ acc_vs_budget.png) from every row of output_dir/results.csv."""
    out = Path(output_dir)
    from ddkit.study import read_results

    rows = read_results(out / "results.csv")
    sections: List[Tuple[str, str]] = []
    proto = json.loads((out / "study.json").read_text()).get("protocol", {}) if (out / "study.json").is_file() else {}
    ran = cell_protocols(out / "runs", rows)
    write_study_html(out, rows, proto, ran=ran)  # report.html: the same rows with IOR/HLR, plots, curves, grids
    if not rows:
        return write_markdown(out / "report.md", "Hard-truths study", [("Results", "no finished cells yet")])
    sections.append(("Protocol", "\n".join(f"- {k}: {v}" for k, v in proto.items()) +
                     "\n- headline: last-epoch test accuracy (%), mean ± std (ddof 0) over student seeds (a cell "
                     "with one seed shows its accuracy alone: no spread is known); every student sees budget × "
                     "|train| samples; [brackets]: mean best-of-test, chosen on the test set (not a headline)" +
                     "".join(f"\n- {protocol_line(d)}" + (f"; notes: {'; '.join(d['notes'])}" if d.get("notes") else "")
                             + f" — {len(cells)} cell{'s' if len(cells) > 1 else ''}: {_cells_text(cells)}"
                             for d, cells in ran)))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cols = sorted({(r["ipc"], r["budget"]) for r in rows})
    for regime in dict.fromkeys(r["regime"] for r in rows):
        by = {(r["method"], r["ipc"], r["budget"]): r for r in rows if r["regime"] == regime}
        table = []
        for m in methods:
            cells = []
            for ipc, b in cols:
                r = by.get((m, ipc, b))
                cells.append("–" if r is None else _cell(r))
            table.append([m] + cells)
        sections.append((f"Regime {regime}", markdown_table(["method"] + [f"IPC {i} / {b:g} ep" for i, b in cols],
                                                            table)))
    ranks = rank_table(rows)
    regimes = list(ranks)
    sections.append(("Mean rank per regime (1 = best; averaged over the regime's IPC × budget cells)",
                     markdown_table(["method"] + regimes,
                                    [[m] + [f"{ranks[g][m]:.2f}" if m in ranks[g] else "–" for g in regimes]
                                     for m in methods])))
    png = _plot(rows, out / "acc_vs_budget.png")
    if png is not None:
        sections.append(("Accuracy vs compute budget", f"![accuracy vs budget]({png.name})"))
    nan_cells = [f"{r['method']}/{r['ipc']}/{r['budget']:g}/{r['regime']}" for r in rows if math.isnan(r["mean"])]
    if nan_cells:
        sections.append(("Cells without a number", ", ".join(nan_cells)))
    sections.append(("Report", "report.html: IOR/HLR beside each cell, plots, training curves, set grids"))
    return write_markdown(out / "report.md", "Hard-truths study", sections)
