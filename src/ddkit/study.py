"""The hard-truths study: method × IPC × compute budget × label regime, resumable, with a report.

    from ddkit.study import StudyConfig, run_study
    run_study(train, test, teacher, StudyConfig(ipcs=(10, 50), budgets=(2, 5, 10, 20)), device="cuda")

Every cell trains `seeds` students with `ddkit.evaluate.evaluate(..., full_train_size=len(train))`
under EvalConfig(budget_epochs=b): every student sees b·|train| samples whatever the IPC (hardtruths
§5.4), with the regime's recipe (hl → hardtruths-hl, sl → hardtruths-sl, slkd → hardtruths-slkd by
default; `cim` stays selectable). With `epochs` set (the paper's small-scale protocol: 300 epochs over
each set, Table 4) the budgets are replaced by one per IPC, K = epochs·ipc·C/|train|, which is also the
compute-matched K of CAD-Prune's scoring run (§2.4).

Named presets (`--preset`, `PRESETS`) pin a paper protocol: `small-scale` = Table 4 (HL SGD 0.01,
StepLR, 300 epochs, batch 256, DSA; SL AdamW 1e-3, cosine, KL T = 20), IPC 10/50, ConvNet-3, every
method; flags given explicitly win over the preset.

Distilled sets are built once per (method, ipc, seed), or per (method, ipc, seed, budget) for methods
whose config has `budget_epochs` (cad-prune, ca2d: the scoring run is compute-matched to the cell's
budget), and cached under output_dir/sets/. Scoring runs are cached under output_dir/dynamics/ when the
method has a `dynamics_cache` option. Each finished cell is appended to results.csv at once (one row:
mean/std/accs/seeds/seconds) and skipped on a rerun, so an interrupted study resumes where it stopped.
study.json pins the protocol (student, recipes, dataset, evaluator options) and the data (both splits' classes,
sizes and content, the teacher's weights), runs/<cell>/options.json each finished cell's fully resolved method and
evaluator options (ddkit.study_keys): a rerun with another protocol, other data or other options for a finished
cell of its methods is refused before anything in the folder is written, except for more `seeds`: a rerun with --seeds 3 over cells of one seed trains only
the two missing students per cell (seeds seed+1, seed+2) and appends the cell again with all three (the last
row of a cell wins). runs.jsonl gets one line per invocation (command, git revision, machine, cells
done). Several processes may share a folder when they take different methods (`--methods`): each
re-reads results.csv before every cell and skips what another finished. report.md (tables, per-regime
ranks, accuracy-vs-budget plot) and report.html (the same with IOR/HLR, plots, per-class accuracy vs random
from runs/<cell>/class_accs.json, training curves from runs/<cell>/seed<k>/metrics.jsonl and set grids) are
rewritten from every row of results.csv at the end.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from tqdm.auto import tqdm

from ddkit.config import field, option_names
from ddkit import study_keys
from ddkit.distilled import DistilledSet
from ddkit.evaluate import EvalConfig, evaluate, get_recipe
from ddkit.evaluate.metrics import mean_std
from ddkit.grids import write_preview
from ddkit.methods import create_method, method_spec
from ddkit.teachers.frozen import teacher_identity
from ddkit.study_report import rank_table, write_report  # noqa: F401  (rank_table re-exported)
from ddkit.utils import DDKitError, atomic_write_bytes, get_device, git_revision, machine_info

COLUMNS = ("method", "ipc", "budget", "regime", "recipe", "student", "mean", "std", "n", "accs", "seeds",
           "seconds", "set_seconds", "iterations", "batch_size", "epochs", "samples_seen", "best_of_test", "crop")

#: every method of the paper's small-scale comparison that ddkit has (hardtruths §1, §5.5, §6)
SMALL_SCALE_METHODS = ("random", "kcenter", "herding", "forgetting", "el2n-easy", "el2n-best", "ccs", "dyn-unc",
                       "cad-prune", "rded", "ca2d", "lic")
#: name -> {"fields": StudyConfig fields, "eval": evaluator options for every cell}
PRESETS: Dict[str, Dict[str, Dict[str, Any]]] = {
    "small-scale": {
        # hardtruths §5.1 (Table 4, tab:stage3_hyper): the recipes hold the optimiser/schedule/DSA/batch; 300
        # epochs over each set; IPC 10/50 and ConvNet-D3 as its CIFAR-100 tables (§5.5).
        "fields": {"ipcs": (10, 50), "epochs": 300, "regimes": ("hl", "sl"), "methods": SMALL_SCALE_METHODS,
                   "hl_recipe": "hardtruths-hl", "sl_recipe": "hardtruths-sl", "slkd_recipe": "hardtruths-slkd",
                   "student": "convnet-d3", "seeds": 3},
        # 6 evenly spaced test evaluations so best-of-test can be recorded beside the last-epoch headline.
        "eval": {"num_evals": 6},
    },
}


@dataclass(frozen=True)
class StudyConfig:
    """The grid and the protocol of `ddkit study hard-truths` (one flag per field)."""

    ipcs: Tuple[int, ...] = field((10, 50), "images per class of every set (hard truths: 10, 50, 100)")
    budgets: Tuple[float, ...] = field((2.0, 5.0, 10.0, 20.0), "compute budgets in FULL-data epochs (Fig. 1: 2–50)")
    regimes: Tuple[str, ...] = field(("hl", "sl", "slkd"), "label regimes: hl, sl (one fixed soft label), slkd; "
                                                           "REGIME:LOSS trains it with another loss (slkd:gift)")
    methods: Tuple[str, ...] = field(("random", "el2n-easy", "ccs", "rded", "cad-prune", "ca2d", "lic"),
                                     "methods compared (see `ddkit methods`)")
    hl_recipe: str = field("hardtruths-hl", "recipe of the hl regime (hard truths Table 4)")
    sl_recipe: str = field("hardtruths-sl", "recipe of the sl regime (hard truths Table 4)")
    slkd_recipe: str = field("hardtruths-slkd", "recipe of the slkd regime: hardtruths-slkd (CutMix views "
                                                "relabelled online, KL; hardtruths §1) or cim (MSE, CIM's)")
    epochs: Optional[int] = field(None, "student epochs over each set (small-scale protocol: 300); when set the "
                                        "budgets are replaced by K = epochs·ipc·C/|train| per IPC")
    preset: str = field("", "named protocol whose values fill every flag not given: small-scale (hard truths "
                            "Table 4)")
    student: Optional[str] = field(None, "student architecture (None: the teacher's)")
    student_width: Optional[int] = field(None, "ConvNet/MLP student width (None: the model's default)")
    seeds: int = field(3, "students per cell (mean ± std over them); more seeds on a finished folder trains only "
                            "the missing students of each cell")
    seed: int = field(0, "method seed (sets) and base student seed")
    output_dir: str = field("runs/hard-truths", "folder of sets/, results.csv, report.md (rerun to resume)")

    def recipe_for(self, regime: str) -> str:
        return {"hl": self.hl_recipe, "sl": self.sl_recipe, "slkd": self.slkd_recipe}[study_keys.base_regime(regime)]

    def budgets_for(self, ipc: int, num_classes: int, train_size: int) -> Tuple[float, ...]:
        """The cells' budgets (full-data epochs) at `ipc`: `budgets`, or the one the epochs rule gives."""
        if self.epochs is None:
            return self.budgets
        return (float(self.epochs) * ipc * num_classes / train_size,)


