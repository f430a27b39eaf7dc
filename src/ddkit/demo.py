"""`ddkit demo`: the whole pipeline on scikit-learn's embedded digits, offline, in a few minutes on 2 cores.

teacher (ConvNet-D2, width 32) → every registered method at IPC 10 → students trained under HL / SL / SL+KD
with the `cim` recipe at a reduced epoch count (stated in the report) → a table and image grids under
runs/demo/ (report.md and the self-contained report.html). The numbers are a smoke signal of the pipeline, not a benchmark.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from tqdm.auto import tqdm

from ddkit.config import to_dict
from ddkit.data import create_dataset
from ddkit.evaluate import EvalConfig, evaluate
from ddkit.evaluate.metrics import mean_std
from ddkit.grids import write_preview
from ddkit.html_report import HtmlReport, add_curves, add_grid, signed
from ddkit.methods import create_method, list_methods, method_spec
from ddkit.plots import REGIME_NAMES, acc_vs_ipc, per_class_panels
from ddkit.report import fmt_acc, markdown_table, write_markdown
from ddkit.teachers import TeacherConfig, check_teacher, save_teacher, train_teacher
from ddkit.utils import get_device, git_revision, machine_info


MATCHING_FAMILY = ("dc", "dsa", "dm", "mtt", "datm")


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Sizes chosen so the demo finishes in about 2 minutes on 2 CPU cores."""

    ipc: int = 10  # the field's most-reported setting
    teacher: TeacherConfig = TeacherConfig(arch="convnet-d2", arch_kw={"width": 32}, epochs=15, lr=0.05,
                                           batch_size=128)
    student: str = "convnet-d2"  # student = teacher architecture, as CIM evaluates
    epochs: int = 100  # instead of the recipe's 1000: a demo, not a benchmark
    seeds: int = 2
    regimes: tuple = ("hl", "sl", "slkd")
    recipe: str = "cim"
    methods: tuple = ()  # empty: every registered method but the matching family (see run_demo)
    # Demo-sized method options, applied to every method whose config has the field: EL2N/GraNd's
    # 10 seeded proxies (Paul et al.) cost ~10× a whole demo on 2 cores; stated in the report.
    method_options: tuple = (("proxy_runs", 1),)


GAPS = ("IOR = method − random (same regime), HLR = full-data HL accuracy − method under HL, both in points; the "
        "full-data accuracy is the teacher's (the student architecture trained on the whole train split with hard "
        "labels).")


def run_demo(output: str | Path = "runs/demo", device: str = "auto", progress: bool = True,
             cfg: DemoConfig = DemoConfig()) -> Dict[str, Dict[str, List[float]]]:
    """Run the demo and write `output/report.md` and `output/report.html` (`write_demo_html` redraws the page
    from the folder); returns {method: {regime: accs}}."""
    t0 = time.perf_counter()
    dev = get_device(device)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    train = create_dataset("digits", split="train", progress=progress)
    test = create_dataset("digits", split="test", progress=progress)
    print(f"data: {train} / {test}")

    teacher, tm = train_teacher(train, test, cfg.teacher, device=dev, progress=progress,
                                log_path=out / "teacher.metrics.jsonl")
    save_teacher(teacher, out / "teacher")
    check_teacher(teacher, test, device=dev)
    print(f"teacher {cfg.teacher.arch}: test accuracy {tm['test_acc']:.3f} ({tm['train_seconds']:.0f} s)")

    # The matching family needs an expert buffer (mtt, datm) or paper-length runs (dc, dsa, dm: 1000-20000
    # iterations); the demo leaves it out unless named (`ddkit distill --method dm --preset cpu` runs one).
    methods = list(cfg.methods) or [m for m in list_methods() if m not in MATCHING_FAMILY]
    results: Dict[str, Dict[str, List[float]]] = {}
    per_class: Dict[str, Dict[str, Optional[List[float]]]] = {}
    times: Dict[str, float] = {}
    # One bar over every (method, regime) evaluation that stays on screen; one line per finished stage.
    bar = tqdm(total=len(methods) * len(cfg.regimes), desc="demo", unit="eval", disable=not progress, leave=True,
               dynamic_ncols=True)
    for name in methods:
        spec = method_spec(name)
        bar.set_postfix_str(f"distill {name}")
        fields = {f.name for f in dataclasses.fields(spec.config)}
        method = create_method(name, ipc=cfg.ipc, seed=0, **{k: v for k, v in cfg.method_options if k in fields})
        distilled = method(train, teacher if spec.needs_teacher else None, device=dev, progress=False)
        distilled.save(out / "sets" / name, overwrite=True)
        write_preview(out / "sets" / name, distilled)
        times[name] = distilled.meta["wall_seconds"]
        results[name], per_class[name] = {}, {}
        for regime in cfg.regimes:
            bar.set_postfix_str(f"{name} {regime}")
            ecfg = EvalConfig(recipe=cfg.recipe, regime=regime, student=cfg.student, student_width=32,
                              epochs=cfg.epochs, seeds=cfg.seeds)
            res = evaluate(distilled, test, ecfg, teacher, device=dev, progress=False,
                           output=out / "runs" / regime / name, set_name=name)
            results[name][regime] = res.accs
            pcs = [r.class_accs for r in res.runs]
            per_class[name][regime] = ([sum(v) / len(v) for v in zip(*pcs)] if all(p is not None for p in pcs)
                                       else None)
            bar.update(1)
            tqdm.write(f"{name:16s} {regime:5s} {fmt_acc(res.accs)}  (distill {times[name]:.1f} s)")
    bar.close()

    wall = time.perf_counter() - t0
    regime_cols = [REGIME_NAMES.get(r, r) for r in cfg.regimes]
    rows = [[n, f"{times[n]:.1f}"] + [fmt_acc(results[n][r]) for r in cfg.regimes] +
            [_signed(_ior(results, n, r)) for r in cfg.regimes] + [_signed(_hlr(results, n, tm))] for n in results]
    table = markdown_table(["method", "distill s"] + regime_cols + [f"IOR {c}" for c in regime_cols] + ["HLR"], rows)
    proto = (f"digits (scikit-learn, 8×8 grey, {len(train)} train / {len(test)} test), IPC {cfg.ipc}; teacher "
             f"{cfg.teacher.arch} width 32, {cfg.teacher.epochs} epochs, test accuracy {tm['test_acc']:.3f}; students "
             f"{cfg.student} width 32 trained with the `{cfg.recipe}` recipe for {cfg.epochs} epochs (the recipe's "
             f"1000 cut for the demo), last-epoch test accuracy, mean ± std over {cfg.seeds} seeds; method defaults "
             f"except {', '.join(f'{k}={v}' for k, v in cfg.method_options) or 'none'} (demo-sized); device {dev}; "
             f"total {wall:.0f} s.")
    body_grids = "\n\n".join(f"**{n}**\n\n![{n}](sets/{n}/preview.png)" for n in results)
    write_markdown(out / "report.md", "ddkit demo", [("Protocol", proto), ("Accuracy (%)", table + "\n\n" + GAPS),
                                                     ("Report", "report.html: the same with plots, training curves "
                                                      "and legible grids"), ("Images", body_grids)])
    doc = {"results": results, "distill_seconds": times, "teacher": tm.get("test_acc"), "config": to_dict(cfg),
           "protocol": proto, "classes": list(test.classes), "per_class": per_class,
           "git_revision": git_revision(), "machine": machine_info(dev), "wall_seconds": wall}
    (out / "results.json").write_text(json.dumps(doc, indent=2, default=str))
    write_demo_html(out)
    print("\n" + table + f"\n\nreport: {out / 'report.html'} and {out / 'report.md'}  ({wall:.0f} s)")
    return results


