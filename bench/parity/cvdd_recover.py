"""CV-DD recover loop: ddkit's `cvdd` beside the official `get_images` (Jiacheng8/CV-DD@24097e9), views off.

Three tiny random-weight BatchNorm networks (ConvNet-3-BN, running statistics moved off 0/1) play CV-DD's model
pool; IPC index i of every class is recovered by the committee combinations(teachers, 2)[i] (`--model-setting 5`'s
`model_choice_sequence`, here the three pairs of three teachers, in that order) with voter weights
softmax(prior / 5) (`--voter-type prior --weight-temperature 5`); both sides get the same priors (CV-DD's CIFAR-10
table for ResNet18, ShuffleNetV2, MobileNetV2: 63, 68.5, 67.6). Both start from the same real images (ddkit's
`--init real` draw, handed to the official code through its `initialize_patch_data`) and take the same number of
Adam steps per IPC index; the views are off on both sides (no `--apply-data-augmentation`, jitter 0) because the
two draw them from different generators. `--teachers 1 --method sre2lpp` is CV-DD's `--model-setting 0`
(SRe2L++, one model of weight 1, `--voter-type equal`) beside ddkit's `sre2lpp`.

The official file loading is replaced from outside, never edited: `utils_recover.load_model` returns a copy of
our network of that name and the module's `torch.load` our weights (so its own `load_recover_model` loads them,
freezes the net, hooks every BatchNorm with its `BNFeatureHook` and computes the voter weights),
`utils_recover.initialize_patch_data` returns the shared start, `recover.save_images` keeps the tensor, and
`recover.ipc_id` (a global its get_images reads when saving) is set before each call. cv2 and pandas (imported,
unused on this path) are stubbed when missing. The official code is imported from PARITY_PEERS/CV-DD (default
/work/peers/CV-DD, outside this repository).

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/parity/cvdd_recover.py --iterations 30 \
        --output bench/results/cvdd_recover_parity_cpu.json
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from itertools import combinations
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import recover_loop as L  # noqa: E402

OFFICIAL = "Jiacheng8/CV-DD@24097e9c7058954b90eb442daa7cc6ba4b774830"
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # CV-DD cifar10 (recover.py:263-265)
PRIORS = (63.0, 68.5, 67.6)  # CV-DD's CIFAR-10 priors of ResNet18, ShuffleNetV2, MobileNetV2 (recover.py:269)
EDITS = ("None to the official files. The driver imports recover/recover.py and recover/utils_recover.py from the "
         "pinned checkout and calls its get_images(args, None, 'cpu', ipc_id, ipc_id == 0) once per IPC index with "
         "an argparse.Namespace holding the settings below (its parse_args would create output folders and force "
         "jitter 4 for cifar10), and replaces from outside: (1) utils_recover.load_model (name -> a fresh copy of "
         "our network of that name) and utils_recover.torch (a proxy whose load() returns that network's state "
         "dict; everything else is torch), so its own load_recover_model loads our weights, freezes the nets, "
         "registers its BNFeatureHook on every BatchNorm2d and computes the voter weights (softmax(prior / 5) "
         "with model_prior_weight_dict = our priors); (2) utils_recover.initialize_patch_data returns the shared "
         "start (ddkit's real images of that IPC index, normalised with the cifar10 mean/std of recover.py:263-265, "
         "requires_grad); (3) recover.save_images keeps the images it is handed (denormalised by its own code); "
         "(4) recover.ipc_id, the global its get_images passes to save_images, is set before each call; (5) cv2 "
         "and pandas, imported but unused on this path, are stubbed where not installed. Device: 'cpu' passed as "
         "its device argument (its __main__ picks cpu without CUDA).")


def official(nets: Sequence[torch.nn.Module], names: List[str], priors: Sequence[float], starts: torch.Tensor,
             iterations: int, sequence: List[List[str]], setting: int, voter: str) -> Tuple[torch.Tensor, List[str]]:
    """The official get_images, one call per IPC index (starts: ipc×k×C×H×W [0,1]); returns k·ipc images,
    class-major as ddkit stores them."""
    stubbed = L.stub_modules("cv2", "pandas")
    with L.official_path("CV-DD", "recover"):
        import recover as R  # noqa: E402  (the official modules)
        import utils_recover as U  # noqa: E402

        by_name = dict(zip(names, nets))
        U.load_model = lambda name, ncls: copy.deepcopy(by_name[name])
        U.torch = L.TorchProxy(lambda path: by_name[Path(path).stem].state_dict())
        kept: Dict[int, torch.Tensor] = {}
        R.save_images = lambda args, images, targets, ipc_id: kept.setdefault(ipc_id, images.detach().clone())
        ipc, k = starts.shape[0], starts.shape[1]
        args = argparse.Namespace(
            dataset_name="cifar10", batch_size=k, ncls=k, model_setting=setting, model_choice_sequence=sequence,
            model_choice=list(names), selected_size=len(names) if setting else 1, pretrained_model_type="offline",
            model_pool_dir="our-networks", voter_type=voter, model_prior_weight_dict=dict(zip(names, priors)),
            weight_temperature=5, initialisation_method="Patches", patch_diff="medium", input_size=starts.shape[-1],
            iteration=iterations, lr=0.25, jitter=0, apply_data_augmentation=False, r_bn=0.01,
            first_bn_multiplier=10.0, mean_norm=list(MEAN), std_norm=list(STD), store_best_images=True,
            start_index=0, exp_name="parity", store_initialised_images=False)
        for i in range(ipc):
            start = L.normalise(starts[i], MEAN, STD)
            U.initialize_patch_data = lambda a, b, args, num_call, s=start: s.clone().requires_grad_(True)
            R.ipc_id = i
            R.get_images(args, None, "cpu", i, i == 0)
    out = torch.stack([kept[i] for i in range(ipc)], 1)  # k×ipc×C×H×W
    return out.reshape(-1, *out.shape[2:]), stubbed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="cvdd", choices=["cvdd", "sre2lpp"])
    p.add_argument("--iterations", type=int, default=30, help="Adam steps per IPC index (official CIFAR 4000)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--teachers", type=int, default=3, help="committee pool (cvdd: 2 or 3; sre2lpp: 1)")
    p.add_argument("--arch", default="convnet-d3-bn")
    p.add_argument("--output", default=None)
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from ddkit.methods import create_method
    from ddkit.teachers import Teacher
    from ddkit.teachers.committee import Committee

    k, size, n = a.classes, 32, a.teachers
    if (a.method == "sre2lpp") != (n == 1):
        raise SystemExit("sre2lpp is the one-teacher setting (--teachers 1); cvdd needs 2 or 3")
    nets = L.bn_nets(a.arch, k, size, n)
    names = [f"net{i}" for i in range(n)]
    priors = PRIORS[:n]
    pairs = [list(c) for c in combinations(names, 2)]
    ipc = max(1, len(pairs))  # every pair once (cvdd); one IPC index (sre2lpp)
    ds = L.toy_dataset(k, size, 4, MEAN, STD)
    teachers = [Teacher(net, a.arch, ds.classes, MEAN, STD, size) for net in nets]
    common: Dict[str, Any] = dict(ipc=ipc, iterations=a.iterations, lr=0.25, r_bn=0.01, jitter=0, rrc=False,
                                  flip=False, init="real", seed=0, norm="true")
    if a.method == "cvdd":
        teacher: Any = Committee(teachers)
        common.update(voter_prior=priors, committee="pairs")
        ctrl, ctrl_what = dict(voting="equal"), "equal voter weights (--voting equal; official: softmax(prior/5))"
    else:
        teacher = teachers[0]
        ctrl, ctrl_what = dict(first_bn_multiplier=1.0), "first-BN multiplier 1 (official 10, recover.py:231)"

    def ddkit_run(**over: Any):
        t0 = time.perf_counter()
        out = create_method(a.method, **{**common, **over})(ds, teacher, device="cpu", progress=False)
        return out, time.perf_counter() - t0

    ours, t_ours = ddkit_run()
    src = torch.tensor(ours.meta["source_indices"])
    start01 = ds.images[src].float() / 255  # class-major: row c·ipc + i
    starts = start01.view(k, ipc, 3, size, size).transpose(0, 1)  # ipc×k×…
    setting, voter = (5, "prior") if n > 1 else (0, "equal")
    t0 = time.perf_counter()
    theirs, stubbed = official(nets, names, priors, starts, a.iterations, pairs, setting, voter)
    t_theirs = time.perf_counter() - t0
    floor, _ = official(nets, names, priors, L.nudged(starts), a.iterations, pairs, setting, voter)
    control, t_ctrl = ddkit_run(**ctrl)
    y = torch.arange(k).repeat_interleave(ipc)
    obj = lambda x: L.objective(nets, x, y, MEAN, STD)  # noqa: E731
    run = {**L.compare(ours.images, theirs, floor, start01),
           "final_objective_mean_over_teachers": {"start": obj(start01), "ddkit": obj(ours.images),
                                                  "official": obj(theirs), "official_nudged": obj(floor)}}
    run["ddkit_committees"] = [{k2: u.get(k2) for k2 in ("index", "voters", "voter_index", "voter_weights")}
                               for u in ours.meta["unit_meta"]]
    ctl = {"what": ctrl_what, **L.compare(control.images, theirs, floor, start01),
           "final_objective_mean_over_teachers": obj(control.images)}
    name = "CV-DD" if a.method == "cvdd" else "SRe2L++ (CV-DD --model-setting 0)"
    settings = {"method": a.method, "classes": k, "ipc": ipc, "iterations_per_ipc_index": a.iterations,
                "teachers": n, "arch": a.arch, "image_size": size, "priors": list(priors), "lr": 0.25,
                "r_bn": 0.01, "first_bn_multiplier": 10.0, "jitter": 0, "views": "off",
                "official_committees": pairs or [names], "stubbed_modules": stubbed}
    text = (f"recover loop: {k} classes × IPC {ipc}, {a.iterations} it per IPC index, "
            + (f"{n} random-weight ConvNet-3-BN teachers, committee pairs {', '.join('+'.join(q) for q in pairs)}, "
               f"priors {', '.join(f'{v:g}' for v in priors)}" if n > 1 else "one random-weight ConvNet-3-BN")
            + ", views off")
    doc = L.document(f"{name} recover loop, ddkit {a.method} vs official get_images (views off)", OFFICIAL, EDITS,
                     settings, text, run, ctl, {"ddkit": t_ours, "official": t_theirs, "ddkit_control": t_ctrl},
                     sys.argv)
    L.write(a.output, doc)


if __name__ == "__main__":
    main()
