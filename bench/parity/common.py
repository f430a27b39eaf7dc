"""Shared pieces of the parity drivers (issue #27): data hand-over, timing, machine facts, result rows.

The official repositories live OUTSIDE this repository (/work/peers/<name>, see bench/parity/README.md); nothing
of theirs is copied here. What this module hands them is data: CIFAR-10 (JPEG q75) decoded once by ddkit's
loader (the same uint8 arrays ddkit's own runs read), wrapped in a torchvision-like dataset class so that an
official `datasets.CIFAR10(path, train=..., download=True, transform=...)` call receives these pixels instead
of downloading the PNG-lossless original. The official transform (ToTensor + Normalize) runs unchanged on them.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's ddkit, whatever is installed

DATA = "tar:/work/shared/data/cifar10-jpeg75.tar.gz"
CACHE = os.environ.get("DDKIT_CACHE", "/work/runs/cache")
PEERS = Path(os.environ.get("PARITY_PEERS", "/work/peers"))
RESULTS = ROOT / "bench" / "results"


def load_split(split: str):
    """ddkit's decoded CIFAR-10 (JPEG q75) split (uint8 N×3×32×32, labels, classes, true mean/std)."""
    from ddkit.data import create_dataset

    return create_dataset(DATA, split=split, cache_dir=CACHE, progress=False)


class HandedCIFAR10:
    """A stand-in for torchvision.datasets.CIFAR10 that serves ddkit's decoded pixels.

    Same call signature and item contract as torchvision's class: `(root, train=True, transform=None,
    target_transform=None, download=False)`, items are `(transform(PIL RGB image), int label)`, `.classes`
    and `.targets` exist. The pixels are ddkit's uint8 decode of the JPEG q75 tar, so both sides start from
    identical bytes.
    """

    def __init__(self, root: Any = None, train: bool = True, transform: Optional[Callable] = None,
                 target_transform: Optional[Callable] = None, download: bool = False) -> None:
        ds = load_split("train" if train else "test")
        self.data = ds.images.permute(0, 2, 3, 1).contiguous().numpy()  # N×H×W×C like torchvision's .data
        self.targets = [int(v) for v in ds.labels.tolist()]
        self.classes = list(ds.classes)
        self.transform, self.target_transform = transform, target_transform
        self.train = train

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        from PIL import Image

        img, y = Image.fromarray(self.data[i]), self.targets[i]
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            y = self.target_transform(y)
        return img, y


@contextlib.contextmanager
def official_repo(name: str) -> Iterator[Path]:
    """Import path and working directory set to the official checkout /work/peers/<name>; CIFAR10 handed over.

    The official modules are imported from that folder as they are; torchvision.datasets.CIFAR10 is replaced
    for the duration (the data hand-over, the one documented substitution).
    """
    import torchvision.datasets

    repo = PEERS / name
    if not repo.is_dir():
        raise SystemExit(f"{repo} missing: bring the official code there first (bench/parity/README.md)")
    saved = torchvision.datasets.CIFAR10
    torchvision.datasets.CIFAR10 = HandedCIFAR10
    sys.path.insert(0, str(repo))
    try:
        yield repo
    finally:
        torchvision.datasets.CIFAR10 = saved
        sys.path.remove(str(repo))


class StampedTee(io.TextIOBase):
    """stdout replacement that writes through to a log and records (monotonic time, line) for every line."""

    def __init__(self, log_path: Path, also: Any) -> None:
        self.log = open(log_path, "a", buffering=1)
        self.also, self.buf = also, ""
        self.lines: List[tuple] = []

    def write(self, s: str) -> int:
        self.buf += s
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            t = time.monotonic()
            self.lines.append((t, line))
            self.log.write(f"[{t:.3f}] {line}\n")
            self.also.write(line + "\n")
        return len(s)

    def flush(self) -> None:
        self.log.flush()
        self.also.flush()


