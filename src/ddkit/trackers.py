"""Per-epoch feedback: one log line per epoch and the same scalars to TensorBoard, CSV or wandb.

Training loops (teacher training, student runs) call `record(run, rec, total)` once per logged
epoch with the record they also write to metrics.jsonl (epoch, loss, lr, seconds, images_per_s,
test_acc / val_acc when evaluated). `record` does two cheap things:

- emits one human line on the `ddkit.epochs` logger (INFO). A library user sees nothing unless
  they configure logging; the CLI routes it to the terminal (above the progress bars) for
  `teacher train` / `evaluate`, or to OUTPUT/epochs.log for `study` / `demo` (hundreds of runs);
- hands the numbers to every active tracker (`tracking(["csv", "tensorboard"], logdir)`).

    from ddkit.trackers import tracking
    with tracking(["csv", "tensorboard"], "runs/x.logs"):
        evaluate(...)          # runs/x.logs/scalars.csv, runs/x.logs/tensorboard/<run>/events…

Trackers: `csv` (logdir/scalars.csv: time, run, step, name, value — needs nothing), `tensorboard`
(torch.utils.tensorboard, needs the `tensorboard` package), `wandb` (imported only when asked; mode
offline unless WANDB_MODE says otherwise, so it never needs the network). This module imports no torch
at import time, so the CLI's instant commands stay instant.
"""
from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

LOGGER = logging.getLogger("ddkit.epochs")
KINDS = ("csv", "tensorboard", "wandb")
_ACTIVE: List["Tracker"] = []
_SAFE = re.compile(r"[^A-Za-z0-9._=-]+")


def _scalars(rec: Mapping[str, Any]) -> Dict[str, float]:
    """The numeric fields of a record, minus the step counters."""
    return {k: float(v) for k, v in rec.items() if k not in ("epoch", "iteration") and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(float(v))}


class Tracker:
    """One scalar sink; `log` gets one epoch of one run."""

    def log(self, run: str, step: int, scalars: Mapping[str, float]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class CSVTracker(Tracker):
    """logdir/scalars.csv in long form (one row per run × epoch × scalar), appended and flushed per epoch."""

    def __init__(self, logdir: Path) -> None:
        self.path = logdir / "scalars.csv"
        self.fh: Any = None  # opened at the first scalar: a command that fails its checks leaves nothing

    def log(self, run: str, step: int, scalars: Mapping[str, float]) -> None:
        if self.fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new = not self.path.is_file() or self.path.stat().st_size == 0
            self.fh = open(self.path, "a", newline="")
            self.w = csv.writer(self.fh)
            if new:
                self.w.writerow(["time", "run", "step", "name", "value"])
        t = f"{time.time():.3f}"
        for k, v in scalars.items():
            self.w.writerow([t, run, step, k, repr(v)])
        self.fh.flush()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


class TensorBoardTracker(Tracker):
    """One event-file folder per run (logdir/tensorboard/<run>), scalar tags = the record's names."""

    def __init__(self, logdir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # torch imports it lazily from the `tensorboard` package
            raise _user_error("--log tensorboard needs the `tensorboard` package: pip install tensorboard") from e
        self.cls, self.root, self.writers = SummaryWriter, logdir / "tensorboard", {}

    def log(self, run: str, step: int, scalars: Mapping[str, float]) -> None:
        w = self.writers.get(run)
        if w is None:
            w = self.writers[run] = self.cls(log_dir=str(self.root / _SAFE.sub("_", run)))
        for k, v in scalars.items():
            w.add_scalar(k, v, step)
        w.flush()

    def close(self) -> None:
        for w in self.writers.values():
            w.close()


class WandbTracker(Tracker):
    """One wandb run for the whole command; every training run's scalars under '<run>/<name>', each
    against its own '<run>/epoch' axis (runs restart at epoch 1, wandb's global step may not)."""

    def __init__(self, logdir: Path, config: Optional[Mapping[str, Any]] = None) -> None:
        try:
            import wandb
        except ImportError as e:
            raise _user_error("--log wandb needs the `wandb` package: pip install wandb") from e
        logdir.mkdir(parents=True, exist_ok=True)
        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "ddkit"), dir=str(logdir),
                              mode=os.environ.get("WANDB_MODE", "offline"), config=dict(config or {}),
                              name=os.environ.get("WANDB_NAME"))
        self.defined: set = set()

    def log(self, run: str, step: int, scalars: Mapping[str, float]) -> None:
        if run not in self.defined:
            self.wandb.define_metric(f"{run}/epoch")
            self.wandb.define_metric(f"{run}/*", step_metric=f"{run}/epoch")
            self.defined.add(run)
        self.run.log({f"{run}/epoch": step, **{f"{run}/{k}": v for k, v in scalars.items()}})

    def close(self) -> None:
        self.run.finish()


