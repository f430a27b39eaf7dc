"""The fixed setup behind the same-seed-same-bytes test (tests/test_golden.py): digits, a seeded tiny teacher.

Kept importable so the hashes can be recomputed with `python -m tests.golden_setup` after a deliberate change.
"""
from __future__ import annotations

import hashlib
import warnings
from typing import Dict

import torch

from ddkit.data import create_dataset
from ddkit.models import create_model
from ddkit.teachers import Teacher

# (method, options): small but real runs of each algorithm
CASES = {
    "random": {"ipc": 3},
    "rded": {"ipc": 2, "pool_size": 40, "factor": 2},
    "lic": {"ipc": 2, "iterations": 5, "pool_size": 40},
    "herding": {"ipc": 3},
    "cad-prune": {"ipc": 3, "budget_epochs": 1, "points_per_epoch": 4, "span": 2, "windows": 2, "proxy_width": 8},
}


def setup():
    """digits train split (embedded, offline) and a seeded, untrained ConvNet-D2 teacher (width 8)."""
    ds = create_dataset("digits", split="train")
    torch.manual_seed(0)
    net = create_model("convnet-d2", ds.num_classes, ds.image_size, channels=ds.channels, width=8)
    return ds, Teacher(net, "convnet-d2", ds.classes, ds.mean, ds.std, ds.image_size, channels=ds.channels,
                       arch_kw={"width": 8})


def digest(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    return hashlib.sha256(str(t.dtype).encode() + str(tuple(t.shape)).encode()
                          + t.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()[:16]


def hashes() -> Dict[str, Dict[str, str]]:
    """{method: {"images": h, "labels": h}} for every case."""
    from ddkit.methods import create_method

    torch.set_num_threads(1)
    ds, teacher = setup()
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, kw in CASES.items():
            s = create_method(name, **kw)(ds, teacher, device="cpu", progress=False)
            out[name] = {"images": digest(s.images), "labels": digest(s.labels),
                         **{f"soft.{k}": digest(v) for k, v in sorted(s.soft.items())}}
    from ddkit.evaluate import EvalConfig, evaluate

    test = create_dataset("digits", split="test")
    rand = create_method("random", **CASES["random"])(ds, teacher, device="cpu", progress=False)
    cfg = EvalConfig(recipe="dc", regime="hl", student="convnet-d2", student_width=8, seeds=2, epochs=40,
                     dsa="none", flip=False)
    res = evaluate(rand, test, cfg, device="cpu", progress=False)
    out["evaluate"] = {"accs": [f"{a:.6f}" for a in res.accs]}
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(hashes(), indent=1))
