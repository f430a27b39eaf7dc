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

Under torchrun (`torchrun --nproc_per_node N -m ddkit study hard-truths …`) the ranks share the grid's cells: in
each round rank r trains the r-th next cell with students missing (all of its seeds, alone), after the round's sets
are built, each method's by one rank. Rank 0 owns the folder's writes (study.json, results.csv, the report,
runs.jsonl); a rank writes only the runs/<cell>/ it trained and the sets it built. The round's rows reach rank 0,
which appends them in grid order, so results.csv is the one-process file, wall-clock columns aside. A rank that
fails makes every rank fail at the end of the round (`ranks.together`), none waits forever.
"""
from __future__ import annotations

import dataclasses
import json
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
from ddkit.grids import write_preview
from ddkit.methods import create_method, method_spec
from ddkit.ranks import barrier, broadcast, rank_world, solo, together
from ddkit.teachers.frozen import teacher_identity
from ddkit.study_report import rank_table, write_report  # noqa: F401  (rank_table re-exported)
from ddkit.study_rows import (COLUMNS, _append, _bkey, _cells, _key, _merge, _save_class_accs,  # noqa: F401
                              _seeds_missing, read_results, write_cell_protocol)  # (COLUMNS, read_results re-exported)
from ddkit.utils import DDKitError, atomic_write_bytes, get_device, git_revision, machine_info

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


def _protocol(cfg: StudyConfig, train: Any, teacher: Any, eval_overrides: Mapping[str, Any]) -> Dict[str, Any]:
    return {"dataset": train.name, "train_size": len(train), "student": cfg.student, "student_width": cfg.student_width,
            "recipes": {r: cfg.recipe_for(r) for r in ("hl", "sl", "slkd")}, "seeds": cfg.seeds, "seed": cfg.seed,
            "epochs": cfg.epochs, "preset": cfg.preset,
            "teacher": teacher_identity(teacher),
            # --exact is the compute path, not the protocol: each cell's options.json records it (study_keys)
            "eval_overrides": {k: eval_overrides[k] for k in sorted(eval_overrides) if k != "exact"}}


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


Cell = Tuple[Any, int, float, str]  # (method spec, ipc, budget, regime)


def _next_round(grid: Sequence[Cell], pos: int, world: int, csv_path: Path, seeds: int
                ) -> Tuple[int, List[Tuple[int, Optional[Dict[str, Any]]]], int]:
    """From grid position `pos`: (the position after the round, up to `world` cells with students missing as
    (grid index, the cell's row so far or None), how many finished cells were passed over)."""
    cells, picks, skipped = _cells(csv_path), [], 0
    while pos < len(grid) and len(picks) < world:
        spec, ipc, b, regime = grid[pos]
        key = _key(spec.name, ipc, b, regime)
        if _seeds_missing(cells, key, seeds):
            picks.append((pos, cells.get(key)))
        else:
            skipped += 1
        pos += 1
    return pos, picks, skipped


class _CellRunner:
    """What one rank does for a cell: build its set (or load it from out/sets/), train its missing students
    alone (`ranks.solo()`: the ranks already share the grid's cells) and return its results.csv row."""

    def __init__(self, cfg: StudyConfig, train: Any, test: Any, teacher: Any, out: Path,
                 method_overrides: Mapping[str, Mapping[str, Any]], eval_overrides: Mapping[str, Any], dev: Any,
                 progress: bool) -> None:
        self.cfg, self.train, self.test, self.teacher, self.out = cfg, train, test, teacher, out
        self.method_overrides, self.eval_overrides, self.dev, self.progress = (method_overrides, eval_overrides,
                                                                                dev, progress)
        self._last: Optional[Tuple[Tuple[str, int, float], DistilledSet]] = None  # the set this rank used last

    def set_of(self, spec: Any, ipc: int, b: float) -> DistilledSet:
        key = (spec.name, ipc, b)
        if self._last is None or self._last[0] != key:
            self._last = (key, _set_for(spec.name, ipc, b, self.cfg, self.train, self.teacher, self.out,
                                        self.method_overrides.get(spec.name, {}), self.dev, self.progress))
        return self._last[1]

    def build_sets(self, cells: Sequence[Cell]) -> None:
        for spec, ipc, b, _ in cells:
            self.set_of(spec, ipc, b)

    def cell(self, cell: Cell, prev: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
        """Train the cell's missing students (after `prev`, its row so far) and return its merged row."""
        spec, ipc, b, regime = cell
        cfg, out = self.cfg, self.out
        s = self.set_of(spec, ipc, b)
        missing = cfg.seeds if prev is None else max(0, cfg.seeds - len(prev["accs"]))
        name = study_keys.cell_name(spec.name, ipc, b, regime)
        rec = study_keys.cell_options(spec, ipc, b, regime, cfg, out, self.method_overrides.get(spec.name, {}),
                                      self.eval_overrides)
        if prev is not None:  # another process may have finished it since the checks before the grid
            study_keys.check_cell(out, name, study_keys.read_cell_record(out / "runs" / name), rec)
        # A top-up trains the seeds after the cell's last one (students are seeded by seed + i).
        first = cfg.seed if prev is None else max(prev["seeds"], default=cfg.seed - 1) + 1
        ecfg = study_keys.eval_config(cfg, regime, b, self.eval_overrides, seeds=missing, seed=first)
        with solo():
            res = evaluate(s, self.test, ecfg, self.teacher, full_train_size=len(self.train), device=self.dev,
                           progress=self.progress, set_name=f"{spec.name}/ipc{ipc}/K{_bkey(b)}/{regime}",
                           output=out / "runs" / name)
        summary = res.to_dict()
        write_cell_protocol(out / "runs" / name, summary.get("protocol"))
        _save_class_accs(out / "runs" / name, summary, self.test.classes, spec.name, ipc, _bkey(b), regime,
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
        study_keys.write_cell_record(out / "runs" / name, rec)  # before the row: a finished row has its options
        return _merge(prev, row)


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
    rank, world = rank_world()
    main = rank == 0
    if main:  # rank 0 owns every write into the folder; the others wait until it is pinned
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
    barrier()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    evaluated = skipped = 0
    grid = [(spec, ipc, b, regime) for spec in specs for ipc in cfg.ipcs
            for b in cfg.budgets_for(ipc, train.num_classes, len(train)) for regime in cfg.regimes]
    # The study-level bar stays on screen (leave=True): "cell k / N" over the whole grid, skipped cells included.
    bar = tqdm(total=len(grid), desc="study cell", unit="cell", disable=not (progress and main), leave=True,
               dynamic_ncols=True)
    run = _CellRunner(cfg, train, test, teacher, out, method_overrides, eval_overrides, dev, progress and main)
    pos = 0
    while pos < len(grid):
        # A round: the next `world` cells with students missing, one per rank (torchrun shards the grid's cells;
        # one process takes them one by one). Rank 0 re-reads results.csv before every round, so another process
        # working on the same folder (e.g. started with other --methods) never has its finished cells redone here,
        # and every rank gets rank 0's view of it.
        pos, picks, n_skip = broadcast(_next_round(grid, pos, world, csv_path, cfg.seeds) if main else None)
        skipped += n_skip
        bar.update(n_skip)
        if not picks:
            continue
        bar.set_postfix_str(", ".join(f"{grid[i][0].name} ipc {grid[i][1]} K {_bkey(grid[i][2])} {grid[i][3]}"
                                      for i, _ in picks))
        # Sets first: each method of the round is built by one rank (its sets share a scoring-run cache), and
        # `together` is the barrier after which every rank finds the sets of its cell on disk.
        methods = list(dict.fromkeys(grid[i][0].name for i, _ in picks))
        together(run.build_sets, [grid[i] for i, _ in picks if methods.index(grid[i][0].name) % world == rank])
        mine = picks[rank] if rank < len(picks) else None
        rows = together(run.cell, grid[mine[0]], mine[1]) if mine is not None else together(lambda: None)
        if main:  # rows in grid order, whichever rank trained them: results.csv is the one-process file
            for row in rows:
                if row is not None:
                    _append(csv_path, row)
        evaluated += sum(row is not None for row in rows)
        bar.update(len(picks))
    bar.close()
    report = None
    if main:
        report = write_report(out)
        # Provenance of every invocation (cells of one results.csv may come from several resumed runs).
        with open(out / "runs.jsonl", "a") as fh:
            fh.write(json.dumps({"started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                 "command": " ".join(sys.argv), "git_revision": git_revision(),
                                 "machine": machine_info(dev), "device": str(dev), "ranks": world,
                                 "evaluated": evaluated, "skipped": skipped}) + "\n")
    report = broadcast(report)
    return StudyResult(read_results(csv_path), csv_path, report, evaluated, skipped)
