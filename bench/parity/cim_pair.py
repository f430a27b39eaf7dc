"""CIM / LIC beside the official code (LINs-lab/CIM@ea71377), issue #27: same data, same teacher, same settings,
same judges.

    cd /work/runs/h27s && OMP_NUM_THREADS=1 PYTHONPATH=/path/to/ddkit/src \\
        python /path/to/ddkit/bench/parity/cim_pair.py all --niter 40 --seeds 3 --eval-epochs 100

Steps (each skipped when its output exists; `row` rewrites the results JSON from whatever has finished):

1. `data` / `teacher`: as rded_pair.py (the same PNG folders, linked; the same converted ConvNet-3-BN teacher
   `data/pretrain_models/cifar10_conv3.pth`, the official `load_model` asserted to give ddkit's logits).
2. `official-distill`: the official `condense.condense.condense(args, logger, device="cpu")` in-process (what its
   `condense.main` does, with the device its signature takes), its own argparse reading
   scripts/cifar10/ipc10_conv.sh's flags plus a reduced `--niter`; its teacher's first convolution behind the
   fixed converter CIFAR-normalised -> the teacher's own normalisation (a forward pre-hook, so the network stays
   its ConvNet class, which its get_features branches on).
3. `ddkit-distill`: `ddkit distill --method lic` with the same teacher and numbers.
4. `sets`: the official data.pt as a ddkit set; ddkit's set as a data.pt in the official layout.
5. `judges`: ddkit `evaluate --protocol native` (the cim recipe, SL+KD with the same teacher) and the official
   `data.utils.evaluator.eval_data` as its main.py calls it (eval_times 1 per call, one student seed per call).
6. `row`: bench/results/parity_lic.json.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, DATA, read_json, write_json  # noqa: E402
from recover_loop import on_cpu, stub_modules  # noqa: E402
from selection_common import cuda_as_cpu, module_to_cpu, renormalise_first_conv  # noqa: E402
from selection_pair import (TEACHER, check_teacher, ddkit_distill, enter_official, judge_ddkit as judge,  # noqa: E402
                            pair_args, pair_row, patch_teacher_loader as patch_loader, run_all, write_row,
                            write_timing)

PEER = Path(os.environ.get("PARITY_PEERS", "/work/peers")) / "CIM"
REPO, COMMIT = "LINs-lab/CIM", "ea71377"
CIFAR = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))  # its load_normalize("cifar10")
STUBS = ("lmdb", "cv2", "pyarrow")  # its serialize.py asserts pyarrow or msgpack; neither is used on CIFAR
SCRIPT = ["-d", "cifar10", "-m", "conv3", "--depth", "2", "--ipc", "10"]  # scripts/cifar10/ipc10_conv.sh


def work(a: argparse.Namespace) -> Path:
    return Path(a.runs) / f"lic_ipc10_it{a.niter}"


def official_env(w: Path, argv: List[str]):
    """The official work folder (data/ linked to the RDED pair's PNG folders and teacher) entered
    (selection_pair.enter_official); returns `argument.args`."""
    d = w / "official"
    d.mkdir(parents=True, exist_ok=True)
    rded = Path(os.environ.get("RDED_WORK", str(w.parent / "rded_ipc10"))) / "official" / "data"
    if not (d / "data").exists():
        if not (rded / "pretrain_models" / "cifar10_conv3.pth").is_file():
            raise SystemExit(f"{rded} missing: run `rded_pair.py data` and `rded_pair.py teacher` first")
        (d / "data").symlink_to(rded)
    stub_modules(*STUBS)  # imported by data/utils/load_dataset.py for its LMDB branch only
    return enter_official(d, PEER, argv)


def to_teacher_units(net, mean, std):
    """CIM's teacher with the converter CIFAR normalisation -> the teacher's own as a pre-hook on its first conv
    (the network stays its ConvNet class, which its get_features branches on)."""
    return renormalise_first_conv(net, net.layers["conv"][0], *CIFAR, mean, std)


def patch_teacher_loader(module) -> None:
    """Its load_model as it is; a pretrained net (the teacher) gets the input converter on its first conv."""
    patch_loader(module, to_teacher_units)


def step_teacher_check(w: Path) -> Dict[str, Any]:
    """The official CIM loader on the converted file (rded_pair.py wrote it) gives ddkit's logits."""
    out = w / "official" / "teacher_check.json"
    if out.is_file():
        return read_json(out)
    official_env(w, SCRIPT)
    import data.utils.load_model as lm

    off = lm.load_model(model_name="conv3", dataset="cifar10", pretrained=True).eval()
    patch_teacher_loader(lm)
    conv = lm.load_model(model_name="conv3", dataset="cifar10", pretrained=True).eval()
    return check_teacher(out, off, conv, CIFAR, {"loader": "data/utils/load_model.py load_model"})


def step_official_distill(a: argparse.Namespace, w: Path) -> None:
    import numpy as np
    import torch

    out = w / "official" / "timing.json"
    if out.is_file():
        return
    args = official_env(w, SCRIPT + ["-i", str(a.niter)])
    import condense.condense as cc
    from data.utils.tools import Logger

    patch_teacher_loader(cc)
    orig_mix = cc.mix_images

    def mix_images(*x, **k):  # its torch.zeros(..., device="cuda"), once per class
        with on_cpu():
            return orig_mix(*x, **k)

    cc.mix_images = mix_images
    random.seed(0), np.random.seed(0), torch.manual_seed(0)  # it seeds nothing
    os.makedirs(args.save_dir, exist_ok=True)
    logger = Logger(args.save_dir, "condensation_log")
    t0 = time.monotonic()
    with cuda_as_cpu():
        cc.condense(args, logger, device="cpu")
    write_timing(out, SCRIPT + ["-i", str(a.niter)], time.monotonic() - t0)


def ddkit_argv(a: argparse.Namespace, w: Path) -> List[str]:
    return ["ddkit", "distill", "--dataset", DATA, "--cache-dir", CACHE, "--device", "cpu", "--no-progress",
            "--method", "lic", "--teacher", str(TEACHER), "--ipc", "10", "--seed", "0", "--pool-size", "300",
            "--factor", "2", "--iterations", str(a.niter), "--lr", "0.01", "--output", str(w / "ddkit_set")]


def step_ddkit_distill(a: argparse.Namespace, w: Path) -> None:
    ddkit_distill(w, ddkit_argv(a, w))


def step_sets(a: argparse.Namespace, w: Path) -> None:
    import torch

    from ddkit.distilled import DistilledSet, load_distilled

    mine = load_distilled(w / "ddkit_set")
    if not (w / "official_set").is_dir():
        res = torch.load(w / "official" / "results" / "cifar10_conv3" / "ipc10" / "data.pt", weights_only=True)
        meta = {k: v for k, v in mine.meta.items() if k in ("native", "ipc", "factor", "dataset", "teacher")}
        meta.update({"method": "official-cim", "parity": {"repo": f"{REPO}@{COMMIT}", "argv": SCRIPT}})
        DistilledSet(res["data"].float(), res["label"].long(), mine.classes, mine.mean, mine.std, {}, meta).save(
            w / "official_set", pngs=False)
    pt = w / "ddkit_official_layout" / "data.pt"
    if not pt.is_file():
        pt.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"dataset": "cifar10", "data": mine.images.clone(), "label": mine.labels.clone()}, pt)