def _user_error(msg: str) -> Exception:
    from ddkit.utils import DDKitError

    return DDKitError(msg)


def parse_kinds(spec: Optional[str | Sequence[str]]) -> List[str]:
    """'csv,tensorboard' -> ['csv', 'tensorboard']; an unknown name raises ValueError (one line in the CLI)."""
    if not spec:
        return []
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    kinds = [k.strip().lower() for k in items if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"unknown --log tracker(s) {', '.join(bad)}; choose from {', '.join(KINDS)}")
    return list(dict.fromkeys(kinds))


def make_tracker(kind: str, logdir: str | Path, config: Optional[Mapping[str, Any]] = None) -> Tracker:
    logdir = Path(logdir)
    if kind == "csv":
        return CSVTracker(logdir)
    if kind == "tensorboard":
        return TensorBoardTracker(logdir)
    if kind == "wandb":
        return WandbTracker(logdir, config)
    raise ValueError(f"unknown tracker {kind!r}; choose from {', '.join(KINDS)}")


@contextlib.contextmanager
def tracking(kinds: Sequence[str], logdir: str | Path, config: Optional[Mapping[str, Any]] = None
             ) -> Iterator[List[Tracker]]:
    """Activate trackers for the duration of the block (nested blocks add to the outer ones)."""
    made = [make_tracker(k, logdir, config) for k in parse_kinds(kinds)]
    _ACTIVE.extend(made)
    try:
        yield made
    finally:
        for t in made:
            _ACTIVE.remove(t)
            t.close()


def format_epoch(run: str, rec: Mapping[str, Any], total: Optional[int] = None) -> str:
    """'teacher convnet-d2 epoch 3/15: loss 0.4123, lr 0.0421, test 0.912, 5123 img/s, 1.2 s'."""
    ep = f"{rec.get('epoch')}/{total}" if total else f"{rec.get('epoch')}"
    parts = []
    for key, label, fmt in (("loss", "loss", ".4f"), ("lr", "lr", ".4g"), ("test_acc", "test", ".4f"),
                            ("val_acc", "val", ".4f")):
        if isinstance(rec.get(key), (int, float)):
            parts.append(f"{label} {rec[key]:{fmt}}")
    if isinstance(rec.get("images_per_s"), (int, float)):
        parts.append(f"{rec['images_per_s']:.0f} img/s")
    if isinstance(rec.get("seconds"), (int, float)):
        parts.append(f"{rec['seconds']:.1f} s")
    return f"{run} epoch {ep}: " + ", ".join(parts)


def record(run: str, rec: Mapping[str, Any], total: Optional[int] = None) -> None:
    """One epoch of one training run: the log line, then every active tracker."""
    if LOGGER.isEnabledFor(logging.INFO):
        LOGGER.info(format_epoch(run, rec, total))
    if _ACTIVE:
        step = int(rec.get("epoch") or 0)
        vals = _scalars(rec)
        for t in _ACTIVE:
            t.log(run, step, vals)


class _TqdmHandler(logging.Handler):
    """Writes above any live progress bar instead of through it."""

    def emit(self, record_: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm

            tqdm.write(self.format(record_), file=sys.stderr)
        except Exception:  # a log line must never kill a training run
            self.handleError(record_)


class _LazyFileHandler(logging.FileHandler):
    """Creates the file (and its folder) at the first line, so a command that fails early writes nothing."""

    def _open(self):  # type: ignore[override]
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


@contextlib.contextmanager
def epoch_log(to_console: bool, file: Optional[str | Path] = None) -> Iterator[None]:
    """Route the one-line-per-epoch log to the terminal and/or a file for the duration of the block."""
    handlers: List[logging.Handler] = []
    if to_console:
        handlers.append(_TqdmHandler())
    if file is not None:
        fh = _LazyFileHandler(file, mode="a", encoding="utf-8", delay=True)
        fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        handlers.append(fh)
    old_level, old_prop = LOGGER.level, LOGGER.propagate
    for h in handlers:
        LOGGER.addHandler(h)
    if handlers:
        LOGGER.setLevel(logging.INFO)
        LOGGER.propagate = False  # the lines are ours to place; a root handler would print them twice
    try:
        yield
    finally:
        for h in handlers:
            LOGGER.removeHandler(h)
            h.close()
        LOGGER.setLevel(old_level)
        LOGGER.propagate = old_prop


@contextlib.contextmanager
def session(kinds: Optional[str | Sequence[str]], logdir: str | Path, *, console: bool,
            file: Optional[str | Path] = None, config: Optional[Mapping[str, Any]] = None) -> Iterator[None]:
    """What a CLI command gets: the epoch log (terminal and/or file) and the --log trackers. Under
    torchrun only rank 0 logs (the others would write the same lines and files again)."""
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    kinds = parse_kinds(kinds)  # a bad name fails before any work
    with epoch_log(console, file), tracking(kinds, logdir, config):
        yield