def preset_fields(name: str) -> Dict[str, Any]:
    """The StudyConfig fields of preset `name` (with preset=name); DDKitError listing the presets if unknown."""
    if name not in PRESETS:
        raise DDKitError(f"unknown study preset {name!r}; known: {', '.join(PRESETS)}")
    return {**PRESETS[name]["fields"], "preset": name}


def preset_config(name: str, **fields: Any) -> StudyConfig:
    """StudyConfig of preset `name`, with `fields` overriding it."""
    return StudyConfig(**{**preset_fields(name), **fields})


@dataclass
class StudyResult:
    """Every row of results.csv after the run, plus what this call did."""

    rows: List[Dict[str, Any]]
    results_csv: Path
    report: Path
    evaluated: int
    skipped: int


def _bkey(b: Any) -> str:
    return f"{float(b):g}"


def _key(method: str, ipc: Any, budget: Any, regime: str) -> Tuple[str, int, str, str]:
    return (method, int(ipc), _bkey(budget), study_keys.study_regime(regime))


def read_results(path: Path) -> List[Dict[str, Any]]:
    """Rows of a results.csv with numbers parsed (accs/seeds as lists)."""
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            row: Dict[str, Any] = dict(r)
            for k in ("ipc", "n", "iterations", "batch_size", "samples_seen"):
                row[k] = int(float(r[k])) if r.get(k) not in (None, "") else None
            for k in ("budget", "mean", "std", "seconds", "set_seconds", "epochs", "best_of_test"):
                row[k] = float(r[k]) if r.get(k) not in (None, "") else float("nan")
            row["accs"] = [float(x) for x in r["accs"].split(";") if x]
            row["seeds"] = [int(x) for x in r["seeds"].split(";") if x]
            rows.append(row)
    # A cell topped up with more seeds is appended again with all of its seeds: the last row of a key wins,
    # in the place of the key's first row (results.csv stays append-only, so a kill never loses a cell).
    latest: Dict[Tuple[str, int, str, str], Dict[str, Any]] = {}
    for row in rows:
        latest[_key(row["method"], row["ipc"], row["budget"], row["regime"])] = row
    return list(latest.values())


