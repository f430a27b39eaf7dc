"""WMDD recover loop: ddkit's `wmdd` beside the official `get_images` (Liu-Hy/WMDD@45c2962), views off.

Both sides compute their own targets from the same tiny real data — the per-class BatchNorm statistics (official:
its `BatchNorm2dWithPerClassStats` swapped in by its `replace_batchnorm`, fed class by class with labels, then
`finalize_statistics`; ddkit: forward hooks) and the free-support Wasserstein barycenter of each class's
penultimate (avgpool) features (official: its `compute_wasserstein_barycenter`; ddkit: `teachers.barycenter`),
both barycenters started from the same N(0, 1) draw — and then recover one batch of k classes × IPC images from
the same N(0, 1) start through the same tiny random-weight BN network with r_wb·CE + ‖F − B‖ + r_bn·per-class BN,
first-BN multiplier 1, Adam(0.5, 0.9), cosine lr, clip. The official code works at 224 px (its get_images draws
`torch.randn(B, 3, 224, 224)`), so the network is a small strided ConvNet of ours (three conv-BN-ReLU blocks,
avgpool, linear) whose forward passes the labels to its BN layers as WMDD's ResNet does (`models/resnet.py`), so
the official per-class BN class collects its statistics. The views are off on both sides (the official
RandomResizedCrop/flip replaced by the identity from outside; ddkit `augment=False`; jitter 0). Control: ddkit
with its barycenter term replaced by 0 (wmdd has no option for it; the driver swaps ddkit's `barycenter_loss`).

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/parity/wmdd_recover.py \
        --output bench/results/wmdd_recover_parity_cpu.json
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import types
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import recover_loop as L  # noqa: E402

OFFICIAL = "Liu-Hy/WMDD@45c296258dbb57b5612f1ddb45d630fa62a03f88"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # WMDD's clip/denormalize (recover/utils.py:103-134)
SIZE = 224  # data_synthesis_new.py:96
EDITS = ("None to the official files. The driver imports recover/data_synthesis_new.py (with its utils.py, "
         "barycenter.py and models/factory.py) from the pinned checkout. Its main_syn / get_bary / prepare_model "
         "are not called (a checkpoint, an ImageFolder, a pretrained torchvision verifier); the driver does their "
         "steps with the official pieces: a copy of our network with its BatchNorm2d swapped by the official "
         "replace_batchnorm and our weights loaded strict=False (prepare_model:38-45), wrapped in nn.DataParallel "
         "(its get_images reads model_teacher.module.avgpool), eval, frozen; per class one no-grad forward of the "
         "class's real images with the class label, then finalize_statistics on every per-class BN "
         "(main_syn:303-324); per class one forward under its EmbedderHook on avgpool and its "
         "compute_wasserstein_barycenter(features, ipc, False) (get_bary:255-297, run.sh --weight-wb false). Then "
         "its get_images(args, model, None, bc=barycenters) on one batch. Replaced from outside: (1) "
         "data_synthesis_new.transforms, by a namespace whose RandomResizedCrop / RandomHorizontalFlip are the "
         "identity (views off; cda off); (2) a torch function mode maps its 'cuda' device strings to the CPU and "
         "answers its one torch.randn call (the batch's start) with the shared start; (3) barycenter.np, a numpy "
         "whose random.randn returns the shared barycenter start of the class (ddkit's draw), everything else "
         "numpy's; (4) save_images keeps the tensor; (5) timm (imported by models/factory.py for ViTs, unused) is "
         "stubbed when not installed. The real images are handed as tensors at 224 px, normalised with the "
         "ImageNet mean/std of its prepare_data (no Resize/CenterCrop: they are already 224 px).")


class PerClassNet(nn.Module):
    """A small 224-px BN ConvNet (ours) whose forward passes labels to its BN layers, like WMDD's ResNet."""

    def __init__(self, k: int, width: int = 16) -> None:
        super().__init__()
        chans = [3, width // 2, width, 2 * width]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 5 if i == 0 else 3, stride=4 if i == 0 else 2,
                                             padding=2 if i == 0 else 1, bias=False)
                                   for i, (a, b) in enumerate(zip(chans[:-1], chans[1:])))
        self.bns = nn.ModuleList(nn.BatchNorm2d(c) for c in chans[1:])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(chans[-1], k)

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        for conv, bn in zip(self.convs, self.bns):
            x = conv(x)
            x = torch.relu(bn(x) if labels is None else bn(x, labels=labels))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class _NumpyWithStart:
    """numpy for the official barycenter.py, whose random.randn (the barycenter's start) returns `start`."""

    def __init__(self, start: np.ndarray) -> None:
        self.random = types.SimpleNamespace(randn=lambda *shape: start.copy())

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


