"""Seconds per distillation iteration of ddkit's DM (and DC), before/after a change, and the official main_DM.py.

Every variant runs in its own child process, in interleaved rounds (before, after, official, before, ...),
so a loaded machine slows all of them alike; the results are meant as RATIOS. An iteration is timed the
same way in every variant: the time between two consecutive fresh-network constructions (ddkit's
`fresh_net`, the official `utils.get_network`; each is called once per iteration), first interval dropped
(warm-up, and the official code's iteration-0 visualisation). ddkit's DM runs class by class, so its
per-class interval is multiplied by the number of classes to compare with the official iteration over
all classes (the same work: `batch_real` real and `ipc` synthetic images per class through a fresh net).

Per interval: wall seconds and the process's user and system CPU seconds (os.times). Under load, wall
mostly measures the machine's queue; user+sys is the work done.

"before" is ddkit at `--old-rev`, checked out as a detached git worktree under --work-dir. `--variant-opts
NAME:key=value,...` (repeatable) adds variants of this revision with method options, e.g. `exact:exact=true`
and `compiled:compile=true` (DM's compute path, methods/fast_embed.py); without it there is one, "after".
`--profile` adds, after the timed rounds, one torch.profiler child per ddkit variant (iteration 2 to the end):
the top ops by self CPU time, kept apart from the timing. The official
code (`--official`, a DatasetCondensation checkout) is run unmodified with runpy; only two things are
swapped in: torchvision's CIFAR10 class is replaced by the same CIFAR-10 (JPEG q75) tensors ddkit reads
(normalised by the official transform's own Normalize), and utils.get_network is wrapped to take the
timestamps.

Example (bench/results/matching_speed_cpu.json):
    OMP_NUM_THREADS=1 python bench/matching_speed.py --dataset tar:/work/shared/data/cifar10-jpeg75.tar.gz \
        --cache-dir /work/runs/cache --old-rev 5ed6a27 --official /work/peers/DatasetCondensation \
        --output bench/results/matching_speed_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]


class Stamps:
    """Timestamps (wall, user, sys) at each call of a wrapped function (and an optional hook per call)."""

    def __init__(self, hook: Callable[[], None] | None = None) -> None:
        self.t: List[tuple] = []
        self.hook = hook

    def wrap(self, fn: Callable) -> Callable:
        def inner(*a: Any, **k: Any) -> Any:
            tm = os.times()
            self.t.append((time.perf_counter(), tm.user, tm.system))
            if self.hook is not None:
                self.hook()
            return fn(*a, **k)
        return inner

    def intervals(self, scale: float = 1.0) -> Dict[str, Any]:
        d = [[(b[i] - a[i]) * scale for i in range(3)] for a, b in zip(self.t, self.t[1:])][1:]
        if not d:
            raise SystemExit("too few iterations to time (need at least 2 intervals)")
        med = lambda i: statistics.median(x[i] for x in d)  # noqa: E731
        return {"intervals": len(d), "wall_s": med(0), "user_s": med(1), "sys_s": med(2),
                "cpu_s": statistics.median(x[1] + x[2] for x in d)}


def child_ddkit(a: argparse.Namespace) -> Dict[str, Any]:
    import torch

    from ddkit.data import create_dataset
    from ddkit.methods import create_method
    method = "dsa" if a.method == "dc" else a.method  # DC with DSA: DSA's siamese matching augmentation
    mod = __import__(f"ddkit.methods.{a.method}", fromlist=["fresh_net"])
    prof = None
    if a.profile:  # from iteration 2 on: past the warm-up and any compile
        from torch.profiler import ProfilerActivity, profile
        prof = profile(activities=[ProfilerActivity.CPU])
        calls = [0]

        def start_at_2() -> None:
            calls[0] += 1
            if calls[0] == 3:
                prof.start()
    st = Stamps(start_at_2 if prof is not None else None)
    mod.fresh_net = st.wrap(mod.fresh_net)
    data = create_dataset(a.dataset, split="train", cache_dir=a.cache_dir)
    scale = 1
    if a.method == "dm":  # one class; DM is class-separable, so ×classes is the official iteration's work
        scale = data.num_classes
        classes = data.classes
        data = data.subset(torch.nonzero(data.labels == 0).flatten())
        data.classes = classes[:1]
    ipc = a.ipc if a.method == "dm" else a.dc_ipc
    opts = {"ipc": ipc, "iterations": a.iterations, "batch_real": a.batch_real, **json.loads(a.opts or "{}")}
    create_method(method, **opts)(data, None, device=torch.device("cpu"), progress=False)
    if prof is not None:
        prof.stop()
        ev = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        tot = sum(e.self_cpu_time_total for e in ev) or 1.0
        top = [{"op": e.key, "self_cpu_share": round(e.self_cpu_time_total / tot, 4), "calls": e.count} for e in ev[:8]]
        return {"variant": a.variant, "method": a.method, "profile_top_ops": top}
    return {"variant": a.variant, "method": a.method, "ipc": ipc, **st.intervals(scale)}


def child_official(a: argparse.Namespace) -> Dict[str, Any]:
    import torch
    import torchvision

    from ddkit.data import create_dataset
    sets = {s: create_dataset(a.dataset, split=s, cache_dir=a.cache_dir) for s in ("train", "test")}

    class HandOver(torch.utils.data.Dataset):
        """CIFAR10's interface over ddkit's tensors: (transform's normalised image, label)."""

        def __init__(self, root: str, train: bool = True, download: bool = False, transform: Any = None) -> None:
            ds = sets["train" if train else "test"]
            norm = transform.transforms[-1]  # the official Normalize, applied once to the whole split
            self.x = norm(ds.images.float() / 255.0)
            self.y = ds.labels.tolist()
            self.classes = list(ds.classes)

        def __len__(self) -> int:
            return len(self.y)

        def __getitem__(self, i: int) -> Any:
            return self.x[i], self.y[i]

    torchvision.datasets.CIFAR10 = HandOver
    sys.path.insert(0, a.official)
    import utils  # the official utils.py

    st = Stamps()
    utils.get_network = st.wrap(utils.get_network)
    tmp = tempfile.mkdtemp(prefix="official_dm_")
    sys.argv = ["main_DM.py", "--dataset", "CIFAR10", "--ipc", str(a.ipc), "--Iteration", str(a.iterations),
                "--num_exp", "1", "--num_eval", "0", "--eval_mode", "S", "--batch_real", str(a.batch_real),
                "--init", "real", "--data_path", tmp, "--save_path", tmp]
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        runpy.run_path(os.path.join(a.official, "main_DM.py"), run_name="__main__")
    finally:
        os.chdir(cwd)
    return {"variant": a.variant, "method": "dm", **st.intervals()}


def parse_variant(text: str) -> Tuple[str, Dict[str, Any]]:
    """'compiled:compile=true,cpu_amp=false' -> ('compiled', {'compile': True, 'cpu_amp': False})."""
    name, _, rest = text.partition(":")
    opts: Dict[str, Any] = {}
    for kv in filter(None, rest.split(",")):
        k, _, v = kv.partition("=")
        opts[k] = {"true": True, "false": False}.get(v.lower(), v)
    return name, opts


def run_child(variant: str, method: str, src: str, a: argparse.Namespace, opts: Dict[str, Any] | None = None,
              profile: bool = False) -> Dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=src)
    cmd = [sys.executable, __file__, "--child", "official" if variant == "official" else "ddkit"] + \
          (["--profile"] if profile else []) + [
           "--variant", variant, "--opts", json.dumps(opts or {}), "--method", method, "--dataset", a.dataset,
           "--cache-dir", a.cache_dir, "--ipc", str(a.ipc), "--dc-ipc", str(a.dc_ipc), "--iterations", str(a.iterations),
           "--batch-real", str(a.batch_real), "--official", a.official or ""]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{variant} {method} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> Dict[str, Any]:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    keep = {k.strip(): v.strip() for k, v in (ln.split(":", 1) for ln in lscpu.splitlines() if ":" in ln)}
    flags = keep.get("Flags", "").split()
    return {"cpu_model": keep.get("Model name"), "cpus": os.cpu_count(),
            "isa": [f for f in flags if f.startswith(("avx", "amx", "fma"))],
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "emulation": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--cache-dir", default="runs/cache")
    p.add_argument("--old-rev", default="", help="ddkit revision for 'before' (empty: no before variant)")
    p.add_argument("--official", default="", help="DatasetCondensation checkout (empty: skip the official code)")
    p.add_argument("--methods", default="dm", help="dm and/or dc (DC with DSA, all classes)")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--dc-ipc", type=int, default=1, help="IPC of the DC runs (all classes at once)")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--batch-real", type=int, default=256)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--work-dir", default="/tmp/ddkit_matching_speed")
    p.add_argument("--output", default="")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    p.add_argument("--method", default="dm", help=argparse.SUPPRESS)
    p.add_argument("--variant", default="", help=argparse.SUPPRESS)
    p.add_argument("--opts", default="", help=argparse.SUPPRESS)
    p.add_argument("--profile", action="store_true",
                   help="after the timed rounds, one torch.profiler run per ddkit variant: top ops by self CPU")
    p.add_argument("--variant-opts", action="append", default=[],
                   help="NAME:key=value,... a variant of this revision with method options (repeatable)")
    a = p.parse_args()
    if a.child:
        res = child_official(a) if a.child == "official" else child_ddkit(a)
        print(json.dumps(res))
        return 0
    mine = [parse_variant(v) for v in a.variant_opts] or [("after", {})]
    variants = [(name, str(ROOT / "src"), opts) for name, opts in mine]
    if a.old_rev:
        old = Path(a.work_dir) / f"ddkit-{a.old_rev}"
        if not old.exists():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), a.old_rev], check=True)
        variants.insert(0, ("before", str(old / "src"), {}))
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    state: Dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name] + sys.argv), "git_revision": rev, "old_rev": a.old_rev,
        "official": a.official, "variants": {n: o for n, _, o in variants}, "settings": {"ipc": a.ipc, "dc_ipc": a.dc_ipc, "iterations": a.iterations, "batch_real": a.batch_real,
                                             "dsa": "color_crop_cutout_flip_scale_rotate"},
        "data": "CIFAR-10 (JPEG q75): " + a.dataset, "machine": machine(), "runs": []}
    for r in range(a.rounds):
        for method in a.methods.split(","):
            todo = list(variants) + ([("official", str(ROOT / "src"), {})] if a.official and method == "dm" else [])
            for variant, src, opts in todo:
                if method != "dm" and opts:
                    continue  # the compute-path options are DM's
                load = os.getloadavg()
                res = run_child(variant, method, src, a, opts)
                res.update(round=r, loadavg_1_5_15=[round(x, 1) for x in load])
                state["runs"].append(res)
                print(json.dumps(res), flush=True)
                if a.output:
                    Path(a.output).write_text(json.dumps(summarise(state), indent=1) + "\n")
    if a.profile:  # separate children: the profiler's overhead never enters the timed rounds
        state["profiles"] = [run_child(v, m, src, a, opts, profile=True) for m in a.methods.split(",")
                             for v, src, opts in variants if m == "dm" or not opts]
        if a.output:
            Path(a.output).write_text(json.dumps(summarise(state), indent=1) + "\n")
    print(json.dumps(summarise(state)["summary"], indent=1))
    return 0


def summarise(state: Dict[str, Any]) -> Dict[str, Any]:
    """Median per (method, variant) over rounds and the ratios of CPU seconds per iteration."""
    out: Dict[str, Any] = {}
    for m in {r["method"] for r in state["runs"]}:
        names = list(dict.fromkeys(r["variant"] for r in state["runs"]))
        by = {v: [r for r in state["runs"] if r["method"] == m and r["variant"] == v] for v in names}
        med = {v: {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "user_s", "sys_s", "cpu_s")}
               for v, rs in by.items() if rs}
        ratios = {}
        for v in med:
            for base in ("before", "official"):
                if base in med and v not in ("before", "official"):
                    ratios[f"{base}_over_{v}_cpu"] = med[base]["cpu_s"] / med[v]["cpu_s"]
        out[m] = {"per_iteration_median": med, "speedup": ratios}
    state["summary"] = out
    return state


if __name__ == "__main__":
    raise SystemExit(main())
