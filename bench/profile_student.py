"""Where a student step's cycles go on this CPU: fp32 eager (`--exact`) against the evaluator's default path.

One `StudentTrainer.step()` of `ddkit evaluate` (built by bench/student_speed.py's `build`, the library's code
path) on a synthetic CIFAR-shape IPC-10 set (random pixels and weights: speed only):
  * HL, `dc` recipe: ConvNet-3 + DSA single mode (one op per batch: scale/rotate run affine_grid+grid_sample)
    + SGD, batch 100 (DD-Ranking's protocol);
  * SL+KD, `cim` recipe: FactorCrop(2) + the DSA chain, the online ConvNet-3 teacher, MSE, AdamW, batch 50.
Variants: `fp32` (the exact path) and the path `evaluate/fastpath.py` picks on this machine for a full-length
evaluation (on an AVX512-BF16/AMX CPU with g++: `bf16_compile`), plus `bf16` eager to split the two levers.

Reported per regime and variant:
  * `first_steps_incl_build`: each variant's build + first two steps; for the compiled one with an EMPTY
    inductor cache (a fresh TORCHINDUCTOR_CACHE_DIR, compile threads = 1), CPU time including the g++
    child processes (os.times),
    then the same with the cache warm (a second student in the same process: what the next seed pays);
  * interleaved step times (median over rounds; wall and process CPU time, one thread);
  * a torch.profiler run: time per stage (the `eval.*` labels: batch, augment, targets = the teacher,
    student_forward, loss, backward, optimizer), self CPU time per op family (convolutions, norms,
    DSA affine_grid/grid_sample, pooling/activations, inductor's fused kernels, optimizer ops, other), and the
    share of the step's wall time that no op accounts for (Python and dispatch overhead, profiler included).
Machine: CPU model and flags through bench/demo_time.py's lscpu reader.

    OMP_NUM_THREADS=1 nice -n 5 python bench/profile_student.py --regime hl --output /tmp/p_hl.json
    OMP_NUM_THREADS=1 nice -n 5 python bench/profile_student.py --regime slkd --output /tmp/p_slkd.json
    python bench/profile_student.py --merge /tmp/p_hl.json /tmp/p_slkd.json \
        --output bench/results/profile_step_<cpu>.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional

# An empty inductor cache for the first-compile figure: set before torch (and inductor's config) is imported.
if "--warm-cache" not in sys.argv and "--merge" not in sys.argv:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="ddkit_inductor_cold_")
    os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = "1"

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_time import lscpu  # noqa: E402  (one lscpu reader for every bench script)
from student_speed import build  # noqa: E402  (the trainer exactly as evaluate() builds it, per variant)

from ddkit.evaluate import EvalConfig, fastpath  # noqa: E402
from ddkit.utils import git_revision, machine_info  # noqa: E402

RECIPES = {"hl": "dc", "slkd": "cim"}
#: op families by substring of the profiler's op name, first match wins
FAMILIES = (
    ("convolution (oneDNN)", ("conv", "mkldnn_convolution", "_convolution_pointwise")),
    ("norm (GroupNorm/instance)", ("group_norm", "instance_norm", "batch_norm", "layer_norm")),
    ("DSA affine_grid + grid_sample", ("grid_sampler", "affine_grid")),
    ("inductor fused kernels", ("cpp_fused", "compiledfxgraph", "compiledfunction", "torch-compiled region")),
    ("pooling + activation", ("avg_pool", "max_pool", "relu", "threshold")),
    ("optimizer math", ("_foreach", "addcmul", "addcdiv", "lerp", "sgd", "adam")),
    ("matmul / linear", ("addmm", "mm", "linear", "bmm")),
    ("copies, casts, layout", ("copy_", "to_copy", "_to_copy", "contiguous", "clone", "cat", "index", "gather")),
)
STAGES = ("eval.batch", "eval.augment", "eval.targets", "eval.student_forward", "eval.loss", "eval.backward",
          "eval.optimizer")


def family(name: str) -> str:
    low = name.lower()
    return next((f for f, keys in FAMILIES if any(k in low for k in keys)), "other ops")


def default_variant() -> tuple:
    """The variant fastpath.choose picks here for a full-length evaluation, and its reason line."""
    saved = os.environ.pop(fastpath.EXACT_ENV, None)
    try:
        path = fastpath.choose(EvalConfig(), torch.device("cpu"), 10 * fastpath.COMPILE_MIN_IMAGES)
    finally:
        if saved is not None:
            os.environ[fastpath.EXACT_ENV] = saved
    name = {(True, True): "bf16_compile", (True, False): "bf16", (False, True): "compile"}.get(
        (path.bf16, path.compile), "fp32")
    return name, path.why


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (inductor runs g++ as child processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(fn: Callable[[], object]) -> tuple:
    t0, c0 = time.perf_counter(), _cpu()
    fn()
    return time.perf_counter() - t0, _cpu() - c0


def profiled(step: Callable[[], object], steps: int, batch: int) -> dict:
    """Stages, op families and the unaccounted share of `steps` profiled steps (already warm)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    ms = 1e3 / steps
    stages = {e.key: e.cpu_time_total / 1e3 / steps for e in events if e.key in STAGES}
    fams: Dict[str, float] = {}
    ops = [e for e in events if not e.key.startswith(("eval.", "ProfilerStep"))]
    for e in ops:
        fams[family(e.key)] = fams.get(family(e.key), 0.0) + e.self_cpu_time_total / 1e3 / steps
    self_total = sum(fams.values())
    wall_ms = wall * ms
    top = sorted(ops, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    return {"profiled_steps": steps, "wall_ms_per_step": wall_ms, "images_per_s_under_profiler": batch / wall * steps,
            "stages_ms_per_step": stages,
            "op_families_self_ms_per_step": dict(sorted(fams.items(), key=lambda kv: -kv[1])),
            "op_families_pct_of_wall": {k: 100 * v / wall_ms for k, v in sorted(fams.items(), key=lambda kv: -kv[1])},
            "unaccounted_ms_per_step": wall_ms - self_total,
            "unaccounted_pct_of_wall": 100 * (wall_ms - self_total) / wall_ms,
            "unaccounted_what": "wall time no op's self time covers: Python between ops, dispatch, profiler overhead",
            "top_ops": [{"name": e.key, "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
                         "calls_per_step": e.count / steps, "family": family(e.key)} for e in top]}


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    fast, why = default_variant()
    names = list(dict.fromkeys(["fp32", "bf16", fast] if fast != "fp32" else ["fp32"]))
    ns = SimpleNamespace(num_classes=10, recipe=RECIPES[args.regime], regime=args.regime)
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(10 * args.ipc, 3, 32, 32, generator=g), torch.arange(10 * args.ipc) % 10
    trainers, first = {}, {}
    for v in names:
        holder = {}
        wall, cpu = timed(lambda: holder.update(t=build(v, ns, images, labels)) or [holder["t"].step()
                                                                                      for _ in range(2)])
        trainers[v] = holder["t"]
        first[v] = {"wall_s": wall, "cpu_s": cpu}
        if "compile" in v:  # a second student: dynamo traces again, inductor's kernels come from the cache
            w2, c2 = timed(lambda: [build(v, ns, images, labels).step() for _ in range(2)])
            first[v].update(warm_cache_wall_s=w2, warm_cache_cpu_s=c2)
    batch = trainers["fp32"].plan.batch_size
    wall: Dict[str, List[float]] = {v: [] for v in names}
    cpu: Dict[str, List[float]] = {v: [] for v in names}
    for _ in range(args.rounds):
        for v in names:
            w, c = timed(lambda: [trainers[v].step() for _ in range(args.steps)])
            wall[v].append(1e3 * w / args.steps)
            cpu[v].append(1e3 * c / args.steps)
    out = {"regime": args.regime, "recipe": RECIPES[args.regime], "ipc": args.ipc, "batch": batch,
           "threads": args.threads, "default_path": {"variant": fast, "why": why},
           "first_steps_incl_build": first, "variants": {}}
    for v in names:
        ratio = [b / a for a, b in zip(cpu[v], cpu["fp32"])]
        out["variants"][v] = {
            "ms_per_step_median": statistics.median(wall[v]), "cpu_ms_per_step_median": statistics.median(cpu[v]),
            "cpu_ms_per_step_rounds": cpu[v], "images_per_cpu_s": 1e3 * batch / statistics.median(cpu[v]),
            "speedup_vs_fp32_cpu_time_median": statistics.median(ratio),
            "speedup_vs_fp32_cpu_time_range": [min(ratio), max(ratio)],
            "profile": profiled(trainers[v].step, args.profile_steps, batch)}
        print(f"{args.regime} {v:13s} {statistics.median(cpu[v]):7.1f} CPU ms/step  x{statistics.median(ratio):.2f} "
              f"vs fp32  first steps {first[v]['wall_s']:.1f} s wall / {first[v]['cpu_s']:.1f} CPU s", flush=True)
    if fast != "fp32":  # images after which the compile pays for itself, against the eager variant it replaces
        eager = "bf16" if "bf16" in fast else "fp32"
        saved_ms = (out["variants"][eager]["cpu_ms_per_step_median"]
                    - out["variants"][fast]["cpu_ms_per_step_median"]) / batch
        cost_s = first[fast]["cpu_s"] - first[eager]["cpu_s"]
        out["compile_break_even"] = {
            "eager_variant": eager, "cold_compile_extra_cpu_s": cost_s, "cpu_ms_saved_per_image": saved_ms,
            "images_to_break_even": 1e3 * cost_s / saved_ms if saved_ms > 0 else None,
            "library_threshold_images": fastpath.COMPILE_MIN_IMAGES}
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--regime", default="hl", choices=("hl", "slkd"))
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--steps", type=int, default=4, help="timed steps per variant per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--profile-steps", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warm-cache", action="store_true", help="keep inductor's usual cache (first compile not cold)")
    p.add_argument("--merge", nargs="+", default=None, help="combine per-regime JSONs into one file")
    p.add_argument("--output", required=True)
    args = p.parse_args(argv)
    cmd = " ".join(["python", "bench/profile_student.py"] + list(argv if argv is not None else sys.argv[1:]))
    if args.merge:
        parts = [json.loads(Path(f).read_text()) for f in args.merge]
        res = {**{k: v for k, v in parts[0].items() if k != "regimes"}, "merged_by": cmd,
               "regimes": {r: x for part in parts for r, x in part["regimes"].items()}}
    else:
        res = {"command": cmd, "git_revision": git_revision(),
               "machine": {**machine_info(), "lscpu": lscpu(), "nproc": os.cpu_count(),
                           "load_average_at_start": os.getloadavg()},
               "data": "synthetic random pixels and weights (speed only)", "regimes": {args.regime: run(args)}}
        res["machine"]["load_average_at_end"] = os.getloadavg()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(res, indent=1, default=str))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