def official(net: nn.Module, real: List[torch.Tensor], start: torch.Tensor, bary0: List[np.ndarray], ipc: int,
             iterations: int) -> Dict[str, Any]:
    """The official per-class BN pass, barycenters and get_images; real: per class normalised images."""
    stubbed = L.stub_modules("timm")
    k = len(real)
    with L.official_path("WMDD", "recover"):
        import barycenter as B  # noqa: E402  (the official modules)
        import data_synthesis_new as D  # noqa: E402
        import utils as U  # noqa: E402
        import torchvision.transforms as T

        model = copy.deepcopy(net)
        U.replace_batchnorm(model, k)
        model.load_state_dict(net.state_dict(), strict=False)
        model = nn.DataParallel(model).eval().requires_grad_(False)
        with torch.no_grad():
            for c, xs in enumerate(real):
                model(xs, torch.tensor([c]))
        for m in model.modules():
            if isinstance(m, U.BatchNorm2dWithPerClassStats):
                m.finalize_statistics()
        hook = U.EmbedderHook(model.module.avgpool)
        bcs = []
        for c, xs in enumerate(real):
            with torch.no_grad():
                model(xs)
            feats = hook.feature.view(len(xs), -1).cpu().detach().numpy()
            B.np = _NumpyWithStart(bary0[c])
            bcs.append(B.compute_wasserstein_barycenter(feats, ipc, False)[0])
        hook.close()
        identity = lambda *a, **kw: (lambda x: x)  # noqa: E731
        D.transforms = types.SimpleNamespace(Compose=T.Compose, RandomResizedCrop=identity,
                                             RandomHorizontalFlip=identity)
        kept: Dict[str, torch.Tensor] = {}
        D.save_images = lambda args, images, targets, ipc: kept.setdefault("x", images.detach().clone())
        args = argparse.Namespace(batch_size=k * ipc, num_classes=k, ipc=ipc, iteration=iterations, lr=0.25,
                                  jitter=0, r_bn=0.01, r_wb=1.0, first_bn_multiplier=1.0, wb=True, per_class_bn=True,
                                  cda=False, milestone=0.0, easy2hard_mode="cosine", store_best_images=True)
        mode = L.on_cpu()
        base = type(mode).__torch_function__

        def answer(self, func, types_, a=(), kw=None):  # the batch's torch.randn -> the shared start
            if func is torch.randn:
                return start.clone().requires_grad_(True)
            return base(self, func, types_, a, kw)

        type(mode).__torch_function__ = answer
        with mode:
            D.get_images(args, model, None, bc=np.stack(bcs), weights=None)
    return {"images": kept["x"], "barycenters": torch.from_numpy(np.stack(bcs)).float(), "stubbed": stubbed}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=30, help="Adam steps (run.sh ITERATION 2000)")
    p.add_argument("--ipc", type=int, default=2)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--real", type=int, default=6, help="real images per class (the targets' data)")
    p.add_argument("--output", default=None)
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    import ddkit.methods.wmdd as W
    from ddkit.methods import create_method
    from ddkit.teachers import Teacher
    from ddkit.utils import make_generator

    k, ipc = a.classes, a.ipc
    torch.manual_seed(100)
    net = L.warm_bn(PerClassNet(k), SIZE)
    ds = L.toy_dataset(k, SIZE, a.real, MEAN, STD)
    teacher = Teacher(net, "parity-perclass-convnet", ds.classes, MEAN, STD, SIZE)
    common: Dict[str, Any] = dict(ipc=ipc, iterations=a.iterations, lr=0.25, r_bn=0.01, r_wb=1.0,
                                  first_bn_multiplier=1.0, jitter=0, augment=False, real_images=0, seed=0)
    grabbed: Dict[str, List[torch.Tensor]] = {"bary": []}
    real_bary = W.feature_barycenter

    def bary(f: torch.Tensor, kk: int, generator: Any = None, max_iter: int = 100) -> torch.Tensor:
        out = real_bary(f, kk, generator=generator, max_iter=max_iter)
        grabbed["bary"].append(out)
        return out

    def ddkit_run(**over: Any):
        t0 = time.perf_counter()
        out = create_method("wmdd", **{**common, **over})(ds, teacher, device="cpu", progress=False)
        return out, time.perf_counter() - t0

    W.feature_barycenter = bary  # observe ddkit's barycenters (it still computes them itself)
    ours, t_ours = ddkit_run()
    # the shared starts, drawn as ddkit draws them (wmdd.py: generator (seed, "wmdd", "group", first class);
    # teachers/barycenter.py: (seed, "wmdd", "bary", c), float64)
    start = torch.randn(k * ipc, 3, SIZE, SIZE, generator=make_generator(0, "wmdd", "group", 0))
    start01 = (start * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)).clamp(0, 1)
    bary0 = [torch.randn(ipc, net.fc.in_features, generator=make_generator(0, "wmdd", "bary", c),
                         dtype=torch.float64).numpy() for c in range(k)]
    real = [L.normalise(ds.images[ds.labels == c].float() / 255, MEAN, STD) for c in range(k)]
    t0 = time.perf_counter()
    theirs = official(net, real, start, bary0, ipc, a.iterations)
    t_theirs = time.perf_counter() - t0
    floor = official(net, real, start + L.NUDGE, bary0, ipc, a.iterations)
    W.barycenter_loss = lambda f, t: f.sum() * 0.0  # the control: no barycenter term
    control, t_ctrl = ddkit_run()
    bc_ours = torch.stack(grabbed["bary"][:k])
    y = torch.arange(k).repeat_interleave(ipc)
    obj = lambda x: L.objective([net], x, y, MEAN, STD, first_bn=1.0)  # noqa: E731
    run = {**L.compare(ours.images, theirs["images"], floor["images"], start01),
           "barycenters_ddkit_vs_official": {"max_abs": float((bc_ours - theirs["barycenters"]).abs().max()),
                                             "official_max_abs": float(theirs["barycenters"].abs().max())},
           "final_objective_running_bn": {"start": obj(start01), "ddkit": obj(ours.images),
                                          "official": obj(theirs["images"]), "official_nudged": obj(floor["images"])}}
    ctl = {"what": "ddkit without the barycenter term (its ‖F − B‖ replaced by 0; official: r_wb·CE + ‖F − B‖)",
           **L.compare(control.images, theirs["images"], floor["images"], start01),
           "final_objective_running_bn": obj(control.images)}
    settings = {"classes": k, "ipc": ipc, "iterations": a.iterations, "real_images_per_class": a.real,
                "image_size": SIZE, "network": "ours: 3 strided conv-BN-ReLU blocks (8/16/32 ch) + avgpool + linear",
                "lr": 0.25, "r_bn": 0.01, "r_wb": 1.0, "first_bn_multiplier": 1.0, "jitter": 0, "views": "off",
                "stubbed_modules": theirs["stubbed"]}
    text = (f"recover loop: {k} classes × IPC {ipc} in one batch at 224 px, {a.iterations} it, targets from "
            f"{a.real} real images per class (per-class BN + barycenter, each side its own), one random-weight "
            "small BN ConvNet, views off")
    doc = L.document("WMDD recover loop, ddkit wmdd vs official get_images (views off)", OFFICIAL, EDITS, settings,
                     text, run, ctl, {"ddkit": t_ours, "official": t_theirs, "ddkit_control": t_ctrl}, sys.argv)
    L.write(a.output, doc)


if __name__ == "__main__":
    main()
