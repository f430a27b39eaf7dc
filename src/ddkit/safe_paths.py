"""One rule, one place: no command writes where it reads (issue #25).

Every `ddkit` command declares, in the two tables below, which of its options name paths it reads
(sets, label stores, expert buffers, teachers, source folders, dynamics caches, plugins, configs,
datasets) and which name paths it writes. `check_paths` refuses, before any work, every write that
**is**, **contains** or **lies inside** a read — an `--overwrite` there would delete what the user gave
(`import SRC --output SRC`, `relabel SET --store SET`, `distill --buffer BUF --output BUF`).

One exception is declared, not hidden: a label store lives inside its set (`SET/fkd`, where
`evaluate --labels stored` looks), so `relabel` reads the set as the files in it, and its store may be
a new entry of the set folder but never the folder itself nor one of the files in it.

This module is plain pathlib (no torch), so the CLI checks a command line before importing a stage.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from ddkit.utils import DDKitError

#: a set's label store when --store / --label-store is not given: <SET>/fkd (ddkit.evaluate.stored uses it)
DEFAULT_STORE = "fkd"


@dataclass(frozen=True)
class Declared:
    """One path a command reads or writes, with the option that named it (for the refusal line)."""

    path: str
    what: str
    nested_ok: bool = False  # a write may lie inside this read (a set's own label store)
    contained_ok: bool = False  # a write may hold this read (a resumable folder's own config.yaml)


def _real(p: str | Path) -> Path:
    return Path(p).expanduser().resolve()


def _arg(args: Any, name: str) -> Optional[str]:
    v = getattr(args, name, None)
    return str(v) if v not in (None, "") else None


def _teacher_files(args: Any) -> List[Declared]:
    """A teacher named by stem or by either file: both its files are read (every one of a relabel committee,
    and its --teacher-list file with the checkpoints it names)."""
    given = getattr(args, "teacher", None)
    teachers = [str(t) for t in (given if isinstance(given, (list, tuple)) else [given]) if t not in (None, "")]
    out: List[Declared] = []
    if lst := _arg(args, "teacher_list"):
        out.append(Declared(lst, "--teacher-list"))
        if Path(lst).is_file():
            from ddkit.loaders import read_teacher_list

            teachers += read_teacher_list(lst)[0]
    for teacher in teachers:
        if teacher.startswith("torchvision:"):
            continue
        p = Path(teacher)
        stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
        out += [Declared(teacher, "--teacher"), Declared(f"{stem}.safetensors", "--teacher"),
                Declared(f"{stem}.json", "--teacher")]
    return out


def _dataset_path(args: Any) -> List[Declared]:
    kind, sep, rest = str(getattr(args, "dataset", "") or "").partition(":")
    if sep and kind.strip().lower() in ("folder", "tar") and rest.strip():
        return [Declared(rest.strip(), "--dataset")]
    return []


def _common_reads(args: Any) -> List[Declared]:
    """What every command may read: its dataset, data root, cache, teacher and the `-c` file."""
    reads = [Declared(p, f"--{k.replace('_', '-')}") for k in ("data_root", "cache_dir") if (p := _arg(args, k))]
    # A study and an expert buffer resume in their own folder and never delete it (they have no --overwrite):
    # `-c` may name the config.yaml they keep there, their own record of the run.
    if c := _arg(args, "config"):
        reads.append(Declared(c, "-c", contained_ok=getattr(args, "command", None) in RESUMING))
    return reads + _dataset_path(args) + _teacher_files(args)


def _flags(*names: str) -> Callable[[Any], List[Declared]]:
    """The paths given to these options (option names as argparse dests)."""
    def reads(args: Any) -> List[Declared]:
        return [Declared(p, "the set" if n in ("distilled", "path") else f"--{n.replace('_', '-')}")
                for n in names if (p := _arg(args, n))]
    return reads


def _relabel_reads(args: Any) -> List[Declared]:
    """The set's files (its label store may be a new entry of the folder) and the set folder itself."""
    s = _arg(args, "distilled")
    if not s:
        return []
    store = _real(_relabel_store(args)[0].path)
    # An older label store at the same path is what --overwrite replaces; any other entry is the set's.
    files = [Declared(str(p), "the set") for p in sorted(Path(s).iterdir())
             if not (_real(p) == store and _is_label_store(p))] if Path(s).is_dir() else []
    return [Declared(s, "the set", nested_ok=True), *files]


def _is_label_store(p: Path) -> bool:
    """A folder `ddkit relabel` wrote (its meta.json says the label-store format), by its first bytes only."""
    try:
        with open(p / "meta.json", "rb") as f:
            return b'"ddkit-labels/' in f.read(4096)
    except OSError:
        return False