def _cells(path: Path) -> Dict[Tuple[str, int, str, str], Dict[str, Any]]:
    """The cells already in results.csv, by key (the row with all of each cell's seeds)."""
    return {_key(r["method"], r["ipc"], r["budget"], r["regime"]): r for r in read_results(path)}


def _seeds_missing(cells: Mapping[Tuple[str, int, str, str], Dict[str, Any]], key: Tuple[str, int, str, str],
                   seeds: int) -> int:
    """How many more students the cell `key` needs to have `seeds` (0: done)."""
    row = cells.get(key)
    return seeds if row is None else max(0, seeds - len(row["accs"]))


def _merge(prev: Optional[Mapping[str, Any]], row: Dict[str, Any]) -> Dict[str, Any]:
    """`row` (the new seeds of a cell) joined with `prev` (its earlier seeds): the cell with all of them."""
    if prev is None:
        return row
    accs = list(prev["accs"]) + [float(a) for a in row["accs"].split(";") if a]
    seeds = list(prev["seeds"]) + [int(x) for x in row["seeds"].split(";") if x]
    mean, std, n = mean_std(accs)
    n_old, n_new = len(prev["accs"]), n - len(prev["accs"])
    best = ""  # best-of-test is stored as a mean over seeds: weight each part by its seeds
    if row.get("best_of_test") not in (None, "") and not math.isnan(float(prev.get("best_of_test", "nan"))):
        best = (float(prev["best_of_test"]) * n_old + float(row["best_of_test"]) * n_new) / n
    return {**row, "mean": mean, "std": std, "n": n, "accs": ";".join(f"{a:.6f}" for a in accs),
            "seeds": ";".join(str(x) for x in seeds), "best_of_test": best,
            "seconds": f"{float(prev['seconds']) + float(row['seconds']):.2f}"}


def _append(path: Path, row: Dict[str, Any]) -> None:
    """Append one row and make it durable before the next cell starts (the resume point)."""
    new = not path.is_file() or path.stat().st_size == 0
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in COLUMNS})
        fh.flush()
        os.fsync(fh.fileno())


