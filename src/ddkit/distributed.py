"""Scale-out and durability: shard by class (or by batch unit), one file per finished class or unit, resume, merge.

Work directory: `<output>.parts/`, a sibling of the output folder, so `DistilledSet.save`'s atomic
replace of `<output>` never touches unfinished work. It holds one part per finished class, or per batch unit
for a method whose run works in units (the format: `ddkit.parts`). Parts of another run (fingerprint) are an
error.

Sharding: class c belongs to shard c % n (interleaved, so costly classes spread). (rank, world) come
from `--shard i/n` or from torchrun's environment (`"RANK" in os.environ`, as nanoGPT). Seeds derive
from (seed, class), never from the rank, so the result does not depend on the number of processes,
and a resumed run equals an uninterrupted one bit for bit on CPU. A method whose run works in batch units
(`methods.base.Unit`: IPC index × class group, SRe2L's recover) shards, resumes and merges by unit: the i-th
unit of the run's sorted list belongs to shard i % n, and its generators derive from (seed, IPC index, group),
so the bytes are the same however the units are spread.

    torchrun --standalone --nproc_per_node 8 -m ddkit distill --method lic … --output out  # rank 0 merges
    ddkit distill … --shard 3/8 --output out      # 8 independent jobs; the last to finish merges
    ddkit merge out                               # or merge explicitly
    ddkit distill … --output out --resume         # after a crash: finished classes are skipped
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from ddkit.config import to_dict
from ddkit.data.base import ImageDataset
from ddkit.distilled import DistilledSet
from ddkit.methods.base import ClassResult, Method, Unit, UnitResult, assemble, assemble_units
from ddkit.parts import (PART_FORMAT, digest_tensors, part_path, parts_dir_for, read_header,  # noqa: F401
                         read_part, scan_parts, scan_unit_parts, unit_fields, unit_part_path, write_part)
from ddkit.ranks import barrier, dist_env, group_ready
from ddkit.utils import DDKitError, get_device, pid_alive, rank_cuda_device


def parse_shard(spec: str) -> Tuple[int, int]:
    """'i/n' -> (i, n) with 0 ≤ i < n."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(spec))
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise DDKitError(f"--shard must be i/n with 0 ≤ i < n (e.g. 0/4), got {spec!r}")
    return int(m.group(1)), int(m.group(2))


def shard_classes(num_classes: int, rank: int, world: int) -> List[int]:
    """Classes of shard `rank` of `world`: c % world == rank (interleaved, so costly classes spread)."""
    if world < 1 or not 0 <= rank < world:
        raise DDKitError(f"shard {rank}/{world} is invalid: need 0 ≤ rank < world")
    return list(range(rank, num_classes, world))


# -- fingerprint and shards of units --------------------------------------------------------------
def shard_units(units: Sequence[Unit], rank: int, world: int) -> List[Unit]:
    """Units of shard `rank` of `world`: the i-th unit of the sorted list where i % world == rank."""
    if world < 1 or not 0 <= rank < world:
        raise DDKitError(f"shard {rank}/{world} is invalid: need 0 ≤ rank < world")
    return sorted(units, key=lambda u: u.key)[rank::world]


def run_fingerprint(method: Method, dataset: ImageDataset, teacher: Any = None) -> str:
    """Hash of what determines the result: method, config, dataset identity, teacher weights."""
    h = hashlib.sha1()
    facts = {"method": method.name, "config": to_dict(method.config), "dataset": dataset.name,
             "split": dataset.split, "n": len(dataset), "classes": list(dataset.classes),
             "shape": [dataset.channels, dataset.image_size], "teacher": getattr(teacher, "arch", None)}
    h.update(json.dumps(facts, sort_keys=True, default=str).encode())
    return digest_tensors(dict(teacher.model.state_dict()) if teacher is not None else {}, h)[:16]


