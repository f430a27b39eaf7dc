"""`ddkit demo`: the whole pipeline on scikit-learn's embedded digits, offline (the default: 65 s on 2 cores).

teacher (ConvNet-D2, width 32) → a representative method of each family at IPC 10 (`--all`: every registered
method) → students trained under HL / SL / SL+KD with the `cim` recipe at a reduced epoch count (stated in the
report) → a table and image grids under runs/demo/ (report.md and the self-contained report.html). The numbers
are a smoke signal of the pipeline, not a benchmark.

What a method needs beyond the data and the teacher comes from its registration (`needs`, `quick`), never from
a list kept here: the demo provides what it knows how to make (a BatchNorm teacher, a small expert buffer), shows
a "skipped: needs …" row for the rest, and a method that fails is a "failed" row in the report and makes the
command exit non-zero, so CI's demo run turns red when a newly registered method breaks it.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from tqdm.auto import tqdm

from ddkit.config import to_dict
from ddkit.data import create_dataset
from ddkit.evaluate import EvalConfig, evaluate
from ddkit.evaluate.metrics import mean_std
from ddkit.grids import write_preview
from ddkit.html_report import HtmlReport, add_curves, add_grid, signed
from ddkit.methods import create_method, list_methods, method_spec
from ddkit.methods.base import NEEDS, MethodSpec
from ddkit.plots import REGIME_NAMES, acc_vs_ipc, per_class_panels
from ddkit.report import fmt_acc, markdown_table, write_markdown
from ddkit.teachers import TeacherConfig, check_teacher, save_teacher, train_teacher
from ddkit.utils import DDKitError, get_device, git_revision, machine_info

#: the default demo: one or two methods of each family, so every kind of set and every provided need (a BN
#: teacher for the recover family, an expert buffer for trajectory matching) is exercised (65 s on 2 cores)
REPRESENTATIVE = ("random", "herding", "el2n-easy", "cad-prune", "rded", "lic", "sre2l", "dm", "datm")


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Sizes chosen so the default demo finishes in under 5 minutes on 2 CPU cores (bench/results/demo_time_cpu.json)."""

    ipc: int = 10  # the field's most-reported setting
    teacher: TeacherConfig = TeacherConfig(arch="convnet-d2", arch_kw={"width": 32}, epochs=15, lr=0.05,
                                           batch_size=128)
    # the recover family (needs "bn-teacher") matches BatchNorm statistics: the same recipe with BatchNorm
    bn_teacher: TeacherConfig = TeacherConfig(arch="convnet-d2-bn", arch_kw={"width": 32}, epochs=15, lr=0.05,
                                              batch_size=128)
    student: str = "convnet-d2"  # student = teacher architecture, as CIM evaluates
    epochs: int = 60  # instead of the recipe's 1000: a demo, not a benchmark (keeps a fresh clone's make demo < 5 min)
    seeds: int = 2
    regimes: tuple = ("hl", "sl", "slkd")
    recipe: str = "cim"
    methods: tuple = REPRESENTATIVE  # empty: every registered method (`ddkit demo --all`)
    exact: bool = False  # fp32 eager students instead of the machine's fast default (`ddkit demo --exact`)


GAPS = ("IOR = method − random (same regime), HLR = full-data HL accuracy − method under HL, both in points; the "
        "full-data accuracy is the teacher's (the student architecture trained on the whole train split with hard "
        "labels).")


#: the needs (methods.base.NEEDS) the demo can make; the others (e.g. local diffusion weights) are "skipped" rows
PROVIDES = ("bn-teacher", "expert-buffer")