def _save_class_accs(cell: Path, summary: Mapping[str, Any], classes: Sequence[str], method: str, ipc: int,
                     budget: str, regime: str, n_prev: int = 0) -> None:
    """runs/<cell>/class_accs.json: the cell's last-epoch per-class test accuracies (per seed), for the report's
    per-class plot (results.csv keeps one row per cell; a cell finished before this file existed has none)."""
    if summary.get("class_accs"):
        accs = list(summary["class_accs"])
        path = cell / "class_accs.json"
        if n_prev and path.is_file():  # the earlier seeds' per-class accuracies come first; entries past them
            # are from a top-up killed before its row was appended, which this run retrains
            accs = json.loads(path.read_text())["class_accs"][:n_prev] + accs
        rec = {"method": method, "ipc": ipc, "budget": budget, "regime": regime, "classes": list(classes),
               "class_accs": accs}
        cell.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cell / "class_accs.json", json.dumps(rec).encode())


def _protocol(cfg: StudyConfig, train: Any, teacher: Any, eval_overrides: Mapping[str, Any]) -> Dict[str, Any]:
    return {"dataset": train.name, "train_size": len(train), "student": cfg.student, "student_width": cfg.student_width,
            "recipes": {r: cfg.recipe_for(r) for r in ("hl", "sl", "slkd")}, "seeds": cfg.seeds, "seed": cfg.seed,
            "epochs": cfg.epochs, "preset": cfg.preset,
            "teacher": teacher_identity(teacher),
            "eval_overrides": {k: eval_overrides[k] for k in sorted(eval_overrides)}}


def _set_for(method: str, ipc: int, budget: float, cfg: StudyConfig, train: Any, teacher: Any, out: Path,
             overrides: Mapping[str, Any], device: Any, progress: bool) -> DistilledSet:
    """Build (or load from out/sets/) the set of one (method, ipc[, budget])."""
    spec = method_spec(method)
    kw, name = study_keys.method_kw(spec, ipc, budget, cfg, out, overrides)
    path = out / "sets" / name
    if (path / "meta.json").is_file():
        return DistilledSet.load(path)
    s = create_method(spec.name, **kw)(train, teacher if spec.needs_teacher else None, device=device,
                                       progress=progress)
    s.save(path, overwrite=True)
    write_preview(path, s)
    return s


