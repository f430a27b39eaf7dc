"""RDED beside the official code (LINs-lab/RDED@3f6453d), issue #27: same data, same teacher, same settings, same
judges.

    cd /work/runs/h27s && OMP_NUM_THREADS=1 PYTHONPATH=/path/to/ddkit/src \\
        python /path/to/ddkit/bench/parity/rded_pair.py all --seeds 3 --eval-epochs 100

Steps (each skipped when its output exists, so the same command resumes; `row` rewrites the results JSON from
whatever has finished):

1. `data`: CIFAR-10 (JPEG q75) decoded by ddkit's loader, written as lossless PNG files in the official layout
   (`data/cifar10/{train,val}/<5-digit class>/*.png`), so the official `ImageFolder` reads ddkit's pixels.
2. `teacher`: ddkit's committed ConvNet-3-BN teacher as `data/pretrain_models/cifar10_conv3.pth` (keys mapped by
   selection_common.to_official_state); the official `load_model` builds its ConvNet from it and the driver
   asserts its logits equal ddkit's on 256 real test images.
3. `official-distill`: the official `synthesize.main.main(args)` in-process, its own argparse reading the CIFAR-10
   conv3 script's flags; its teacher behind the fixed converter ImageNet-normalised -> the teacher's own
   normalisation (RDED normalises CIFAR with ImageNet statistics; ddkit's default scores in the teacher's).
4. `ddkit-distill`: `ddkit distill --method rded` with the same teacher and numbers.
5. `sets`: the official JPEG files as a ddkit set; ddkit's set as PNG files in the official syn_data layout.
6. `judges`: ddkit `evaluate --protocol native` (RDED's recipe, SL+KD with the same teacher) and the official
   `validation.main.main(args)` (its relabel + train + validate), one student seed per call, one at a time.
7. `row`: bench/results/parity_rded.json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, DATA, load_split, write_json  # noqa: E402
from selection_common import Renormalise, cuda_as_cpu, to_official_state  # noqa: E402
from selection_pair import (TEACHER, check_teacher, ddkit_distill, enter_official, judge_ddkit,  # noqa: E402
                            pair_args, pair_row, patch_teacher_loader as patch_loader, run_all, teacher_facts,
                            write_row, write_timing)

PEER = Path(os.environ.get("PARITY_PEERS", "/work/peers")) / "RDED"
REPO, COMMIT = "LINs-lab/RDED", "3f6453d"
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # synthesize/utils.py:77, validation/main.py:110
SCRIPT = ["--subset", "cifar10", "--arch-name", "conv3", "--factor", "1", "--num-crop", "5", "--mipc", "300",
          "--ipc", "10", "--stud-name", "conv3"]  # scripts/cifar10_10ipc_conv3_to_conv3_cr5.sh (+ --re-epochs)
EXP = "exp/cifar10_conv3_f1_mipc300_ipc10_cr5"  # argument.py's exp_name for these flags


def step_data(w: Path) -> None:
    """The decoded splits as PNG class folders (lossless: the official loader reads ddkit's bytes)."""
    from PIL import Image

    for split, folder in (("train", "train"), ("test", "val")):
        root = w / "official" / "data" / "cifar10" / folder
        if (root / ".done").is_file():
            continue
        ds = load_split(split)
        arr = ds.images.permute(0, 2, 3, 1).contiguous().numpy()
        for i, (img, y) in enumerate(zip(arr, ds.labels.tolist())):
            d = root / f"{int(y):05d}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i:05d}.png", compress_level=1)
        (root / ".done").write_text(f"{len(arr)} images\n")


def official_env(w: Path, argv: List[str], folder: str = "official"):
    """The official work folder <w>/<folder> entered (selection_pair.enter_official); returns `argument.args`."""
    if not (w / folder / "data").exists():  # a second official work folder (diagnostics) shares data + teacher
        (w / folder).mkdir(parents=True, exist_ok=True)
        (w / folder / "data").symlink_to(w / "official" / "data")
    return enter_official(w / folder, PEER, argv)


def to_teacher_units(net, mean, std):
    """RDED's teacher behind the converter from its ImageNet normalisation to the teacher's own (a wrapper)."""
    return Renormalise(net, *IMAGENET, mean, std)


def patch_teacher_loader(module) -> None:
    """The official load_model as it is, the teacher (pretrained=True) put behind the input converter."""
    patch_loader(module, to_teacher_units)


def step_teacher(w: Path) -> Dict[str, Any]:
    """Convert the teacher, build it with the official loader, assert equal logits; writes teacher_check.json."""
    import torch
    from safetensors.torch import load_file

    out = w / "official" / "teacher_check.json"
    if out.is_file():
        return json.loads(out.read_text())
    pth = w / "official" / "data" / "pretrain_models" / "cifar10_conv3.pth"
    pth.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": to_official_state(load_file(str(TEACHER.with_suffix(".safetensors"))))}, pth)
    official_env(w, SCRIPT + ["--re-epochs", "1"])
    from synthesize.utils import load_model

    off = load_model(model_name="conv3", dataset="cifar10", pretrained=True, classes=range(10)).eval()
    t = teacher_facts()
    return check_teacher(out, off, to_teacher_units(off, t["mean"], t["std"]), IMAGENET, {"official_file": str(pth)},
                         argmax=True)


