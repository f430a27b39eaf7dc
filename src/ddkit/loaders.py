"""The loader layer: every file format ddkit reads, decoded in one place (issue #25).

Each reader turns any decoding error into one `DDKitError` line that names the file and what is wrong,
and checks what the format promises (keys, dtype, shape, finite values, label range) before a stage
sees the data — so a truncated, lying or disguised file is a refusal, never a traceback deep in
numpy, safetensors or torch.

| format | reader | never |
|---|---|---|
| `.safetensors` | `read_safetensors` / `safetensors_metadata` (ddkit.validate's sniffing parser) | unpickles |
| `.pt` / `.pth` | `read_pt` (`torch.load(weights_only=True)`) | runs pickled code |
| `.npy` | `read_npy` (`allow_pickle=False`, expected dtype/shape checked) | reads Python objects |
| JSON metas | `read_json_keys` (object with the required keys) | |
| YAML | ddkit.config_file.load_yaml (size and alias limits) | builds Python objects |
| teacher lists | `read_teacher_list` (`PATH [PRIOR]` per line, for a committee) | |

This module sits low (torch, numpy and ddkit.validate only), so teachers, stores, buffers and the
set format share it.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
import torch

from ddkit.utils import DDKitError
from ddkit.validate import check_safetensors, read_json, read_safetensors

__all__ = ["check_safetensors", "read_safetensors", "safetensors_metadata", "read_pt", "read_npy", "read_json", "read_json_keys",
           "check_finite", "check_labels", "one_line"]


def one_line(e: BaseException, limit: int = 160) -> str:
    """An exception's message squeezed onto one line (what a refusal quotes)."""
    return " ".join(str(e).split())[:limit] or type(e).__name__


