"""results.csv of the study: one row per finished cell, append-only (the resume point), read back by key.

A cell topped up with more seeds is appended again with all of its seeds; `read_results` keeps the last
row of each key in the place of its first. Only one process appends at a time: the study's rank 0
(under torchrun the other ranks hand their rows to it) or one of several single processes that took
different --methods on one folder.
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ddkit import study_keys
from ddkit.evaluate.metrics import mean_std
from ddkit.utils import atomic_write_bytes

COLUMNS = ("method", "ipc", "budget", "regime", "recipe", "student", "mean", "std", "n", "accs", "seeds",
           "seconds", "set_seconds", "iterations", "batch_size", "epochs", "samples_seen", "best_of_test", "crop")


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


PROTOCOL_FILE = "protocol.json"


def write_cell_protocol(cell: Path, protocol: Optional[Mapping[str, Any]]) -> None:
    """runs/<cell>/protocol.json: the protocol the cell's students ran (evaluate's SetProtocol.describe(): protocol,
    recipe, regime, inputs, lr, SL labels, notes), for the report's protocol table."""
    if protocol:
        cell.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cell / PROTOCOL_FILE, json.dumps(dict(protocol), default=str).encode())


def folder_protocols(runs: Path) -> List[Tuple[Dict[str, Any], List[str]]]:
    """[(protocol, cell folders that ran it)] over every runs/<cell>/protocol.json, one entry per distinct protocol
    (cross-arch and continual studies: their cell folders are named by method / observer / verifier or step)."""
    groups: Dict[str, Tuple[Dict[str, Any], List[str]]] = {}
    for path in sorted(runs.glob(f"*/{PROTOCOL_FILE}")):
        try:
            d = json.loads(path.read_text())
        except ValueError:
            continue  # a damaged file only loses its line in the report
        groups.setdefault(json.dumps(d, sort_keys=True), (d, []))[1].append(path.parent.name)
    return list(groups.values())


def cell_protocols(runs: Path, rows: Sequence[Mapping[str, Any]]) -> List[Tuple[Dict[str, Any], List[str]]]:
    """[(protocol, cells that ran it)] over the finished `rows` whose runs/<cell>/protocol.json exists, one entry per
    distinct protocol in the order first met (a cell finished before the file existed is left out)."""
    groups: Dict[str, Tuple[Dict[str, Any], List[str]]] = {}
    for r in rows:
        name = study_keys.cell_name(r["method"], r["ipc"], r["budget"], r["regime"])
        path = runs / name / PROTOCOL_FILE
        if not path.is_file():
            continue
        try:
            d = json.loads(path.read_text())
        except ValueError:
            continue  # a damaged file only loses its line in the report
        groups.setdefault(json.dumps(d, sort_keys=True), (d, []))[1].append(name)
    return list(groups.values())
