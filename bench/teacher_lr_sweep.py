"""Teacher lr sweep: final test accuracy of `train_teacher` per (architecture, peak lr), to pick default lrs.

    python bench/teacher_lr_sweep.py DATASET ARCH[,ARCH..] LR[,LR..] EPOCHS [TRAIN_LIMIT]

One JSON line per cell, then a summary line with machine and git revision (bench/results/teacher_lr.json).
A diverged run is recorded with its error (train_teacher refuses it, naming the lr).
"""
import json
import sys
import time

import torch

from ddkit.data import create_dataset
from ddkit.teachers import TeacherConfig, train_teacher
from ddkit.utils import git_revision, machine_info


def main() -> None:
    torch.set_num_threads(1)
    dataset, archs = sys.argv[1], sys.argv[2].split(",")
    lrs, epochs = [float(x) for x in sys.argv[3].split(",")], int(sys.argv[4])
    limit = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    kw = dict(cache_dir="/work/runs/cache", progress=False)
    train, test = create_dataset(dataset, split="train", **kw), create_dataset(dataset, split="test", **kw)
    if limit:  # a seeded subset, for sets too large for a CPU sweep
        g = torch.Generator().manual_seed(0)
        train = train.subset(torch.randperm(len(train), generator=g)[:limit])
        test = test.subset(torch.randperm(len(test), generator=g)[:2000])
    rows = []
    for arch in archs:
        for lr in lrs:
            t0 = time.time()
            try:
                _, m = train_teacher(train, test, TeacherConfig(arch=arch, lr=lr, epochs=epochs), device="cpu",
                                     progress=False)
                acc, err = m["test_acc"], None
            except Exception as e:  # a refused (diverged) run is a result too
                acc, err = None, str(e)
            rows.append({"arch": arch, "lr": lr, "epochs": epochs, "test_acc": acc, "error": err,
                         "seconds": time.time() - t0})
            print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"dataset": dataset, "train_images": len(train), "rows": rows, "machine": machine_info(),
                      "git_revision": git_revision(), "command": " ".join(sys.argv)}))


if __name__ == "__main__":
    main()