def safetensors_metadata(path: str | Path, what: str = "file") -> Dict[str, str]:
    """The `__metadata__` strings of a safetensors file that `read_safetensors` already accepted."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error) as e:
        raise DDKitError(f"{what} {p}: unreadable safetensors header ({one_line(e)}); re-create it") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}


def read_pt(path: str | Path, what: str = "file") -> Any:
    """A tensor file through `torch.load(weights_only=True)`: tensors and plain containers only, no code runs."""
    p = Path(path)
    if not p.is_file():
        raise DDKitError(f"{what} {p} not found")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling refusal or truncation is the same user-facing problem
        msg = one_line(e, 120)
        if "Weights only load failed" in msg:  # torch's own text is a page long, with terminal colours
            msg = "it holds Python objects beyond tensors, which ddkit never unpickles"
        elif "zip archive" in msg or "EOF" in msg or "truncated" in msg.lower():
            msg = f"truncated or damaged ({p.stat().st_size} bytes)"
        raise DDKitError(f"{what} {p}: not a tensor file torch.load(weights_only=True) can read "
                         f"({msg}); re-save it with tensors only") from None


def read_npy(path: str | Path, what: str = "array", *, mmap_mode: Optional[str] = None,
             dtype: Optional[np.dtype] = None, shape: Optional[Tuple[int, ...]] = None) -> np.ndarray:
    """A .npy array (memory-mapped with `mmap_mode`); DDKitError naming the file when it is missing,
    truncated, holds Python objects, or has another dtype/shape than expected."""
    p = Path(path)
    if not p.is_file():
        raise DDKitError(f"{what} {p} is missing; re-create it")
    try:
        arr = np.load(p, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        msg = one_line(e)
        if "mmap length" in msg or "EOF" in msg or "cannot reshape" in msg:
            msg = f"truncated: {p.stat().st_size} bytes, fewer than its header promises"
        elif "Python objects" in msg or "allow_pickle" in msg:
            msg = "it holds Python objects, not numbers (ddkit never unpickles)"
        raise DDKitError(f"{what} {p} is not a readable .npy array ({msg}); re-create it") from None
    if dtype is not None and arr.dtype != np.dtype(dtype):
        raise DDKitError(f"{what} {p} holds {arr.dtype}, expected {np.dtype(dtype)}; re-create it")
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise DDKitError(f"{what} {p} has shape {tuple(arr.shape)}, expected {tuple(shape)}; re-create it")
    return arr


def read_json_keys(path: str | Path, what: str = "file", keys: Iterable[str] = (),
                   types: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """A JSON object holding `keys` (and, for those in `types`, values of those types); one line otherwise."""
    data = read_json(path, what)
    missing = [k for k in keys if k not in data]
    if missing:
        raise DDKitError(f"{what} {path} lacks the key(s) {', '.join(missing)}; re-create it")
    for k, tp in (types or {}).items():
        v = data.get(k)
        ok = isinstance(v, tp) and not (isinstance(v, bool) and tp in (int, (int, float)))
        if k in data and not ok:
            want = tp.__name__ if isinstance(tp, type) else "/".join(t.__name__ for t in tp)
            raise DDKitError(f"{what} {path}: {k!r} must be {want}, found {v!r:.40}; re-create it")
    return data


def check_finite(t: torch.Tensor, where: str, fix: str) -> None:
    """Refuse NaN/Inf in a float tensor."""
    if t.is_floating_point():
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise DDKitError(f"{where}: {bad} value(s) are NaN or Inf; {fix}")


def check_labels(labels: torch.Tensor, num_classes: int, where: str, fix: str) -> torch.Tensor:
    """Hard labels as int64: one whole number per image inside [0, K) (floats must be whole, e.g. 3.0)."""
    if labels.ndim != 1:
        raise DDKitError(f"{where}: hard labels must be one number per image, found shape {tuple(labels.shape)}; "
                         f"{fix}")
    if labels.dtype == torch.bool or labels.is_complex():
        raise DDKitError(f"{where}: hard labels must be class indices, found {labels.dtype}; {fix}")
    if labels.is_floating_point():
        check_finite(labels, where, fix)
        frac = labels != labels.round()
        if bool(frac.any()):
            v = float(labels[frac][0])
            raise DDKitError(f"{where}: label {v:g} is not a whole class index (labels are never rounded); {fix}")
    if len(labels):
        lo, hi = float(labels.min()), float(labels.max())
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise DDKitError(f"{where}: label {bad:g} is outside 0..{num_classes - 1} ({num_classes} classes); {fix}")
    return labels.long()


def missing_classes(labels: torch.Tensor, classes: Sequence[str]) -> list:
    """Names of the classes with no image (labels already range-checked)."""
    counts = torch.bincount(labels.long(), minlength=len(classes)).tolist() if len(labels) else [0] * len(classes)
    return [c for c, n in zip(classes, counts) if n == 0]


# -- writing (the other side of the same formats) ------------------------------------------------------


def save_tensors(tensors: Dict[str, torch.Tensor], path: str | Path,
                 metadata: Optional[Dict[str, str]] = None) -> None:
    """safetensors.torch.save_file, but a failed write (a full disk) is an OSError naming the file, the one-line
    user error the CLI prints, instead of a SafetensorError traceback; the half-written file is removed."""
    import errno

    from safetensors import SafetensorError
    from safetensors.torch import save_file

    p = Path(path)
    try:
        save_file(tensors, str(p), metadata=metadata)
    except SafetensorError as e:
        p.unlink(missing_ok=True)
        msg = one_line(e)
        full = "No space left" in msg or "StorageFull" in msg or "code: 28" in msg
        code = errno.ENOSPC if full else errno.EIO
        raise OSError(code, "No space left on device" if full else f"cannot write safetensors ({msg})",
                      str(p)) from None
    except OSError:
        p.unlink(missing_ok=True)
        raise


def read_teacher_list(path: str | Path) -> Tuple[list, Optional[list]]:
    """A teacher-list file: one checkpoint per line, optionally followed by its prior accuracy
    (`runs/r18.safetensors 56.4`); `#` starts a comment; relative paths are relative to the file.
    Returns (paths, priors or None); priors must be given on every line or none."""
    p = Path(path)
    if not p.is_file():
        raise DDKitError(f"teacher list {p} not found")
    paths: list = []
    priors: list = []
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DDKitError(f"teacher list {p}: cannot read it as text ({e.__class__.__name__})") from None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) > 2:
            raise DDKitError(f"{p}:{n}: expected 'PATH [PRIOR]', got {raw.strip()!r}")
        ref = parts[0]
        if not ref.startswith("torchvision:") and not Path(ref).is_absolute():
            ref = str(p.parent / ref)
        paths.append(ref)
        try:
            priors.append(float(parts[1]) if len(parts) == 2 else None)
        except ValueError:
            raise DDKitError(f"{p}:{n}: prior {parts[1]!r} is not a number") from None
    if not paths:
        raise DDKitError(f"teacher list {p} names no teacher")
    given = [x for x in priors if x is not None]
    if given and len(given) != len(priors):
        raise DDKitError(f"{p}: give a prior accuracy on every line or on none")
    return paths, ([float(x) for x in given] if given else None)
