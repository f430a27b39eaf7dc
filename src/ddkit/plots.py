"""matplotlib figures of the reports: accuracy vs IPC, vs compute budget, per class, training curves.

Every function takes plain rows/dicts (accuracies as fractions, plotted in %) and returns a
matplotlib Figure, or None when there is nothing to draw. Figures are built with the object API
(`Figure` + Agg canvas), never pyplot, so the caller's backend and global state stay untouched.
`png_bytes(fig)` renders one for inlining into report.html.
"""
from __future__ import annotations

import io
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

REGIME_NAMES = {"hl": "HL", "sl": "SL", "slkd": "SL+KD"}


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Any, dpi: int = 100) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def acc_vs_budget(rows: Sequence[Mapping[str, Any]]):
    """One panel per (ipc, regime), one line per method: accuracy vs budget (error bars: std over seeds)."""
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    if not rows:
        return None
    regimes = list(dict.fromkeys(r["regime"] for r in rows))
    ipcs = sorted({r["ipc"] for r in rows})
    fig = _figure(4.2 * len(regimes), 3.4 * len(ipcs))
    axes = fig.subplots(len(ipcs), len(regimes), squeeze=False)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    budgets = sorted({float(r["budget"]) for r in rows})
    for i, ipc in enumerate(ipcs):
        for j, regime in enumerate(regimes):
            ax = axes[i][j]
            for m in methods:
                pts = sorted((float(r["budget"]), 100 * r["mean"], 100 * r["std"]) for r in rows
                             if r["method"] == m and r["ipc"] == ipc and r["regime"] == regime)
                if pts:
                    ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o",
                                capsize=2, label=m)
            if len(budgets) > 1:
                ax.set_xscale("log")  # budgets grow geometrically (2, 5, 10, 20 …); label them plainly
                ax.set_xticks(budgets)
                ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_title(f"{REGIME_NAMES.get(regime, regime)}, IPC {ipc}")
            ax.set_xlabel("budget (full-data epochs)")
            ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def acc_vs_ipc(rows: Sequence[Mapping[str, Any]], baseline: str = "random"):
    """One panel per regime. With several IPCs: accuracy vs IPC, one line per method. With one IPC:
    one dot per method with its std (the `baseline` method's accuracy drawn as a dashed line; red: below
    it), so a method below random stands out. Rows: method, ipc, regime, mean, std (fractions); an unknown
    ipc (None) leaves the IPC out of the title rather than inventing one."""
    rows = [r for r in rows if _finite(r.get("mean"))]
    if not rows:
        return None
    regimes = list(dict.fromkeys(r["regime"] for r in rows))
    ipcs = sorted({int(r["ipc"]) for r in rows if r.get("ipc") is not None})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    if len(ipcs) > 1:
        fig = _figure(4.2 * len(regimes), 3.4)
        axes = fig.subplots(1, len(regimes), squeeze=False)[0]
        for ax, regime in zip(axes, regimes):
            for m in methods:
                pts = sorted((int(r["ipc"]), 100 * r["mean"], 100 * (r.get("std") or 0)) for r in rows
                             if r["method"] == m and r["regime"] == regime)
                if pts:
                    ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o",
                                capsize=2, label=m, linestyle="--" if m == baseline else "-")
            ax.set_xscale("log")
            ax.set_xticks(ipcs)
            ax.set_xticklabels([str(i) for i in ipcs])
            ax.set_title(REGIME_NAMES.get(regime, regime))
            ax.set_xlabel("images per class")
            ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        return fig
    fig = _figure(3.6 * len(regimes), 1.1 + 0.3 * len(methods))
    axes = fig.subplots(1, len(regimes), squeeze=False, sharey=True)[0]
    for ax, regime in zip(axes, regimes):
        by = {r["method"]: r for r in rows if r["regime"] == regime}
        ys = list(range(len(methods)))
        vals = [100 * by[m]["mean"] if m in by else float("nan") for m in methods]
        errs = [100 * (by[m].get("std") or 0) if m in by else 0 for m in methods]
        base = by.get(baseline)
        colors = ["#999999" if m == baseline else ("#2b7bba" if base is None or (m in by and by[m]["mean"] >= base["mean"])
                                                   else "#d62728") for m in methods]
        # Dots, not bars: the axis may start near the worst method, where the differences that matter show.
        for y, v, e, c in zip(ys, vals, errs, colors):
            ax.errorbar([v], [y], xerr=[e], fmt="o", color=c, ecolor=c, capsize=2, markersize=5)
        if base is not None:  # the caption names the dashed line: a legend would cover the bars' ends
            ax.axvline(100 * base["mean"], color="k", linestyle="--", linewidth=1)
        ax.set_yticks(ys)
        ax.set_yticklabels(methods, fontsize=8)
        # First method on top, half a row of room above and below: with the default margins the first and last
        # dots sat on the frame, half hidden (two methods: every dot). Fixed limits, not invert_yaxis(): the
        # panels share y, and inverting each one flipped it back on even panel counts.
        ax.set_ylim(len(methods) - 0.5, -0.5)
        ax.set_title(f"{REGIME_NAMES.get(regime, regime)}" + (f", IPC {ipcs[0]}" if ipcs else ""))
        ax.set_xlabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def per_class(classes: Sequence[str], series: Mapping[str, Sequence[float]], title: str = ""):
    """Grouped bars of per-class test accuracy, one group per class, one bar per series (e.g.
    {"distilled": [...], "random": [...]}), fractions plotted in %."""
    return per_class_panels(classes, {title: series})


