"""Parity pair for SRe2L's recover (VILA-Lab/SRe2L @ 8d00cba, `SRe2L/*small_dataset/recover_cifar.py`) against
ddkit's `distill --method sre2l`, both recovering from ddkit's committed ConvNet-3-BN CIFAR-10 teacher.

    python bench/parity/recover_family.py all --ipc 10 --iterations 1000 --seeds 3

Steps (each skipped when its output exists, so rerunning the same command resumes; ONE process at a time):
`official` (the official recover, in-process), `ddkit` (`ddkit distill --method sre2l`), `sets` (the official
images as a ddkit set folder), `judge` (ddkit's evaluator, one student seed per call), `row` (folds everything
into bench/results/parity_sre2l.json). Outputs live under <runs>/sre2l_ipc<k>_it<n>/.

Our side only: nothing of the official script is copied here. What the driver does to run it is listed in
EDITS (and written into the results JSON): its `get_images` function is called with our teacher as its
`model_teacher` argument; its device string "cuda" is mapped to the CPU; its CIFAR-100 class list is cut to
CIFAR-10's ten classes.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (CACHE, DATA, RESULTS, ROOT, lscpu, mean_std, official_repo, read_json,  # noqa: E402
                    revision, verdict, write_json)
from recover_loop import on_cpu  # noqa: E402  (the one cuda -> cpu torch function mode of the parity drivers)

REPO, COMMIT = "VILA-Lab/SRe2L", "8d00cba364bfa34aa1f5a8107dc041ae1be8ebe6"
PEER = "SRe2L/SRe2L/*small_dataset"  # the official folder name has a literal '*'
SCRIPT = "recover_cifar"
TEACHER = ROOT / "bench" / "teachers" / "cifar10_jpeg75_convnet3bn_e30"
#: the official script's own normalisation (its clip/denormalise helpers): the space its pixels live in
OFFICIAL_MEAN, OFFICIAL_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
#: recover_cifar.sh's CIFAR settings; --iteration is the reduced budget (official 1000)
OFFICIAL_SETTINGS = {"batch_size": 100, "lr": 0.25, "r_bn": 0.01, "jitter": 4, "first_bn_multiplier": 10.0}
REGIMES = {"hl": [], "slkd": ["--teacher", str(TEACHER)]}
PY = sys.executable

EDITS = ("None to the official files. The driver imports recover_cifar.py from the pinned checkout and calls "
         "its own parse_args (on the argv below) and get_images function, one call per IPC index as its "
         "__main__ loop does, with three changes made from outside: (1) the teacher: its main_syn builds a "
         "CIFAR-100 ResNet-18 from a checkpoint path, which is replaced by passing ddkit's committed "
         "ConvNet-3-BN CIFAR-10 teacher (bench/teachers/cifar10_jpeg75_convnet3bn_e30, 83.89 %) as "
         "get_images' model_teacher argument, a fresh copy per call as main_syn builds one per IPC index (the "
         "run recorded in rows.ipc10 shared one copy across the calls: same images, slower later calls, see "
         "speed.official_note), in eval mode with frozen weights (as main_syn leaves its own; the driver also "
         "creates the output folder, main_syn's first step), "
         "behind a fixed affine converter that takes the script's normalisation (mean 0.4914/0.4822/0.4465, "
         "std 0.2023/0.1994/0.2010) to the teacher's (the JPEG tar's true mean/std); the converter has no "
         "BatchNorm, so the BN hooks see exactly the teacher's layers; (2) device: its hard-coded 'cuda' device "
         "strings are mapped to the CPU by a torch function mode; (3) classes: the script's target list is "
         "hard-coded to CIFAR-100's 100 class indices in one batch of 100; its module is handed a numpy whose "
         "arange(100) returns arange(10), so the one batch holds CIFAR-10's ten classes, one image each (the "
         "official --batch-size 100 then covers all classes, as on CIFAR-100). Its random number generators "
         "(torch for the noise init, Python's random for the jitter) are seeded with --seed before the run "
         "(the script seeds none). The official set of the verdict is the float tensors the script passes to its "
         "save_images (its recovered images, in [0, 1]: what ddkit's set holds too, observed by a wrapper "
         "that then calls save_images unchanged); the JPEG files save_images writes (PIL quality 75 after "
         "truncation to uint8, what its relabel step reads) are a second set, official_jpeg, judged when time "
         "allows.")


def workdir(a: argparse.Namespace) -> Path:
    return Path(a.runs) / f"sre2l_ipc{a.ipc}_it{a.iterations}"


def official_argv(a: argparse.Namespace) -> List[str]:
    s = OFFICIAL_SETTINGS
    return [SCRIPT + ".py", "--exp-name", "parity", "--syn-data-path", str(workdir(a) / "official" / "syn_data"),
            "--batch-size", str(s["batch_size"]), "--lr", str(s["lr"]), "--iteration", str(a.iterations),
            "--r-bn", str(s["r_bn"]), "--jitter", str(s["jitter"]), "--first-bn-multiplier",
            str(s["first_bn_multiplier"]), "--store-best-images", "--ipc-start", "0", "--ipc-end", str(a.ipc)]


class _ClassCount:
    """numpy for the official module with arange(100) (its CIFAR-100 class list) cut to the dataset's classes
    (edit (3) of EDITS); every other attribute is numpy's own."""

    def __init__(self, np_module: Any, classes: int) -> None:
        self._np, self._classes = np_module, classes

    def __getattr__(self, name: str) -> Any:
        return getattr(self._np, name)

    def arange(self, *args: Any, **kwargs: Any) -> Any:
        if args == (100,) and not kwargs:
            return self._np.arange(self._classes)
        return self._np.arange(*args, **kwargs)


