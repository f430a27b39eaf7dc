"""Reports of the cross-arch, efficiency and continual studies: results tables, the cross-architecture matrix
(matrix.csv, a heatmap), the efficiency bars and the continual curves, rebuilt from results.csv every time (so a
partial, resumed folder reports what it has). Same pieces as the hard-truths report: ddkit.report's markdown,
ddkit.html_report's self-contained page, matplotlib figures through ddkit.plots' object API.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

from ddkit import plots
from ddkit.html_report import HtmlReport, protocol_table
from ddkit.report import markdown_table, write_markdown


def _pct(r: Mapping[str, Any]) -> str:
    """'mean ± std' in %, or the accuracy alone for one seed (no spread is known)."""
    if not isinstance(r.get("mean"), float) or math.isnan(r["mean"]):
        return "–"
    return f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}" if int(r.get("n") or 1) > 1 else f"{100 * r['mean']:.2f}"


def _protocol(out: Path) -> Dict[str, Any]:
    p = out / "study.json"
    return json.loads(p.read_text()).get("protocol", {}) if p.is_file() else {}


def _ran_lines(out: Path) -> List[str]:
    """One markdown line per distinct protocol the cells' students ran (runs/<cell>/protocol.json), with its cells."""
    from ddkit.evaluate.native import protocol_line
    from ddkit.study_rows import folder_protocols

    return [protocol_line(d) + (f"; notes: {'; '.join(d['notes'])}" if d.get("notes") else "")
            + f" — {len(cells)} cell{'s' if len(cells) > 1 else ''}: {', '.join(cells)}"
            for d, cells in folder_protocols(out / "runs")]


def _protocol_items(out: Path) -> List[str]:
    """The study's settings (study.json) and what its students ran, as report.md's protocol list."""
    return [f"{k}: {v}" for k, v in _protocol(out).items()] + _ran_lines(out)


def _html_protocol(rep: HtmlReport, out: Path) -> None:
    """report.html's protocol: the study's settings, then the table of what its cells' students ran."""
    from ddkit.study_rows import folder_protocols

    rep.items([f"{k}: {v}" for k, v in _protocol(out).items()])
    protocol_table(rep, folder_protocols(out / "runs"))


def _median(values: Sequence[float]) -> float:
    """The median of the finite values (NaN when none): robust to the first repetition's one-time costs."""
    vals = sorted(v for v in values if isinstance(v, float) and math.isfinite(v))
    if not vals:
        return float("nan")
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


# ------------------------------------------------------------------------------------------------- figures

def heatmap(labels: Sequence[str], columns: Sequence[str], values: Sequence[Sequence[float]], title: str = ""):
    """Rows × columns of accuracies (fractions, shown in %); None when empty."""
    if not labels or not columns:
        return None
    fig = plots._figure(1.6 + 1.3 * len(columns), 0.9 + 0.42 * len(labels))
    ax = fig.add_subplot(1, 1, 1)
    grid = [[100 * v if math.isfinite(v) else float("nan") for v in row] for row in values]
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(columns)), labels=list(columns), rotation=20, ha="right")
    ax.set_yticks(range(len(labels)), labels=list(labels))
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, "–" if math.isnan(v) else f"{v:.1f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=ax, label="test accuracy %")
    ax.set_title(title)
    return fig


def bars(labels: Sequence[str], series: Mapping[str, Sequence[float]], ylabel: str):
    """Grouped bars: one group per label, one bar per series; None when empty."""
    if not labels or not series:
        return None
    fig = plots._figure(max(5.0, 1.0 + 0.9 * len(labels)), 3.6)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(series)
    for i, (name, vals) in enumerate(series.items()):
        ax.bar([j + i * width for j in range(len(labels))], [v if math.isfinite(v) else 0 for v in vals], width,
               label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))], labels=list(labels), rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    return fig