def per_iteration_seconds(lines: Sequence[tuple], marker: str, parse: Callable[[str], int]) -> Dict[str, Any]:
    """Seconds per iteration from stamped progress lines (`marker` in the line, `parse` gives the iteration):
    (t_last − t_first) / (it_last − it_first), skipping the first printed line (it may include set-up)."""
    pts = [(t, parse(line)) for t, line in lines if marker in line]
    if len(pts) < 3:
        return {"s_per_iteration": None, "points": len(pts)}
    (t0, i0), (t1, i1) = pts[1], pts[-1]
    return {"s_per_iteration": round((t1 - t0) / (i1 - i0), 4), "from_iteration": i0, "to_iteration": i1}


def lscpu() -> Dict[str, Any]:
    """CPU model and flags (bench/demo_time.py's reader, the one every bench script uses), plus the load and the
    thread setting when the row was written."""
    if str(ROOT / "bench") not in sys.path:
        sys.path.append(str(ROOT / "bench"))
    from demo_time import lscpu as cpu_facts

    keep: Dict[str, Any] = dict(cpu_facts())
    keep["nproc"] = os.cpu_count()
    keep["loadavg"] = os.getloadavg()
    keep["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS")
    return keep


def revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True,
                               text=True, timeout=30).stdout.strip()
        return rev + ("+dirty-src" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def mean_std(xs: Sequence[float]) -> Dict[str, Any]:
    """mean and std (ddof 0, as the results pages store them) in points, with the per-seed values."""
    a = np.asarray(xs, dtype=float)
    return {"mean": round(float(a.mean()), 2), "std": round(float(a.std()), 2), "n": int(len(a)),
            "per_seed": [round(float(v), 2) for v in a]}


def verdict(a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, Any]:
    """Issue #27's pass rule on one judge: |a − b| <= max(1.0 point, 2 × the larger std)."""
    delta = a["mean"] - b["mean"]
    tol = max(1.0, 2 * max(a["std"], b["std"]))
    return {"delta": round(delta, 2), "tolerance": round(tol, 2), "pass": bool(abs(delta) <= tol)}


def judge_file(w: Path, judge: str, side: str, seed: int) -> Path:
    """Where one judge run of a pair (the layout dc_family.py and mtt_pair.py share) leaves its result: ddkit's
    `evaluate` summary under <w>/eval_ddkit_<side>/seed<k>/, the official judge's JSON <w>/eval_official_<side>/."""
    if judge == "ddkit":
        return w / f"eval_ddkit_{side}" / f"seed{seed}" / "summary.json"
    return w / f"eval_official_{side}" / f"seed{seed}.json"


def seed_accs(summary: Dict[str, Any]) -> List[float]:
    """Per-seed last-epoch test accuracies (points) of the judged set from an evaluate summary.json."""
    for r in summary.get("results", []):
        if r.get("set") == "distilled":
            return [100 * float(x) for x in r["accs"]]
    raise SystemExit(f"no 'distilled' result in summary.json (keys {sorted(summary)})")


def judge_accs(w: Path, judge: str, side: str, seeds: int) -> List[float]:
    """Finished per-seed accuracies (points) of one judge on one set, in seed order (unfinished seeds left out)."""
    accs: List[float] = []
    for seed in range(seeds):
        r = read_json(judge_file(w, judge, side, seed))
        if r:
            accs += seed_accs(r) if judge == "ddkit" else [r["acc"]]
    return accs


def fold_judges(w: Path, seeds: int) -> Dict[str, Dict[str, Any]]:
    """Both judges on both sets: mean ± std per finished cell, and the pass rule where a judge has both sets."""
    judges: Dict[str, Dict[str, Any]] = {}
    for judge in ("official", "ddkit"):
        for side in ("official", "ddkit"):
            accs = judge_accs(w, judge, side, seeds)
            if accs:
                judges.setdefault(judge, {})[side] = mean_std(accs)
    for j in judges.values():
        if "official" in j and "ddkit" in j:
            j["verdict"] = verdict(j["ddkit"], j["official"])
    return judges



def draw_set(side: str, k: int) -> str:
    """A side's set name for distillation draw K: the pair's own (K = 0) is `<side>`, another `<side>_seed<K>`
    (what draw_seeds and draw_fold read). Draw K seeds the official run's Python/numpy/torch RNGs and ddkit's --seed."""
    return side if not k else f"{side}_seed{k}"


def official_run_dir(w: Path, k: int) -> Path:
    """The official run's work folder of draw K (its stdout, final.pt, timing.json); not a *_set, so never a draw."""
    return w / ("official" if not k else f"official_seed{k}_run")


def run_draw_steps(base: List[str], w: Path, draws: Iterable[int],
                   steps: Callable[[int], Sequence[Tuple[str, Path, bool]]], judged: Callable[[int], Sequence[str]],
                   lock: Optional[str]) -> None:
    """The draws loop the pair drivers share (mtt_pair.py draws / experts-start, datm_pair.py draws): for each draw
    K, every (step, file it leaves, heavy) of steps(K) whose file is missing runs as `base + [step, --draw=K]`, a
    heavy one (a distillation: ~6-10 GB at IPC 10) under exclusive(lock); then each set named by judged(K) not
    judged yet gets ddkit's judge at student seed 0 (`judge-ddkit NAME --seed=0`). Finished steps are skipped, so a
    rerun resumes."""
    for k in draws:
        for step, done, heavy in steps(k):
            if not done.is_file():
                with exclusive(lock if heavy else None):
                    subprocess.run(base + [step, f"--draw={k}"], check=True)
        for name in judged(k):
            if not judge_file(w, "ddkit", name, 0).is_file():
                subprocess.run(base + ["judge-ddkit", name, "--seed=0"], check=True)


def add_diagnostics(path: Path, key: str, diag: Dict[str, Any], edits: Optional[str] = None) -> None:
    """Put `diag` into the existing row `key` of the results file `path` (its diagnostics, plus the revision and
    time they were written at), the rest of the row (its commands, revision and notes) and the other rows untouched;
    `edits`, where given, replaces the file's description of the changes to the official code (a draws step may
    change it from outside in one more way, which the file must then say)."""
    doc = read_json(path)
    row = doc["rows"][key]
    row.setdefault("diagnostics", {}).update(diag)
    row["diagnostics_revision"] = written()
    if edits is not None:
        doc["official"]["edits"] = edits
    write_json(path, doc)


def dispatch(a: Any, steps: Dict[str, Callable[[Any], None]],
             judges: Dict[str, Callable[[Any, str, int], None]]) -> None:
    """Run a pair driver's step `a.step`: a whole step from `steps`, or a judge step (`judges`: judge-ddkit,
    judge-official) once per set named in `a.sides`, at student seed `a.seed`."""
    if a.step in steps:
        steps[a.step](a)
    else:
        for side in a.sides:
            judges[a.step](a, side, a.seed)


def draw_seeds(w: Path, prefix: str) -> List[int]:
    """The extra distillation seeds of one side whose set exists (<prefix><k>_set, e.g. ddkit_seed3_set)."""
    return sorted(int(p.name[len(prefix):-len("_set")]) for p in w.glob(f"{prefix}*_set")
                  if p.name[len(prefix):-len("_set")].isdigit())


def draw_fold(w: Path, what: str, sets: Tuple[str, str] = ("ddkit", "official")) -> Dict[str, Any]:
    """One accuracy per distillation draw and side (ddkit judge, student seed 0): the pair's own set first, then
    each judged <side>_seed<k>_set; mean ± std over the draws and issue #27's rule on them, where both sides have
    two draws or more. A pair compares ONE draw of each side (start images, crops, experts...): a spread the
    student seeds do not contain, which this verdict puts inside the tolerance. {} before anything is judged.
    `sets` names the ddkit and the official side's sets (a diagnostic variant of a side has its own name); the
    result's keys stay "ddkit" and "official"."""
    draws: Dict[str, Any] = {}
    for key, name in zip(("ddkit", "official"), sets):
        first = judge_accs(w, "ddkit", name, 1)
        extra = [a for k in draw_seeds(w, f"{name}_seed") for a in judge_accs(w, "ddkit", f"{name}_seed{k}", 1)]
        if first:
            draws[key] = mean_std([first[0]] + extra)
            draws[key]["per_draw"] = draws[key].pop("per_seed")
    if len(draws) == 2 and min(draws[n]["n"] for n in draws) >= 2:
        draws["verdict"] = verdict(draws["ddkit"], draws["official"])
        draws["what"] = what
    return draws


def save_row(method: str, official: Dict[str, str], edits: str, judges: Dict[str, str], key: str,
             row: Dict[str, Any]) -> Path:
    """Put one row (key ipc<k>[-variant]) into bench/results/parity_<method>.json, keeping the file's other rows;
    the method's edits to the official code and its judges' descriptions are rewritten with it."""
    path = RESULTS / f"parity_{method}.json"
    doc = read_json(path) or {"method": method, "official": dict(official), "rows": {}}
    doc["official"]["edits"] = edits
    doc["judges"] = judges
    doc["rows"][key] = row
    write_json(path, doc)
    print(f"wrote {path}")
    return path


def written() -> Dict[str, str]:
    """The revision and time a row is written at (its last two keys)."""
    return {"ddkit_revision": revision(), "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def run_pool(base: List[str], tasks: List[List[str]], workers: int) -> None:
    """Run `base + task` for every task as subprocesses, at most `workers` at a time; exit naming the failures."""
    running: List[subprocess.Popen] = []
    failed = []
    for t in tasks:
        while len(running) >= max(1, workers):
            time.sleep(5)
            for p in [p for p in running if p.poll() is not None]:
                running.remove(p)
                failed += [p.args] if p.returncode else []
        running.append(subprocess.Popen(base + t))
    failed += [p.args for p in running if p.wait()]
    if failed:
        raise SystemExit(f"failed: {failed}")


@contextlib.contextmanager
def exclusive(path: Optional[str]) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing) for the block, or nothing when path is None: two
    drivers sharing a machine take turns at their ~10 GB distillations instead of running out of memory."""
    if path is None:
        yield
        return
    import fcntl

    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_json(path: Path) -> Dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def write_json(path: Path, doc: Dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)


def siamese_copy():
    """A torch function mode that lets the official DiffAugment's Siamese broadcast run on a one-image batch.

    Each augmentation of the official utils.py (VICO-UoE/DatasetCondensation@53f63a6) makes its random draw
    shared across the batch with `r[:] = r[0]`. With one image per class (IPC 1), `r` is 1×1×1×1 (colour, flip)
    or 1×1×1 (crop, cutout) and torch ≥ 2 refuses that copy because source and destination are the same memory
    ("some elements of the input tensor and the written-to tensor refer to a single memory location"). This
    mode gives `Tensor.__setitem__` a clone of a value that shares storage with the tensor written to — the
    clone torch's message asks for — and leaves every other call alone. The values written are the same as
    without it (row 0 is read before anything changes), so it is a no-op wherever the official line runs.
    `.calls` counts the assignments it cloned.
    """
    import torch
    from torch.overrides import TorchFunctionMode

    class SiameseCopy(TorchFunctionMode):
        calls = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.Tensor.__setitem__ and len(args) == 3 and isinstance(args[2], torch.Tensor) \
                    and isinstance(args[0], torch.Tensor) \
                    and args[2].untyped_storage().data_ptr() == args[0].untyped_storage().data_ptr():
                self.calls += 1
                args = (args[0], args[1], args[2].clone())
            return func(*args, **(kwargs or {}))

    return SiameseCopy()