def converted_teacher():
    """ddkit's teacher as a module taking the official script's normalised pixels (edit (1) of EDITS)."""
    import torch
    import torch.nn as nn

    from ddkit.teachers import load_teacher

    t = load_teacher(TEACHER)

    class InScriptSpace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = t.model
            for name, v in (("m_in", OFFICIAL_MEAN), ("s_in", OFFICIAL_STD), ("m_t", t.mean), ("s_t", t.std)):
                self.register_buffer(name, torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net((x * self.s_in + self.m_in - self.m_t) / self.s_t)

    model = InScriptSpace().eval()
    for p in model.parameters():
        p.requires_grad = False
    return model, t


def official(a: argparse.Namespace) -> None:
    """The official recover, in-process; seconds per iteration from the wall time of each get_images call."""
    import numpy as np
    import torch

    out = workdir(a) / "official"
    out.mkdir(parents=True, exist_ok=True)
    teacher = converted_teacher()[1]
    captured: List[Any] = []
    times: List[float] = []
    with official_repo(PEER):
        rc = importlib.import_module(SCRIPT)
        rc.np = _ClassCount(np, len(teacher.classes))
        save = rc.save_images

        def keep(args: Any, images: Any, targets: Any, ipc_id: int) -> None:  # observe, then the official save
            captured.append((ipc_id, images.detach().cpu().clone(), targets.detach().cpu().clone()))
            save(args, images, targets, ipc_id)

        rc.save_images = keep
        sys.argv = official_argv(a)
        args = rc.parse_args()
        os.makedirs(args.syn_data_path, exist_ok=True)  # what main_syn does first (main_syn is not called)
        torch.manual_seed(a.seed)
        random.seed(a.seed)
        with on_cpu():
            for ipc_id in range(args.ipc_start, args.ipc_end):
                # a fresh teacher per call, as main_syn builds one per IPC index: get_images registers BN
                # hooks it never removes, so one shared model would run every earlier call's hooks too
                model = converted_teacher()[0]
                t0 = time.perf_counter()
                rc.get_images(args, model, None, ipc_id)
                times.append(time.perf_counter() - t0)
                print(f"official recover ipc {ipc_id}: {times[-1]:.1f} s", flush=True)
    torch.save({"captured": captured}, out / "float_images.pt")
    write_json(out / "timing.json", {"argv": official_argv(a), "unit_seconds": [round(t, 2) for t in times],
                                     "s_per_iteration": round(sum(times) / (len(times) * a.iterations), 4),
                                     "machine": lscpu()})


def ddkit_argv(a: argparse.Namespace) -> List[str]:
    s = OFFICIAL_SETTINGS
    return ["ddkit", "distill", "--dataset", DATA, "--cache-dir", CACHE, "--device", "cpu", "--no-progress",
            "--method", "sre2l", "--teacher", str(TEACHER), "--ipc", str(a.ipc), "--seed", str(a.seed),
            "--iterations", str(a.iterations), "--lr", str(s["lr"]), "--r-bn", str(s["r_bn"]), "--jitter",
            str(s["jitter"]), "--first-bn-multiplier", str(s["first_bn_multiplier"]), "--unit", "batch",
            "--output", str(workdir(a) / "ddkit_set")]


def ddkit(a: argparse.Namespace) -> None:
    """ddkit's recover (the official objective is its default: --unit batch, running BN statistics)."""
    t0 = time.perf_counter()
    if not (workdir(a) / "ddkit_set" / "meta.json").is_file():
        # --resume: the IPC-index units an interrupted run finished (OUTPUT.parts/) are kept, not redone
        subprocess.run([PY, "-m"] + ddkit_argv(a) + ["--resume"], check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    meta = json.loads((workdir(a) / "ddkit_set" / "meta.json").read_text())
    secs = [float(u["seconds"]) for u in meta.get("unit_meta", [])]  # one unit = one IPC index's batch
    write_json(workdir(a) / "ddkit_timing.json", {
        "argv": ddkit_argv(a), "wall_s": round(time.perf_counter() - t0, 1), "unit_seconds": secs,
        "s_per_iteration": round(sum(secs) / (len(secs) * a.iterations), 4) if secs else None,
        "machine": lscpu()})


def running_ddkit(a: argparse.Namespace) -> Dict[str, Any]:
    """Per-unit seconds of a ddkit recover still in progress, from the headers of its finished unit parts."""
    from ddkit.loaders import safetensors_metadata

    secs = [float(json.loads(safetensors_metadata(f, "part")["ddkit_part"])["seconds"])
            for f in sorted((workdir(a) / "ddkit_set.parts").glob("unit_*.safetensors"))]
    if not secs:
        return {}
    return {"argv": ddkit_argv(a), "unit_seconds": [round(x, 2) for x in secs],
            "s_per_iteration": round(sum(secs) / (len(secs) * a.iterations), 4), "machine": lscpu(),
            "partial": f"ddkit recover still running; {len(secs)} of {a.ipc} IPC-index units finished and timed"}


def sets(a: argparse.Namespace) -> None:
    """The official float tensors handed to its save_images (the verdict's set) and, apart, the JPEG files it
    wrote from them, as ddkit set folders."""
    import numpy as np
    import torch
    from PIL import Image

    from common import load_split
    from ddkit.distilled import DistilledSet

    test = load_split("test")
    root = workdir(a) / "official" / "syn_data" / "parity"
    imgs, labels = [], []
    for c in range(len(test.classes)):
        for i in range(a.ipc):
            f = root / f"new{c:03d}" / f"class{c:03d}_id{i:03d}.jpg"
            arr = np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255.0
            imgs.append(torch.from_numpy(arr).permute(2, 0, 1))
            labels.append(c)
    meta = {"method": "official-sre2l", "ipc": a.ipc, "native": "sre2l",
            "parity": {"repo": f"{REPO}@{COMMIT[:7]}", "argv": official_argv(a), "images": "its JPEG files"}}
    DistilledSet(torch.stack(imgs), torch.tensor(labels), list(test.classes), test.mean, test.std, {}, meta).save(
        workdir(a) / "official_jpeg_set", overwrite=True, pngs=False)
    cap = torch.load(workdir(a) / "official" / "float_images.pt", weights_only=True)["captured"]
    x = torch.cat([im for _, im, _ in cap]).float()
    y = torch.cat([t for _, _, t in cap]).long()
    order = torch.argsort(y * 10_000 + torch.cat([torch.full_like(t, i) for i, _, t in cap]))
    meta = {**meta, "parity": {**meta["parity"], "images": "the float tensors passed to its save_images"}}
    DistilledSet(x[order], y[order], list(test.classes), test.mean, test.std, {}, meta).save(
        workdir(a) / "official_set", overwrite=True, pngs=False)


def judge(a: argparse.Namespace, side: str, regime: str, seed: int) -> None:
    """ddkit's evaluator, protocol hard-truths (recipe hardtruths-<regime>), one student seed per call."""
    out = workdir(a) / f"eval_{regime}_{side}" / f"seed{seed}"
    argv = [PY, "-m", "ddkit", "evaluate", str(workdir(a) / f"{side}_set"), "--dataset", DATA, "--cache-dir",
            CACHE, "--device", "cpu", "--no-progress", "--no-random", "--protocol", "hard-truths", "--regime",
            regime, "--seeds", "1", "--seed", str(seed), "--output", str(out), "--overwrite"] + REGIMES[regime] + \
        (["--epochs", str(a.eval_epochs)] if a.eval_epochs else [])
    subprocess.run(argv, check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def accs(a: argparse.Namespace, side: str, regime: str) -> List[float]:
    """Finished per-seed last-epoch accuracies (points), in seed order."""
    got = []
    for seed in range(a.seeds):
        f = workdir(a) / f"eval_{regime}_{side}" / f"seed{seed}" / "summary.json"
        if f.is_file():
            res = [r for r in json.loads(f.read_text())["results"] if r.get("set") == "distilled"]
            got += [100 * float(v) for v in res[0]["accs"]]
    return got


def row(a: argparse.Namespace, regime: str) -> Dict[str, Any]:
    judges: Dict[str, Any] = {}
    for side in ("official", "ddkit", "official_jpeg"):
        v = accs(a, side, regime)
        if v:
            judges[side] = mean_std(v)
    if "official" in judges and "ddkit" in judges:
        judges["verdict"] = verdict(judges["ddkit"], judges["official"])
    t_off = read_json(workdir(a) / "official" / "timing.json")
    t_dd = read_json(workdir(a) / "ddkit_timing.json") or running_ddkit(a)
    s_off, s_dd = t_off.get("s_per_iteration"), t_dd.get("s_per_iteration")
    spd = {"official_s_per_iteration": s_off, "ddkit_s_per_iteration": s_dd, "official_note": t_off.get("note"),
           "official_unit_seconds": t_off.get("unit_seconds"), "ddkit_unit_seconds": t_dd.get("unit_seconds"),
           "how": "one iteration = one Adam step on the batch of one image per class (both sides); seconds of "
                  "each IPC index's batch / iterations, averaged; the two ran one after the other, one thread each "
                  "(OMP_NUM_THREADS=1), on 2 cores shared with other jobs (load average at the end of each side "
                  "below), so the ratio is approximate"}
    for side, t in (("official", t_off), ("ddkit", t_dd)):  # the load each side ran under (2 cores shared)
        if t.get("machine", {}).get("loadavg"):
            spd[f"{side}_loadavg_at_end"] = [round(x, 1) for x in t["machine"]["loadavg"]]
    if s_off and s_dd:
        spd["ddkit_over_official"] = round(s_dd / s_off, 3)
    if t_dd.get("partial"):
        spd["partial"] = t_dd["partial"]
    epochs = a.eval_epochs or 300
    judge_cmd = (f"ddkit evaluate SET --protocol hard-truths --regime {regime} --seeds 1 --seed S --no-random"
                 + (" --teacher " + str(TEACHER.relative_to(ROOT)) if regime == "slkd" else "")
                 + (f" --epochs {a.eval_epochs}" if a.eval_epochs else ""))
    return {"settings": {"ipc": a.ipc, "iterations": a.iterations, "seeds": a.seeds, "eval_epochs": epochs,
                         "text": f"IPC {a.ipc}, {a.iterations} it, batch {OFFICIAL_SETTINGS['batch_size']} "
                                 f"(= 10 classes), lr {OFFICIAL_SETTINGS['lr']}, r_bn {OFFICIAL_SETTINGS['r_bn']}; "
                                 f"judge hard-truths {regime.upper()} {epochs} ep, {a.seeds} seeds"},
            "judges": {"ddkit": judges} if judges else {}, "judge_command": judge_cmd,
            "official_argv": official_argv(a), "ddkit_command": " ".join(ddkit_argv(a)), "speed": spd,
            "machine": t_off.get("machine") or t_dd.get("machine") or lscpu(),
            "command": f"python bench/parity/recover_family.py all --ipc {a.ipc} --iterations {a.iterations} "
                       f"--seeds {a.seeds} --regimes {','.join(a.regimes)}"
                       + (f" --eval-epochs {a.eval_epochs}" if a.eval_epochs else ""),
            "ddkit_revision": revision(), "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def write_row(a: argparse.Namespace) -> None:
    path = RESULTS / "parity_sre2l.json"
    doc = read_json(path) or {"method": "sre2l", "official": {"repo": REPO, "commit": COMMIT}, "rows": {}}
    doc["official"]["edits"] = EDITS
    doc["teacher"] = {"path": str(TEACHER.relative_to(ROOT)), "accuracy": 83.89, "arch": "convnet-d3-bn"}
    doc["judges"] = {"ddkit": "ddkit evaluate --protocol hard-truths --regime <hl|slkd> (recipes hardtruths-hl "
                              "/ hardtruths-slkd; the SRe2L repository has no CIFAR evaluation function of its "
                              "own apart from its relabel training, not run here)"}
    for regime in a.regimes:
        r = row(a, regime)
        doc["rows"][f"ipc{a.ipc}" + ("" if regime == "hl" else f"-{regime}")] = r
    write_json(path, doc)
    print(f"wrote {path}")


def done(a: argparse.Namespace, step: str) -> bool:
    w = workdir(a)
    return {"official": (w / "official" / "timing.json").is_file(), "ddkit": (w / "ddkit_timing.json").is_file(),
            "sets": (w / "official_set" / "meta.json").is_file()}[step]  # written last by sets()


def run_all(a: argparse.Namespace) -> None:
    """Every step not done yet, one after the other (seed 0 of every set first, then the next seed)."""
    for step, fn in (("official", official), ("ddkit", ddkit), ("sets", sets)):
        if not done(a, step):
            fn(a)
    for regime in a.regimes:
        for seed in range(a.seeds):
            for side in a.sides:
                if not (workdir(a) / f"eval_{regime}_{side}" / f"seed{seed}" / "summary.json").is_file():
                    judge(a, side, regime, seed)
                    write_row(a)  # a partial row after every student: nothing lost on interruption
    write_row(a)


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=("all", "official", "ddkit", "sets", "judge", "row"))
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=1000, help="Adam steps per batch (official 1000)")
    ap.add_argument("--seed", type=int, default=0, help="distillation seed (both sides); judge: student seed")
    ap.add_argument("--seeds", type=int, default=3, help="student seeds per set")
    ap.add_argument("--regimes", type=lambda v: v.split(","), default=["hl"], help="hl and/or slkd")
    ap.add_argument("--sides", type=lambda v: v.split(","), default=["official", "ddkit"],
                    help="sets to judge: official (its float tensors), ddkit, official_jpeg (its JPEG files)")
    ap.add_argument("--eval-epochs", type=int, default=None, help="judge epochs (default: the recipe's 300)")
    ap.add_argument("--runs", default="/work/runs/parity")
    a = ap.parse_args(argv)
    if a.step == "all":
        run_all(a)
    elif a.step in ("official", "ddkit", "sets"):
        {"official": official, "ddkit": ddkit, "sets": sets}[a.step](a)
    elif a.step == "judge":
        for regime in a.regimes:
            for side in a.sides:
                judge(a, side, regime, a.seed)
    else:
        write_row(a)


if __name__ == "__main__":
    main()
