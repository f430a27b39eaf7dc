"""What a study folder's work was made with, so a resume never mixes work done under other options or data.

A study cell is keyed by (method, ipc, budget, regime) in results.csv, so on its own a rerun with another
`--method-opt`, `--eval-opt`, `--classes`, `--max-per-class`, dataset or teacher would skip finished cells (or
top them up with students of another set) and report them as its own (issues #24, #25). Two records close that:

- study.json pins the folder's protocol (student, recipes, evaluator overrides, …) and, under "data", the
  identity of the train/test splits (name, split, classes, images per class, a content hash) and of the teacher
  (a hash of its weights). A resume whose protocol or data differ is refused before anything is written.
- runs/<cell>/options.json records the fully resolved method config (after --method-opt) and evaluator config
  (after --eval-opt) a cell was made with, and their fingerprint (as distill parts carry theirs,
  ddkit.distributed.run_fingerprint). A resume that would make any recorded cell of its methods with other
  resolved options is refused; more seeds with the same options stay a top-up.

Older folders lack parts of this: a key their study.json does not record, or a cell without options.json, is
"unknown" and accepted (nothing recorded to compare with), and gets pinned by this run from then on. An old
folder's data_subset.json (written by the CLI for --classes/--max-per-class) is still compared, since it is
the only record of its data.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ddkit.config import build, config_hash, flat_dict, option_names, to_dict
from ddkit.distributed import digest_tensors
from ddkit.evaluate import EvalConfig, resolve_regime
from ddkit.utils import DDKitError, atomic_write_bytes

OPTIONS_FILE = "options.json"
#: method options that are no choice of the run: where the scoring-run cache lives (it follows --output-dir)
NOT_METHOD_OPTIONS = ("dynamics_cache",)
#: evaluator fields that a top-up changes on purpose: it trains the seeds after the cell's last one
NOT_EVAL_OPTIONS = ("seeds", "seed")
#: protocol keys that are allowed to differ: more seeds is a top-up, not another protocol
NOT_PROTOCOL = ("seeds",)
#: data_subset.json keys that name the subset (the rest are facts derived from them)
SUBSET_KEYS = ("dataset", "classes", "max_per_class", "seed")


def as_json(obj: Any) -> Any:
    """`obj` as it reads back from a JSON file (tuples become lists), so fresh and stored values compare."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def fingerprint(obj: Any) -> str:
    """A short, stable hash of a JSON-able record (sorted keys)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_identity(ds: Any) -> Dict[str, Any]:
    """What identifies a split: name, split, class names, images per class, image shape, and a content hash.

    The hash covers the labels and the pixels (in-memory datasets: CIFAR-size splits hash in well under a
    second) or the files' names (file-backed ImageNet-size splits, whose pixels are never materialised), so
    two subsets with the same counts (another --max-per-class draw, another folder) still differ.
    """
    h = hashlib.sha1(ds.labels.detach().cpu().contiguous().numpy().tobytes())
    files = getattr(ds, "files", None)
    if files is not None:
        # class folder + file name only: the same split moved to another --data-root is the same data
        h.update("\n".join("/".join(Path(f).parts[-2:]) for f in files).encode())
    else:
        h.update(ds.images.detach().cpu().contiguous().reshape(-1).numpy())
    return {"name": ds.name, "split": ds.split, "classes": list(ds.classes), "per_class": ds.class_counts(),
            "shape": [ds.channels, ds.image_size], "content": h.hexdigest()[:16]}


def teacher_weights(teacher: Any) -> Optional[str]:
    """Hash of the teacher's weights (None without a teacher): the same path may hold another checkpoint."""
    return None if teacher is None else digest_tensors(dict(teacher.model.state_dict()))[:16]


def study_data(train: Any, test: Any, teacher: Any) -> Dict[str, Any]:
    """The "data" record of study.json: both splits' identities and the teacher's weights."""
    return {"train": data_identity(train), "test": data_identity(test), "teacher_weights": teacher_weights(teacher)}


def cell_name(method: str, ipc: Any, budget: Any, regime: str) -> str:
    """The cell's folder under runs/ (one per results.csv key)."""
    return f"{method}-ipc{int(ipc)}-K{float(budget):g}-{study_regime(regime).replace(':', '-')}"


def study_regime(name: str) -> str:
    """A study regime's canonical name: hl, sl, slkd, or a loss variant REGIME:LOSS — the regime trained with
    another loss, e.g. `slkd:gift` (GIFT's label-side loss under SL+KD, as GIFT compares it with KL/mse_ce)."""
    base, sep, loss = str(name).partition(":")
    if not sep:
        return resolve_regime(base)
    from ddkit.evaluate.losses import LOSSES

    return f"{resolve_regime(base)}:{LOSSES.get(loss.strip()).name}"


