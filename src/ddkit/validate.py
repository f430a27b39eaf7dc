"""The door every input passes before work starts: sets, teacher files, JSON, devices, configs, outputs.

Each check raises `DDKitError` with one line that names the file or option and the fix, so the CLI
exits 2 without a traceback and nothing is written. What is refused and why: docs/refuses.md.
This module sits below every stage (it imports only torch, safetensors and ddkit.utils), so the set
format, the teacher loader and the CLI all share one implementation of each rule.

Nothing here unpickles: safetensors files are read by their own parser, and a pickle (or a
`torch.save` zip) renamed `.safetensors` is recognised by its first bytes and refused.
"""
from __future__ import annotations

import dataclasses
import json
import math
import struct
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import torch

from ddkit.utils import DDKitError

# -- where a one-file output keeps its record (the read/write rule itself: ddkit.safe_paths) ---------


def record_beside(output: str | Path) -> Path:
    """Where a command whose --output is one file (`ddkit dcs`) keeps its run record: FILE's stem + .config.yaml."""
    out = Path(output)
    return out.with_name(out.stem + ".config.yaml")


# -- files ---------------------------------------------------------------------------------------
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def _sniff(path: Path, head: bytes) -> Optional[str]:
    """What a file that should be safetensors really is, by its first bytes (None: looks like safetensors).

    `head` is the first 9 bytes: a safetensors header length whose low bytes are 0x80 0x05 (1408 bytes of JSON)
    reads like pickle's magic, so a header length followed by the JSON's "{" is safetensors whatever it starts with."""
    if len(head) == 9 and head[8:9] == b"{":
        return None
    if head.startswith(b"PK\x03\x04"):
        return "a torch.save/zip archive"
    if head[:2] in _PICKLE_MAGIC:
        return "a Python pickle"
    return None