class _Provider:
    """Makes what methods declare they need, once each, inside the demo folder."""

    def __init__(self, out: Path, train: Any, test: Any, cfg: DemoConfig, dev: Any, progress: bool) -> None:
        self.out, self.train, self.test, self.cfg, self.dev, self.progress = out, train, test, cfg, dev, progress
        self.made: Dict[Tuple[str, ...], Any] = {}
        self.makers: Dict[str, Callable[[MethodSpec], Dict[str, Any]]] = {
            "bn-teacher": self._bn_teacher, "expert-buffer": self._expert_buffer}
        assert set(self.makers) == set(PROVIDES)

    def missing(self, spec: MethodSpec) -> List[str]:
        """The needs of `spec` the demo cannot provide."""
        return [n for n in spec.needs if n not in self.makers]

    def provide(self, spec: MethodSpec) -> Dict[str, Any]:
        """{"teacher": …} and/or method options satisfying every need of `spec`."""
        got: Dict[str, Any] = {}
        for need in spec.needs:
            got.update(self.makers[need](spec))
        return got

    def _bn_teacher(self, spec: MethodSpec) -> Dict[str, Any]:
        if ("bn",) not in self.made:
            teacher, tm = train_teacher(self.train, self.test, self.cfg.bn_teacher, device=self.dev,
                                        progress=self.progress, log_path=self.out / "teacher_bn.metrics.jsonl")
            save_teacher(teacher, self.out / "teacher_bn")
            check_teacher(teacher, self.test, device=self.dev)
            tqdm.write(f"BatchNorm teacher {self.cfg.bn_teacher.arch}: test accuracy {tm['test_acc']:.3f}")
            self.made[("bn",)] = teacher
        return {"teacher": self.made[("bn",)]}

    def _expert_buffer(self, spec: MethodSpec) -> Dict[str, Any]:
        from ddkit.teachers.experts import ExpertConfig, train_experts

        # MTT/DATM leave `model` unset (None) so the per-dataset official row fills it in; the CPU preset the demo
        # runs uses ConvNet-3 on every dataset, so the buffer is built for that when the config names none.
        arch = next(f.default for f in dataclasses.fields(spec.config) if f.name == "model") or "convnet-d3"
        if ("buffer", arch) not in self.made:
            path = self.out / f"experts-{arch}"
            # The CPU preset at batch 32: digits has ~1,000 images in the preset's subset, so batches of 256
            # give 4 SGD steps an epoch and experts near chance (20 % test accuracy after 8 epochs, measured);
            # at 32 they reach ~83 % in 7 s. MTT at the preset's CIFAR-10 lr_img (1000) still diverges on these
            # 8×8 images (pixels ~1e3–1e4, HL below chance); DATM stays bounded (83 % HL), so the default shows DATM.
            train_experts(self.train, self.test, ExpertConfig(preset="cpu", arch=arch, batch_size=32), path,
                          device=self.dev, progress=self.progress)
            tqdm.write(f"expert buffer ({arch}, CPU preset at batch 32): {path}")
            self.made[("buffer", arch)] = str(path)
        return {"buffer": self.made[("buffer", arch)]}


def run_demo(output: str | Path = "runs/demo", device: str = "auto", progress: bool = True,
             cfg: DemoConfig = DemoConfig()) -> Dict[str, Dict[str, List[float]]]:
    """Run the demo and write `output/report.md` and `output/report.html` (`write_demo_html` redraws the page
    from the folder); returns {method: {regime: accs}} of the methods that ran. Methods that failed are rows of
    the report, and then a DDKitError names them (after the report is written)."""
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

    methods = [method_spec(m).name for m in cfg.methods] if cfg.methods else list_methods()
    provider = _Provider(out, train, test, cfg, dev, progress)
    results: Dict[str, Dict[str, List[float]]] = {}
    per_class: Dict[str, Dict[str, Optional[List[float]]]] = {}
    times: Dict[str, float] = {}
    status: Dict[str, str] = {}
    paths: Set[str] = set()  # the students' compute path(s) (evaluate/fastpath.py), said in the report
    # One bar over every (method, regime) evaluation that stays on screen (tqdm's ETA); one line per stage.
    bar = tqdm(total=len(methods) * len(cfg.regimes), desc="demo", unit="eval", disable=not progress, leave=True,
               dynamic_ncols=True)
    for name in methods:
        spec = method_spec(name)
        missing = provider.missing(spec)
        if missing:
            status[name] = "skipped: needs " + "; ".join(NEEDS.get(n, n) for n in missing)
            tqdm.write(f"{name:16s} {status[name]}")
            bar.update(len(cfg.regimes))
            continue
        n0 = bar.n
        try:
            _run_method(name, spec, provider, teacher, train, test, cfg, dev, out, bar, results, per_class, times,
                        paths)
            status[name] = "ok"
        except Exception as e:  # noqa: BLE001 - one broken method must not hide the others; reported below
            first = str(e).splitlines()[0] if str(e) else ""
            status[name] = f"failed: {type(e).__name__}: {first}"[:300]
            for d in (results, per_class, times):
                d.pop(name, None)
            tqdm.write(f"{name:16s} {status[name]}")
            bar.update(len(cfg.regimes) - (bar.n - n0))
    bar.close()

    wall = time.perf_counter() - t0
    regime_cols = [REGIME_NAMES.get(r, r) for r in cfg.regimes]
    rows = [[n, f"{times[n]:.1f}"] + [fmt_acc(results[n][r]) for r in cfg.regimes] +
            [_signed(_ior(results, n, r)) for r in cfg.regimes] + [_signed(_hlr(results, n, tm))] for n in results]
    table = markdown_table(["method", "distill s"] + regime_cols + [f"IOR {c}" for c in regime_cols] + ["HLR"], rows)
    not_run = {n: s for n, s in status.items() if s != "ok"}
    if not_run:
        table += "\n\n" + markdown_table(["method", "not in the table"], [[n, s] for n, s in not_run.items()])
    proto = (f"digits (scikit-learn, 8×8 grey, {len(train)} train / {len(test)} test), IPC {cfg.ipc}; teacher "
             f"{cfg.teacher.arch} width 32, {cfg.teacher.epochs} epochs, test accuracy {tm['test_acc']:.3f} (it "
             f"labels SL and SL+KD for every set; methods that need a BatchNorm teacher distil with "
             f"{cfg.bn_teacher.arch}, same recipe; trajectory matching uses 2 ConvNet-3 experts, CPU preset at batch "
             f"32); students {cfg.student} width 32 trained with the `{cfg.recipe}` "
             f"recipe for {cfg.epochs} epochs (the recipe's 1000 cut for the demo), last-epoch test accuracy, mean ± "
             f"std over {cfg.seeds} seeds; each method's registered quick options (CPU presets: "
             f"{_quick_text(methods)}); device {dev}; students' compute: {'; '.join(sorted(paths)) or 'none ran'}; "
             f"total {wall:.0f} s.")
    body_grids = "\n\n".join(f"**{n}**\n\n![{n}](sets/{n}/preview.png)" for n in results)
    write_markdown(out / "report.md", "ddkit demo", [("Protocol", proto), ("Accuracy (%)", table + "\n\n" + GAPS),
                                                     ("Report", "report.html: the same with plots, training curves "
                                                      "and legible grids"), ("Images", body_grids)])
    doc = {"results": results, "distill_seconds": times, "teacher": tm.get("test_acc"), "config": to_dict(cfg),
           "protocol": proto, "classes": list(test.classes), "per_class": per_class, "status": status,
           "compute_paths": sorted(paths),
           "git_revision": git_revision(), "machine": machine_info(dev), "wall_seconds": wall}
    (out / "results.json").write_text(json.dumps(doc, indent=2, default=str))
    write_demo_html(out)
    print("\n" + table + f"\n\nreport: {out / 'report.html'} and {out / 'report.md'}  ({wall:.0f} s)")
    failed = [n for n, s in status.items() if s.startswith("failed")]
    if failed:
        listed = "; ".join(f"{n}: {status[n]}" for n in failed)[:400]
        raise DDKitError(f"demo: {len(failed)} of {len(methods)} methods failed ({listed}); the report shows the "
                         f"rest: {out / 'report.html'}")
    return results


