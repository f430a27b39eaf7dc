"""Set-level spread of the RDED pair (issue #27): extra syntheses of each side, judged once by ddkit.

A pair (bench/parity/rded_pair.py) compares ONE draw of each side's pools and crops; the student std does not
contain that spread. `rded_pair.py diag --draws N` adds ddkit's synthesis with base seeds 1 .. N-1 and ddkit's set
saved the way the official save_images saves (uint8 truncation, JPEG q75); `rded_pair.py diag-official --seed K`
adds the official synthesis with its RNGs seeded K. Each extra set is judged by `ddkit evaluate --protocol native`
(student seed 0); `row` records them under `diagnostics`, with the draw-level verdict: the pass rule of issue #27
on the per-draw accuracies (each side's row set, student seed 0, and its extra draws), so the set-level spread
that one pair cannot see is inside the tolerance.
"""
from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path
from typing import Any, Dict

from common import draw_fold, draw_seeds, judge_accs
from rded_pair import EXP, SCRIPT, ddkit_argv, official_env, patch_teacher_loader
from selection_common import cuda_as_cpu
from selection_pair import PY, ROOT, judge_ddkit


def step_diag(w: Path, epochs: int, draws: int = 3) -> None:
    """Where a gap between the two sets comes from (ddkit judge, student seed 0 each): ddkit's set saved as the
    official save_images saves (uint8 truncation, JPEG q75) and read back; ddkit's synthesis with base seeds
    1 .. draws-1 (other pools and crops: the set-level spread one pair does not see)."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    from ddkit.distilled import DistilledSet, load_distilled

    if not (w / "ddkit_jpeg_set").is_dir():
        mine = load_distilled(w / "ddkit_set")
        back = []
        for img in mine.images:
            buf = io.BytesIO()
            Image.fromarray((img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(buf, format="JPEG")
            back.append(torch.from_numpy(np.asarray(Image.open(buf).convert("RGB"))).permute(2, 0, 1))
        DistilledSet(torch.stack(back).float() / 255, mine.labels, mine.classes, mine.mean, mine.std, {},
                     {**mine.meta, "diagnostic": "ddkit set through the official save (uint8 truncation, JPEG q75)"}
                     ).save(w / "ddkit_jpeg_set", pngs=False)
    for k in range(1, draws):
        if not (w / f"ddkit_seed{k}_set").is_dir():
            subprocess.run([PY, "-m"] + ddkit_argv(w, k, f"ddkit_seed{k}_set"), check=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    for side in ["ddkit_jpeg"] + [f"ddkit_seed{k}" for k in range(1, draws)]:
        judge_ddkit(w, side, 0, epochs)


def step_diag_official(w: Path, seed: int, epochs: int) -> None:
    """The official synthesis with Python/numpy/torch seeded `seed` (other pools and crops), as a set, judged by
    ddkit (student seed 0): the official side's set-level spread."""
    import numpy as np
    import torch
    from PIL import Image

    from ddkit.distilled import DistilledSet, load_distilled

    name = f"official_seed{seed}"
    if not (w / f"{name}_set").is_dir():
        args = official_env(w, SCRIPT + ["--re-epochs", "1"], folder=name)
        import synthesize.main as sm

        patch_teacher_loader(sm)
        random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
        with cuda_as_cpu():
            sm.main(args)
        mine = load_distilled(w / "ddkit_set")
        files = [(c, f) for c in range(10) for f in sorted((w / name / EXP / "syn_data" / f"{c:05d}").glob("*.jpg"))]
        imgs = [torch.from_numpy(np.asarray(Image.open(f).convert("RGB"))).permute(2, 0, 1) for _, f in files]
        DistilledSet(torch.stack(imgs).float() / 255, torch.tensor([c for c, _ in files]), mine.classes, mine.mean,
                     mine.std, {}, {"native": mine.meta.get("native"), "ipc": 10, "method": "official-rded"}
                     ).save(w / f"{name}_set", pngs=False)
    judge_ddkit(w, name, 0, epochs)


def diagnostics(w: Path) -> Dict[str, Any]:
    """Every judged extra set, and `draws`: per side the student-seed-0 accuracy of each synthesis draw (the row's
    set first), mean ± std over the draws, and issue #27's rule on them."""
    out: Dict[str, Any] = {}
    rows = [("ddkit_jpeg", "ddkit's set saved as the official save_images does (uint8 truncation, JPEG q75) and "
                           "read back")]
    rows += [(f"ddkit_seed{k}", f"ddkit's synthesis with --seed {k} (other pools and crops)")
             for k in draw_seeds(w, "ddkit_seed")]
    rows += [(f"official_seed{k}", f"the official synthesis with its RNGs seeded {k} (the row's: 0)")
             for k in draw_seeds(w, "official_seed")]
    for side, what in rows:
        if (accs := judge_accs(w, "ddkit", side, 1)):
            out[side] = {"what": what, "ddkit_judge_student_seed0": round(accs[0], 2)}
    draws = draw_fold(w, "ddkit judge, student seed 0, one accuracy per synthesis draw (the row's set first); the "
                         "pass rule of issue #27 on these: the set-level spread is inside the tolerance")
    if "verdict" in draws:
        out["draws"] = draws
    return out