def check_safetensors(path: str | Path, what: str = "file") -> Path:
    """Refuse, from its header alone, a .safetensors file that is missing, truncated, empty or a pickle/zip."""
    p = Path(path)
    if not p.is_file():
        raise DDKitError(f"{what} {p} not found")
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(9)
    kind = _sniff(p, head)
    if kind is not None:
        raise DDKitError(f"{what} {p} is {kind}, not safetensors; ddkit never unpickles: re-save it with "
                         f"safetensors.torch.save_file")
    n = struct.unpack("<Q", head[:8])[0] if size >= 8 else size
    if size < 8 or n + 8 > size:
        raise DDKitError(f"{what} {p} is truncated ({size} bytes, header incomplete); re-create or re-copy it")
    try:
        with open(p, "rb") as f:
            f.seek(8)
            header = json.loads(f.read(n))
        need = 8 + n + max([int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"] or [0])
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        need = 0  # an unreadable header: safetensors' own message below says what is wrong
    if need > size:
        raise DDKitError(f"{what} {p} is truncated ({size} of {need} bytes); re-create or re-copy it")
    return p


def read_safetensors(path: str | Path, what: str = "file") -> Dict[str, torch.Tensor]:
    """Tensors of a .safetensors file; DDKitError naming the file when it is truncated, empty or a pickle."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = check_safetensors(path, what)
    try:
        return load_file(str(p))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        msg = " ".join(str(e).split())[:160]
        raise DDKitError(f"{what} {p} is not a readable safetensors file ({msg}); re-create or re-copy it") from None


def read_json(path: str | Path, what: str = "file") -> Dict[str, Any]:
    """A JSON object from `path`; DDKitError naming the file (and the line) when it is not one."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise DDKitError(f"{what} {p} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DDKitError(f"{what} {p} is not valid JSON ({str(e).splitlines()[0]}); fix or re-create it") from None
    if not isinstance(data, dict):
        raise DDKitError(f"{what} {p} must hold a JSON object, found {type(data).__name__}")
    return data


# -- distilled sets ------------------------------------------------------------------------------


def check_set(images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
              soft: Mapping[str, torch.Tensor], meta: Mapping[str, Any], where: str = "the set",
              fix: str = "re-create it with `ddkit distill`") -> None:
    """Refuse a set whose tensors would silently give wrong results.

    Checks: ≥ 1 image, N×C×H×W images, one integer label per image inside [0, K), finite pixels and
    soft labels, soft-label rows/classes matching, and the meta `factor` agreeing with the R = f²
    cells stored in `region_soft`.
    """
    k = len(classes)
    if images.ndim != 4:
        raise DDKitError(f"{where}: images must be N×C×H×W, found shape {tuple(images.shape)}; {fix}")
    n = images.shape[0]
    if n == 0:
        raise DDKitError(f"{where} holds 0 images; {fix}")
    if k == 0:
        raise DDKitError(f"{where} lists no classes in meta.json; {fix}")
    if labels.ndim != 1 or len(labels) != n:
        raise DDKitError(f"{where}: {n} images but labels of shape {tuple(labels.shape)}; {fix}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise DDKitError(f"{where}: hard labels must be integers, found {labels.dtype}; {fix}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= k:
        bad = lo if lo < 0 else hi
        raise DDKitError(f"{where}: label {bad} is outside 0..{k - 1} ({k} classes); {fix}")
    if images.is_floating_point():
        bad_px = int((~torch.isfinite(images)).sum())
        if bad_px:
            raise DDKitError(f"{where}: {bad_px} pixel(s) are NaN or Inf; {fix}")
    for name, t in soft.items():
        if len(t) != n:
            raise DDKitError(f"{where}: soft label {name!r} has {len(t)} rows for {n} images; {fix}")
        if t.shape[-1] != k:
            raise DDKitError(f"{where}: soft label {name!r} has {t.shape[-1]} classes, meta.json lists {k}; {fix}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise DDKitError(f"{where}: soft label {name!r} holds NaN or Inf; {fix}")
    reg = soft.get("region_soft")
    factor = meta.get("factor")
    if factor is not None and (not isinstance(factor, int) or isinstance(factor, bool) or factor < 1):
        raise DDKitError(f"{where}: meta.json factor {factor!r} must be a whole number ≥ 1; {fix}")
    if reg is not None:
        if reg.ndim != 3:
            raise DDKitError(f"{where}: region_soft must be N×R×K, found {tuple(reg.shape)}; {fix}")
        if factor is not None and factor * factor != reg.shape[1]:
            raise DDKitError(f"{where}: meta.json factor {factor} contradicts region_soft's {reg.shape[1]} cells "
                             f"(factor² must equal the cells); {fix}")


def json_safe(obj: Any, why: str = "null = not defined here (e.g. the ddof-1 std of a single seed)") -> Any:
    """`obj` with every NaN/Inf float replaced by None (strict JSON has no NaN); a top-level dict that had
    any gets a "nulls" key saying why."""
    found = []

    def conv(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            found.append(v)
            return None
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    out = conv(obj)
    if found and isinstance(out, dict):
        out["nulls"] = why
    return out


# -- configs, devices ----------------------------------------------------------------------------
#: field-name rules every stage config obeys (a value of None means "the recipe's" and is not checked)
_AT_LEAST_ONE = ("batch_size", "test_batch_size", "ipc", "seeds", "iterations", "epochs", "subsets")
_POSITIVE = ("lr", "temperature", "budget_epochs")


def check_config(cfg: Any, flag_prefix: str = "--") -> None:
    """Refuse config values no stage can run with: non-finite floats, sizes < 1, a zero/negative lr or T.

    Applied by the CLI to every stage dataclass right after it is built; method-specific ranges are the
    methods' own business.
    """
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        flag = flag_prefix + f.name.replace("_", "-")
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, float) and not math.isfinite(v):
            raise DDKitError(f"{flag} must be a finite number, got {v}")
        if isinstance(v, (int, float)) and f.name in _AT_LEAST_ONE and v < 1:
            raise DDKitError(f"{flag} must be ≥ 1, got {v}")
        if isinstance(v, (int, float)) and f.name in _POSITIVE and v <= 0:
            hint = " (it divides the logits)" if f.name == "temperature" else ""
            raise DDKitError(f"{flag} must be > 0{hint}, got {v}")


def check_device(name: Optional[str]) -> None:
    """Refuse a device that cannot be used here, before any data is loaded."""
    if name in (None, "", "auto"):
        return
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise DDKitError(f"--device {name!r} is not a device; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda":
        from ddkit.utils import cuda_unusable

        reason = cuda_unusable()
        if reason is not None:
            raise DDKitError(f"--device {name} requested but {reason}; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DDKitError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) here; use cuda:0..")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise DDKitError(f"--device {name} requested but MPS is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise DDKitError(f"--device {name}: ddkit runs on cpu, cuda or mps")
