"""The on-disk parts of a distillation run: one atomic safetensors file per finished class or batch unit.

    class_00042.safetensors             one class: "images" float32 N_c×C×H×W, "labels" int64 N_c, "soft.<key>"
                                        (rows of DistilledSet.soft), "extra.<key>" (other per-row tensors, e.g.
                                        source_index); metadata "ddkit_part" = JSON header: format, fingerprint
                                        (hash of method, config, dataset, teacher weights), method, config, class,
                                        classes, mean, std, dataset, teacher, per-class meta, seconds, device,
                                        host, checksum.
    unit_ipc00003_cls00000.safetensors  one batch unit (IPC index 3 of the group starting at class 0): the same
                                        tensors, one row per class of the group; the header has "unit" ([index,
                                        classes]), "unit_meta" and "units_total" instead of "class".

A part is written to a temporary name, fsynced, then renamed: a truncated or corrupt part (size ≠ header, bad
JSON, bad checksum) is not done. `ddkit.distributed` decides what to run, resume and merge from these.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import struct
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from safetensors.torch import load_file, save

from ddkit.methods.base import ClassResult, Unit, UnitResult
from ddkit.utils import DDKitError, peak_memory_mb

PART_FORMAT = "ddkit-part/1"
_PART = re.compile(r"^class_(\d+)\.safetensors$")
_UNIT_PART = re.compile(r"^unit_ipc(\d+)_cls(\d+)\.safetensors$")


def parts_dir_for(output: str | Path) -> Path:
    """The work directory of `output`: the sibling `<output>.parts/`."""
    return Path(output).with_name(Path(output).name + ".parts")


def part_path(parts_dir: str | Path, c: int) -> Path:
    return Path(parts_dir) / f"class_{c:05d}.safetensors"


def unit_part_path(parts_dir: str | Path, u: Unit) -> Path:
    return Path(parts_dir) / f"unit_{u.name}.safetensors"


def digest_tensors(tensors: Dict[str, torch.Tensor], h: Any = None) -> str:
    """sha1 over names, dtypes, shapes and raw bytes (sorted by name)."""
    h = h if h is not None else hashlib.sha1()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous().reshape(-1)
        h.update(f"{k}:{t.dtype}:{tuple(tensors[k].shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_header(path: str | Path) -> Optional[Dict[str, Any]]:
    """The part's JSON header when the file is complete and well-formed, else None (cheap: no tensors)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size:
                return None
            head = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in head.items() if k != "__metadata__"), default=0)
        if size != 8 + n + end:  # truncated (or padded) file
            return None
        header = json.loads(head["__metadata__"]["ddkit_part"])
        return header if header.get("format") == PART_FORMAT else None
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None


def scan_parts(parts_dir: str | Path) -> Dict[int, Optional[Dict[str, Any]]]:
    """{class: header, or None for an incomplete/corrupt part} of every part file in `parts_dir`."""
    out: Dict[int, Optional[Dict[str, Any]]] = {}
    for p in sorted(Path(parts_dir).glob("class_*.safetensors")):
        m = _PART.match(p.name)
        if m:
            h = read_header(p)
            out[int(m.group(1))] = h if h is not None and h.get("class") == int(m.group(1)) else None
    return out


def scan_unit_parts(parts_dir: str | Path) -> Dict[Tuple[int, int], Optional[Dict[str, Any]]]:
    """{(IPC index, first class): header, or None when incomplete/corrupt} of every unit part in `parts_dir`."""
    out: Dict[Tuple[int, int], Optional[Dict[str, Any]]] = {}
    for p in sorted(Path(parts_dir).glob("unit_*.safetensors")):
        m = _UNIT_PART.match(p.name)
        if m:
            key = (int(m.group(1)), int(m.group(2)))
            h = read_header(p)
            ok = h is not None and h.get("unit") is not None and tuple(Unit(*unit_fields(h)).key) == key
            out[key] = h if ok else None
    return out


def unit_fields(header: Dict[str, Any]) -> Tuple[int, Tuple[int, ...]]:
    index, classes = header["unit"]
    return int(index), tuple(int(c) for c in classes)


def write_part(parts_dir: str | Path, r: ClassResult | UnitResult, header: Dict[str, Any]) -> Path:
    """Write class r.cls (or unit r.unit) atomically (temporary name, fsync, rename) and return its path."""
    tensors = {"images": r.images.float().contiguous(), "labels": r.labels.long().contiguous()}
    tensors.update({f"soft.{k}": v.contiguous() for k, v in r.soft.items()})
    tensors.update({f"extra.{k}": v.contiguous() for k, v in r.extras.items()})
    tensors.update({f"set.{k}": v.contiguous() for k, v in getattr(r, "set_tensors", {}).items()})
    dev = torch.device(header.get("device", "cpu"))
    which = ({"unit": [r.unit.index, list(r.unit.classes)], "unit_meta": r.meta} if isinstance(r, UnitResult)
             else {"class": r.cls, "class_meta": r.meta})
    head = {**header, **which, "set_meta": r.set_meta, "checksum": digest_tensors(tensors),
            "seconds": None if math.isnan(r.seconds) else r.seconds, "peak_memory_mb": peak_memory_mb(dev),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    data = save(tensors, metadata={"ddkit_part": json.dumps(head, default=str)})
    path = unit_part_path(parts_dir, r.unit) if isinstance(r, UnitResult) else part_path(parts_dir, r.cls)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: a reader sees the old state or the whole new file
    except BaseException:  # a full disk: the finished parts stay, the half-written one does not
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # persist the rename itself (power loss); not on every filesystem
        fd = os.open(str(path.parent), os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    return path


def read_part(path: str | Path) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """(header, tensors) of a part, verifying size and checksum; DDKitError when it is damaged."""
    header = read_header(path)
    if header is None:
        raise DDKitError(f"part {path} is incomplete or corrupt: rerun its class with --resume")
    tensors = load_file(str(path))
    if digest_tensors(tensors) != header.get("checksum"):
        raise DDKitError(f"part {path} fails its checksum: delete it and rerun its class with --resume")
    return header, tensors