def _mean(accs: List[float]) -> float:
    return sum(accs) / len(accs)


def _ior(results: Dict[str, Dict[str, List[float]]], name: str, regime: str) -> Optional[float]:
    """Points over the random subset in the same regime (None for random itself or without it)."""
    if name == "random" or "random" not in results:
        return None
    return 100 * (_mean(results[name][regime]) - _mean(results["random"][regime]))


def _hlr(results: Dict[str, Dict[str, List[float]]], name: str, tm: Dict[str, Any]) -> Optional[float]:
    """Points below the full-data HL accuracy (the teacher's) under HL."""
    if "hl" not in results[name] or tm.get("test_acc") is None:
        return None
    return 100 * (tm["test_acc"] - _mean(results[name]["hl"]))


def _signed(v: Optional[float]) -> str:
    return "–" if v is None else f"{v:+.1f}"


def write_demo_html(output: str | Path) -> Path:
    """report.html of a finished demo folder, from results.json, runs/**/metrics.jsonl and sets/: the table
    with IOR/HLR, accuracy per method and regime, distilled vs random per class, training curves, grids."""
    out = Path(output)
    doc = json.loads((out / "results.json").read_text())
    results: Dict[str, Dict[str, List[float]]] = doc["results"]
    times: Dict[str, float] = doc["distill_seconds"]
    tm = {"test_acc": doc.get("teacher")}
    regimes = list(doc["config"]["regimes"])
    per_class = doc.get("per_class") or {}
    classes = doc.get("classes") or []
    rep = HtmlReport("ddkit demo")
    rep.text(doc.get("protocol", ""))
    rep.heading("Accuracy (%)")
    cols = [REGIME_NAMES.get(r, r) for r in regimes]
    rep.table(["method", "distill s"] + cols + [f"IOR {c}" for c in cols] + ["HLR"],
              [[n, f"{times[n]:.1f}"] + [fmt_acc(results[n][r]) for r in regimes] +
               [signed(_ior(results, n, r), digits=1) for r in regimes] +
               [signed(_hlr(results, n, tm), higher_is_better=False, digits=1)] for n in results])
    rep.text(GAPS, note=True)
    bars = [{"method": n, "ipc": doc["config"]["ipc"], "regime": r, "mean": _mean(results[n][r]),
             "std": mean_std(results[n][r])[1]} for n in results for r in regimes]
    rep.figure(acc_vs_ipc(bars), "test accuracy per method and regime (error bars: std over seeds; dashed: random; "
               "red: below random)", "accuracy per method")
    others = [n for n in results if n != "random"]
    if "random" in per_class and others:
        panels = {}
        for regime in regimes:
            best = max(others, key=lambda n: _mean(results[n][regime]))
            panels[REGIME_NAMES.get(regime, regime)] = {f"{best} (best)": per_class.get(best, {}).get(regime),
                                                        "random": per_class["random"].get(regime)}
        fig = per_class_panels(classes, panels)
        if fig is not None:
            rep.heading("Distilled vs random, per class")
        rep.figure(fig, "last-epoch test accuracy per class, mean over seeds: the "
                   "best method of each regime beside the random subset", "per-class accuracy")
    for regime in regimes:
        add_curves(rep, out / "runs" / regime, "mean over seeds per method: training loss every epoch, test accuracy "
                   "at the recipe's evaluation epochs", f"Training curves, {REGIME_NAMES.get(regime, regime)}")
    rep.heading("Images")
    for n in results:
        add_grid(rep, n, out / "sets" / n)
    return rep.write(out / "report.html")