def judge_ddkit(a: argparse.Namespace, w: Path, side: str, seed: int) -> None:
    judge(w, side, seed, a.eval_epochs)


def judge_official(a: argparse.Namespace, w: Path, side: str, seed: int) -> None:
    """Its eval_data with main.py's arguments (eval_times 1: one student per call), seeds set by the driver."""
    import numpy as np
    import torch

    out = w / f"eval_official_{side}" / f"seed{seed}.json"
    if out.is_file():
        return
    save_dir = w / "official" / "results" / "cifar10_conv3" / "ipc10" if side == "official" \
        else w / "ddkit_official_layout"
    official_env(w, SCRIPT)
    import data.utils.evaluator as ev

    patch_teacher_loader(ev)

    class Loader(ev.MultiEpochsDataLoader):  # its 4 persistent worker processes -> in-process loading
        def __init__(self, *args, **kw):
            kw.update(num_workers=0, persistent_workers=False)
            super().__init__(*args, **kw)

    ev.MultiEpochsDataLoader = Loader
    got: Dict[str, float] = {}
    orig = ev.train

    def train(*args, **kw):
        best, last = orig(*args, **kw)
        got.update(best=float(best), last=float(last))
        return best, last

    ev.train = train
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)  # it seeds nothing
    t0 = time.monotonic()
    with cuda_as_cpu(), module_to_cpu():
        ev.eval_data(save_dir=str(save_dir), model_ls=["conv3"], tar_model_ls=["conv3"], factor=2,
                     epochs=a.eval_epochs, batch_size=None, crop_method="factor", mix_type="vanilla",
                     dsa_strategy="color_crop_cutout_flip_scale_rotate", store_log=False, eval_times=1, num_val=4,
                     zca=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, {"seed": seed, "acc": round(got["last"], 2), "best": round(got["best"], 2),
                     "epochs": a.eval_epochs, "seconds": round(time.monotonic() - t0, 1)})


