"""DELT recover loop: ddkit's `delt` beside the official `get_images` (VILA-Lab/DELT@f2f81ca), views off.

One batch of k classes × IPC images (class-major, as DELT's loader reads a class folder in selection order)
starts from the same real images on both sides (ddkit's median-p_y selection, handed to the official code as its
`inputs` argument, normalised with DELT's CIFAR statistics) and is recovered through one tiny random-weight
ConvNet-3-BN (running statistics moved off 0/1) with the early-late rounds of `--use-early-late
--round-iterations R`: the images of a class join in rounds (here one per round), only the active rows are
forwarded, and the BN statistics are those of the active rows. The views are off on both sides (the official
RandomResizedCrop/flip replaced by the identity from outside, ddkit's `augment=False`; jitter 0 as in the scripts)
because the two draw them from different generators. Control: ddkit with every row active from step 0
(`early_late=False`) must fail.

The official main_syn (a torchvision teacher from a checkpoint, an ImageFolder of RDED images, DataLoader batches)
is not called: the driver does its three steps itself — our network as `model_teacher` in eval mode with frozen
weights, the official `utils.BNFeatureHook` on every BatchNorm2d (main_syn:287-290), `class_iterations` =
iteration for every class (main_syn:277-284 with `--min-iterations` = `--iteration`, the scripts) — and calls
`get_images` once with the batch. Its `transforms` name is replaced by one whose RandomResizedCrop /
RandomHorizontalFlip are the identity (Compose / Normalize are torchvision's), its 'cuda' device strings are
mapped to the CPU by a torch function mode, `save_images` keeps the tensor. Imported from PARITY_PEERS/DELT
(default /work/peers/DELT, outside this repository).

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/parity/delt_recover.py \
        --output bench/results/delt_recover_parity_cpu.json
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import types
from pathlib import Path
from typing import Any, Dict

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import recover_loop as L  # noqa: E402

OFFICIAL = "VILA-Lab/DELT@f2f81cad0e259fbd9409920bd1a62b084986b8e6"
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)  # DELT get_mean_std cifar10 (recover.py:222-224)
EDITS = ("None to the official files. The driver imports recover/recover.py (and its utils.py) from the pinned "
         "checkout and calls its get_images(args, inputs, targets, model_teacher, loss_r_feature_layers, "
         "class_iterations, img_indxer={}) once on one batch, with an argparse.Namespace of the settings below "
         "(what parse_args would give for --dataset cifar10 --use-early-late --round-iterations R --iteration N "
         "--jitter 0 --lr 0.25 --r-bn 0.01 --store-best-images). Its main_syn is not called (it loads a "
         "torchvision teacher checkpoint and an ImageFolder of RDED images); the driver does main_syn's three "
         "remaining steps itself: our network in eval mode with frozen weights as model_teacher, the official "
         "utils.BNFeatureHook registered on every BatchNorm2d, class_iterations = the iteration count for every "
         "class (main_syn:277-284 with --min-iterations equal to --iteration, as every script runs: the random "
         "round count is then that number). Replaced from outside: (1) recover.transforms, by a namespace whose "
         "RandomResizedCrop and RandomHorizontalFlip are the identity (Compose and Normalize stay torchvision's, "
         "so its denormalisation runs as written): the views are off on both sides; (2) its 'cuda' device strings "
         "(targets/inputs .to('cuda')) mapped to the CPU by a torch function mode; (3) recover.save_images keeps "
         "the images it is handed. The inputs are ddkit's starting images (median-p_y selection), normalised with "
         "DELT's cifar10 mean/std.")


def official(net: torch.nn.Module, start01: torch.Tensor, y: torch.Tensor, ipc: int, iterations: int,
             round_iterations: int) -> torch.Tensor:
    """The official get_images on one batch (start01: class-major [0,1] rows); returns its saved images."""
    with L.official_path("DELT", "recover"):
        import recover as R  # noqa: E402  (the official modules)
        import utils as U  # noqa: E402
        import torchvision.transforms as T

        identity = lambda *a, **kw: (lambda x: x)  # noqa: E731
        R.transforms = types.SimpleNamespace(Compose=T.Compose, Normalize=T.Normalize,
                                             RandomResizedCrop=identity, RandomHorizontalFlip=identity)
        kept: Dict[str, torch.Tensor] = {}
        R.save_images = lambda args, images, targets, round_indx=0, indx_list=None: kept.setdefault(
            "x", images.detach().clone())
        k = int(y.max()) + 1
        args = argparse.Namespace(
            dataset="cifar10", input_size=start01.shape[-1], num_classes=k, ipc=ipc, iteration=iterations,
            min_iterations=iterations, round_iterations=round_iterations, use_early_late=True,
            round_lr_reset=False, lr=0.25, jitter=0, r_bn=0.01, first_bn_multiplier=10.0, easy2hard_mode="cosine",
            milestone=1.0, store_best_images=True, syn_data_path="unused", batch_size=len(start01))
        model = copy.deepcopy(net).eval().requires_grad_(False)
        hooks = [U.BNFeatureHook(m) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        class_iterations = torch.full((k,), iterations, dtype=torch.long)
        inputs = L.normalise(start01, MEAN, STD).clone()
        with L.on_cpu():
            R.get_images(args, inputs, y.clone(), model, hooks, class_iterations, {})
    return kept["x"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=40, help="Adam steps in all (official scripts 4000)")
    p.add_argument("--round-iterations", type=int, default=10, help="steps per round (scripts 500)")
    p.add_argument("--ipc", type=int, default=4)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--arch", default="convnet-d3-bn")
    p.add_argument("--output", default=None)
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from ddkit.methods import create_method
    from ddkit.teachers import Teacher

    k, size, ipc = a.classes, 32, a.ipc
    net = L.bn_nets(a.arch, k, size, 1)[0]
    ds = L.toy_dataset(k, size, ipc + 2, MEAN, STD)
    teacher = Teacher(net, a.arch, ds.classes, MEAN, STD, size)
    common: Dict[str, Any] = dict(ipc=ipc, iterations=a.iterations, round_iterations=a.round_iterations, lr=0.25,
                                  r_bn=0.01, jitter=0, augment=False, select="medium", select_pool=0, seed=0)

    def ddkit_run(**over: Any):
        t0 = time.perf_counter()
        out = create_method("delt", **{**common, **over})(ds, teacher, device="cpu", progress=False)
        return out, time.perf_counter() - t0

    ours, t_ours = ddkit_run()
    start01 = ds.images[torch.tensor(ours.meta["source_indices"])].float() / 255
    y = torch.arange(k).repeat_interleave(ipc)
    t0 = time.perf_counter()
    theirs = official(net, start01, y, ipc, a.iterations, a.round_iterations)
    t_theirs = time.perf_counter() - t0
    floor = official(net, L.nudged(start01), y, ipc, a.iterations, a.round_iterations)
    control, t_ctrl = ddkit_run(early_late=False)
    obj = lambda x: L.objective([net], x, y, MEAN, STD)  # noqa: E731
    rounds = a.iterations // a.round_iterations
    run = {**L.compare(ours.images, theirs, floor, start01),
           "join_round": ours.meta["recover"]["join_round"],
           "final_objective": {"start": obj(start01), "ddkit": obj(ours.images), "official": obj(theirs),
                               "official_nudged": obj(floor)}}
    ctl = {"what": "every row active from step 0 (early_late=False; official: --use-early-late rounds)",
           **L.compare(control.images, theirs, floor, start01), "final_objective": obj(control.images)}
    settings = {"classes": k, "ipc": ipc, "iterations": a.iterations, "round_iterations": a.round_iterations,
                "rounds": rounds, "arch": a.arch, "image_size": size, "lr": 0.25, "r_bn": 0.01,
                "first_bn_multiplier": 10.0, "jitter": 0, "views": "off", "init": "medium (ddkit's selection, shared)"}
    text = (f"recover loop: {k} classes × IPC {ipc} in one batch, {a.iterations} it in {rounds} early-late rounds "
            f"of {a.round_iterations}, one random-weight ConvNet-3-BN, views off")
    doc = L.document("DELT recover loop, ddkit delt vs official get_images (views off)", OFFICIAL, EDITS, settings,
                     text, run, ctl, {"ddkit": t_ours, "official": t_theirs, "ddkit_control": t_ctrl}, sys.argv)
    L.write(a.output, doc)


if __name__ == "__main__":
    main()
