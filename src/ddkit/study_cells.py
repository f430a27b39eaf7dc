"""The resumable-cell machinery the cross-arch, efficiency and continual studies share with hard-truths.

A study folder holds study.json (the protocol and the data it was pinned to: a resume under another protocol or
on other data is refused in one line, ddkit.study_keys), results.csv (one row per finished cell, appended and
fsync'ed at once, the last row of a key wins, so a kill loses at most the cell in flight and more seeds top a
cell up), sets/ (each distilled set built once and reused) and runs.jsonl (one line per invocation: command,
git revision, machine). Only the key columns differ between studies (`CellTable.key`).
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ddkit import study_keys
from ddkit.config import config_hash
from ddkit.distilled import DistilledSet
from ddkit.evaluate.metrics import mean_std
from ddkit.grids import write_preview
from ddkit.utils import DDKitError, atomic_write_bytes, git_revision, machine_info

#: columns parsed as numbers when read back (the rest stay strings; accs/seeds are ';'-joined lists)
FLOAT_COLUMNS = ("mean", "std", "seconds", "set_seconds", "epochs", "wall_s", "cpu_s", "images_per_s",
                 "wall_s_per_100", "cpu_s_per_100", "peak_rss_mb", "rss_before_mb", "peak_increase_mb",
                 "cuda_peak_mb", "extrapolated_s_per_100", "acc_seen_mean")
INT_COLUMNS = ("ipc", "n", "step", "classes_seen", "images", "rep", "iterations", "batch_size")


def _int(v: Optional[str]) -> Any:
    """An int column's value: None when empty, the text itself when it is a word (e.g. "preset")."""
    if v in (None, ""):
        return None
    try:
        return int(float(v))
    except ValueError:
        return v


class CellTable:
    """results.csv of a study: append-only rows, keyed by `key` columns; the last row of a key wins."""

    def __init__(self, path: Path, columns: Sequence[str], key: Sequence[str]) -> None:
        self.path, self.columns, self.key_cols = Path(path), tuple(columns), tuple(key)

    def key(self, row: Mapping[str, Any]) -> Tuple[str, ...]:
        return tuple(str(row[k]) for k in self.key_cols)

    def rows(self) -> List[Dict[str, Any]]:
        """Every cell (its latest row), numbers parsed, in the order the cells first appeared."""
        if not self.path.is_file():
            return []
        latest: Dict[Tuple[str, ...], Dict[str, Any]] = {}
        with open(self.path, newline="") as fh:
            for r in csv.DictReader(fh):
                row: Dict[str, Any] = dict(r)
                for k in FLOAT_COLUMNS:
                    if k in row:
                        row[k] = float(r[k]) if r[k] not in (None, "") else float("nan")
                for k in INT_COLUMNS:
                    if k in row:
                        row[k] = _int(r[k])
                for k in ("accs", "seeds"):
                    if k in row:
                        conv = float if k == "accs" else int
                        row[k] = [conv(x) for x in (r[k] or "").split(";") if x]
                latest[self.key(row)] = row
        return list(latest.values())

    def cells(self) -> Dict[Tuple[str, ...], Dict[str, Any]]:
        return {self.key(r): r for r in self.rows()}

    def append(self, row: Mapping[str, Any]) -> None:
        """Append one row and make it durable before the next cell starts (the resume point)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.is_file() or self.path.stat().st_size == 0
        fields = self.columns if new else self._widen()
        with open(self.path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields)
            if new:
                w.writeheader()
            w.writerow({k: row.get(k, "") for k in fields})
            fh.flush()
            os.fsync(fh.fileno())

    def _widen(self) -> Sequence[str]:
        """The header to append under. A table written by an older ddkit with fewer columns (all of them still
        ours) gets the new ones, empty in its old rows: rewritten atomically once, so every row lines up with the
        one header; any other header is kept as it is (rows are written by name under it)."""
        with open(self.path, newline="") as fh:
            header = next(csv.reader(fh), [])
        if not set(header) < set(self.columns):
            return header
        with open(self.path, newline="") as fh:
            old = list(csv.DictReader(fh))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.columns)
        w.writeheader()
        for r in old:
            w.writerow({k: r.get(k, "") for k in self.columns})
        atomic_write_bytes(self.path, buf.getvalue().encode())
        return self.columns


def seeds_row(prev: Optional[Mapping[str, Any]], accs: Sequence[float], seeds: Sequence[int]) -> Dict[str, Any]:
    """mean/std/n/accs/seeds of a cell: `prev`'s students (a top-up) followed by the new ones."""
    all_accs = list(prev["accs"]) + list(accs) if prev else list(accs)
    all_seeds = list(prev["seeds"]) + list(seeds) if prev else list(seeds)
    mean, std, n = mean_std(all_accs)
    return {"mean": mean, "std": std, "n": n, "accs": ";".join(f"{a:.6f}" for a in all_accs),
            "seeds": ";".join(str(s) for s in all_seeds)}


