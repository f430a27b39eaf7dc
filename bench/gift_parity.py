"""Parity of ddkit's `--loss gift` with GIFT's own loss (LINs-lab/GIFT `validate/losses_benchmark.py` @38db552).

Runs the official `compute_loss("gift", student, teacher, labels)` on the CPU (its `.cuda()` calls made no-ops for
this process only) beside `ddkit.evaluate.losses.gift` on random logits over several class counts and batch sizes,
and reports the largest absolute difference; it also reports how far the label smoothing ddkit used before issue
#28 (α/K spread, on-class 1 − α + α/K) was from the official α/(K − 1). The official file is read from a local
copy (never vendored into ddkit):

    git -C /work/.mirror/LINs-lab+GIFT/repo show 38db552:validate/losses_benchmark.py \\
        > /work/peers/GIFT/validate/losses_benchmark.py
    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/gift_parity.py

Writes bench/results/gift_parity_cpu.json (command, git revision, machine).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "38db552bbc5fff7c469535eeff40ac5504f01618"


def revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.machine()
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")),
                platform.machine())


def load_official(path: Path) -> Any:
    """The official module with torch's .cuda() a no-op (it moves its loss modules and smoothing to CUDA)."""
    import torch

    torch.nn.Module.cuda = lambda self, *a, **k: self  # this process only: the official file calls .cuda()
    torch.Tensor.cuda = lambda self, *a, **k: self
    spec = importlib.util.spec_from_file_location("gift_official_losses", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def old_gift(student, teacher, target, smoothing: float = 0.1, weight: float = 0.1):
    """ddkit's gift before #28: smoothing (1 − α)·y + α/K (for the report's 'before' column only)."""
    import torch.nn.functional as F

    k = student.shape[1]
    y = F.one_hot(target, k).float()
    ref = F.normalize(teacher, dim=1) + weight * F.normalize((1 - smoothing) * y + smoothing / k, dim=1)
    return 1.0 - F.cosine_similarity(student, ref, dim=1).mean()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", default="/work/peers/GIFT/validate/losses_benchmark.py")
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--output", default=str(ROOT / "bench/results/gift_parity_cpu.json"))
    args = ap.parse_args()

    import torch

    from ddkit.evaluate.losses import gift

    official = load_official(Path(args.official))
    g = torch.Generator().manual_seed(0)
    rows: List[Dict[str, Any]] = []
    for k in (2, 10, 100, 1000):
        worst_new = worst_old = 0.0
        for trial in range(args.trials):
            b = int(torch.randint(1, 65, (1,), generator=g))
            s = torch.randn(b, k, generator=g) * 3
            t = torch.randn(b, k, generator=g) * 3
            y = torch.randint(0, k, (b,), generator=g)
            ref = float(official.compute_loss("gift", s, t, y))
            worst_new = max(worst_new, abs(float(gift(s, t, y)) - ref))
            worst_old = max(worst_old, abs(float(old_gift(s, t, y)) - ref))
        rows.append({"classes": k, "trials": args.trials, "max_abs_diff": worst_new,
                     "max_abs_diff_before_28": worst_old})
        print(f"K={k:5d}: ddkit vs official max |Δ| = {worst_new:.2e}   (pre-#28 smoothing: {worst_old:.2e})")
    out = {"what": "ddkit --loss gift vs LINs-lab/GIFT compute_loss('gift') on random fp32 logits (CPU)",
           "official": f"LINs-lab/GIFT@{COMMIT} validate/losses_benchmark.py:18-22,28-32,45-51",
           "command": " ".join([Path(sys.executable).name, *sys.argv]), "git_revision": revision(),
           "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu": cpu_model()},
           "rows": rows}
    Path(args.output).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
