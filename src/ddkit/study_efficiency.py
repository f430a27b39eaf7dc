"""`ddkit study efficiency`: what it costs each method to make 100 images, per observer network (LIC Table 3).

    from ddkit.study_efficiency import EfficiencyConfig, run_efficiency
    run_efficiency(train, EfficiencyConfig(methods=("lic", "sre2l"), observers=("convnet-d3",), repeats=3))

For every (method, observer) the method makes `images` images (ipc = ⌈images / classes⌉, 10 on CIFAR-10 for
100) through the one method driver (`create_method(...)(train, teacher)`, nothing re-implemented), and the probe
records the wall time, the CPU time of the process (all its threads: `time.process_time`), the throughput in
images/s and the peak memory: on CPU the peak resident set size (VmHWM, reset before each run through
/proc/self/clear_refs, so each row has its own peak; where the kernel refuses the reset it is the process's
lifetime peak, marked `hwm_reset=false`) and the rise above the RSS before the run; on CUDA
`torch.cuda.max_memory_allocated` after a reset. The "batch" is the images made: 100 at the default.

The observer is the network the method looks through: the teacher of teacher-based methods (lic, rded, sre2l,
…; an UNTRAINED net of the observer architecture unless `teachers` maps it to a checkpoint: a fixed number of
iterations costs the same whatever the weights), the `model` option of the matching methods (dm, dc, mtt; mtt
also needs an expert buffer of that architecture, `buffers`). A method that needs BatchNorm statistics (sre2l)
on an observer without them gets its `-bn` twin (convnet-d3 → convnet-d3-bn), recorded in the row. Methods that
use neither make one row with observer "-".

Repetitions are interleaved (rep 1 of every cell, then rep 2, …) so a load change on a shared machine spreads
over the cells instead of hitting one; each measurement is appended to results.csv at once (a rerun skips
those done) and runs.jsonl records the machine. Iterations may be cut for CPU (`method_overrides`, e.g.
{"sre2l": {"iterations": 20}}): the row records the iterations option used and the method's default, and the
cost is the cost at the iterations used (no extrapolation: some methods count iterations inclusively).

A cell that fails (an error of the method, a missing expert buffer, an observer without a BatchNorm twin) does
not stop the study: it is recorded as a row with status "failed" and the one-line reason, the next cell runs,
and the report shows it as failed. A rerun measures the failed cells again (the fixed ones get their numbers).
"""
from __future__ import annotations

import dataclasses
import gc
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from tqdm.auto import tqdm

from ddkit.config import build, field, option_names, to_dict
from ddkit.methods import create_method, method_spec
from ddkit.study_cells import CellTable, log_invocation, pin
from ddkit.utils import DDKitError, get_device

COLUMNS = ("method", "observer", "rep", "observer_net", "images", "ipc", "wall_s", "cpu_s", "images_per_s",
           "wall_s_per_100", "cpu_s_per_100", "peak_rss_mb", "rss_before_mb", "peak_increase_mb", "cuda_peak_mb",
           "hwm_reset", "iterations", "default_iterations", "options", "device", "status", "error")
KEY = ("method", "observer", "rep")


@dataclass(frozen=True)
class EfficiencyConfig:
    """The grid of `ddkit study efficiency` (one flag per field)."""

    methods: Tuple[str, ...] = field(("lic", "rded", "sre2l", "dm", "dc", "mtt"), "methods timed")
    observers: Tuple[str, ...] = field(("convnet-d3", "resnet18_modified"),
                                       "observer architectures: the teacher (lic, rded, sre2l) or the matching "
                                       "net (dm, dc, mtt) each method looks through")
    images: int = field(100, "images to make per measurement (ipc = ceil(images / classes)); the 'batch'")
    repeats: int = field(3, "measurements per (method, observer), interleaved over the cells")
    seed: int = field(0, "method seed")
    output_dir: str = field("runs/efficiency", "folder of results.csv, report.md, report.html (rerun to resume)")


# ---------------------------------------------------------------------------------------------------- probe