def missing_seeds(prev: Optional[Mapping[str, Any]], seeds: int, base: int) -> Tuple[int, int]:
    """(how many students the cell still needs, the seed of the first): a top-up continues after the last."""
    if prev is None:
        return seeds, base
    return max(0, seeds - len(prev["accs"])), max(prev["seeds"], default=base - 1) + 1


def pin(out: Path, proto: Mapping[str, Any], data: Mapping[str, Any]) -> None:
    """Write out/study.json, or refuse (one line) when the folder was pinned to another protocol or data.

    `proto["seeds"]` may grow (a top-up); everything else must match.
    """
    pfile = out / "study.json"
    pinned = json.loads(pfile.read_text()) if pfile.is_file() else None
    if pinned is not None:
        study_keys.check_protocol(out, pinned, proto, data, None)
        seeds = max(int(proto.get("seeds") or 0), int((pinned.get("protocol") or {}).get("seeds") or 0))
        proto = {**proto, "seeds": seeds} if "seeds" in proto else proto
    out.mkdir(parents=True, exist_ok=True)
    pfile.write_text(json.dumps(study_keys.as_json({"protocol": dict(proto), "data": dict(data)}), indent=1))


def log_invocation(out: Path, started: str, device: Any, **facts: Any) -> None:
    """One line of runs.jsonl: the command, git revision, machine and what this call did."""
    with open(out / "runs.jsonl", "a") as fh:
        fh.write(json.dumps({"started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                             "command": " ".join(sys.argv), "git_revision": git_revision(),
                             "machine": machine_info(device if hasattr(device, "type") else None),
                             "device": str(device), **facts}) + "\n")


def set_name(method: str, tag: str, ipc: int, seed: int, overrides: Mapping[str, Any]) -> str:
    """The folder name of a cached set: method, the observer tag, ipc, seed, and a hash of the overrides."""
    name = f"{method}-{tag}-ipc{ipc}-seed{seed}"
    return name + (f"-{config_hash(dict(overrides))}" if overrides else "")


def teacher_tag(teacher: Any) -> str:
    """A set-name tag for the teacher that made it: its architecture and a hash of its weights, so studies that
    share a sets folder (`sets_dir`) reuse a set only when the same weights made it."""
    return f"{teacher.arch}-{(study_keys.teacher_weights(teacher) or '')[:8]}".replace("/", "_").replace(":", "_")


def cached_set(folder: Path, build: Callable[[], DistilledSet]) -> DistilledSet:
    """Load the set in `folder`, or build, save (with its grid) and return it."""
    if (folder / "meta.json").is_file():
        return DistilledSet.load(folder)
    s = build()
    s.save(folder, overwrite=True)
    write_preview(folder, s)
    return s


def check_verifier(name: str, channels: int, size: int, num_classes: int, student_width: Optional[int] = None
                   ) -> None:
    """Refuse (DDKitError, one line) a student architecture that cannot take channels×size² images.

    Builds the net and runs two zero images through it: a net that downsamples past 1 px (a deep ConvNet on
    small images) or insists on its own input size (ViT) fails here, before any set is made.
    """
    from ddkit.models import create_model

    kw = {"width": student_width} if student_width is not None else {}
    try:
        net = create_model(name, num_classes=num_classes, image_size=size, channels=channels, **kw).eval()
        with torch.no_grad():
            out = net(torch.zeros(2, channels, size, size))
        if tuple(out.shape) != (2, num_classes):
            raise ValueError(f"it outputs shape {tuple(out.shape)}")
    except Exception as e:  # noqa: BLE001 - any failure of the trial forward is the refusal's reason
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        raise DDKitError(f"verifier {name!r} cannot take the set's {channels}×{size}×{size} images ({reason}); "
                         "drop it or pick one that takes this resolution") from None


def class_subset(ds: Any, per_class: Optional[int], seed: int = 0) -> Any:
    """A class-balanced subset of the test split (CPU-sized studies), recorded in the protocol; None: all."""
    if per_class is None:
        return ds
    from ddkit.data import class_balanced_subset

    return class_balanced_subset(ds, per_class, seed=seed)


def parse_mapping(items: Sequence[str], what: str) -> Dict[str, str]:
    """NAME=VALUE items (comma-separated or repeated) as a dict; DDKitError naming `what` on a bad item."""
    out: Dict[str, str] = {}
    for item in (x.strip() for chunk in items for x in chunk.split(",")):
        if not item:
            continue
        if "=" not in item:
            raise DDKitError(f"{what}: expected NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out
