"""The fixed setup behind the same-seed-same-bytes test (tests/test_golden.py): digits, a seeded tiny teacher.

What "same seed, same bytes" promises (README): bit-identical sets and accuracies on one kind of CPU (the same
torch version and the same kernel capability, AVX512 / AVX2 / DEFAULT, as `torch.backends.cpu.
get_cpu_capability()` reports it); across kinds, optimised pixels and soft labels agree to a tolerance, because
other vector kernels round differently (PyTorch's reproducibility note). Selected real images and labels are
exact everywhere.

Kept importable so the records can be remade after a deliberate change:
    python -m tests.golden_setup                      # this kind's hashes (paste into tests/test_golden.py)
    python -m tests.golden_setup --write-reference    # tests/golden_reference.safetensors (the tolerance check)
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python -m tests.golden_setup
                                                      # the forced AVX2 kind's hashes
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Dict, Tuple

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
REFERENCE = Path(__file__).with_name("golden_reference.safetensors")


#: environment switches that make this CPU run another kind's kernels (ATen, oneDNN, MKL): the forced path of
#: tests/test_golden.py, which pretends the capability differs
FORCE_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def _vendor() -> str:
    """The CPU vendor string (MKL picks other code paths on other vendors), or "unknown"."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    m = re.search(r"^vendor_id\s*:\s*(\S+)", text, re.M)
    return m.group(1) if m else "unknown"


def cpu_kind() -> str:
    """The kind of CPU whose bytes are promised identical: torch version, ATen's kernel capability, the vendor,
    and "(forced)" when an environment switch of FORCE_AVX2 is set."""
    forced = " (forced)" if any(k in os.environ for k in FORCE_AVX2) else ""
    return (f"torch {torch.__version__.split('+')[0]} / {torch.backends.cpu.get_cpu_capability()} / "
            f"{_vendor()}{forced}")


def setup():
    """digits train split (embedded, offline) and a seeded, untrained ConvNet-D2 teacher (width 8)."""
    ds = create_dataset("digits", split="train")
    torch.manual_seed(0)
    net = create_model("convnet-d2", ds.num_classes, ds.image_size, channels=ds.channels, width=8)
    return ds, Teacher(net, "convnet-d2", ds.classes, ds.mean, ds.std, ds.image_size, channels=ds.channels,
                       arch_kw={"width": 8})


#: the recover family on its batch unit (#26), default options: hashed by `outputs` (tests/test_golden.py's
#: GOLDEN, after the evaluation so the earlier records stay as they were) and run by units in one process and in
#: two, whose bytes must agree. DWA keeps `first_step=clean`, its default when the bytes were recorded (the
#: official first step, today's default, is checked against a hand-run loop in tests/test_dwa_first_step.py)
RECOVER_CASES = {"sre2l": {"ipc": 3, "iterations": 4},
                 "dwa": {"ipc": 3, "iterations": 4, "classes_per_batch": 4, "first_step": "clean"}}


def bn_setup():
    """digits train split and a seeded, untrained ConvNet-D1-BN teacher (width 8) with non-trivial running
    statistics: the recover family matches BatchNorm statistics."""
    ds, _ = setup()
    torch.manual_seed(0)
    net = create_model("convnet-d1-bn", ds.num_classes, ds.image_size, channels=ds.channels, width=8)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(64, ds.channels, ds.image_size, ds.image_size))
    return ds, Teacher(net.eval(), "convnet-d1-bn", ds.classes, ds.mean, ds.std, ds.image_size,
                       channels=ds.channels, arch_kw={"width": 8})


def digest(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    return hashlib.sha256(str(t.dtype).encode() + str(tuple(t.shape)).encode()
                          + t.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()[:16]


def outputs() -> Tuple[Dict[str, torch.Tensor], Tuple[float, ...]]:
    """({"method.images" | "method.labels" | "method.soft.K": tensor}, HL accuracies of the random set)."""
    from ddkit.evaluate import EvalConfig, evaluate
    from ddkit.methods import create_method

    torch.set_num_threads(1)
    ds, teacher = setup()
    out: Dict[str, torch.Tensor] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, kw in CASES.items():
            s = create_method(name, **kw)(ds, teacher, device="cpu", progress=False)
            out[f"{name}.images"], out[f"{name}.labels"] = s.images.contiguous(), s.labels.contiguous()
            out.update({f"{name}.soft.{k}": v.contiguous() for k, v in sorted(s.soft.items())})
        test = create_dataset("digits", split="test")
        rand = create_method("random", **CASES["random"])(ds, teacher, device="cpu", progress=False)
        cfg = EvalConfig(recipe="dc", regime="hl", student="convnet-d2", student_width=8, seeds=2, epochs=40,
                         dsa="none", flip=False)
        res = evaluate(rand, test, cfg, device="cpu", progress=False)
        bn_ds, bn_teacher = bn_setup()
        for name, kw in RECOVER_CASES.items():  # the official objective on its batch unit (#26), default options
            s = create_method(name, **kw)(bn_ds, bn_teacher, device="cpu", progress=False)
            out[f"{name}.images"], out[f"{name}.labels"] = s.images.contiguous(), s.labels.contiguous()
    return out, tuple(res.accs)


def hashes(tensors: Dict[str, torch.Tensor], accs: Tuple[float, ...]) -> Dict[str, Dict[str, object]]:
    """{method: {"images": h, "labels": h, "soft.K": h}, "evaluate": {"accs": [...]}}."""
    out: Dict[str, Dict[str, object]] = {}
    for key, t in tensors.items():
        method, part = key.split(".", 1)
        out.setdefault(method, {})[part] = digest(t)
    out["evaluate"] = {"accs": [f"{a:.6f}" for a in accs]}
    return out


if __name__ == "__main__":
    import json

    from safetensors.torch import save_file

    tensors, accs = outputs()
    if "--write-reference" in sys.argv:
        save_file(tensors, str(REFERENCE), metadata={"cpu_kind": cpu_kind(), "accs": json.dumps(accs)})
        print(f"wrote {REFERENCE} ({cpu_kind()})")
    else:
        print(json.dumps({cpu_kind(): hashes(tensors, accs)}, indent=1))
