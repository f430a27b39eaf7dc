"""`ddkit demo`: the whole pipeline on scikit-learn's embedded digits, offline, in a few minutes on 2 cores.

teacher (ConvNet-D2, width 32) → every registered method at IPC 10 → students trained under HL / SL / SL+KD
with the `cim` recipe at a reduced epoch count (stated in the report) → a table and image grids under
runs/demo/. The numbers are a smoke signal of the pipeline, not a benchmark.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Dict, List

import torch

from ddkit.config import to_dict
from ddkit.data import create_dataset
from ddkit.evaluate import EvalConfig, evaluate
from ddkit.methods import create_method, list_methods, method_spec
from ddkit.report import fmt_acc, markdown_table, write_markdown
from ddkit.teachers import TeacherConfig, check_teacher, save_teacher, train_teacher
from ddkit.utils import get_device, git_revision, machine_info


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


def run_demo(output: str | Path = "runs/demo", device: str = "auto", progress: bool = True,
             cfg: DemoConfig = DemoConfig()) -> Dict[str, Dict[str, List[float]]]:
    """Run the demo and write `output/report.md`; returns {method: {regime: accs}}."""
    t0 = time.perf_counter()
    dev = get_device(device)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    train = create_dataset("digits", split="train", progress=progress)
    test = create_dataset("digits", split="test", progress=progress)
    print(f"data: {train} / {test}")

    teacher, tm = train_teacher(train, test, cfg.teacher, device=dev, progress=progress)
    save_teacher(teacher, out / "teacher")
    check_teacher(teacher, test, device=dev)
    print(f"teacher {cfg.teacher.arch}: test accuracy {tm['test_acc']:.3f} ({tm['train_seconds']:.0f} s)")

    results: Dict[str, Dict[str, List[float]]] = {}
    times: Dict[str, float] = {}
    grids: List[tuple] = []
    for name in list_methods():
        spec = method_spec(name)
        method = create_method(name, ipc=cfg.ipc, seed=0)
        distilled = method(train, teacher if spec.needs_teacher else None, device=dev, progress=progress)
        distilled.save(out / "sets" / name, overwrite=True)
        times[name] = distilled.meta["wall_seconds"]
        grids.append((name, f"sets/{name}/grid.png"))
        results[name] = {}
        for regime in cfg.regimes:
            ecfg = EvalConfig(recipe=cfg.recipe, regime=regime, student=cfg.student, student_width=32,
                              epochs=cfg.epochs, seeds=cfg.seeds)
            res = evaluate(distilled, test, ecfg, teacher, device=dev, progress=False)
            results[name][regime] = res.accs
            print(f"{name:8s} {regime:5s} {fmt_acc(res.accs)}")

    rows = [[n, f"{times[n]:.1f}"] + [fmt_acc(results[n][r]) for r in cfg.regimes] for n in results]
    table = markdown_table(["method", "distill s"] + [r.upper().replace("SLKD", "SL+KD") for r in cfg.regimes], rows)
    wall = time.perf_counter() - t0
    proto = (f"digits (scikit-learn, 8×8 grey, {len(train)} train / {len(test)} test), IPC {cfg.ipc}; teacher "
             f"{cfg.teacher.arch} width 32, {cfg.teacher.epochs} epochs, test accuracy {tm['test_acc']:.3f}; students "
             f"{cfg.student} width 32 trained with the `{cfg.recipe}` recipe for {cfg.epochs} epochs (the recipe's "
             f"1000 cut for the demo), last-epoch test accuracy, mean ± std over {cfg.seeds} seeds; device {dev}; "
             f"total {wall:.0f} s.")
    body_grids = "\n\n".join(f"**{n}**\n\n![{n}]({p})" for n, p in grids)
    write_markdown(out / "report.md", "ddkit demo", [("Protocol", proto), ("Accuracy (%)", table),
                                                     ("Images", body_grids)])
    (out / "results.json").write_text(json.dumps({"results": results, "distill_seconds": times,
                                                  "teacher": tm.get("test_acc"), "config": to_dict(cfg),
                                                  "git_revision": git_revision(), "machine": machine_info(dev),
                                                  "wall_seconds": wall}, indent=2, default=str))
    print("\n" + table + f"\n\nreport: {out / 'report.md'}  ({wall:.0f} s)")
    return results
