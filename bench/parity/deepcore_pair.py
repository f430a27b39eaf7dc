"""ddkit's coresets beside DeepCore's (PatrickZH/DeepCore@74ec709, issue #27): per-sample scores, selections, accuracy.

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/parity/deepcore_pair.py all --per-class 500 --ipc 10 \
        --seeds 3 --eval-epochs 60 --forget-epochs 6 --runs /work/runs/h27k/pair

Both sides score the same images (CIFAR-10 (JPEG q75), `--per-class` images per class drawn as ddkit's
`--max-per-class` does, decoded once by ddkit's loader; DeepCore reads them through its own `datasets.CIFAR10`
with `common.HandedCIFAR10` in place of torchvision's) with the same network, so the comparison isolates the scoring:

* GraNd, Entropy, Herding, k-center greedy: ddkit's committed ConvNet-3 teacher (bench/teachers/
  cifar10_jpeg75_convnet3_e30). ddkit scores with its own recorder / feature code; DeepCore's method classes run
  unmodified with `epochs=0` (no pre-training: its `finish_run` scores the network it is handed). The network
  reaches DeepCore as `deepcore.nets.DDKitConvNet` (set in deepcore_score.py; `HandedConvNet` gives ddkit's
  ConvNet the contract of DeepCore's nets: `embedding_recorder` on the classifier input, `get_last_layer`,
  `no_grad`, and a fixed converter from DeepCore's CIFAR normalisation to the teacher's).
* Forgetting: a training run on each side from the SAME initial weights (ddkit's dynamics run 0 init), same
  optimiser settings (SGD lr 0.01, momentum 0.9, no Nesterov, wd 5e-4, batch 125, no augmentation, constant lr);
  the batch order differs (each side's own RNG). The floor: DeepCore against itself with another batch order.

Steps (each skips what exists under --runs; `all` runs them in order): `score` (deepcore_score.py) → `sets` →
`judge` → `row`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (CACHE, DATA, PEERS, RESULTS, ROOT, lscpu, mean_std, read_json, revision,  # noqa: E402
                    seed_accs, verdict, write_json)
from deepcore_score import score, subset  # noqa: E402

import torch  # noqa: E402

COMMIT = "74ec709f5ccba3b1e921b06c6e312d57741de3f8"
PY = sys.executable
#: (method, ddkit name, pass rule). Score methods: Spearman >= 0.9 on the same network; geometry: identical picks
#: once both sides start alike; forgetting: Spearman >= the DeepCore-vs-DeepCore floor - 0.05.
METHODS = ("grand", "entropy", "herding", "kcenter", "forgetting")


def spearman(x: List[float], y: List[float]) -> float:
    from scipy.stats import spearmanr

    return round(float(spearmanr(x, y).statistic), 4)


def jaccard(x: List[int], y: List[int]) -> float:
    a, b = set(x), set(y)
    return round(len(a & b) / len(a | b), 4)


def sets(a: argparse.Namespace) -> None:
    """A ddkit set folder for every DeepCore selection that is judged (real images, hard labels)."""
    from ddkit.data.base import to_float
    from ddkit.distilled import DistilledSet

    if "forgetting" in a.methods.split(","):
        never_learned_zero(a)
    ds, order = subset(a)
    for m in a.methods.split(","):
        f = Path(a.runs) / "score" / f"{m}-deepcore.json"
        dst = Path(a.runs) / "sets" / f"{m}-deepcore"
        if not f.is_file() or (dst / "meta.json").is_file():
            continue
        idx = torch.tensor(sorted(read_json(f)["indices"]))
        idx = idx[torch.argsort(ds.labels[idx], stable=True)]
        meta = {"method": f"deepcore:{m}", "ipc": a.ipc, "source_indices": idx.tolist(),
                "source_indices_full_split": order[idx].tolist(), "dataset": ds.name, "split": ds.split,
                "parity": f"PatrickZH/DeepCore@{COMMIT[:7]} selection, bench/parity/deepcore_pair.py"}
        DistilledSet(to_float(ds.get(idx)), ds.labels[idx].clone(), list(ds.classes), ds.mean, ds.std, {},
                     meta).save(dst, overwrite=True, pngs=False)


def never_learned_zero(a: argparse.Namespace) -> None:
    """A control set: ddkit's forgetting scores with DeepCore's convention for never-learned samples (0 events,
    not R), selected by ddkit's own per-class rule. It tells how much of the accuracy gap that convention is."""
    from ddkit.data.base import to_float
    from ddkit.distilled import DistilledSet
    from ddkit.methods.coresets_scores import select_by_difficulty

    f, dst = Path(a.runs) / "score" / "forgetting-ddkit.json", Path(a.runs) / "sets" / "forgetting-ddkit-nl0"
    if not f.is_file() or (dst / "meta.json").is_file():
        return
    ds, order = subset(a)
    sc = torch.tensor(read_json(f)["scores"])
    sc = torch.where(sc >= a.forget_epochs, torch.zeros_like(sc), sc)
    idx = torch.cat([ds.class_indices(c)[select_by_difficulty(sc[ds.class_indices(c)], a.ipc, "hard")]
                     for c in range(ds.num_classes)])
    meta = {"method": "forgetting (never-learned = 0)", "ipc": a.ipc, "source_indices": idx.tolist(),
            "source_indices_full_split": order[idx].tolist(), "dataset": ds.name, "split": ds.split}
    DistilledSet(to_float(ds.get(idx)), ds.labels[idx].clone(), list(ds.classes), ds.mean, ds.std, {},
                 meta).save(dst, overwrite=True, pngs=False)