def step_official_distill(w: Path) -> None:
    import numpy as np
    import torch

    out = w / "official" / "timing.json"
    if out.is_file():
        return
    args = official_env(w, SCRIPT + ["--re-epochs", "1"])
    import synthesize.main as sm

    patch_teacher_loader(sm)
    random.seed(0), np.random.seed(0), torch.manual_seed(0)  # the official synthesis seeds nothing
    t0 = time.monotonic()
    with cuda_as_cpu():
        sm.main(args)
    write_timing(out, SCRIPT, time.monotonic() - t0)


def ddkit_argv(w: Path, seed: int = 0, name: str = "ddkit_set") -> List[str]:
    return ["ddkit", "distill", "--dataset", DATA, "--cache-dir", CACHE, "--device", "cpu", "--no-progress",
            "--method", "rded", "--teacher", str(TEACHER), "--ipc", "10", "--seed", str(seed), "--pool-size", "300",
            "--num-crop", "5", "--factor", "1", "--output", str(w / name)]


def step_ddkit_distill(w: Path) -> None:
    ddkit_distill(w, ddkit_argv(w))


def step_sets(w: Path) -> None:
    """official JPEGs -> ddkit set (meta from ddkit's own set: native protocol, factor); ddkit set -> PNGs."""
    import numpy as np
    import torch
    from PIL import Image

    from ddkit.distilled import DistilledSet, load_distilled

    mine = load_distilled(w / "ddkit_set")
    if not (w / "official_set").is_dir():
        imgs, labels = [], []
        for c in range(10):
            for f in sorted((w / "official" / EXP / "syn_data" / f"{c:05d}").glob("*.jpg")):
                imgs.append(torch.from_numpy(np.asarray(Image.open(f).convert("RGB"))).permute(2, 0, 1))
                labels.append(c)
        meta = {k: v for k, v in mine.meta.items() if k in ("native", "ipc", "factor", "dataset", "teacher")}
        meta.update({"method": "official-rded", "parity": {"repo": f"{REPO}@{COMMIT}", "argv": SCRIPT}})
        DistilledSet(torch.stack(imgs).float() / 255, torch.tensor(labels), mine.classes, mine.mean, mine.std,
                     {}, meta).save(w / "official_set", pngs=False)
    syn = w / "ddkit_syn_data"
    if not (syn / ".done").is_file():
        arr = (mine.images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for i, (img, y) in enumerate(zip(arr, mine.labels.tolist())):
            d = syn / f"{int(y):05d}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"class{int(y):05d}_id{i:05d}.png")
        (syn / ".done").write_text("png, lossless\n")


def judge_official(w: Path, side: str, seed: int, epochs: int) -> None:
    """The official relabel + train + validate (validation.main.main) on one set, seed = its --seed."""
    import numpy as np

    out = w / f"eval_official_{side}" / f"seed{seed}.json"
    if out.is_file():
        return
    args = official_env(w, SCRIPT + ["--re-epochs", str(epochs), "--seed", str(seed)])
    args.syn_data_path = str(w / "official" / EXP / "syn_data") if side == "official" else str(w / "ddkit_syn_data")
    import validation.main as vm

    patch_teacher_loader(vm)
    accs: Dict[int, float] = {}
    orig = vm.validate

    def validate(model, a, epoch=None):
        accs[int(epoch)] = float(orig(model, a, epoch))
        return accs[int(epoch)]

    vm.validate = validate
    np.random.seed(seed)  # its CutMix draws from numpy, which it does not seed
    t0 = time.monotonic()
    with cuda_as_cpu():
        vm.main(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, {"seed": seed, "acc": round(accs[epochs - 1], 2), "best": round(max(accs.values()), 2),
                     "evaluated": {str(k): round(v, 2) for k, v in sorted(accs.items())}, "epochs": epochs,
                     "seconds": round(time.monotonic() - t0, 1)})


def step_row(a: argparse.Namespace, w: Path) -> None:
    import rded_diag  # imports this module back: loaded lazily

    row = pair_row(
        a, w, settings={"ipc": 10, "seeds": a.seeds, "eval_epochs": a.eval_epochs,
                        "text": f"IPC 10, pool 300 × 5 crops, factor 1, ConvNet-3-BN teacher (83.89 %), judges "
                                f"{a.eval_epochs} ep (native 300), {a.seeds} seeds"},
        official_argv=["main.py"] + SCRIPT + ["--re-epochs", str(a.eval_epochs)], ddkit_argv=ddkit_argv(w),
        command=f"python bench/parity/rded_pair.py all --seeds {a.seeds} --eval-epochs {a.eval_epochs}",
        how="seconds per class (an 'iteration' of RDED is one class: 300 images x 5 crops scored, "
            "ranked, the 10 best kept): official = the wall time of its synthesize main() / 10 "
            "(teacher load, its per-image PIL decode of 300 PNG files + ToTensor/crops/Normalize per "
            "class, scoring, JPEG saving); ddkit = the mean of the set's class_seconds (its pools come "
            "from the decoded cache, its crops batched); the two ran one after the other, one thread "
            "each",
        walls=True, extra={"diagnostics": rded_diag.diagnostics(w)})
    write_row("rded", REPO, COMMIT, EDITS, JUDGES, row)


EDITS = ("None to the official files. bench/parity/rded_pair.py runs its synthesize.main.main(args) and "
         "validation.main.main(args) in-process with its own argparse (argument.py) reading the flags of "
         "scripts/cifar10_10ipc_conv3_to_conv3_cr5.sh (--re-epochs reduced, --seed set per student), and changes "
         "from outside: (1) data: CIFAR-10 (JPEG q75) decoded by ddkit's loader written as lossless PNG files in "
         "its ImageFolder layout (data/cifar10/train|val/<5-digit class>/), which its own loader reads; (2) the "
         "teacher: ddkit's committed ConvNet-3-BN (bench/teachers/cifar10_jpeg75_convnet3bn_e30) saved as "
         "data/pretrain_models/cifar10_conv3.pth with its keys renamed to the official ConvNet's "
         "(layers.conv.i / layers.norm.i / classifier; values untouched); its load_model builds and loads it, "
         "and the driver asserts equal logits to ddkit's on 256 test images; the loaded teacher (pretrained=True "
         "only, not the student) is put behind a fixed per-channel affine converter from its ImageNet "
         "normalisation (synthesize/utils.py:77) to the teacher's own (mean 0.4913/0.4821/0.4465, std "
         "0.2452/0.2428/0.2606), so the teacher sees inputs in the units it was trained on, as in ddkit's "
         "default (normalization=dataset); with factor 1 its zero-padding is a no-op, so no padding colour "
         "differs; (3) Tensor.cuda / Module.cuda as the identity (no GPU; its DataParallel falls back to the "
         "module); (4) args.workers = 0 (its IPC-10 setting is 4 DataLoader processes); (5) seeds: synthesis "
         "with Python/numpy/torch seeded 0 (it seeds none), validation with its own --seed for Python/torch "
         "plus numpy (its CutMix) seeded by the driver; (6) validate is wrapped to keep every test accuracy it "
         "returns, and the row takes the last epoch's (the official code prints the best).")
JUDGES = {"ddkit": "ddkit evaluate --protocol native (both sets declare 'rded': the rded recipe, SL+KD with the "
                   "same teacher, ConvNet-3-BN student (the teacher's architecture), AdamW 1e-3 wd 0.01, "
                   "quarter-cosine, ShufflePatches + RRC + flip + CutMix, KL T=20, batch 50; --epochs as the row "
                   "says)",
          "official": "validation.main.main of LINs-lab/RDED@3f6453d: the same recipe as its authors wrote it "
                      "(student conv3 from its load_model, teacher relabels online); last-epoch test accuracy on "
                      "the 10,000 test images"}


def main(argv: List[str] | None = None) -> None:
    a = pair_args(argv, __doc__, ("all", "data", "teacher", "official-distill", "ddkit-distill", "sets", "judge-ddkit",
                                  "judge-official", "row", "diag", "diag-official"), eval_epochs=300,
                  add=lambda ap: ap.add_argument("--draws", type=int, default=3,
                                                 help="diag: ddkit's synthesis draws in all (seeds 1 .. N-1 added)"))
    import rded_diag  # noqa: F401  (the diagnostics steps; it imports this module back)

    w = Path(a.runs) / "rded_ipc10"
    w.mkdir(parents=True, exist_ok=True)
    if a.step == "all":
        run_all(__file__, a, w, ("data", "teacher", "official-distill", "ddkit-distill", "sets"), [], step_row)
    elif a.step == "row":
        step_row(a, w)
    elif a.step == "diag":
        rded_diag.step_diag(w, a.eval_epochs, a.draws)
    elif a.step == "diag-official":
        rded_diag.step_diag_official(w, a.seed, a.eval_epochs)
    elif a.step.startswith("judge-"):
        (judge_ddkit if a.step == "judge-ddkit" else judge_official)(w, a.side, a.seed, a.eval_epochs)
    else:
        {"data": step_data, "teacher": step_teacher, "official-distill": step_official_distill,
         "ddkit-distill": step_ddkit_distill, "sets": step_sets}[a.step](w)


if __name__ == "__main__":
    main()