def step_row(a: argparse.Namespace, w: Path) -> None:
    row = pair_row(
        a, w, settings={"ipc": 10, "iterations": a.niter, "seeds": a.seeds, "eval_epochs": a.eval_epochs,
                        "text": f"IPC 10, pool 300, factor 2, {a.niter} it (official 200), ConvNet-3-BN teacher "
                                f"(83.89 %), judges {a.eval_epochs} ep (native 1000), {a.seeds} seeds"},
        official_argv=["condense(args, logger, device='cpu')"] + SCRIPT + ["-i", str(a.niter)],
        ddkit_argv=ddkit_argv(a, w),
        command=f"python bench/parity/cim_pair.py all --niter {a.niter} --seeds {a.seeds} "
                f"--eval-epochs {a.eval_epochs}",
        how=f"seconds per class (selection + {a.niter} compensation steps + stitching): official = "
            "the wall time of its condense() (teacher load and the PNG reads included) / 10; ddkit = "
            "the mean of the set's class_seconds; one after the other, one thread each")
    write_row("lic", REPO, COMMIT, EDITS, JUDGES, row)


EDITS = ("None to the official files. bench/parity/cim_pair.py calls its condense.condense.condense(args, logger, "
         "device='cpu') (what condense.main does, with the device its signature takes; main.py has the synthesis "
         "call commented out) and data.utils.evaluator.eval_data with main.py's arguments, in-process, its "
         "argparse (argument.py) reading scripts/cifar10/ipc10_conv.sh's flags (-d cifar10 -m conv3 --depth 2 "
         "--ipc 10; factor 2, mipc 300, dsa crop_cutout_flip, AdamW 0.01 its defaults) with a reduced -i/--niter; "
         "changed from outside: (0) lmdb, cv2 and pyarrow, imported by data/utils/load_dataset.py (and "
         "serialize.py) for its LMDB/ImageNet branch only, are empty stub modules when not installed (none is "
         "here); (1) data: the same lossless PNG folders of ddkit's decode as the RDED pair, which "
         "its ImageFolder reads; (2) the teacher: ddkit's ConvNet-3-BN saved as data/pretrain_models/"
         "cifar10_conv3.pth with keys renamed (layers.conv.i / layers.norm.i / classifier), built by its "
         "load_model (asserted: ddkit's logits on 256 test images); a forward pre-hook on the teacher's first "
         "conv (pretrained=True only) maps its CIFAR normalisation (std 0.2023/0.1994/0.2010) to the teacher's "
         "own (std 0.2452/0.2428/0.2606), exact (before the conv's zero padding), the network staying its "
         "ConvNet class; (3) devices: Tensor.cuda/Module.cuda as the identity, Module.to('cuda') as to('cpu'), "
         "and its mix_images (torch.zeros(..., device='cuda')) run inside a torch function mode mapping 'cuda' "
         "to 'cpu'; (4) workers: args.workers = 0, and the evaluator's MultiEpochsDataLoader built with "
         "num_workers 0 (its 4 persistent workers); (5) seeds: Python/numpy/torch seeded by the driver (0 for "
         "the synthesis, the student seed for the judge; it seeds nothing); (6) its evaluator's train is wrapped "
         "to keep (best, last) accuracy: the row takes the last; eval_times 1 per call, store_log False.")
JUDGES = {"ddkit": "ddkit evaluate --protocol native (both sets declare 'cim': the cim recipe, SL+KD with the "
                   "same teacher relabelling online (MSE to its logits), ConvNet-3-BN student, AdamW 1e-3, "
                   "multistep x0.2 at 2/3 and 5/6, factor crop + DSA chain; --epochs as the row says)",
          "official": "data.utils.evaluator.eval_data of LINs-lab/CIM@ea71377 as its main.py calls it (conv3 "
                      "student and teacher, factor 2 crop, vanilla mix, full DSA, MSE to the teacher's logits, "
                      "num_val 4); last evaluation's test accuracy on the 10,000 test images"}


def main(argv: List[str] | None = None) -> None:
    def niter(ap: argparse.ArgumentParser) -> None:
        ap.add_argument("--niter", type=int, default=200, help="compensation steps on both sides (official 200)")

    a = pair_args(argv, __doc__, ("all", "teacher", "official-distill", "ddkit-distill", "sets", "judge-ddkit",
                                  "judge-official", "row"), eval_epochs=1000, add=niter)
    w = work(a)
    w.mkdir(parents=True, exist_ok=True)
    if a.step == "all":
        run_all(__file__, a, w, ("teacher", "official-distill", "ddkit-distill", "sets"), ["--niter", str(a.niter)],
                step_row)
    elif a.step == "row":
        step_row(a, w)
    elif a.step == "judge-ddkit":
        judge_ddkit(a, w, a.side, a.seed)
    elif a.step == "judge-official":
        judge_official(a, w, a.side, a.seed)
    elif a.step == "teacher":
        step_teacher_check(w)
    else:
        {"official-distill": step_official_distill, "ddkit-distill": step_ddkit_distill,
         "sets": step_sets}[a.step](a, w)


if __name__ == "__main__":
    main()
