"""Parity pair for DC, DSA and DM (VICO-UoE/DatasetCondensation @ 53f63a6) against ddkit's `dc`, `dsa`, `dm`.

    python bench/parity/dc_family.py pair --method dm --ipc 10 --iterations 200 --batch-real 256 --seeds 3

One pair = both distillations run at the same time (same machine, same load, one thread each), then both sets
judged by both judges: ddkit's evaluator with the method's native protocol and the official `evaluate_synset`.
Every step writes its output under /work/runs/parity/<method>_ipc<k>_it<n>_b<b>/ and is skipped when that
output exists (resumable); `row` folds the finished steps into bench/results/parity_<method>.json.

The official side runs unmodified: its own `main.py` / `main_DM.py` entry point with its own argument parser,
called in-process so that the data hand-over (common.HandedCIFAR10) replaces torchvision's CIFAR10 download.
Flags passed to it: --num_exp 1 (one set), --num_eval 0 (its in-loop evaluation is replaced by the judges
below, which call its own evaluate_synset on the final set), --Iteration/--batch_real (the reduced budget).
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (CACHE, DATA, ROOT, StampedTee, fold_judges, judge_file, lscpu, official_repo,  # noqa: E402
                    per_iteration_seconds, read_json, run_pool as pool, save_row, siamese_copy, write_json, written)

REPO, COMMIT = "VICO-UoE/DatasetCondensation", "53f63a672eab9ade02aabe6432706ef56f317d64"
PEER = "DatasetCondensation"
OFFICIAL_MEAN, OFFICIAL_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)  # its utils.py CIFAR10 branch
STRATEGY = "color_crop_cutout_flip_scale_rotate"
#: per method: official entry + flags (README commands), ddkit flags, native evaluation protocol
METHODS: Dict[str, Dict[str, Any]] = {
    "dm": {"entry": "main_DM", "flags": ["--init", "real", "--lr_img", "1", "--dsa_strategy", STRATEGY],
           "ddkit": ["--init", "real", "--lr-img", "1", "--dsa-strategy", STRATEGY],
           "native": {"name": "dsa", "epochs": 1000, "dsa": True}},
    "dsa": {"entry": "main", "flags": ["--method", "DSA", "--init", "real", "--dsa_strategy", STRATEGY],
            "ddkit": ["--init", "real", "--dsa-strategy", STRATEGY],
            "native": {"name": "dsa", "epochs": 1000, "dsa": True}},
    "dc": {"entry": "main", "flags": ["--method", "DC"], "ddkit": ["--init", "noise"],
           "native": {"name": "dc-noaug", "epochs": 300, "dsa": False}},
}
#: ddkit's judge: the native protocol, read from what each set declares (ddkit's own sets by their method,
#: the official set by to_ddkit's meta "native"), so both sets are trained the same way
DDKIT_EVAL = ["--protocol", "native"]
PY = sys.executable


def workdir(a: argparse.Namespace) -> Path:
    return Path(a.runs) / f"{a.method}_ipc{a.ipc}_it{a.iterations}_b{a.batch_real}"


def official_argv(a: argparse.Namespace) -> List[str]:
    m = METHODS[a.method]
    return [m["entry"] + ".py", "--dataset", "CIFAR10", "--model", "ConvNet", "--ipc", str(a.ipc),
            "--Iteration", str(a.iterations), "--batch_real", str(a.batch_real), "--num_exp", "1",
            "--num_eval", "0", "--data_path", "data", "--save_path", "result"] + m["flags"]


def official_distill(a: argparse.Namespace) -> None:
    """Run the official entry point in-process (its own parser reads sys.argv), stamping every printed line."""
    out = workdir(a) / "official"
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)
    argv = official_argv(a)
    tee = StampedTee(out / "stdout.log", sys.__stdout__)
    # IPC 1 only: the official Siamese broadcast needs torch's clone on a one-image batch (common.siamese_copy)
    mode = siamese_copy() if a.ipc == 1 else contextlib.nullcontext()
    with official_repo(PEER), mode:
        import importlib

        mod = importlib.import_module(METHODS[a.method]["entry"])
        sys.argv, sys.stdout = argv, tee
        t0 = time.monotonic()
        try:
            mod.main()
        finally:
            sys.stdout = sys.__stdout__
    wall = time.monotonic() - t0
    speed = per_iteration_seconds(tee.lines, "iter = ", lambda s: int(s.split("iter = ")[1].split(",")[0]))
    write_json(out / "timing.json", {"argv": argv, "wall_s": round(wall, 1), **speed, "machine": lscpu(),
                                     "siamese_copies": getattr(mode, "calls", None)})


def official_set_file(a: argparse.Namespace) -> Path:
    hits = glob.glob(str(workdir(a) / "official" / "result" / "res_*.pt"))
    if not hits:
        raise SystemExit(f"no official result under {workdir(a)}/official/result")
    return Path(hits[0])


def to_ddkit(a: argparse.Namespace) -> None:
    """The official set (normalised with ITS mean/std) as a ddkit set folder ([0,1] pixels)."""
    import torch

    from common import load_split
    from ddkit.distilled import DistilledSet

    res = torch.load(official_set_file(a), map_location="cpu", weights_only=True)
    images, labels = res["data"][0]
    m, s = (torch.tensor(v, dtype=torch.float64).view(1, -1, 1, 1) for v in (OFFICIAL_MEAN, OFFICIAL_STD))
    unit = (images.double() * s + m).float()
    test = load_split("test")
    meta = {"method": f"official-{a.method}", "ipc": a.ipc, "native": METHODS[a.method]["native"]["name"],
            "parity": {"repo": f"{REPO}@{COMMIT[:7]}", "argv": official_argv(a)}}
    DistilledSet(unit, labels.long(), list(test.classes), test.mean, test.std, {}, meta).save(
        workdir(a) / "official_set", overwrite=True, pngs=False)


def ddkit_argv(a: argparse.Namespace) -> List[str]:
    return ["ddkit", "distill", "--dataset", DATA, "--cache-dir", CACHE, "--device", "cpu", "--no-progress",
            "--method", a.method, "--ipc", str(a.ipc), "--seed", "0", "--iterations", str(a.iterations),
            "--batch-real", str(a.batch_real), "--norm", "official", "--output", str(workdir(a) / "ddkit_set")] + \
        METHODS[a.method]["ddkit"]


def ddkit_distill(a: argparse.Namespace) -> None:
    """ddkit's distillation; with --shards N, N class shards side by side (--resume keeps finished classes;
    the bytes do not depend on the sharding), then `ddkit merge`."""
    out = workdir(a) / "ddkit_set"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    t0 = time.monotonic()
    if a.shards > 1:
        procs = [subprocess.Popen([PY, "-m"] + ddkit_argv(a) + ["--resume", "--no-merge", "--shard", f"{i}/{a.shards}"],
                                  env=env) for i in range(a.shards)]
        if any(p.wait() for p in procs):
            raise SystemExit("a ddkit shard failed")
        subprocess.run([PY, "-m", "ddkit", "merge", str(out), "--overwrite", "--no-pngs"], check=True, env=env)
    else:
        subprocess.run([PY, "-m"] + ddkit_argv(a) + ["--overwrite"], check=True, env=env)
    meta = json.loads((out / "meta.json").read_text())
    write_json(workdir(a) / "ddkit_timing.json", {"argv": ddkit_argv(a), "shards": a.shards,
                                                  "wall_s": round(time.monotonic() - t0, 1),
                                                  "class_seconds": meta.get("class_seconds"),
                                                  "speed_classes": a.speed_classes, "machine": lscpu()})


def judge_ddkit(a: argparse.Namespace, side: str, seed: int) -> None:
    """ddkit's evaluator, one student seed per call (so finished seeds survive an interruption)."""
    out = workdir(a) / f"eval_ddkit_{side}" / f"seed{seed}"
    argv = [PY, "-m", "ddkit", "evaluate", str(workdir(a) / f"{side}_set"), "--dataset", DATA, "--cache-dir",
            CACHE, "--device", "cpu", "--no-progress", "--no-random", "--seeds", "1", "--seed", str(seed),
            "--output", str(out), "--overwrite"] + DDKIT_EVAL + \
        (["--epochs", str(a.eval_epochs)] if a.eval_epochs else [])
    subprocess.run(argv, check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def judge_official(a: argparse.Namespace, side: str, seed: int) -> None:
    """The official evaluate_synset on one set, one student (seed) per call."""
    import torch

    from ddkit.distilled import load_distilled

    out = workdir(a) / f"eval_official_{side}" / f"seed{seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    ds = load_distilled(workdir(a) / f"{side}_set")
    m, s = (torch.tensor(v).view(1, -1, 1, 1) for v in (OFFICIAL_MEAN, OFFICIAL_STD))
    images = (ds.images - m) / s  # back into the official normalisation space
    nat = METHODS[a.method]["native"]
    with official_repo(PEER):
        import utils as off  # the official utils.py, imported from /work/peers/DatasetCondensation

        _, _, num_classes, _, _, _, _, _, testloader = off.get_dataset("CIFAR10", str(workdir(a) / "data"))
        args = argparse.Namespace(lr_net=0.01, batch_train=256, device="cpu", dsa=nat["dsa"],
                                  epoch_eval_train=a.eval_epochs or nat["epochs"], dsa_strategy=STRATEGY,
                                  dsa_param=off.ParamDiffAug(),
                                  dc_aug_param=off.get_daparam("CIFAR10", "ConvNet", "ConvNet", a.ipc))
        net = off.get_network("ConvNet", 3, num_classes, (32, 32))  # init from the clock, as officially
        torch.manual_seed(seed)  # shuffling and DSA draws follow the seed
        t0 = time.monotonic()
        _, acc_train, acc_test = off.evaluate_synset(seed, net, images, ds.labels.clone(), testloader, args)
    write_json(out, {"seed": seed, "acc": round(100 * acc_test, 2), "train_acc": round(100 * acc_train, 2),
                     "epochs": args.epoch_eval_train, "seconds": round(time.monotonic() - t0, 1)})


def row(a: argparse.Namespace) -> Dict[str, Any]:
    """Fold the finished steps of this pair into bench/results/parity_<method>.json (key ipc<k>)."""
    w = workdir(a)
    r: Dict[str, Any] = {"settings": {"ipc": a.ipc, "iterations": a.iterations, "batch_real": a.batch_real,
                                      "seeds": a.seeds, "eval_epochs": a.eval_epochs or
                                      METHODS[a.method]["native"]["epochs"]},
                         "official_argv": official_argv(a)}
    r["judges"] = fold_judges(w, a.seeds)
    t_off, t_dd = read_json(w / "official" / "timing.json") or running_official(a), \
        read_json(w / "ddkit_timing.json") or running_ddkit(a)
    r["speed"] = speed(t_off, t_dd, a.iterations)
    r["machine"] = t_off.get("machine") or t_dd.get("machine") or lscpu()
    r["ddkit_command"] = " ".join(t_dd.get("argv", []))
    return r


def running_official(a: argparse.Namespace) -> Dict[str, Any]:
    """Seconds/iteration of an official run still in progress, from its stamped stdout.log so far."""
    log = workdir(a) / "official" / "stdout.log"
    if not log.is_file():
        return {}
    lines = [(float(l[1:l.index("]")]), l[l.index("]") + 2:]) for l in log.read_text().splitlines()
             if l.startswith("[") and "iter = " in l]
    speed = per_iteration_seconds(lines, "iter = ", lambda x: int(x.split("iter = ")[1].split(",")[0]))
    return {**speed, "partial": "official distillation still running; timed on the iterations printed so far"}


def running_ddkit(a: argparse.Namespace) -> Dict[str, Any]:
    """Per-class seconds of a ddkit run still in progress, from the headers of its finished class parts."""
    from ddkit.loaders import safetensors_metadata

    secs = []
    for f in sorted((workdir(a) / "ddkit_set.parts").glob("class_*.safetensors")):
        head = json.loads(safetensors_metadata(f, "part")["ddkit_part"])
        secs.append(float(head["seconds"]))
    if not secs:
        return {}
    return {"argv": ddkit_argv(a), "class_seconds": secs, "speed_classes": list(range(len(secs))),
            "partial": f"ddkit distillation still running; {len(secs)} of 10 classes finished and timed"}


def speed(t_off: Dict[str, Any], t_dd: Dict[str, Any], iterations: int) -> Dict[str, Any]:
    """Seconds per iteration (all classes) of both sides; ddkit's = mean seconds of a class over the classes
    that ran beside the official run (speed_classes; all when not given) x 10 classes / (iterations + 1)."""
    s_off = t_off.get("s_per_iteration")
    cs = t_dd.get("class_seconds") or []
    pick = t_dd.get("speed_classes") or list(range(len(cs)))
    s_dd = round(sum(cs[c] for c in pick) / len(pick) * 10 / (iterations + 1), 4) if cs else None
    out = {"official_s_per_iteration": s_off, "ddkit_s_per_iteration": s_dd, "ddkit_classes_timed": pick,
           "official_iterations_timed": [t_off.get("from_iteration"), t_off.get("to_iteration")]}
    for side, t in (("official", t_off), ("ddkit", t_dd)):  # the load each side ran under (2 cores shared)
        if t.get("machine", {}).get("loadavg"):
            out[f"{side}_loadavg_at_end"] = [round(x, 1) for x in t["machine"]["loadavg"]]
    notes = [t["partial"] for t in (t_off, t_dd) if t.get("partial")]
    if notes:
        out["partial"] = "; ".join(notes)
    if s_off and s_dd:
        out["ddkit_over_official"] = round(s_dd / s_off, 3)
    return out


def pair(a: argparse.Namespace) -> None:
    """Every step not yet done, then the row. Distillations run side by side (same load); the judge runs
    (judge x set x seed) go through a pool of --workers processes, seed 0 of every cell first."""
    w = workdir(a)
    w.mkdir(parents=True, exist_ok=True)
    todo = []
    if not (w / "official" / "timing.json").is_file():
        todo.append(["official-distill"])
    if not (w / "ddkit_timing.json").is_file():
        todo.append(["ddkit-distill"])
    run_pool(a, todo, min(len(todo), a.workers))  # --workers 1: one after the other
    if not (w / "official_set" / "meta.json").is_file():
        run_pool(a, [["to-ddkit"]], 1)
    judges(a, ("official", "ddkit"))
    write_row(a)


def judges(a: argparse.Namespace, sides: List[str]) -> None:
    """The judge runs not done yet for these sets, seed 0 of every cell first."""
    tasks = [[f"judge-{judge}", side, "--seed", str(seed)] for seed in range(a.seeds)
             for judge in ("ddkit", "official") for side in sides if not judge_done(a, judge, side, seed)]
    run_pool(a, tasks, a.workers)


def run_pool(a: argparse.Namespace, tasks: List[List[str]], workers: int) -> None:
    """Run `tasks` (argument tails of this script) as subprocesses, at most `workers` at a time."""
    base = [PY, __file__, "--method", a.method, "--ipc", str(a.ipc), "--iterations", str(a.iterations),
            "--batch-real", str(a.batch_real), "--seeds", str(a.seeds), "--runs", a.runs,
            "--shards", str(a.shards)] + (["--eval-epochs", str(a.eval_epochs)] if a.eval_epochs else []) + \
        (["--speed-classes", ",".join(map(str, a.speed_classes))] if a.speed_classes else [])
    pool(base, tasks, workers)


def judge_done(a: argparse.Namespace, judge: str, side: str, seed: int) -> bool:
    return judge_file(workdir(a), judge, side, seed).is_file()


def write_row(a: argparse.Namespace) -> None:
    r = row(a)
    r["command"] = " ".join(["python", "bench/parity/dc_family.py", "pair", "--method", a.method, "--ipc",
                             str(a.ipc), "--iterations", str(a.iterations), "--batch-real", str(a.batch_real),
                             "--seeds", str(a.seeds)] + (["--eval-epochs", str(a.eval_epochs)]
                                                         if a.eval_epochs else []) + ["--workers", str(a.workers)])
    r.update(written())
    save_row(a.method, {"repo": REPO, "commit": COMMIT}, EDITS, JUDGES[a.method], f"ipc{a.ipc}", r)


EDITS = ("None to the official files. The driver imports the official main.py / main_DM.py / utils.py from "
         "the pinned checkout and (1) replaces torchvision.datasets.CIFAR10 for the run by a class serving "
         "ddkit's uint8 decode of CIFAR-10 (JPEG q75) with the same item contract, so the official "
         "ToTensor+Normalize(its mean/std) runs on identical pixels; (2) passes --num_exp 1 --num_eval 0 and a "
         "reduced --Iteration/--batch_real, so its in-loop evaluation is skipped; the judges call its own "
         "utils.evaluate_synset on the saved final set instead; (3) IPC 1 rows only: the distillation runs inside "
         "a torch function mode (common.siamese_copy) that gives Tensor.__setitem__ a clone of a value sharing "
         "the written tensor's memory, because torch 2.14 refuses the Siamese broadcast `r[:] = r[0]` of the "
         "official DiffAugment on a one-image batch (colour, crop, cutout, flip); the values written are the "
         "ones the official line writes (row 0 of its draw): with the mode, DiffAugment on 10 images is bitwise "
         "identical to without it (each augmentation x 40 seeds), and on one image equals row 0 of the same "
         "seeded draw on two. utils.py stays the pinned commit's (sha256 3a9b65b4...). Device: cpu (its own "
         "cuda check finds none).")
JUDGES = {
    m: {"ddkit": "ddkit evaluate --protocol native (both sets declare the native protocol "
                 f"{METHODS[m]['native']['name']!r}: recipe "
                 + ("dc" if METHODS[m]["native"]["dsa"] else "dc-noaug") + ", HL; --epochs where the row says so)",
        "official": f"utils.evaluate_synset of {REPO}@{COMMIT[:7]}: SGD 0.01 momentum 0.9 wd 5e-4, x0.1 after "
                    f"half the epochs (optimiser rebuilt), batch 256, "
                    + ("per-sample DSA" if METHODS[m]["native"]["dsa"] else "no augmentation")
                    + "; network init from the clock (its get_network), shuffling/DSA seeded by the driver"}
    for m in METHODS}


def main(argv: List[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=("pair", "official-distill", "ddkit-distill", "to-ddkit", "judges",
                                     "judge-ddkit", "judge-official", "row"))
    ap.add_argument("sides", nargs="*", help="for the judge steps: the set(s), official and/or ddkit")
    ap.add_argument("--method", choices=sorted(METHODS), required=True)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--batch-real", type=int, default=256)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--eval-epochs", type=int, default=None, help="both judges (default: the native protocol's)")
    ap.add_argument("--seed", type=int, default=0, help="judge steps: the student seed")
    ap.add_argument("--shards", type=int, default=1, help="ddkit class shards run side by side")
    ap.add_argument("--speed-classes", type=lambda v: [int(x) for x in v.split(",")], default=None,
                    help="ddkit classes whose seconds give its s/iteration (those that ran beside the official run)")
    ap.add_argument("--workers", type=int, default=4, help="judge runs side by side")
    ap.add_argument("--runs", default="/work/runs/parity")
    a = ap.parse_args(argv)
    if a.step in ("judge-ddkit", "judge-official"):
        for s in a.sides:
            (judge_ddkit if a.step == "judge-ddkit" else judge_official)(a, s, a.seed)
    elif a.step == "judges":
        judges(a, a.sides)
    else:
        {"pair": pair, "official-distill": official_distill, "ddkit-distill": ddkit_distill, "to-ddkit": to_ddkit,
         "row": write_row}[a.step](a)


if __name__ == "__main__":
    main()