def per_class_panels(classes: Sequence[str], panels: Mapping[str, Mapping[str, Sequence[float]]]):
    """One row of per-class bar panels ({panel title: {series: per-class accuracies}}); panels or series
    without a full per-class list are left out; None when nothing is left."""
    kept = {t: {k: list(v) for k, v in ser.items() if v is not None and len(v) == len(classes)}
            for t, ser in panels.items()}
    kept = {t: ser for t, ser in kept.items() if ser}
    if not kept or not classes:
        return None
    n_bars = max(len(ser) for ser in kept.values())
    w = max(4.0, min(9.0, 0.35 * len(classes) * n_bars + 1.2))
    fig = _figure(w * len(kept), 3.0)
    axes = fig.subplots(1, len(kept), squeeze=False, sharey=True)[0]
    rotate = len(classes) > 12 or max(len(str(c)) for c in classes) > 3
    for ax, (title, ser) in zip(axes, kept.items()):
        width = 0.8 / len(ser)
        for k, (name, vals) in enumerate(ser.items()):
            xs = [i - 0.4 + width * (k + 0.5) for i in range(len(classes))]
            ax.bar(xs, [100 * v for v in vals], width=width, label=name)
        ax.set_xticks(range(len(classes)))
        ax.set_xticklabels([str(c) for c in classes], rotation=45 if rotate else 0, ha="right" if rotate else "center",
                           fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("test accuracy (%)")
    fig.tight_layout()
    return fig


def per_class_vs_baseline(classes: Sequence[str], panels: Mapping[str, Mapping[str, Sequence[float]]],
                          baseline: str = "random"):
    """Per-class accuracy of many methods against the baseline, one heatmap per panel ({panel title: {method:
    per-class accuracies}}), stacked: rows = methods, columns = classes, colour and number = method − baseline in
    points (diverging, white = equal), the baseline's own accuracy under each class name. A heatmap, not bars,
    because a study has a dozen methods; a panel without the baseline shows accuracies (%). Series without a
    full per-class list are left out; None when nothing is left."""
    kept = {t: {m: list(v) for m, v in ser.items() if v is not None and len(v) == len(classes)}
            for t, ser in panels.items()}
    kept = {t: ser for t, ser in kept.items() if ser}
    if not kept or not classes:
        return None
    k = len(classes)
    heights = [0.32 * max(1, len([m for m in ser if m != baseline])) + 1.5 for ser in kept.values()]
    fig = _figure(min(16.0, max(4.5, 0.5 * k + 2.5)), sum(heights))
    axes = fig.subplots(len(kept), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, (title, ser) in zip(axes, kept.items()):
        base = ser.get(baseline)
        names = [m for m in ser if m != baseline] or [baseline]
        diff = base is not None and names != [baseline]
        vals = [[100 * (ser[m][c] - base[c]) if diff else 100 * ser[m][c] for c in range(k)] for m in names]
        lim = max([abs(v) for row in vals for v in row] + [1.0])
        im = ax.imshow(vals, cmap="RdBu" if diff else "viridis", vmin=-lim if diff else 0, vmax=lim if diff else 100,
                       aspect="auto", interpolation="nearest")
        if k <= 24:  # numbers stay legible up to about two dozen columns
            for i, row in enumerate(vals):
                for c, v in enumerate(row):
                    dark = abs(v) > 0.6 * lim if diff else v < 40  # white text on the dark ends of the scale
                    ax.text(c, i, f"{v:+.0f}" if diff else f"{v:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if dark else "black")
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names, fontsize=8)
        ax.set_xticks(range(k))
        labels = [f"{c}\n{100 * base[i]:.0f}%" if diff else str(c) for i, c in enumerate(classes)]
        rotate = k > 12 or max(len(str(c)) for c in classes) > 5
        ax.set_xticklabels(labels, fontsize=7, rotation=45 if rotate else 0, ha="right" if rotate else "center")
        ax.set_title(title + (f" (under each class: {baseline}'s accuracy)" if diff else ""), fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.025, pad=0.01,
                     label=f"points vs {baseline}" if diff else "test accuracy (%)")
    fig.tight_layout()
    return fig


Curve = List[Dict[str, Any]]  # metrics.jsonl records: epoch, loss, test_acc (sometimes)

#: fewer test evaluations than this make no curve (one or two dots say less than the table beside them)
MIN_CURVE_POINTS = 3


def acc_epochs(curves: Mapping[str, Sequence[Curve]]) -> List[float]:
    """The epochs at which test accuracy was measured, of the run group measured most often."""
    return max(([e for e, _ in _mean_by_epoch([list(c) for c in v if c], "test_acc")] for v in curves.values()),
               key=len, default=[])


def training_curves(curves: Mapping[str, Sequence[Curve]], max_lines: int = 20,
                    min_acc_points: int = MIN_CURVE_POINTS):
    """Loss (left) and test accuracy (right) vs epoch; one line per named run group, the mean over its
    runs (seeds) at each epoch they share. `curves`: {label: [records of seed 0, records of seed 1, …]}.
    The accuracy panel is drawn only when some group has at least `min_acc_points` evaluations; otherwise
    the figure is the loss panel alone (the caller says where the few accuracies are)."""
    items = [(k, [list(c) for c in v if c]) for k, v in curves.items()]
    items = [(k, v) for k, v in items if v][:max_lines]
    if not items:
        return None
    with_acc = len(acc_epochs(dict(items))) >= min_acc_points
    fig = _figure(10 if with_acc else 5.5, 3.4)
    if with_acc:
        ax_loss, ax_acc = fig.subplots(1, 2)
    else:
        ax_loss, ax_acc = fig.subplots(1, 1), None
    any_acc = False
    for label, runs in items:
        for key, ax in (("loss", ax_loss), ("test_acc", ax_acc)):
            if ax is None:
                continue
            pts = _mean_by_epoch(runs, key)
            if not pts:
                continue
            scale = 100.0 if key == "test_acc" else 1.0
            ax.plot([p[0] for p in pts], [scale * p[1] for p in pts], marker="o" if len(pts) < 12 else None,
                    markersize=3, label=label)
            any_acc |= key == "test_acc"
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    losses = [p[1] for _, runs in items for p in _mean_by_epoch(runs, "loss")]
    if losses and max(losses) > 20 * min(losses):  # log only when the loss spans decades
        ax_loss.set_yscale("log")
    ax_loss.grid(alpha=0.3)
    if ax_acc is not None:
        ax_acc.set_xlabel("epoch")
        ax_acc.set_ylabel("test accuracy (%)")
        ax_acc.grid(alpha=0.3)
    handles, labels = ax_loss.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    if ax_acc is not None and not any_acc:
        ax_acc.text(0.5, 0.5, "no test evaluations recorded", ha="center", va="center", transform=ax_acc.transAxes)
    fig.tight_layout()
    return fig


def _mean_by_epoch(runs: Sequence[Curve], key: str) -> List[Tuple[float, float]]:
    """(epoch, mean of `key` over the runs that recorded it at that epoch), sorted by epoch."""
    acc: Dict[float, List[float]] = {}
    for recs in runs:
        for r in recs:
            v = r.get(key)
            if _finite(v) and (key != "loss" or v > 0):
                acc.setdefault(float(r["epoch"]), []).append(float(v))
    return [(e, sum(v) / len(v)) for e, v in sorted(acc.items())]
