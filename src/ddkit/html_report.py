"""report.html: one self-contained page (images inlined as base64 PNG) beside report.md / results.md.

    rep = HtmlReport("ddkit demo")
    rep.heading("Accuracy"); rep.table(["method", "HL"], [["random", "61.2"]])
    rep.figure(plots.acc_vs_ipc(rows), "accuracy per method"); rep.image(grid_png(ds), "random")
    rep.write("runs/demo/report.html")

No web framework and no script: plain HTML + a little CSS, so the file opens offline in any browser
and survives being mailed or attached. `write_eval_html` and `write_study_html` build the pages of
`ddkit evaluate` and `ddkit study` from the files those commands leave (summary.json, results.csv,
metrics.jsonl, the sets), so a finished folder can be re-rendered at any time. This is the
study/report layer: it reads the evaluator's outputs, the evaluator never imports it.
"""
from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ddkit import plots

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1280px;
padding:0 16px;color:#222;background:#fff}
h1{font-size:1.6em;margin-bottom:4px} h2{font-size:1.25em;margin-top:28px;border-bottom:1px solid #ddd}
h3{font-size:1.05em;margin:18px 0 6px}
table{border-collapse:collapse;font-size:.9em;margin:8px 0}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right} th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
td.pos{color:#11632b;background:#eaf6ed} td.neg{color:#a11;background:#fbeaea}
figure{margin:10px 0 18px} figcaption{font-size:.85em;color:#555;margin-top:4px}
.scroll{overflow-x:auto} img{max-width:none;display:block} img.plot{max-width:100%;height:auto}
p.note{font-size:.85em;color:#555}
"""


class Cell:
    """A table cell with an optional CSS class (pos / neg colour an IOR sign)."""

    def __init__(self, text: Any, css: str = "") -> None:
        self.text, self.css = str(text), css


def signed(points: Optional[float], higher_is_better: bool = True, digits: int = 2) -> Cell:
    """A difference in percentage points, signed and coloured (green when good, red when bad)."""
    if points is None or not math.isfinite(points):
        return Cell("–")
    good = points >= 0 if higher_is_better else points <= 0
    return Cell(f"{points:+.{digits}f}", "pos" if good else "neg")


class HtmlReport:
    """Accumulates sections of a page and writes it as one self-contained HTML file."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.parts: List[str] = []
        self.images = 0

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def text(self, text: str, note: bool = False) -> None:
        """A paragraph (escaped; `backticks` become <code>)."""
        esc = html.escape(text)
        segs = esc.split("`")
        esc = "".join(f"<code>{s}</code>" if i % 2 else s for i, s in enumerate(segs)) if len(segs) % 2 else esc
        self.parts.append(f'<p class="note">{esc}</p>' if note else f"<p>{esc}</p>")

    def items(self, lines: Sequence[str]) -> None:
        self.parts.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """A table; a cell may be a `Cell` to carry a CSS class."""
        out = ['<div class="scroll"><table><thead><tr>' + "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
               + "</tr></thead><tbody>"]
        for r in rows:
            tds = []
            for c in r:
                c = c if isinstance(c, Cell) else Cell(c)
                cls = f' class="{c.css}"' if c.css else ""
                tds.append(f"<td{cls}>{html.escape(c.text)}</td>")
            out.append("<tr>" + "".join(tds) + "</tr>")
        out.append("</tbody></table></div>")
        self.parts.append("".join(out))

    def image(self, png: bytes, caption: str = "", alt: str = "", plot: bool = False) -> None:
        """Inline a PNG (base64). Grids keep their natural size (scrolling if wide) so they stay legible;
        plots may shrink to the page width."""
        b64 = base64.b64encode(png).decode("ascii")
        cls = ' class="plot"' if plot else ""
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self.parts.append(f'<figure><div class="scroll"><img{cls} alt="{html.escape(alt or caption)}" '
                          f'src="data:image/png;base64,{b64}"></div>{cap}</figure>')
        self.images += 1

    def figure(self, fig: Any, caption: str = "", alt: str = "") -> bool:
        """Inline a matplotlib Figure; returns False (and adds nothing) for None."""
        if fig is None:
            return False
        self.image(plots.png_bytes(fig), caption, alt or caption, plot=True)
        return True

    def render(self) -> str:
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(self.title)}</title><style>{CSS}</style></head><body>"
                f"<h1>{html.escape(self.title)}</h1>\n" + "\n".join(self.parts) + "\n</body></html>\n")

    def write(self, path: str | Path) -> Path:
        """Write atomically (temporary sibling, then rename): a reader never sees half a page."""
        from ddkit.utils import atomic_write_bytes

        path = Path(path)
        atomic_write_bytes(path, self.render().encode("utf-8"))  # removes its temporary when the disk is full
        return path


# ----------------------------------------------------------------------------------------------------
# Shared pieces: curves from metrics.jsonl, set grids
# ----------------------------------------------------------------------------------------------------

def read_jsonl(path: str | Path) -> List[Dict[str, Any]]:
    """Records of a metrics.jsonl (a torn last line from an interrupted run is skipped)."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def load_curves(root: str | Path) -> Dict[str, List[List[Dict[str, Any]]]]:
    """{run group: [records per seed]} from every <group>/seed<k>/metrics.jsonl under root."""
    root = Path(root)
    groups: Dict[str, List[List[Dict[str, Any]]]] = {}
    for p in sorted(root.glob("**/metrics.jsonl")):
        rel = p.parent.relative_to(root)
        group = rel.parent if rel.name.startswith("seed") else rel
        groups.setdefault(str(group) or ".", []).append(read_jsonl(p))
    return groups


def add_curves(rep: HtmlReport, root: str | Path, caption: str, title: str = "Training curves",
               loss_caption: Optional[str] = None) -> bool:
    """Training curves of every run under root (one line per group, mean over seeds). The test-accuracy panel
    needs plots.MIN_CURVE_POINTS evaluations; with fewer, the loss panel stands alone (captioned `loss_caption`,
    default `caption`) and a note says when the accuracy was measured (a lone dot on an axis reads like a
    broken plot)."""
    curves = load_curves(root) if Path(root).is_dir() else {}
    if not curves:
        return False
    rep.heading(title)
    epochs = plots.acc_epochs(curves)
    with_acc = len(epochs) >= plots.MIN_CURVE_POINTS
    drawn = rep.figure(plots.training_curves(curves), caption if with_acc else (loss_caption or caption),
                       "training curves: loss and test accuracy" if with_acc else "training curves: loss")
    if drawn and not with_acc:
        n = len(epochs)
        at = f" (epoch{'s' if n > 1 else ''} {', '.join(f'{e:g}' for e in epochs)})" if n else ""
        rep.text(f"Test accuracy was measured at {n} epoch{'s' if n != 1 else ''}{at}, too few for a curve: "
                 "see the table.", note=True)
    return drawn


def add_grid(rep: HtmlReport, name: str, set_dir: str | Path, distilled: Any = None) -> bool:
    """The legible grid of one set (drawn from the exact tensors), with its caption."""
    from ddkit.distilled import DistilledSet
    from ddkit.grids import grid_caption, grid_png

    try:
        ds = distilled if distilled is not None else DistilledSet.load(set_dir)
    except Exception as e:  # a missing or foreign set must not cost the whole report
        rep.text(f"{name}: no grid ({e})", note=True)
        return False
    rep.heading(name, 3)
    rep.image(grid_png(ds), grid_caption(ds), f"grid of {name}")
    return True


def _pct(v: Optional[float]) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{100 * v:.2f}"


def _acc(mean: float, std: float, n: int) -> str:
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if n > 1 else _pct(mean)


# ----------------------------------------------------------------------------------------------------
# ddkit evaluate
# ----------------------------------------------------------------------------------------------------

def write_eval_html(output_dir: str | Path, distilled_dir: Optional[str | Path] = None) -> Path:
    """report.html of a finished `ddkit evaluate` folder (summary.json, runs/**/metrics.jsonl, the set)."""
    out = Path(output_dir)
    summary = json.loads((out / "summary.json").read_text())
    if distilled_dir is None and (out / "config.yaml").is_file():
        import yaml

        distilled_dir = (yaml.safe_load((out / "config.yaml").read_text()) or {}).get("distilled")
    from ddkit.evaluate.runner import best_of_test_text

    results = summary.get("results", [])
    regime = summary.get("regime", "")
    distilled = _load_set(distilled_dir)
    ipc = summary.get("ipc")
    if ipc is None and distilled is not None:  # a folder written before summary.json recorded the IPC
        from ddkit.evaluate.runner import set_ipc

        ipc = set_ipc(distilled)
    rep = HtmlReport(f"ddkit evaluate: {distilled_dir or out.name}")
    rep.text(f"Regime {plots.REGIME_NAMES.get(regime, regime)}, recipe `{summary.get('recipe')}`; headline = "
             "last-epoch test accuracy (%), mean ± std (ddof 0) over n seeds; best-of-test (the best recorded "
             "test evaluation, chosen on the test set) is shown beside it, never as the headline. IOR = "
             "acc(distilled) − acc(random subset of the same IPC, same protocol), HLR = acc(full data, HL) − "
             "acc(distilled, HL); both in points.")
    _protocol_section(rep, summary)
    if summary.get("compute_path"):  # which path the students ran (evaluate/fastpath.py)
        rep.text(f"Compute: {summary['compute_path']['why']}.")
    iors = summary.get("ior") or {}
    hlrs = summary.get("hlr") or {}
    rows = []
    for r in results:
        st, name = r["student"], r["set"]
        iv = 100 * iors[st]["ior"] if name == "distilled" and st in iors else None
        hv = 100 * hlrs[st]["hlr"] if name == "distilled" and st in hlrs else None
        rows.append([st, name, _acc(r["mean"], r["std"], r["n"]), r["n"], ", ".join(_pct(a) for a in r["accs"]),
                     best_of_test_text(r), signed(iv), signed(hv, higher_is_better=False),
                     f"{r['iterations']} × {r['batch_size']}"])
    rep.heading("Results")
    rep.table(["student", "set", "acc % (headline: last epoch)", "n", "per seed", "best-of-test % (not the headline)",
               "IOR", "HLR", "iterations × batch"], rows)
    skipped = (summary.get("skipped_baselines") or {}).get("random")
    if skipped:
        rep.text(f"Random baseline not evaluated: {skipped}. IOR needs it.", note=True)
    elif not iors:
        rep.text("No random baseline in this run (`ddkit evaluate` adds it unless `--no-random`); IOR needs it.",
                 note=True)
    if not hlrs and regime == "hl":
        rep.text("HLR needs `--full-acc` (the full-data HL accuracy) under HL.", note=True)
    bars = [{"method": f"{r['set']}" + (f" / {r['student']}" if len({x['student'] for x in results}) > 1 else ""),
             "ipc": ipc, "regime": regime, "mean": r["mean"], "std": r["std"]} for r in results]
    rep.heading("Accuracy")
    at = f" at IPC {ipc}" if ipc is not None else ""
    dashed = "; dashed line: random" if any(r["set"] == "random" for r in results) else ""
    rep.figure(plots.acc_vs_ipc(bars, baseline="random"),
               f"test accuracy per set and student{at} (error bars: std over seeds{dashed})", f"accuracy per set{at}")
    _per_class_section(rep, results)
    add_curves(rep, out / "runs", "mean over seeds of each set/student: training loss every logged epoch, test "
               "accuracy at the recipe's evaluation epochs",
               loss_caption="mean over seeds of each set/student: training loss every logged epoch")
    if distilled_dir and Path(distilled_dir).is_dir():
        rep.heading("The set")
        add_grid(rep, Path(distilled_dir).name, distilled_dir, distilled)
    return rep.write(out / "report.html")


def _protocol_section(rep: HtmlReport, summary: Mapping[str, Any]) -> None:
    """Which protocol each set was trained under (summary.json's "protocol", and each result's own: a baseline
    follows the evaluated set's): protocol, recipe, regime, inputs (ZCA or mean/std), lr, SL labels, notes."""
    from ddkit.evaluate.native import protocol_fields

    per_set: Dict[str, Mapping[str, Any]] = {}
    for r in summary.get("results", []):
        per_set.setdefault(r["set"], r.get("protocol") or (summary.get("protocol") if r["set"] == "distilled" else {}))
    if not per_set and summary.get("protocol"):
        per_set["distilled"] = summary["protocol"]
    rows = []
    for name, d in per_set.items():
        if d:
            f = protocol_fields(d)
            rows.append([name, f["protocol"], f["recipe"], f["regime"], f["inputs"], f["lr"], f["labels"], f["notes"]])
    if rows:
        rep.heading("Protocol")
        rep.table(["set", "protocol", "recipe", "regime", "inputs", "lr", "SL labels", "notes"], rows)


def _load_set(distilled_dir: Optional[str | Path]) -> Any:
    """The evaluated set, or None when its folder is gone or unreadable (add_grid then says why)."""
    if not distilled_dir or not Path(distilled_dir).is_dir():
        return None
    from ddkit.distilled import DistilledSet

    try:
        return DistilledSet.load(distilled_dir)
    except Exception:  # the report must not fail on the set: it is re-rendered from the folder's own files
        return None


def _per_class_section(rep: HtmlReport, results: Sequence[Mapping[str, Any]]) -> None:
    """Distilled vs random per class, when the evaluator recorded per-class accuracies."""
    series: Dict[str, List[float]] = {}
    classes: Sequence[str] = ()
    for r in results:
        pc = r.get("class_accs")
        if pc and r.get("classes"):
            classes = r["classes"]
            k = len(classes)
            series[f"{r['set']} / {r['student']}"] = [sum(s[c] for s in pc) / len(pc) for c in range(k)]
    if series:
        rep.heading("Accuracy per class")
        rep.figure(plots.per_class(classes, series), "last-epoch test accuracy per class, mean over seeds",
                   "per-class accuracy")


# ----------------------------------------------------------------------------------------------------
# ddkit study
# ----------------------------------------------------------------------------------------------------

def study_rows_with_gaps(rows: Sequence[Mapping[str, Any]], full_acc: Optional[float] = None,
                         baseline: str = "random") -> List[Tuple[Mapping[str, Any], Optional[float], Optional[float]]]:
    """(row, IOR points vs `baseline` in the same ipc/budget/regime cell, HLR points under HL)."""
    base = {(r["ipc"], float(r["budget"]), r["regime"]): r["mean"] for r in rows if r["method"] == baseline}
    out = []
    for r in rows:
        b = base.get((r["ipc"], float(r["budget"]), r["regime"]))
        iv = 100 * (r["mean"] - b) if b is not None and r["method"] != baseline else None
        hv = 100 * (full_acc - r["mean"]) if full_acc is not None and r["regime"] == "hl" else None
        out.append((r, iv, hv))
    return out


def protocol_table(rep: HtmlReport, ran: Sequence[Tuple[Mapping[str, Any], Sequence[str]]]) -> None:
    """The "Protocol per cell" table of a study page: one row per distinct protocol its students ran
    ([(SetProtocol.describe(), cell names)], study_rows.cell_protocols / folder_protocols); nothing when empty."""
    if not ran:
        return
    from ddkit.evaluate.native import protocol_fields

    rep.heading("Protocol per cell")
    table = []
    for d, cells in ran:
        f = protocol_fields(d)
        table.append([f["protocol"], f["recipe"], f["regime"], f["inputs"], f["lr"], f["labels"], f["notes"],
                      f"{len(cells)}: " + ", ".join(cells[:6]) + (" …" if len(cells) > 6 else "")])
    rep.table(["protocol", "recipe", "regime", "inputs", "lr", "SL labels", "notes", "cells"], table)


def write_study_html(output_dir: str | Path, rows: Sequence[Mapping[str, Any]], protocol: Mapping[str, Any],
                     max_grids: int = 24, ran: Sequence[Tuple[Mapping[str, Any], Sequence[str]]] = ()) -> Path:
    """report.html of a study folder: the long results table with IOR/HLR, the plots, curves, grids; `ran`: the
    protocols the cells' students ran ([(SetProtocol.describe(), cell names)], study_rows.cell_protocols)."""
    out = Path(output_dir)
    rep = HtmlReport("Hard-truths study")
    rep.items([f"{k}: {v}" for k, v in protocol.items()])
    rep.text("Headline: last-epoch test accuracy (%), mean ± std (ddof 0) over student seeds; every student "
             "sees budget × |train| samples; best-of-test (chosen on the test set) is shown beside it, never as "
             "the headline. IOR = method − random in the same cell (points); HLR = full-data HL accuracy − method "
             "under HL (points, needs `--eval-opt full_acc=…`).")
    protocol_table(rep, ran)
    full = (protocol.get("eval_overrides") or {}).get("full_acc")
    gapped = study_rows_with_gaps(rows, full)
    order = sorted(gapped, key=lambda t: (t[0]["regime"], t[0]["ipc"], float(t[0]["budget"]), t[0]["method"]))
    rep.heading("Results")
    rep.table(["regime", "IPC", "budget (ep)", "method", "acc % (headline: last epoch)", "n",
               "best-of-test % (not the headline)", "IOR", "HLR"],
              [[plots.REGIME_NAMES.get(r["regime"], r["regime"]), r["ipc"], f"{float(r['budget']):g}", r["method"],
                _acc(r["mean"], r["std"], int(r.get("n") or 1)), r.get("n"),
                _pct(r["best_of_test"] if isinstance(r.get("best_of_test"), float) else None),
                signed(iv), signed(hv, higher_is_better=False)] for r, iv, hv in order])
    finite = [r for r in rows if math.isfinite(r["mean"])]
    rep.heading("Accuracy vs compute budget")
    rep.figure(plots.acc_vs_budget(finite), "one panel per regime and IPC; error bars: std over seeds",
               "accuracy vs budget")
    top = max((float(r["budget"]) for r in finite), default=None)
    rep.heading("Accuracy vs IPC")
    rep.figure(plots.acc_vs_ipc([r for r in finite if float(r["budget"]) == top]),
               f"at the largest budget ({top:g} full-data epochs)" if top is not None else "", "accuracy vs IPC")
    _study_per_class_section(rep, out / "runs", finite)
    add_curves(rep, out / "runs", "mean over seeds per cell (method-ipc-budget-regime)")
    sets = sorted(p for p in (out / "sets").glob("*") if (p / "meta.json").is_file()) if (out / "sets").is_dir() else []
    if sets:
        rep.heading("Sets")
        shown = 0
        for p in sets:
            if shown >= max_grids:
                rep.text(f"{len(sets) - shown} more sets under sets/ (grids not shown)", note=True)
                break
            shown += add_grid(rep, p.name, p)
    return rep.write(out / "report.html")


def study_per_class_panels(runs_dir: str | Path, rows: Sequence[Mapping[str, Any]]
                           ) -> Tuple[Sequence[str], Dict[str, Dict[str, List[float]]]]:
    """(classes, {"<regime>, IPC i, b ep": {method: per-class accuracy, mean over seeds}}) from the study's
    runs/*/class_accs.json, at each regime's and IPC's largest budget among the finished `rows`."""
    top: Dict[Tuple[str, int], float] = {}
    for r in rows:
        key = (r["regime"], int(r["ipc"]))
        top[key] = max(top.get(key, float("-inf")), float(r["budget"]))
    classes: Sequence[str] = ()
    panels: Dict[str, Dict[str, List[float]]] = {}
    for f in sorted(Path(runs_dir).glob("*/class_accs.json")):
        rec = json.loads(f.read_text())
        key = (rec["regime"], int(rec["ipc"]))
        if key not in top or float(rec["budget"]) != top[key] or not rec.get("class_accs"):
            continue
        if classes and list(rec["classes"]) != list(classes):
            continue  # one class list per page (a study has one test split)
        classes, per_seed = rec["classes"], rec["class_accs"]
        title = f"{plots.REGIME_NAMES.get(key[0], key[0])}, IPC {key[1]}, {top[key]:g} ep"
        panels.setdefault(title, {})[rec["method"]] = [sum(s[c] for s in per_seed) / len(per_seed)
                                                       for c in range(len(classes))]
    return classes, dict(sorted(panels.items()))


def _study_per_class_section(rep: HtmlReport, runs_dir: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Distilled vs random per class (issue #15), when the cells recorded per-class accuracies."""
    fig = plots.per_class_vs_baseline(*study_per_class_panels(runs_dir, rows))
    if fig is not None:
        rep.heading("Accuracy per class vs random")
        rep.figure(fig, "last-epoch test accuracy per class, mean over seeds, each method minus the random subset "
                   "of the same cell (points); one panel per regime and IPC at its largest budget",
                   "per-class accuracy vs random")