# -- running a (shard of a) method into parts ------------------------------------------------------
def _part_header(method: Method, dataset: ImageDataset, teacher: Any, dev: torch.device, fp: str, shard: str,
                 extra_meta: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    return {"format": PART_FORMAT, "fingerprint": fp, **method.facts(dataset, teacher, dev),
            "num_classes": dataset.num_classes, "classes": list(dataset.classes), "mean": list(dataset.mean),
            "std": list(dataset.std), "host": platform.node(), "shard": shard, "extra_meta": dict(extra_meta or {})}


def distill_parts(method: Method, dataset: ImageDataset, teacher: Any, parts_dir: str | Path,
                  classes: Optional[Sequence[int]] = None, *, resume: bool = False, overwrite: bool = False,
                  device: str | torch.device | None = None, progress: bool = True, shard: str = "0/1",
                  extra_meta: Optional[Dict[str, Any]] = None, units: Optional[Sequence[Unit]] = None) -> List[Any]:
    """Run `method` on `classes` (default all), writing one part per class as the method yields it; a method
    whose run works in batch units runs `units` (default all of the run's) and writes one part per unit.

    resume: skip classes whose part exists and is complete. overwrite: discard this run's classes'
    parts and any part of a different run first. Without either, existing parts are an error, except a
    finished run's (every class complete, same fingerprint), which are reused as they are. A run refused
    before its first part removes the OUTPUT.parts/ folder it created.
    extra_meta (JSON-safe) goes into every part and the merged meta. Returns the classes (or units) computed.
    """
    dev = device if isinstance(device, torch.device) else get_device(device)
    classes = list(range(dataset.num_classes)) if classes is None else sorted(int(c) for c in classes)
    method.check(dataset, teacher, classes)  # a coupled method refuses a shard here, before any work
    parts_dir = Path(parts_dir)
    created = not parts_dir.exists()
    parts_dir.mkdir(parents=True, exist_ok=True)
    try:
        every = method.units(dataset)
        if every is not None:
            return _distill_unit_parts(method, dataset, teacher, parts_dir, every, units, resume, overwrite, dev,
                                       progress, shard, extra_meta)
        return _distill_parts(method, dataset, teacher, parts_dir, classes, resume, overwrite, dev, progress, shard,
                              extra_meta)
    except BaseException:
        if created:  # a refused run (bad buffer, IPC above the class size, …) leaves no empty OUTPUT.parts/
            with contextlib.suppress(OSError):
                parts_dir.rmdir()  # only when empty: finished classes of a failed run stay for --resume
        raise


def _finished(headers: Dict[int, Optional[Dict[str, Any]]], fp: str, num_classes: int) -> bool:
    """Every class of the set has a complete part of this very run (fingerprint): a finished run."""
    return all(headers.get(c) is not None and headers[c]["fingerprint"] == fp for c in range(num_classes))


def _distill_parts(method: Method, dataset: ImageDataset, teacher: Any, parts_dir: Path, classes: List[int],
                   resume: bool, overwrite: bool, dev: torch.device, progress: bool, shard: str,
                   extra_meta: Optional[Dict[str, Any]]) -> List[int]:
    for c in classes:  # temporary files left by a killed writer of one of our classes
        for tmp in parts_dir.glob(f".{part_path(parts_dir, c).name}.tmp-*"):
            tmp.unlink(missing_ok=True)
    fp = run_fingerprint(method, dataset, teacher)
    mine = set(classes)
    if not overwrite and _finished(scan_parts(parts_dir), fp, dataset.num_classes):
        # The same command after the set was deleted (#25): the parts are exactly what it would compute,
        # so they are reused (and merged again) without --resume; a partial run still needs --resume.
        return []
    _check_existing(parts_dir, scan_parts(parts_dir), mine, lambda c: part_path(parts_dir, c), fp, resume,
                    overwrite, "classes")
    _other_kind(parts_dir, scan_unit_parts(parts_dir), overwrite,
                lambda k: unit_part_path(parts_dir, Unit(k[0], (k[1],))), "batch-unit")
    done = {c for c, h in scan_parts(parts_dir).items() if h is not None and h["fingerprint"] == fp}
    todo = [c for c in classes if c not in done]
    if not todo:
        return []
    if todo != classes and not method.spec.class_separable:
        raise DDKitError(f"method {method.name!r} couples classes: its {len(done)} finished part(s) cannot be "
                         f"completed alone; rerun with --overwrite")
    header = _part_header(method, dataset, teacher, dev, fp, shard, extra_meta)
    bar = tqdm(method.run(dataset, teacher, classes=todo, device=dev, progress=progress), total=len(todo),
               desc=method.name, unit="class", disable=not progress, dynamic_ncols=True, mininterval=1.0)
    for r in bar:
        write_part(parts_dir, r, header)  # on disk before the next class starts: a kill loses one class at most
    return todo


def _check_existing(parts_dir: Path, found: Dict[Any, Optional[Dict[str, Any]]], mine: Any,
                    path_of: Callable[[Any], Path], fp: str, resume: bool, overwrite: bool, what: str) -> None:
    """The parts already on disk against this run (key -> header, None for an unreadable part): --overwrite
    removes ours and any stale ones; otherwise a part of another run (other fingerprint) or, without --resume,
    a finished part of ours is refused in one line."""
    for key, h in sorted(found.items()):
        stale = h is not None and h["fingerprint"] != fp
        if overwrite and (key in mine or stale):
            path_of(key).unlink(missing_ok=True)
        elif stale:
            raise DDKitError(f"{parts_dir} holds parts of a different run ({h['method']}, fingerprint "
                             f"{h['fingerprint']} ≠ {fp}): use another --output, or --overwrite to discard them")
        elif h is not None and key in mine and not resume:
            raise DDKitError(f"{parts_dir} already holds finished {what} of this run: pass --resume to keep "
                             f"them or --overwrite to start over")


def _distill_unit_parts(method: Method, dataset: ImageDataset, teacher: Any, parts_dir: Path, every: List[Unit],
                        units: Optional[Sequence[Unit]], resume: bool, overwrite: bool, dev: torch.device,
                        progress: bool, shard: str, extra_meta: Optional[Dict[str, Any]]) -> List[Unit]:
    """_distill_parts for a method whose run works in batch units: the same rules, one part per unit."""
    mine = sorted(every if units is None else units, key=lambda u: u.key)
    for u in mine:  # temporary files left by a killed writer of one of our units
        for tmp in parts_dir.glob(f".{unit_part_path(parts_dir, u).name}.tmp-*"):
            tmp.unlink(missing_ok=True)
    fp = run_fingerprint(method, dataset, teacher)
    keys = {u.key for u in mine}
    if not overwrite and _units_finished(scan_unit_parts(parts_dir), fp, len(every)):
        return []  # a finished run's parts are reused as they are (#25), as for class parts
    _check_existing(parts_dir, scan_unit_parts(parts_dir), keys,
                    lambda k: unit_part_path(parts_dir, Unit(k[0], (k[1],))), fp, resume, overwrite, "units")
    _other_kind(parts_dir, scan_parts(parts_dir), overwrite, lambda c: part_path(parts_dir, c), "per-class")
    done = {k for k, h in scan_unit_parts(parts_dir).items() if h is not None and h["fingerprint"] == fp}
    todo = [u for u in mine if u.key not in done]
    if not todo:
        return []
    header = {**_part_header(method, dataset, teacher, dev, fp, shard, extra_meta), "units_total": len(every)}
    bar = tqdm(method.run_units(dataset, teacher, units=todo, device=dev, progress=progress), total=len(todo),
               desc=method.name, unit="batch", disable=not progress, dynamic_ncols=True, mininterval=1.0)
    for r in bar:
        write_part(parts_dir, r, header)  # on disk before the next unit starts: a kill loses one unit at most
    return todo


def _other_kind(parts_dir: Path, headers: Dict[Any, Any], overwrite: bool, path: Any, what: str) -> None:
    """Parts of the other kind (class vs batch unit) belong to another run: discarded with --overwrite."""
    if headers and not overwrite:
        raise DDKitError(f"{parts_dir} holds {what} parts of another run: use another --output, or --overwrite "
                         f"to discard them")
    for key in headers:
        path(key).unlink(missing_ok=True)


def _units_finished(headers: Dict[Tuple[int, int], Optional[Dict[str, Any]]], fp: str, total: int) -> bool:
    """Every unit of the run has a complete part of this very run (fingerprint)."""
    good = [h for h in headers.values() if h is not None and h["fingerprint"] == fp]
    return len(good) == total and len(good) == len(headers)


def _complete(parts_dir: Path) -> bool:
    """Whether `parts_dir` holds a complete set of parts (every class, or every unit of the run)."""
    units = scan_unit_parts(parts_dir)
    if units:
        total = next((int(h["units_total"]) for h in units.values() if h is not None), None)
        return total is not None and all(h is not None for h in units.values()) and len(units) == total
    headers = scan_parts(parts_dir)
    k = next((int(h["num_classes"]) for h in headers.values() if h is not None), None)
    return k is not None and all(headers.get(c) is not None for c in range(k))


def _merge_units(parts_dir: Path, headers: Dict[Tuple[int, int], Optional[Dict[str, Any]]]
                 ) -> Tuple[DistilledSet, Dict[str, Any]]:
    """The set of a complete run of unit parts, and the first part's header."""
    if any(h is None for h in headers.values()):
        bad = [f"ipc {i} class {c}" for (i, c), h in headers.items() if h is None][:10]
        raise DDKitError(f"unit part(s) {bad} in {parts_dir} are incomplete or corrupt: rerun with --resume")
    first = headers[min(headers)]
    fps = {h["fingerprint"] for h in headers.values()}
    if len(fps) > 1:
        raise DDKitError(f"{parts_dir} mixes parts of {len(fps)} different runs ({', '.join(sorted(fps))}): "
                         f"delete the stale ones and rerun their units")
    total = int(first["units_total"])
    if len(headers) != total:
        raise DDKitError(f"{total - len(headers)} of {total} units have no part yet: run the remaining shards "
                         f"(with --resume) before merging")
    results = []
    for key in sorted(headers):
        h, t = read_part(unit_part_path(parts_dir, Unit(key[0], (key[1],))))
        soft = {n.split(".", 1)[1]: v for n, v in t.items() if n.startswith("soft.")}
        extras = {n.split(".", 1)[1]: v for n, v in t.items() if n.startswith("extra.")}
        results.append(UnitResult(Unit(*unit_fields(h)), t["images"], soft=soft, extras=extras,
                                  meta=h.get("unit_meta") or {}, set_meta=h.get("set_meta") or {},
                                  seconds=math.nan if h.get("seconds") is None else float(h["seconds"])))
    facts = _merged_facts(first, headers.values(), parts_dir, [r.seconds for r in results])
    return assemble_units(results, first["classes"], first["mean"], first["std"], facts), first


def _merged_facts(first: Dict[str, Any], headers: Any, parts_dir: Path, seconds: Sequence[float]) -> Dict[str, Any]:
    """The merged set's run facts: the first part's, summed compute time, largest peak memory, hosts."""
    hs = list(headers)
    facts = {key: first[key] for key in ("method", "config", "ipc", "seed", "dataset", "split", "device",
                                         "teacher", "teacher_arch", "native") if key in first}
    secs = [x for x in seconds if not math.isnan(x)]
    facts.update(fingerprint=first["fingerprint"], wall_seconds=float(sum(secs)),
                 peak_memory_mb=max(h.get("peak_memory_mb") or 0.0 for h in hs),
                 hosts=sorted({h["host"] for h in hs}), merged_from=str(parts_dir), **first.get("extra_meta", {}))
    return facts


def merge_parts(parts_dir: str | Path, output: str | Path | None = None, overwrite: bool = False,
                pngs: bool = True) -> DistilledSet:
    """Assemble every class's part (class order) into a DistilledSet and save it to `output`.

    output defaults to `parts_dir` without its `.parts` suffix. The set equals what the same method
    returns in one process (`ddkit.methods.base.assemble` builds both); wall_seconds sums the classes'
    compute times and peak_memory_mb is the largest of any class.
    """
    parts_dir = Path(parts_dir)
    if output is None and not parts_dir.name.endswith(".parts"):
        raise DDKitError(f"cannot infer the output of {parts_dir}: pass it explicitly")
    output = Path(output) if output is not None else parts_dir.with_name(parts_dir.name[:-len(".parts")])
    if output.exists() and not overwrite:
        raise FileExistsError(f"output {output} exists; pass --overwrite to replace it")
    unit_headers = scan_unit_parts(parts_dir)
    if unit_headers:
        ds, _ = _merge_units(parts_dir, unit_headers)
        ds.save(output, overwrite=overwrite, pngs=pngs)
        return ds
    headers = scan_parts(parts_dir)
    if not headers:
        raise FileNotFoundError(f"no class parts in {parts_dir}: run `ddkit distill … --shard i/n` (or torchrun) first")
    if any(h is None for h in headers.values()):
        bad = [c for c, h in headers.items() if h is None][:10]
        raise DDKitError(f"part(s) of class {bad} in {parts_dir} are incomplete or corrupt: rerun with --resume")
    first = headers[min(headers)]
    fps = {h["fingerprint"] for h in headers.values() if h is not None}
    if len(fps) > 1:
        raise DDKitError(f"{parts_dir} mixes parts of {len(fps)} different runs ({', '.join(sorted(fps))}): "
                         f"delete the stale ones and rerun their classes")
    k = int(first["num_classes"])
    missing = sorted(set(range(k)) - set(headers))
    if missing:
        raise DDKitError(f"{len(missing)} of {k} classes have no part yet (e.g. {missing[:10]}): run the remaining "
                         f"shards (with --resume) before merging")
    results = []
    for c in range(k):
        h, t = read_part(part_path(parts_dir, c))
        soft = {n.split(".", 1)[1]: v for n, v in t.items() if n.startswith("soft.")}
        extras = {n.split(".", 1)[1]: v for n, v in t.items() if n.startswith("extra.")}
        whole = {n.split(".", 1)[1]: v for n, v in t.items() if n.startswith("set.")}
        results.append(ClassResult(c, t["images"], soft=soft, extras=extras, meta=h.get("class_meta") or {},
                                   set_meta=h.get("set_meta") or {}, set_tensors=whole, labels=t["labels"],
                                   seconds=math.nan if h.get("seconds") is None else float(h["seconds"])))
    facts = _merged_facts(first, headers.values(), parts_dir, [r.seconds for r in results])
    ds = assemble(results, first["classes"], first["mean"], first["std"], facts)
    ds.save(output, overwrite=overwrite, pngs=pngs)
    return ds


def _lock_owner_alive(lock: Path) -> bool:
    """Whether the process named in a merge lock (pid@host) still runs; a lock of another host is trusted."""
    try:
        pid, host = lock.read_text().strip().split("@", 1)
    except (OSError, ValueError):
        return False  # empty or unreadable: its writer died between create and write
    if host != platform.node():
        return True
    return pid.isdigit() and pid_alive(int(pid))


def _try_merge_once(parts_dir: Path, output: Path, overwrite: bool) -> Optional[DistilledSet]:
    """Merge when every class is present; a lock file (pid@host) lets only one of several finishing shards
    do it, and a lock whose owner is gone (killed mid-merge) is broken, so a resumed run still merges."""
    if not _complete(parts_dir):
        return None
    lock = parts_dir / ".merge.lock"
    for _ in range(2):
        try:
            fd = os.open(str(lock), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if _lock_owner_alive(lock):
                return None  # another shard is merging right now
            lock.unlink(missing_ok=True)  # stale: its owner was killed during the merge
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}@{platform.node()}")
        break
    else:
        return None
    try:
        if output.exists() and not overwrite:
            return None  # another shard already merged
        return merge_parts(parts_dir, output, overwrite=overwrite)
    finally:
        lock.unlink(missing_ok=True)


def distill_sharded(method: Method, dataset: ImageDataset, teacher: Any, output: str | Path, *,
                    shard: str | Tuple[int, int] | None = None, resume: bool = False, overwrite: bool = False,
                    device: str | torch.device | None = None, progress: bool = True, merge: bool = True,
                    extra_meta: Optional[Dict[str, Any]] = None) -> Optional[DistilledSet]:
    """Run this process's share of the classes into `<output>.parts/`, then merge when complete.

    Under torchrun (process group joined at the entry point, `ddkit.ranks.process_group()`) every rank
    takes classes c % WORLD_SIZE == RANK and rank 0 merges after a barrier. With `shard` ('i/n' or
    (i, n)) this process takes shard i and the shard that completes the set merges (or `ddkit merge`
    later). Without either, one process does every class — still one part per class on disk, so a
    killed run resumes with `resume=True`. Returns the merged set where this process merged, else None.
    extra_meta: JSON-safe facts added to the merged meta (e.g. {"dataset_root": …}).
    """
    env = dist_env()
    multi = env.torchrun and env.world > 1
    if shard is not None and multi:
        raise DDKitError("--shard and torchrun both split the classes: use one of them")
    if multi and not group_ready():
        raise DDKitError("launched by torchrun but no process group is joined: wrap the call in "
                         "`with ddkit.ranks.process_group():` (the CLI does)")
    out = Path(output)
    if out.exists() and not overwrite:
        raise FileExistsError(f"output {out} exists; pass --overwrite to replace it")
    rank, world = (env.rank, env.world) if multi else (0, 1)
    if shard is not None:
        rank, world = parse_shard(shard) if isinstance(shard, str) else (int(shard[0]), int(shard[1]))
    dev = device if isinstance(device, torch.device) else get_device(device)
    if dev.type == "cuda" and env.torchrun and dev.index is None:
        dev = rank_cuda_device()  # one GPU per local rank (LOCAL_RANK mod the GPUs this process sees)
    parts = parts_dir_for(out)
    every = method.units(dataset)
    classes = shard_classes(dataset.num_classes, rank, world) if every is None else None
    units = shard_units(every, rank, world) if every is not None else None
    distill_parts(method, dataset, teacher, parts, classes, resume=resume, overwrite=overwrite, device=dev,
                  progress=progress and rank == 0, shard=f"{rank}/{world}", extra_meta=extra_meta, units=units)
    if multi:
        barrier()  # every rank's parts are on disk
        result = merge_parts(parts, out, overwrite=overwrite) if merge and rank == 0 else None
        barrier()  # nobody leaves before the merged output exists
        return result
    return _try_merge_once(parts, out, overwrite) if merge else None
