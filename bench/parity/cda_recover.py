"""CDA recover loop: ddkit's `cda` beside the official `recover_cda_tiny.py` (VILA-Lab/SRe2L@8d00cba, CDA/), views on.

CDA's own ingredient is a view schedule (the RandomResizedCrop lower scale annealed from 1.0 to 0.08 over
milestone·iterations), so this check cannot turn the views off as the other recover loops do. Instead both sides
take their views from the driver (`recover_loop.SharedViews`): the n-th step's box is torchvision's own
RandomResizedCrop.get_params on a fork of torch's RNG seeded for n, called with the lower bound the side's OWN
schedule computed at that step, and the flip and roll are the driver's draws for n. So with the same schedule both
sides crop, flip and roll alike; with another schedule (the control) the boxes differ. The bounds both sides asked
with are recorded step by step (`schedule`).

The official script is written for Tiny-ImageNet (200 classes, 64 px, its Tiny mean/std): the network is a tiny
random-weight ConvNet-3-BN of 200 classes at 64 px (running statistics moved off 0/1), the toy images declare the
Tiny statistics (so ddkit's working space is the official one), and both sides recover IPC × 2 batches of 100
classes (`--batch-size 100`, ddkit's default group of 100) from the same N(0, 1) start (ddkit's draw, handed to
the official torch.randn), with the README's Tiny settings (lr 0.4, r_bn 0.05, cosine, milestone 1, jitter 4,
first-BN ×10) and fewer iterations. Control: ddkit with milestone 0 (the bound fixed at 0.08 from step 0, SRe2L's
Tiny views) must fail.

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/parity/cda_recover.py \
        --output bench/results/cda_recover_parity_cpu.json
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import recover_loop as L  # noqa: E402

OFFICIAL = "VILA-Lab/SRe2L@8d00cba364bfa34aa1f5a8107dc041ae1be8ebe6 (CDA/recover_cda_tiny.py)"
MEAN, STD = (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)  # CDA/utils.py tiny_clip / tiny_denormalize
K, SIZE, BATCH = 200, 64, 100  # recover_cda_tiny.py: np.arange(200), 64 px crops and noise; README --batch-size 100
EDITS = ("None to the official files. The driver imports CDA/recover_cda_tiny.py (and CDA/utils.py) from the pinned "
         "checkout and calls its get_images(args, model_teacher, None, ipc_id) once per IPC index, as its __main__ "
         "loop calls main_syn, with an argparse.Namespace of the README's Tiny-ImageNet flags (--batch-size 100 "
         "--lr 0.4 --r-bn 0.05 --easy2hard-mode cosine --milestone 1 --store-best-images, argparse defaults jitter "
         "4 and first-BN multiplier 10) and a reduced --iteration. Its main_syn is not called (it builds a "
         "torchvision ResNet-18 from a checkpoint): each call gets a fresh eval-mode, frozen copy of our network "
         "(main_syn builds one per IPC index; not wrapped in DataParallel, which its get_images never looks "
         "through). Replaced from outside: (1) the module's `transforms`, by a namespace whose RandomResizedCrop is "
         "torchvision's class with get_params answered by the driver's shared draw for that step at the scale the "
         "official code built it with (its min_crop schedule decides the box; torchvision's own resized_crop "
         "runs) and whose RandomHorizontalFlip flips when the shared draw says so (Compose is torchvision's); (2) "
         "the module's `random`, whose randint(0, jitter) returns the shared roll of that step; (3) a torch "
         "function mode maps its 'cuda' device strings to the CPU and answers its one torch.randn per batch (the "
         "start) with ddkit's start of that batch; (4) save_images keeps the tensor it is handed (after its own "
         "tiny_denormalize); (5) wandb, imported at module level and used only by its __main__ and the verifier "
         "branch, is stubbed when not installed.")


def official(net: torch.nn.Module, starts: List[torch.Tensor], ipc: int, iterations: int,
             views: L.SharedViews) -> Dict[str, Any]:
    """The official get_images per IPC index; starts: the working-space start of each batch, in the official
    order (IPC index, then classes 0-99, 100-199). Returns k·ipc [0,1] images, class-major as ddkit stores them."""
    stubbed = L.stub_modules("wandb")
    with L.official_path("SRe2L", "CDA"):
        import recover_cda_tiny as R  # noqa: E402  (the official module)

        R.transforms, R.random = L.official_views(views)
        kept: List[torch.Tensor] = []
        R.save_images = lambda args, images, targets, ipc_id: kept.append(images.detach().clone())
        args = argparse.Namespace(batch_size=BATCH, iteration=iterations, lr=0.4, jitter=views.jitter, r_bn=0.05,
                                  first_bn_multiplier=10.0, easy2hard_mode="cosine", milestone=1.0,
                                  store_best_images=True, verifier=False, syn_data_path="unused")
        queue = list(starts)
        with L.on_cpu(randn=lambda: queue.pop(0).clone().requires_grad_(True)):
            for i in range(ipc):
                model = copy.deepcopy(net).eval().requires_grad_(False)
                R.get_images(args, model, None, i)
    per_ipc = [torch.cat(kept[i * (K // BATCH):(i + 1) * (K // BATCH)]) for i in range(ipc)]  # K×C×H×W each
    return {"images": torch.stack(per_ipc, 1).reshape(-1, 3, SIZE, SIZE), "stubbed": stubbed}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=20, help="Adam steps per batch (README Tiny 4000)")
    p.add_argument("--ipc", type=int, default=1)
    p.add_argument("--width", type=int, default=16, help="ConvNet-3-BN width (ddkit's default 128)")
    p.add_argument("--output", default=None)
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    import ddkit.methods.sre2l as S
    from ddkit.methods import create_method
    from ddkit.teachers import Teacher

    net = L.bn_nets("convnet-d3-bn", K, SIZE, 1, width=a.width)[0]
    ds = L.toy_dataset(K, SIZE, 1, MEAN, STD)
    teacher = Teacher(net, "convnet-d3-bn", ds.classes, MEAN, STD, SIZE)
    common: Dict[str, Any] = dict(ipc=a.ipc, iterations=a.iterations, lr=0.4, r_bn=0.05, jitter=4, rrc=True,
                                  flip=True, easy2hard_mode="cosine", milestone=1.0, preset="tiny", seed=0)
    starts: List[torch.Tensor] = []
    real_recover = S.recover

    def recover(model: Any, x0: torch.Tensor, *args: Any, **kw: Any):  # observe each batch's start
        starts.append(x0.detach().clone())
        return real_recover(model, x0, *args, **kw)

    def ddkit_run(views: L.SharedViews, **over: Any):
        t0 = time.perf_counter()
        with L.ddkit_views(views):
            out = create_method("cda", **{**common, **over})(ds, teacher, device="cpu", progress=False)
        return out, time.perf_counter() - t0

    S.recover = recover
    views = L.SharedViews(SIZE, 4)
    ours, t_ours = ddkit_run(views)
    S.recover = real_recover
    ours_starts = list(starts)
    t0 = time.perf_counter()
    theirs = official(net, ours_starts, a.ipc, a.iterations, views)
    t_theirs = time.perf_counter() - t0
    floor_views = L.SharedViews(SIZE, 4)
    floor = official(net, [s + L.NUDGE for s in ours_starts], a.ipc, a.iterations, floor_views)
    ctl_views = L.SharedViews(SIZE, 4)
    control, t_ctrl = ddkit_run(ctl_views, milestone=0.0)
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    start01 = torch.stack([torch.cat(ours_starts[i * 2:(i + 1) * 2]) for i in range(a.ipc)], 1)
    start01 = (start01.reshape(-1, 3, SIZE, SIZE) * s + m).clamp(0, 1)
    y = torch.arange(K).repeat_interleave(a.ipc)
    obj = lambda x: L.objective([net], x, y, MEAN, STD)  # noqa: E731
    run = {**L.compare(ours.images, theirs["images"], floor["images"], start01),
           "schedule": L.schedule_check(views),
           "final_objective": {"start": obj(start01), "ddkit": obj(ours.images), "official": obj(theirs["images"]),
                               "official_nudged": obj(floor["images"])}}
    ctl_sched = {"steps": len(ctl_views.scales["ddkit"]), "ddkit_bounds_first_last":
                 [ctl_views.scales["ddkit"][0], ctl_views.scales["ddkit"][-1]]}
    ctl = {"what": "the crop bound fixed at 0.08 from step 0 (--milestone 0; official: cosine 1.0 -> 0.08 over "
                   "milestone 1)", **L.compare(control.images, theirs["images"], floor["images"], start01),
           "schedule": ctl_sched, "final_objective": obj(control.images)}
    settings = {"classes": K, "batch": BATCH, "ipc": a.ipc, "iterations": a.iterations, "image_size": SIZE,
                "arch": f"convnet-d3-bn width {a.width}", "lr": 0.4, "r_bn": 0.05, "first_bn_multiplier": 10.0,
                "jitter": 4, "easy2hard_mode": "cosine", "milestone": 1.0, "init": "N(0, 1), ddkit's draw, shared",
                "views": "on, shared: RRC box from torchvision get_params at each side's own bound, flip, roll",
                "stubbed_modules": theirs["stubbed"]}
    text = (f"recover loop: {K} classes × IPC {a.ipc} in batches of {BATCH} at {SIZE} px, {a.iterations} it, one "
            f"random-weight ConvNet-3-BN (width {a.width}), views on and shared (each side's own crop-scale "
            "schedule picks its boxes)")
    doc = L.document("CDA recover loop, ddkit cda vs official recover_cda_tiny.get_images (shared views)", OFFICIAL,
                     EDITS, settings, text, run, ctl, {"ddkit": t_ours, "official": t_theirs, "ddkit_control": t_ctrl},
                     sys.argv)
    L.write(a.output, doc)


if __name__ == "__main__":
    main()