def judged(a: argparse.Namespace) -> List[str]:
    """Set folders to judge: each side of each method, the DeepCore side only where its picks differ."""
    names = []
    for m in METHODS:
        d, o = (read_json(Path(a.runs) / "score" / f"{m}-{s}.json") for s in ("ddkit", "deepcore"))
        if d:
            names.append(f"{m}-ddkit")
        if o and (not d or set(o["indices"]) != set(d["indices"])):
            names.append(f"{m}-deepcore")
        if (Path(a.runs) / "sets" / f"{m}-ddkit-nl0" / "meta.json").is_file():
            names.append(f"{m}-ddkit-nl0")
    return names


def judge(a: argparse.Namespace) -> None:
    for seed in range(a.seeds):  # seed-major: every set has its first student before any has its third
        for name in [n for n in judged(a) if n.split("-")[0] in a.methods.split(",")]:
            out = Path(a.runs) / "eval" / name / f"seed{seed}"
            if (out / "summary.json").is_file():
                continue
            argv = [PY, "-m", "ddkit", "evaluate", str(Path(a.runs) / "sets" / name), "--dataset", DATA,
                    "--cache-dir", CACHE, "--device", "cpu", "--no-progress", "--no-random", "--protocol",
                    "hard-truths", "--regime", "hl", "--epochs", str(a.eval_epochs), "--seeds", "1", "--seed",
                    str(seed), "--output", str(out), "--overwrite"]
            subprocess.run(argv, check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
            row(a)


def accs(a: argparse.Namespace, name: str) -> List[float]:
    got = []
    for seed in range(a.seeds):
        f = Path(a.runs) / "eval" / name / f"seed{seed}" / "summary.json"
        if f.is_file():
            got += seed_accs(json.loads(f.read_text()))
    return got


def row(a: argparse.Namespace) -> None:
    """Fold every finished piece into bench/results/parity_deepcore.json (`methods.<name>`)."""
    sc = {p.stem: read_json(p) for p in sorted((Path(a.runs) / "score").glob("*.json"))}
    doc: Dict[str, Any] = {
        "command": "OMP_NUM_THREADS=1 PYTHONPATH=src python bench/parity/deepcore_pair.py all " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in sorted(vars(a).items())
            if k not in ("step", "floor", "runs", "methods")),
        "revision": revision(), "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": lscpu(),
        "torch": torch.__version__, "official": f"PatrickZH/DeepCore@{COMMIT}",
        "data": f"CIFAR-10 (JPEG q75) train split, {a.per_class} images per class drawn as ddkit --max-per-class "
                f"{a.per_class} (seed 0), {10 * a.per_class} images; IPC {a.ipc} per class",
        "network": "ddkit's committed ConvNet-3 teacher bench/teachers/cifar10_jpeg75_convnet3_e30 (GraNd, Entropy, "
                   "Herding, k-center: both sides score this one network); forgetting: a ConvNet-3 trained on each "
                   "side from ddkit's dynamics run-0 initial weights",
        "edits": "None to DeepCore's files. The driver imports deepcore.methods and deepcore.datasets from the pinned "
                 "checkout and calls the method classes' select() as its main.py does, with an args namespace "
                 "(device 'cpu', gpu None, workers 0, selection_batch 125, SGD lr 0.01 momentum 0.9 wd 5e-4 "
                 "nesterov False). From outside: (1) torchvision.datasets.CIFAR10 is common.HandedCIFAR10 while it "
                 "runs (ddkit's decoded pixels; its own transform ToTensor + Normalize(its mean/std) is applied), "
                 "and the returned train set's data/targets are cut to the same subset; (2) "
                 "deepcore.nets.DDKitConvNet is set to the driver's HandedConvNet (ddkit's ConvNet-3 with "
                 "DeepCore's embedding_recorder / get_last_layer / no_grad contract and a fixed affine converter "
                 "from DeepCore's normalisation to ddkit's), loading the teacher weights (epochs=0 methods) or "
                 "ddkit's dynamics init (Forgetting); (3) herding-deepcore-argmin passes DeepCore's Herding a "
                 "metric callable, the negated euclidean_dist of its own methods_utils (its argmax then takes the "
                 "nearest point); (4) kcenter-deepcore-start passes already_selected = ddkit's first centre per "
                 "class (fraction (ipc-1)/n so each class gets ipc points); (5) numpy 2 (this environment) has no "
                 "np.in1d, which kcentergreedy.py calls: while DeepCore runs, np.in1d is numpy's documented "
                 "replacement np.isin(...).ravel() (identical on the 1-D arrays it is called with).",
        "judge": f"ddkit evaluate SET --protocol hard-truths --regime hl --epochs {a.eval_epochs} --seeds 1 --seed S "
                 f"--no-random (ConvNet-3 student, recipe hardtruths-hl: CE, SGD 0.01 momentum 0.9 wd 5e-4, DSA, "
                 f"x0.1 at E/2+1, batch 256, i.e. the 100 images in one batch; 300 epochs natively) on {a.seeds} "
                 f"student seeds; DeepCore has no separate evaluator for a given subset (its main.py trains its own "
                 f"ResNet on the selection), so ddkit's judge is the only one",
        "seeds": a.seeds, "methods": {}}
    pool = f"IPC {a.ipc} of {a.per_class}/class"
    judge_s = f"judge HL {a.eval_epochs} ep, {a.seeds} seeds"
    doc["settings"] = {
        "grand": f"{pool}; last-layer gradient norm through the teacher (one network, 1 repeat); {judge_s}",
        "entropy": f"{pool}; entropy of the teacher's softmax, most uncertain kept; {judge_s}",
        "herding": f"{pool}; per-class herding on the teacher's penultimate features; {judge_s}",
        "kcenter": f"{pool}; per-class k-center greedy on the teacher's penultimate features, seed 0; {judge_s}",
        "forgetting": f"{pool}; forgetting events over {a.forget_epochs} epochs of one ConvNet-3 run per side from the "
                      f"same init (SGD 0.01, batch 125, no augmentation); {judge_s}"}
    for m in METHODS:
        d, o = sc.get(f"{m}-ddkit"), sc.get(f"{m}-deepcore")
        if not d or not o:
            continue
        r: Dict[str, Any] = {"seconds": {"ddkit": d["seconds"], "deepcore": o["seconds"]},
                             "jaccard": jaccard(d["indices"], o["indices"])}
        if d.get("scores") and o.get("scores"):
            sign = -1.0 if m == "entropy" else 1.0  # DeepCore's Entropy score is sum p log p (= -entropy)
            r["spearman"] = spearman(d["scores"], [sign * v for v in o["scores"]])
        if m == "grand":  # DeepCore's mean-reduced loss: its norm = ddkit's / batch size (a constant per batch)
            ratio = np.asarray(d["scores"]) / np.asarray(o["scores"])
            r["ratio_ddkit_over_deepcore"] = [round(float(ratio.min()), 3), round(float(ratio.max()), 3)]
        if m == "forgetting":
            never = [i for i, v in enumerate(d["scores"]) if v >= a.forget_epochs]
            nev = set(never)
            keep = [i for i in range(len(d["scores"])) if i not in nev]
            r["never_learned_ddkit"] = len(never)
            r["spearman_learned_only"] = spearman([d["scores"][i] for i in keep], [o["scores"][i] for i in keep])
            r["train_acc_ddkit"] = d.get("train_acc")
            fl = sc.get("forgetting-deepcore-s5")
            if fl:  # on the same samples as the criterion's Spearman; over all samples beside it
                r["floor_spearman"] = spearman([o["scores"][i] for i in keep], [fl["scores"][i] for i in keep])
                r["floor_spearman_all"] = spearman(o["scores"], fl["scores"])
                r["spearman_ddkit_vs_floor_run"] = spearman([d["scores"][i] for i in keep],
                                                            [fl["scores"][i] for i in keep])
                r["floor_jaccard"] = jaccard(o["indices"], fl["indices"])
                r["pass"] = r["spearman_learned_only"] >= r["floor_spearman"] - 0.05
        elif m in ("grand", "entropy"):
            r["pass"] = r["spearman"] >= 0.9
        for extra in ("argmin", "start"):
            e = sc.get(f"{m}-deepcore-{extra}")
            if e:
                r[f"jaccard_deepcore_{extra}"] = jaccard(d["indices"], e["indices"])
                r["pass"] = r[f"jaccard_deepcore_{extra}"] == 1.0
        j: Dict[str, Any] = {}
        for side in ("ddkit", "deepcore"):
            v = accs(a, f"{m}-{side}") or (accs(a, f"{m}-ddkit") if side == "deepcore" and r["jaccard"] == 1.0 else [])
            if v:
                j[side] = mean_std(v)
        if "ddkit" in j and "deepcore" in j:
            j["verdict"] = verdict(j["ddkit"], j["deepcore"])
        if accs(a, f"{m}-ddkit-nl0"):  # the never-learned control (forgetting)
            j["ddkit_never_learned_zero"] = mean_std(accs(a, f"{m}-ddkit-nl0"))
            if "deepcore" in j:
                j["verdict_never_learned_zero"] = verdict(j["ddkit_never_learned_zero"], j["deepcore"])
        r["accuracy"] = j
        doc["methods"][m] = r
    write_json(RESULTS / "parity_deepcore.json", doc)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("step", choices=("score", "sets", "judge", "row", "all"))
    p.add_argument("--per-class", type=int, default=500)
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--eval-epochs", type=int, default=60)
    p.add_argument("--forget-epochs", type=int, default=6)
    p.add_argument("--floor", type=int, default=1, help="1: also DeepCore's Forgetting with another batch order")
    p.add_argument("--runs", default="/work/runs/h27k/pair")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of the methods to score/judge")
    a = p.parse_args()
    if not (PEERS / "DeepCore" / "deepcore").is_dir():
        raise SystemExit(f"{PEERS / 'DeepCore'} missing: bring the official code there (bench/parity/README.md)")
    for step in ("score", "sets", "judge", "row") if a.step == "all" else (a.step,):
        {"score": score, "sets": sets, "judge": judge, "row": row}[step](a)


if __name__ == "__main__":
    main()