def base_regime(name: str) -> str:
    """hl | sl | slkd of a study regime (its loss variant dropped)."""
    return resolve_regime(str(name).partition(":")[0])


def method_kw(spec: Any, ipc: int, budget: float, cfg: Any, out: Path,
              overrides: Mapping[str, Any]) -> Tuple[Dict[str, Any], str]:
    """The method options of the study's (method, ipc[, budget]) set and the set's name under out/sets/.

    Methods with `budget_epochs` (cad-prune, ca2d) get the cell's budget: their scoring run is compute-matched.
    """
    fields = set(option_names(spec.config))
    kw: Dict[str, Any] = {"ipc": ipc, "seed": cfg.seed}
    name = f"{spec.name}-ipc{ipc}-seed{cfg.seed}"
    if "budget_epochs" in fields:
        kw["budget_epochs"] = float(budget)
        name += f"-K{float(budget):g}"
    if "dynamics_cache" in fields:
        kw["dynamics_cache"] = str(out / "dynamics")
    kw.update(overrides)
    if overrides:
        name += f"-{config_hash(dict(overrides))}"
    return kw, name


def eval_config(cfg: Any, regime: str, budget: float, eval_overrides: Mapping[str, Any], seeds: int = 1,
                seed: Optional[int] = None) -> EvalConfig:
    """The evaluator config of a study cell of `regime` at `budget` (`seeds` students from `seed`)."""
    length = {"epochs": cfg.epochs} if cfg.epochs is not None else {"budget_epochs": float(budget)}
    variant = study_regime(regime).partition(":")[2]
    over = {**eval_overrides, "loss": variant} if variant else dict(eval_overrides)  # a loss variant wins
    return EvalConfig(protocol="hard-truths", recipe=cfg.recipe_for(regime), regime=base_regime(regime), seeds=seeds,
                      seed=cfg.seed if seed is None else seed, student=cfg.student, student_width=cfg.student_width,
                      **length, **over)


def method_options(spec: Any, kw: Mapping[str, Any]) -> Dict[str, Any]:
    """The fully resolved config of method `spec` built from `kw` (defaults + the cell's values + overrides)."""
    opts = flat_dict(build(spec.config, dict(kw)))
    return as_json({k: v for k, v in opts.items() if k not in NOT_METHOD_OPTIONS})


def eval_options(ecfg: Any) -> Dict[str, Any]:
    """The fully resolved EvalConfig of a cell, less the seed fields a top-up moves on. Under --exact the
    path fields read as the fp32-eager values they force, so cells made before the fast default (when
    cpu_amp/compile defaulted to false) resume with --exact."""
    opts = {k: v for k, v in to_dict(ecfg).items() if k not in NOT_EVAL_OPTIONS}
    if opts.get("exact"):
        opts.update(cpu_amp=False, compile=False)
    return as_json(opts)


def cell_record(method: str, mopts: Mapping[str, Any], eopts: Mapping[str, Any]) -> Dict[str, Any]:
    """What runs/<cell>/options.json holds: the options and their fingerprint."""
    rec = {"method": method, "method_options": dict(mopts), "eval_options": dict(eopts)}
    return {**rec, "fingerprint": fingerprint(rec)}


def cell_options(spec: Any, ipc: int, budget: float, regime: str, cfg: Any, out: Path,
                 overrides: Mapping[str, Any], eval_overrides: Mapping[str, Any]) -> Dict[str, Any]:
    """The fully resolved options this study run makes a cell with (what runs/<cell>/options.json holds)."""
    kw, _ = method_kw(spec, ipc, budget, cfg, out, overrides)
    return cell_record(spec.name, method_options(spec, kw), eval_options(eval_config(cfg, regime, budget,
                                                                                    eval_overrides)))


def read_cell_record(cell: Path) -> Optional[Dict[str, Any]]:
    """The options a finished cell was made with, or None (a cell from before options.json existed)."""
    path = cell / OPTIONS_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:  # a hand-damaged file: refuse rather than guess (it pins finished work)
        raise DDKitError(f"{path} is not JSON: restore it or use another --output-dir") from None


def write_cell_record(cell: Path, rec: Mapping[str, Any]) -> None:
    """Record a cell's options (atomically) before its row is appended, so a finished row always has them."""
    atomic_write_bytes(cell / OPTIONS_FILE, json.dumps(rec, indent=1, sort_keys=True).encode())


class _Unset:
    """A key one side does not have (shown as "(unset)")."""

    def __repr__(self) -> str:
        return "(unset)"


UNSET = _Unset()
#: mappings of the user's own options: a key only this run sets is a difference, not a newer ddkit's addition
USER_MAPPINGS = ("eval_overrides",)