def run_study(train: Any, test: Any, teacher: Any = None, config: Optional[StudyConfig] = None, *,
              device: Any = None, progress: bool = True,
              method_overrides: Optional[Mapping[str, Mapping[str, Any]]] = None,
              eval_overrides: Optional[Mapping[str, Any]] = None,
              data_subset: Optional[Mapping[str, Any]] = None, **fields: Any) -> StudyResult:
    """Run every missing cell of the grid, append each to results.csv, then write report.md.

    Args:
        train, test: the real splits (students are scored on `test`; budgets count |train|).
        teacher: needed by teacher-based methods (rded, ca2d, lic) and by the sl / slkd regimes.
        config: the grid and protocol; `fields` override its fields (e.g. ipcs=(10,), budgets=(2,)).
        method_overrides: per-method config options, e.g. {"cad-prune": {"span": 4}} (part of the set's cache key).
        eval_overrides: extra EvalConfig fields for every cell (e.g. {"batch_size": 128}).
        data_subset: the --classes/--max-per-class record (ddkit.data.subset_facts; None: the whole dataset),
            written to data_subset.json once the resume checks pass.

    A folder made with another protocol, other data or a teacher with other weights, or holding a finished cell
    of one of `config.methods` made with other resolved method/evaluator options, is refused (DDKitError, one
    line naming what differs) before anything in it is written; more seeds with the same options is a top-up.
    """
    cfg = dataclasses.replace(config or StudyConfig(), **fields)
    cfg = dataclasses.replace(cfg, ipcs=tuple(int(i) for i in cfg.ipcs), budgets=tuple(float(b) for b in cfg.budgets),
                              regimes=tuple(study_keys.study_regime(r) for r in cfg.regimes), methods=tuple(cfg.methods))
    method_overrides = {method_spec(k).name: dict(v) for k, v in (method_overrides or {}).items()}
    if cfg.preset:
        preset_fields(cfg.preset)  # unknown preset names fail here
    eval_overrides = {**(PRESETS[cfg.preset]["eval"] if cfg.preset else {}), **dict(eval_overrides or {})}
    bad = set(eval_overrides) & {"recipe", "regime", "budget_epochs", "epochs", "seeds", "seed", "student",
                                 "student_width"}
    if bad:
        raise DDKitError(f"eval_overrides cannot set {', '.join(sorted(bad))}: they are study settings")
    # Unknown option names fail here, before study.json pins them or any compute starts.
    known = {f.name for f in dataclasses.fields(EvalConfig)}
    if set(eval_overrides) - known:
        raise DDKitError(f"unknown evaluator option(s) {', '.join(sorted(set(eval_overrides) - known))}; "
                         f"known: {', '.join(sorted(known))}")
    for name, opts in method_overrides.items():
        mknown = set(option_names(method_spec(name).config))
        if set(opts) - mknown:
            raise DDKitError(f"unknown option(s) {', '.join(sorted(set(opts) - mknown))} for method {name}; "
                             f"see `ddkit distill --method {name} --help`")
    if not (cfg.ipcs and cfg.budgets and cfg.regimes and cfg.methods) or cfg.seeds < 1:
        raise DDKitError("a study needs at least one ipc, budget, regime and method, and seeds ≥ 1")
    if min(cfg.ipcs) < 1 or min(cfg.budgets) <= 0 or (cfg.epochs is not None and cfg.epochs < 1):
        raise DDKitError(f"ipcs must be ≥ 1, budgets > 0 and epochs ≥ 1, got {cfg.ipcs}, {cfg.budgets} and "
                         f"{cfg.epochs}")
    specs = [method_spec(m) for m in cfg.methods]  # unknown names fail here, before any compute
    for r in cfg.regimes:
        get_recipe(cfg.recipe_for(r))
    if teacher is None:
        needy = [s.name for s in specs if s.needs_teacher] + [r for r in cfg.regimes if study_keys.base_regime(r) in ("sl", "slkd")]
        if needy:
            raise DDKitError(f"{', '.join(needy)} need a teacher: pass --teacher CKPT or drop them")
    dev = device if hasattr(device, "type") else get_device(device)
    out = Path(cfg.output_dir)
    proto = _protocol(cfg, train, teacher, eval_overrides)
    data = study_keys.study_data(train, test, teacher)
    pfile, csv_path = out / "study.json", out / "results.csv"
    # Every refusal comes before the first write into the folder (study.json, data_subset.json, sets, rows).
    pinned = json.loads(pfile.read_text()) if pfile.is_file() else None
    if pinned is not None:
        study_keys.check_protocol(out, pinned, proto, data, data_subset)
    study_keys.check_cells(out, read_results(csv_path), specs, cfg, method_overrides, eval_overrides)
    out.mkdir(parents=True, exist_ok=True)
    if pinned is not None:
        old = pinned.get("protocol") or {}
        # More seeds is not another protocol: finished cells get only their missing students (a top-up). Keys an
        # older study.json lacks (data, new protocol keys) are pinned now, so later resumes are checked on them.
        seeds = max(cfg.seeds, int(old.get("seeds") or 0))
        new = study_keys.as_json({**pinned, "protocol": {**proto, "seeds": seeds}, "data": data})
        if new != pinned:
            atomic_write_bytes(pfile, json.dumps(new, indent=1).encode())
    else:
        pfile.write_text(json.dumps({"protocol": proto, "config": dataclasses.asdict(cfg), "data": data}, indent=1))
    if data_subset is not None:
        (out / "data_subset.json").write_text(json.dumps(data_subset, indent=1) + "\n")
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    evaluated = skipped = 0
    # The study-level bar stays on screen (leave=True): "cell k / N" over the whole grid, skipped cells included.
    n_cells = len(specs) * len(cfg.regimes) * sum(len(cfg.budgets_for(i, train.num_classes, len(train)))
                                                  for i in cfg.ipcs)
    bar = tqdm(total=n_cells, desc="study cell",
               unit="cell", disable=not progress, leave=True, dynamic_ncols=True)
    for spec in specs:
        for ipc in cfg.ipcs:
            for b in cfg.budgets_for(ipc, train.num_classes, len(train)):
                # results.csv is re-read before every set and cell, so another process working on the same
                # folder (e.g. started with other --methods) never has its finished cells redone here.
                cells = _cells(csv_path)
                todo = [r for r in cfg.regimes if _seeds_missing(cells, _key(spec.name, ipc, b, r), cfg.seeds)]
                skipped += len(cfg.regimes) - len(todo)
                bar.update(len(cfg.regimes) - len(todo))
                if not todo:
                    continue
                s = _set_for(spec.name, ipc, b, cfg, train, teacher, out, method_overrides.get(spec.name, {}),
                             dev, progress)
                for regime in todo:
                    bar.set_postfix_str(f"{spec.name} ipc {ipc} K {_bkey(b)} {regime}")
                    cells = _cells(csv_path)
                    prev = cells.get(_key(spec.name, ipc, b, regime))
                    missing = _seeds_missing(cells, _key(spec.name, ipc, b, regime), cfg.seeds)
                    if not missing:
                        skipped += 1
                        bar.update(1)
                        continue
                    cell = out / "runs" / study_keys.cell_name(spec.name, ipc, b, regime)
                    rec = study_keys.cell_options(spec, ipc, b, regime, cfg, out, method_overrides.get(spec.name, {}),
                                                  eval_overrides)
                    if prev is not None:  # another process may have finished it since the checks above
                        study_keys.check_cell(out, cell.name, study_keys.read_cell_record(cell), rec)
                    # A top-up trains the seeds after the cell's last one (students are seeded by seed + i).
                    first = cfg.seed if prev is None else max(prev["seeds"], default=cfg.seed - 1) + 1
                    ecfg = study_keys.eval_config(cfg, regime, b, eval_overrides, seeds=missing, seed=first)
                    res = evaluate(s, test, ecfg, teacher, full_train_size=len(train), device=dev, progress=progress,
                                   set_name=f"{spec.name}/ipc{ipc}/K{_bkey(b)}/{regime}", output=cell)
                    summary = res.to_dict()
                    _save_class_accs(cell, summary, test.classes, spec.name, ipc, _bkey(b), regime,
                                     n_prev=0 if prev is None else len(prev["accs"]))
                    row = {"method": spec.name, "ipc": ipc, "budget": _bkey(b), "regime": regime,
                           "recipe": ecfg.recipe, "student": res.student, "mean": res.mean, "std": res.std,
                           "n": len(res.accs), "accs": ";".join(f"{a:.6f}" for a in res.accs),
                           "seeds": ";".join(str(x) for x in res.seeds),
                           "seconds": f"{res.info.get('wall_seconds', float('nan')):.2f}",
                           "set_seconds": f"{float(s.meta.get('wall_seconds', float('nan'))):.2f}",
                           "iterations": res.plan.iterations, "batch_size": res.plan.batch_size,
                           "epochs": f"{res.plan.epochs:.4f}", "samples_seen": res.plan.samples,
                           "best_of_test": summary.get("best_of_test", {}).get("mean", ""),
                           "crop": res.info.get("crop", "")}
                    study_keys.write_cell_record(cell, rec)  # before the row: a finished row has its options
                    _append(csv_path, _merge(prev, row))
                    evaluated += 1
                    bar.update(1)
    bar.close()
    report = write_report(out)
    # Provenance of every invocation (cells of one results.csv may come from several resumed runs).
    with open(out / "runs.jsonl", "a") as fh:
        fh.write(json.dumps({"started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                             "command": " ".join(sys.argv), "git_revision": git_revision(),
                             "machine": machine_info(dev), "device": str(dev), "evaluated": evaluated,
                             "skipped": skipped}) + "\n")
    return StudyResult(read_results(csv_path), csv_path, report, evaluated, skipped)