def _status_mb(key: str) -> float:
    """A field of /proc/self/status in MiB (NaN where there is no procfs)."""
    try:
        m = re.search(rf"^{key}:\s+(\d+)\s+kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return float("nan")
    return int(m.group(1)) / 1024.0 if m else float("nan")


def _reset_hwm() -> bool:
    """Reset the peak-RSS mark (VmHWM) of this process; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def probe(fn: Callable[[], Any], device: Any = "cpu") -> Dict[str, Any]:
    """Run `fn()` once and measure it: wall and process-CPU seconds, peak RSS (and its rise), CUDA peak.

    Returns {"result", "wall_s", "cpu_s", "peak_rss_mb", "rss_before_mb", "peak_increase_mb", "cuda_peak_mb",
    "hwm_reset"}; peak_increase_mb is what `fn` added on top of the memory held before it ran.
    """
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    gc.collect()
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    reset = _reset_hwm()
    before = _status_mb("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    if cuda:
        torch.cuda.synchronize(dev)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if reset:
        peak = _status_mb("VmHWM")
    else:  # no reset: the lifetime peak (ru_maxrss), an upper bound of this run's
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"result": result, "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak, "rss_before_mb": before,
            "peak_increase_mb": max(0.0, peak - before),
            "cuda_peak_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else float("nan"),
            "hwm_reset": reset}


# ---------------------------------------------------------------------------------------------- observers

def _has_bn(arch: str, train: Any) -> bool:
    from ddkit.models import create_model

    net = create_model(arch, num_classes=train.num_classes, image_size=train.image_size, channels=train.channels)
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())


def bn_twin(arch: str, train: Any) -> str:
    """`arch` when it has BatchNorm layers, else its `-bn` variant (convnet-d3 → convnet-d3-bn); DDKitError."""
    from ddkit.models import resolve_model_name

    if _has_bn(arch, train):
        return arch
    twin = resolve_model_name(arch) + "-bn"
    try:
        resolve_model_name(twin)
    except Exception:  # noqa: BLE001 - an unknown name: no twin
        raise DDKitError(f"observer {arch!r} has no BatchNorm layers (needed by BN-matching methods) and no "
                         f"'{twin}' twin; pick a BN observer") from None
    return twin


def untrained_teacher(arch: str, train: Any, device: Any) -> Any:
    """A Teacher of `arch` with fresh weights: what timing needs (the cost does not depend on the weights)."""
    from ddkit.models import create_model
    from ddkit.teachers import Teacher

    torch.manual_seed(0)
    net = create_model(arch, num_classes=train.num_classes, image_size=train.image_size, channels=train.channels)
    return Teacher(net.to(device), arch, train.classes, train.mean, train.std, train.image_size, train.channels,
                   meta={"weights": "untrained (timing only)"})


def observer_setup(method: str, observer: str, train: Any, buffers: Mapping[str, str]
                   ) -> Tuple[str, Optional[str], Dict[str, Any]]:
    """(row observer, teacher arch or None, method options) of `method` looking through `observer`."""
    spec = method_spec(method)
    opts = set(option_names(spec.config))
    if spec.needs_teacher:
        arch = bn_twin(observer, train) if "bn-teacher" in spec.needs else observer
        return observer, arch, {}
    kw: Dict[str, Any] = {}
    if "model" in opts:
        kw["model"] = observer
    if "expert-buffer" in spec.needs:
        if observer not in buffers:
            raise DDKitError(f"{spec.name} on observer {observer!r} needs an expert buffer of that architecture: "
                             f"pass --buffers {observer}=BUF (`ddkit experts train --arch {observer}`)")
        kw["buffer"] = buffers[observer]
    return (observer if kw else "-"), None, kw


def failure_reason(e: BaseException) -> str:
    """One line for a failed cell: a DDKitError's message, else the exception's type and first line."""
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else ""
    return text if isinstance(e, DDKitError) else f"{type(e).__name__}: {text}".rstrip(": ")


def _iterations(spec: Any, kw: Mapping[str, Any]) -> Tuple[Any, Any]:
    """(iterations used, the method's default iterations), or ("", "") for methods without the option."""
    if "iterations" not in option_names(spec.config):
        return "", ""
    used = to_dict(build(spec.config, dict(kw))).get("iterations")
    default = to_dict(build(spec.config, {k: v for k, v in kw.items() if k in ("buffer", "model", "ipc")})
                      ).get("iterations")
    # None: the method's preset decides (e.g. dm/dc/mtt "paper": the official count for the IPC)
    return ("preset" if used is None else used), ("preset" if default is None else default)


def _measure(name: str, arch: Optional[str], kw: Mapping[str, Any], train: Any, ipc: int, seed: int,
             dev: Any) -> Dict[str, Any]:
    """One measurement of `name` making ipc × classes images through observer `arch`: the row's numbers."""
    teacher = untrained_teacher(arch, train, dev) if arch else None
    method = create_method(name, **{"ipc": ipc, "seed": seed, **kw})
    m = probe(lambda: method(train, teacher, device=dev, progress=False), dev)
    n = len(m.pop("result"))
    used, default = _iterations(method_spec(name), {"ipc": ipc, **kw})
    return {"images": n, "images_per_s": n / m["wall_s"], "wall_s_per_100": m["wall_s"] * 100.0 / n,
            "cpu_s_per_100": m["cpu_s"] * 100.0 / n, "iterations": used, "default_iterations": default, **m}


def run_efficiency(train: Any, config: Optional[EfficiencyConfig] = None, *, device: Any = None,
                   progress: bool = True, method_overrides: Optional[Mapping[str, Mapping[str, Any]]] = None,
                   buffers: Optional[Mapping[str, str]] = None, **fields: Any) -> List[Dict[str, Any]]:
    """Measure every missing (method, observer, rep), append each to results.csv, write the report; all rows."""
    from ddkit.studies_report import write_efficiency_report

    cfg = dataclasses.replace(config or EfficiencyConfig(), **fields)
    if cfg.images < 1 or cfg.repeats < 1 or not cfg.methods or not cfg.observers:
        raise DDKitError("an efficiency study needs methods, observers, images ≥ 1 and repeats ≥ 1")
    dev = device if hasattr(device, "type") else get_device(device)
    overrides = {method_spec(k).name: dict(v) for k, v in (method_overrides or {}).items()}
    buffers = dict(buffers or {})
    ipc = max(1, math.ceil(cfg.images / train.num_classes))
    # Every (method, observer) is resolved before anything runs: an unknown method name fails first; a cell that
    # cannot be set up (no expert buffer, no BatchNorm twin) becomes a failed row, and the others still run.
    cells: List[Tuple[str, str, Optional[str], Dict[str, Any], Optional[str]]] = []
    for m in cfg.methods:
        name = method_spec(m).name
        seen = set()
        for o in cfg.observers:
            try:
                row_obs, arch, kw = observer_setup(name, o, train, buffers)
                fail = None
            except DDKitError as e:
                row_obs, arch, kw, fail = o, None, {}, failure_reason(e)
            if row_obs not in seen:
                seen.add(row_obs)
                cells.append((name, row_obs, arch, {**kw, **overrides.get(name, {})}, fail))
    out = Path(cfg.output_dir)
    proto = {"dataset": train.name, "train_size": len(train), "images": cfg.images, "ipc": ipc, "seed": cfg.seed,
             "device": dev.type, "method_overrides": overrides, "buffers": buffers}
    pin(out, proto, {"train": {"name": train.name, "classes": list(train.classes), "size": len(train),
                               "shape": [train.channels, train.image_size]}})
    table = CellTable(out / "results.csv", COLUMNS, KEY)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    done, failed = 0, {}  # failed: (method, observer) → the reason, in this run
    bar = tqdm(total=len(cells) * cfg.repeats, desc="efficiency", unit="run", disable=not progress, leave=True)
    for rep in range(1, cfg.repeats + 1):  # interleaved: rep 1 of every cell, then rep 2, ...
        for name, obs, arch, kw, fail in cells:
            bar.update(1)
            prev = table.cells().get(table.key({"method": name, "observer": obs, "rep": rep}))
            if prev is not None and prev.get("status") != "failed":  # a failed cell is measured again
                continue
            bar.set_postfix_str(f"{name} / {obs} rep {rep}")
            base = {"method": name, "observer": obs, "rep": rep, "observer_net": arch or kw.get("model", ""),
                    "ipc": ipc, "device": str(dev)}
            fail = fail or failed.get((name, obs))  # a cell that failed at rep 1 is not retried at rep 2
            if fail is None:
                try:
                    row = _measure(name, arch, kw, train, ipc, cfg.seed, dev)
                except Exception as e:  # noqa: BLE001 - one cell's failure is recorded; the study goes on
                    fail = failure_reason(e)
                    failed[(name, obs)] = fail
            if fail is not None:
                tqdm.write(f"efficiency: {name} / {obs} rep {rep} failed: {fail}")
                table.append({**base, "status": "failed", "error": fail})
                continue
            table.append({**base, **row, "status": "ok"})
            done += 1
    bar.close()
    write_efficiency_report(out)
    log_invocation(out, started, dev, measured=done)
    return table.rows()