def curves(rows: Sequence[Mapping[str, Any]]):
    """Accuracy on the classes seen vs step, one line per method (error bars: std over seeds)."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    if not methods:
        return None
    fig = plots._figure(5.5, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    for m in methods:
        pts = sorted((r["step"], 100 * r["mean"], 100 * r["std"]) for r in rows if r["method"] == m)
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                    label=m, linestyle="--" if m == "random" else "-")
    ax.set_xlabel("step (classes seen grow)")
    ax.set_ylabel("test accuracy on classes seen %")
    ax.legend(fontsize=8)
    return fig


# ------------------------------------------------------------------------------------------------- reports

def write_crossarch_report(out: Path) -> Path:
    """matrix.csv (method, observer, one column per verifier), report.md and report.html (with the heatmap)."""
    from ddkit.study_crossarch import COLUMNS, KEY
    from ddkit.study_cells import CellTable

    rows = CellTable(out / "results.csv", COLUMNS, KEY).rows()
    verifiers = list(dict.fromkeys(r["verifier"] for r in rows))
    pairs = list(dict.fromkeys((r["method"], r["observer"]) for r in rows))
    by = {(r["method"], r["observer"], r["verifier"]): r for r in rows}
    with open(out / "matrix.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", "observer"] + [f"{v}_mean" for v in verifiers] + [f"{v}_std" for v in verifiers]
                   + [f"{v}_n" for v in verifiers])
        for m, o in pairs:
            cells = [by.get((m, o, v)) for v in verifiers]
            w.writerow([m, o] + [f"{c['mean']:.6f}" if c else "" for c in cells]
                       + [f"{c['std']:.6f}" if c else "" for c in cells] + [c["n"] if c else "" for c in cells])
    items = _protocol_items(out)
    table = [[m, o] + [_pct(by[(m, o, v)]) if (m, o, v) in by else "–" for v in verifiers] for m, o in pairs]
    sections = [("Protocol", "\n".join(f"- {x}" for x in items) +
                 "\n- headline: last-epoch test accuracy (%), mean ± std (ddof 0) over student seeds"),
                ("Matrix (rows: method / observer; columns: verifier)",
                 markdown_table(["method", "observer"] + verifiers, table) if rows else "no finished cells yet")]
    fig = heatmap([f"{m} / {o}" for m, o in pairs], verifiers,
                  [[by[(m, o, v)]["mean"] if (m, o, v) in by else float("nan") for v in verifiers] for m, o in pairs],
                  "cross-architecture: observer (rows) → verifier (columns)")
    if fig is not None:
        fig.savefig(out / "matrix.png", dpi=110, bbox_inches="tight")
        sections.append(("Heatmap", "![matrix](matrix.png)"))
    rep = HtmlReport("Cross-architecture study")
    _html_protocol(rep, out)
    rep.heading("Matrix")
    rep.table(["method", "observer"] + verifiers, table)
    rep.figure(fig, "test accuracy %, mean over seeds; rows: method / observer, columns: verifier", "heatmap")
    rep.write(out / "report.html")
    return write_markdown(out / "report.md", "Cross-architecture study", sections)


def efficiency_summary(rows: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Per (method, observer): the median and min/max over repetitions of the per-100-image costs and peaks
    (the first repetition of a process also pays one-time costs: imports, kernel selection)."""
    out: List[Dict[str, Any]] = []
    for m, o in dict.fromkeys((r["method"], r["observer"]) for r in rows):
        cell = [r for r in rows if r["method"] == m and r["observer"] == o]
        bad = [r for r in cell if r.get("status") == "failed"]
        rs = [r for r in cell if r.get("status") != "failed"] or cell  # numbers from the measured reps only
        status = "ok"
        if bad:
            why = bad[-1].get("error") or "no reason recorded"
            status = f"failed: {why}" if len(bad) == len(cell) else f"{len(bad)} of {len(cell)} reps failed: {why}"
        s: Dict[str, Any] = {"method": m, "observer": o, "reps": len(cell) - len(bad), "status": status,
                             "observer_net": rs[0].get("observer_net"), "iterations": rs[0].get("iterations"),
                             "default_iterations": rs[0].get("default_iterations"), "options": rs[0].get("options") or ""}
        for k in ("wall_s_per_100", "cpu_s_per_100", "images_per_s", "peak_rss_mb", "peak_increase_mb",
                  "cuda_peak_mb"):
            vals = [float(r[k]) for r in rs if isinstance(r.get(k), float) and math.isfinite(r[k])]
            s[k] = _median(vals)
            s[k + "_range"] = (min(vals), max(vals)) if vals else None
        out.append(s)
    return out


