"""How well a teacher reads a distilled set: top-1 agreement with the set's labels and its most-predicted class.

A fixed soft label (the SL regime) is only as informative as the teacher's reading of the image; a set whose images
the teacher maps to one class trains a constant predictor under SL. For every set folder under each SETS_DIR:
the share (%) of images whose teacher top-1 equals the set's hard label, and the share of the teacher's
most-predicted class. Prints one line per set and writes the JSON to --output.

Example (bench/results/matching_smallscale_cifar10_cpu/teacher_agreement.json):
    python bench/teacher_agreement.py --teacher bench/teachers/cifar10_jpeg75_convnet3_e8 \
        --output teacher_agreement.json runs/m12/out1/sets runs/m12/out10/sets
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ddkit.distilled import DistilledSet
from ddkit.teachers import load_teacher, predict_logits
from ddkit.utils import atomic_write_bytes


def main(argv: list | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sets_dirs", nargs="+", help="folders whose sub-folders are distilled sets")
    p.add_argument("--teacher", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    teacher = load_teacher(args.teacher, device=dev)
    out = {}
    for d in args.sets_dirs:
        for path in sorted(Path(d).iterdir()):
            if not (path / "meta.json").is_file():
                continue
            s = DistilledSet.load(path)
            pred = predict_logits(teacher, s.images, device=dev).float().argmax(1).cpu()
            agree = 100 * (pred == s.labels.cpu()).float().mean().item()
            top = 100 * torch.bincount(pred, minlength=s.num_classes).max().item() / len(pred)
            out[path.name] = {"agree": round(agree, 1), "top_class_share": round(top, 1)}
            print(f"{path.name:50s} agree {agree:5.1f} %  most-predicted class {top:5.1f} %")
    atomic_write_bytes(Path(args.output), json.dumps(out, indent=1).encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