def _relabel_store(args: Any) -> List[Declared]:
    store = _arg(args, "store") or str(Path(_arg(args, "distilled") or ".") / DEFAULT_STORE)
    return [Declared(store, "--store")]


def _out(*suffixes: str, flag: str = "output") -> Callable[[Any], List[Declared]]:
    """--output and the siblings a command writes beside it (OUT.parts, OUT.safetensors, …)."""
    def writes(args: Any) -> List[Declared]:
        o = _arg(args, flag)
        return [Declared(f"{o}{s}", f"--{flag.replace('_', '-')}") for s in ("", *suffixes)] if o else []
    return writes


def _log_dir(args: Any) -> List[Declared]:
    """--log-dir: trackers write there (the default OUT.logs / OUT/logs is declared with --output)."""
    return [Declared(d, "--log-dir")] if (d := _arg(args, "log_dir")) else []


def _dcs_writes(args: Any) -> List[Declared]:
    o = _arg(args, "output")
    if not o:
        return []
    from ddkit.validate import record_beside  # noqa: PLC0415 - where dcs keeps its record

    return [Declared(o, "--output"), Declared(str(record_beside(o)), "--output")]


def _study_writes(args: Any) -> List[Declared]:
    return [Declared(o, "--output-dir")] if (o := _arg(args, "output_dir")) else []


#: commands that resume in their output folder and never delete it
RESUMING = ("study", "experts")

#: command -> the paths it reads beyond _common_reads (the set, a source folder, a buffer, …)
READS: Dict[str, Callable[[Any], List[Declared]]] = {
    "teacher": _flags(),
    "experts": _flags(),
    # mtt/datm read an expert buffer; coresets a dynamics folder; cad-prune/ca2d a dynamics cache; d4m/minimax weights
    "distill": _flags("buffer", "dynamics_path", "dynamics_cache", "weights", "vae"),
    "evaluate": _flags("distilled", "label_store"),
    "relabel": _relabel_reads,
    "merge": _flags(),  # OUTPUT.parts/ sits beside OUTPUT, never inside it
    "study": _flags(),
    "dcs": _flags(),
    "import": _flags("source"),
    "export": _flags("distilled"),
    "inspect": _flags("path"),
    "demo": _flags(),
}

#: command -> the paths it writes (and replaces under --overwrite)
WRITES: Dict[str, Callable[[Any], List[Declared]]] = {
    "teacher": _out(".safetensors", ".json", ".ckpt", ".metrics.jsonl", ".logs"),
    "experts": _out(),
    "distill": _out(".parts"),
    "evaluate": _out(".logs"),
    "relabel": _relabel_store,
    "merge": _out(),
    "study": _study_writes,
    "dcs": _dcs_writes,
    "import": _out(),
    "export": _out(),
    "inspect": _flags(),
    "demo": _out(),
}


def declared(args: Any, plugins: Sequence[str] = ()) -> Tuple[List[Declared], List[Declared]]:
    """(writes, reads) of a parsed command line; `plugins` are the `--plugin` files (split off before parsing)."""
    cmd = getattr(args, "command", None)
    if cmd not in WRITES:
        return [], []
    writes = WRITES[cmd](args) + _log_dir(args)
    plugin_files = [Declared(p, "--plugin") for p in plugins if p.endswith(".py") or Path(p).is_file()]
    return writes, READS[cmd](args) + _common_reads(args) + plugin_files


def overlap(write: str | Path, read: str | Path) -> Optional[str]:
    """'is', 'contains' or 'is inside' when writing `write` would touch `read` (symlinks and `..` resolved)."""
    w, r = _real(write), _real(read)
    if w == r:
        return "is"
    if r.is_relative_to(w):
        return "contains"
    if w.is_relative_to(r):
        return "is inside"
    return None


def check_declared(writes: Iterable[Declared], reads: Iterable[Declared]) -> None:
    """DDKitError (one line) for the first write that is, contains or lies inside a read."""
    reads = list(reads)
    for w in writes:
        for r in reads:
            how = overlap(w.path, r.path)
            if how is None or (how == "is inside" and r.nested_ok) or (how == "contains" and r.contained_ok):
                continue
            name = f"the input {r.path}" if r.what == "the set" else f"the input {r.path} ({r.what})"
            raise DDKitError(f"{w.what} {w.path} {how} {name}; writing it would destroy that input: "
                             f"choose another {w.what}")


def check_paths(args: Any, plugins: Sequence[str] = ()) -> None:
    """The rule for a parsed `ddkit` command line: refuse before any work (called by cli.main)."""
    check_declared(*declared(args, plugins))