def write_efficiency_report(out: Path) -> Path:
    """report.md + report.html (bars of seconds per 100 images and peak memory) from results.csv."""
    from ddkit.study_cells import CellTable
    from ddkit.study_efficiency import COLUMNS, KEY

    summ = efficiency_summary(CellTable(out / "results.csv", COLUMNS, KEY).rows())
    head = ["method", "observer", "net", "options", "reps", "iterations (default)", "wall s / 100 img", "CPU s / 100 img",
            "img/s", "peak RSS MiB", "peak rise MiB", "CUDA peak MiB", "status"]

    def f(v: Any, d: int = 2) -> str:
        return f"{v:.{d}f}" if isinstance(v, float) and math.isfinite(v) else "–"

    table = [[s["method"], s["observer"], s["observer_net"] or "–", s["options"], s["reps"],
              f"{s['iterations']} ({s['default_iterations']})" if s["iterations"] not in ("", None) else "–",
              f(s["wall_s_per_100"]), f(s["cpu_s_per_100"]), f(s["images_per_s"], 3), f(s["peak_rss_mb"], 0),
              f(s["peak_increase_mb"], 0), f(s["cuda_peak_mb"], 0), s["status"].replace("|", "/")] for s in summ]
    measured = [s for s in summ if s["reps"] > 0]  # a cell that only failed has no bar
    labels = [f"{s['method']} / {s['observer']}" for s in measured]
    fig_t = bars(labels, {"wall s / 100 images": [s["wall_s_per_100"] for s in measured],
                          "CPU s / 100 images": [s["cpu_s_per_100"] for s in measured]}, "seconds (log)")
    fig_m = bars(labels, {"peak rise MiB": [s["peak_increase_mb"] for s in measured]}, "MiB (log)")
    failed = [f"{s['method']} / {s['observer']}: {s['status']}" for s in summ if s["status"] != "ok"]
    sections = [("Protocol", "\n".join(f"- {k}: {v}" for k, v in _protocol(out).items())),
                ("Cost of making the images (median over repetitions)", markdown_table(head, table) if summ else "none")]
    if failed:
        sections.append(("Failed cells (rerun the same command to measure them again)",
                         "\n".join(f"- {x}" for x in failed)))
    for name, fig in (("time.png", fig_t), ("memory.png", fig_m)):
        if fig is not None:
            fig.savefig(out / name, dpi=110, bbox_inches="tight")
            sections.append((name[:-4].title(), f"![{name[:-4]}]({name})"))
    rep = HtmlReport("Efficiency study")
    rep.items([f"{k}: {v}" for k, v in _protocol(out).items()])
    rep.table(head, table)
    if failed:
        rep.text("Failed cells: " + "; ".join(failed) + " (rerun the same command to measure them again).", note=True)
    rep.figure(fig_t, "wall and CPU seconds to make 100 images (log scale)", "time")
    rep.figure(fig_m, "peak resident memory above the memory held before the run", "memory")
    rep.write(out / "report.html")
    return write_markdown(out / "report.md", "Efficiency study", sections)


def write_continual_report(out: Path) -> Path:
    """report.md + report.html: accuracy on the classes seen after each step, per method, random beside."""
    from ddkit.study_cells import CellTable
    from ddkit.study_continual import COLUMNS, KEY

    rows = [r for r in CellTable(out / "results.csv", COLUMNS, KEY).rows()]
    steps = sorted({r["step"] for r in rows})
    by = {(r["method"], r["step"]): r for r in rows}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    table = [[m] + [_pct(by[(m, k)]) if (m, k) in by else "–" for k in steps] for m in methods]
    head = ["method"] + [f"step {k} ({by[next(iter(m for m in methods if (m, k) in by)), k]['classes_seen']} cl.)"
                         for k in steps]
    fig = curves(rows)
    items = _protocol_items(out)
    sections = [("Protocol", "\n".join(f"- {x}" for x in items)),
                ("Accuracy on the classes seen after each step", markdown_table(head, table) if rows else "none")]
    if fig is not None:
        fig.savefig(out / "curve.png", dpi=110, bbox_inches="tight")
        sections.append(("Curve", "![curve](curve.png)"))
    rep = HtmlReport("Continual-learning study")
    _html_protocol(rep, out)
    rep.table(head, table)
    rep.figure(fig, "test accuracy on the classes seen so far; error bars: std over seeds", "curve")
    rep.write(out / "report.html")
    return write_markdown(out / "report.md", "Continual-learning study", sections)