def _run_method(name: str, spec: MethodSpec, provider: _Provider, teacher: Any, train: Any, test: Any,
                cfg: DemoConfig, dev: Any, out: Path, bar: Any, results: Dict[str, Any], per_class: Dict[str, Any],
                times: Dict[str, float], paths: Set[str]) -> None:
    """Distil one method (its quick options, what it needs provided) and evaluate it under every regime."""
    bar.set_postfix_str(f"distill {name}")
    given = provider.provide(spec)
    method_teacher = given.pop("teacher", teacher)
    method = create_method(name, ipc=cfg.ipc, seed=0, **{**dict(spec.quick), **given})
    distilled = method(train, method_teacher if spec.needs_teacher else None, device=dev, progress=False)
    distilled.save(out / "sets" / name, overwrite=True)
    write_preview(out / "sets" / name, distilled)
    times[name] = distilled.meta["wall_seconds"]
    results[name], per_class[name] = {}, {}
    for regime in cfg.regimes:
        bar.set_postfix_str(f"{name} {regime}")
        ecfg = EvalConfig(protocol="hard-truths", recipe=cfg.recipe, regime=regime, student=cfg.student,
                          student_width=32, epochs=cfg.epochs, seeds=cfg.seeds, exact=cfg.exact)
        res = evaluate(distilled, test, ecfg, teacher, device=dev, progress=False,
                       output=out / "runs" / regime / name, set_name=name)
        results[name][regime] = res.accs
        paths.add(res.info["compute_path"]["why"])
        pcs = [r.class_accs for r in res.runs]
        per_class[name][regime] = ([sum(v) / len(v) for v in zip(*pcs)] if all(p is not None for p in pcs)
                                   else None)
        bar.update(1)
        tqdm.write(f"{name:16s} {regime:5s} {fmt_acc(res.accs)}  (distill {times[name]:.1f} s)")


def _quick_text(methods: List[str]) -> str:
    """"dm preset=cpu, …" for the methods that ran with quick options (or "none")."""
    parts = [f"{n} " + ", ".join(f"{k}={v}" for k, v in method_spec(n).quick) for n in methods if method_spec(n).quick]
    return "; ".join(parts) or "none"


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
    not_run = {n: s for n, s in (doc.get("status") or {}).items() if s != "ok"}
    if not_run:
        rep.table(["method", "not in the table"], [[n, s] for n, s in not_run.items()])
    mach = doc.get("machine") or {}
    rep.text(f"Measured: the whole demo took {doc.get('wall_seconds', 0):.0f} s on {mach.get('cpu_model', 'this CPU')} "
             f"({mach.get('cpu_capability', '?')} kernels, {mach.get('torch_threads', '?')} threads).", note=True)
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