def differences(old: Any, new: Any, prefix: str = "") -> List[Tuple[str, Any, Any]]:
    """(dotted key, recorded value, this run's value) of every key whose value differs.

    Keys only `new` has are unknown to the record (an older ddkit wrote it) and not differences, except inside
    the user's own option mappings (USER_MAPPINGS: adding `--eval-opt num_evals=1` is a difference).
    """
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(old) + ([k for k in new if k not in old] if prefix.rstrip(".") in USER_MAPPINGS else [])
        out: List[Tuple[str, Any, Any]] = []
        for k in keys:
            out += differences(old.get(k, UNSET), new.get(k, UNSET), f"{prefix}{k}.")
        return out
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def _value(v: Any, limit: int = 60) -> str:
    text = v if isinstance(v, str) else repr(v) if v is UNSET else json.dumps(v)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def describe(where: str, diffs: Sequence[Tuple[str, Any, Any]]) -> str:
    """One line: `where` was made with k=v…; this run has v'…: use another --output-dir."""
    # A content hash is implied when another key of the same split differs: name it only when it is the news.
    parents = {k.rsplit(".", 1)[0] for k, _, _ in diffs if not k.endswith(".content")}
    diffs = [d for d in diffs if not (d[0].endswith(".content") and d[0].rsplit(".", 1)[0] in parents)]
    old = ", ".join(f"{k}={_value(o)}" for k, o, _ in diffs)
    new = ", ".join(_value(n) if len(diffs) == 1 else f"{k}={_value(n)}" for k, _, n in diffs)
    return f"{where} was made with {old}; this run has {new}: use another --output-dir"


def check_protocol(out: Path, pinned: Mapping[str, Any], proto: Mapping[str, Any], data: Mapping[str, Any],
                   subset: Optional[Mapping[str, Any]]) -> None:
    """Refuse (DDKitError, one line) a resume of `out` under another protocol or on other data.

    `pinned` is the folder's study.json; `subset` this run's data_subset record (None: the whole dataset).
    """
    old = {k: v for k, v in (pinned.get("protocol") or {}).items() if k not in NOT_PROTOCOL}
    diffs = differences(old, as_json(dict(proto)))
    if "data" in pinned:
        diffs += differences({"data": pinned["data"]}, {"data": as_json(dict(data))})
    elif (out / "data_subset.json").is_file():  # an older folder: its subset record is all it knows of its data
        rec = json.loads((out / "data_subset.json").read_text())
        diffs += differences({"data_subset": {k: rec.get(k) for k in SUBSET_KEYS}},
                             {"data_subset": {k: (subset or {}).get(k) for k in SUBSET_KEYS}})
    if diffs:
        raise DDKitError(describe(f"{out} holds a study run with another protocol or data: it", diffs))


def check_cell(out: Path, cell: str, rec: Optional[Mapping[str, Any]], new: Mapping[str, Any]) -> None:
    """Refuse when finished cell `cell` (its options.json `rec`) was made with other options than `new`."""
    if rec is None:
        return  # made before cells recorded their options: nothing to compare (see the module docstring)
    m = new["method"]
    diffs = [(f"{m}.{k}", o, n) for k, o, n in differences(rec.get("method_options", {}), new["method_options"])]
    diffs += [(f"eval.{k}", o, n) for k, o, n in differences(rec.get("eval_options", {}), new["eval_options"])]
    if diffs:
        hint = ""
        if any(k in ("eval.cpu_amp", "eval.compile") and o is False and n is None for k, o, n in diffs):
            hint = (" (or --exact: that cell ran fp32 eager, the default before the automatic fast path of "
                    "evaluate/fastpath.py)")
        raise DDKitError(describe(f"{out / 'runs' / cell} (a finished cell)", diffs) + hint)


def check_cells(out: Path, rows: Sequence[Mapping[str, Any]], specs: Sequence[Any], cfg: Any,
                method_overrides: Mapping[str, Mapping[str, Any]], eval_overrides: Mapping[str, Any]) -> None:
    """Refuse when a finished cell (`rows`, results.csv) of one of `specs` was made with other options.

    Every finished cell of this run's methods is checked, in or out of this run's grid: a new budget of a method
    made with other options would sit in the same table row as the old ones. Other methods' cells are left to
    the process that runs them (several may share a folder).
    """
    by_name = {s.name: s for s in specs}
    for r in rows:
        spec = by_name.get(r["method"])
        if spec is not None:
            name = cell_name(spec.name, r["ipc"], r["budget"], r["regime"])
            check_cell(out, name, read_cell_record(out / "runs" / name),
                       cell_options(spec, r["ipc"], r["budget"], r["regime"], cfg, out,
                                    method_overrides.get(spec.name, {}), eval_overrides))
