"""The steps the RDED and CIM/LIC parity drivers share (issue #27): entering the official checkout, the teacher
behind its converter, ddkit's side (distill, judge), the official timing file, the row and the `all` loop.

Both drivers (rded_pair.py, cim_pair.py) run every step in its own process, because the official `argument.py`
parses `sys.argv` at import and the official code changes directory; each step is skipped when its output exists,
so the same command resumes. What differs per method (the official calls, the flags, the set formats, the row's
texts) stays in the driver; the torch-level shims (teacher key map, input converters, device stand-ins) are in
selection_common.py.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (CACHE, DATA, ROOT, fold_judges, load_split, lscpu, read_json, revision,  # noqa: E402
                    save_row, write_json)

PY = sys.executable
TEACHER = ROOT / "bench" / "teachers" / "cifar10_jpeg75_convnet3bn_e30"  # BN: both official conv3 nets use BN
Norm = Sequence[Sequence[float]]  # (mean, std) per channel
Wrap = Callable[[Any, Sequence[float], Sequence[float]], Any]  # (official net, teacher mean, teacher std) -> net


def teacher_facts() -> Dict[str, Any]:
    """The committed teacher's JSON (its mean/std: the normalisation it was trained with)."""
    return json.loads(TEACHER.with_suffix(".json").read_text())


def enter_official(folder: Path, peer: Path, argv: List[str]):
    """cwd = the official work folder, the checkout on sys.path, sys.argv = its script's flags; returns the
    imported `argument.args` (its parser runs at import, as in its main.py)."""
    os.chdir(folder)
    sys.path.insert(0, str(peer))
    sys.argv = ["main.py"] + argv
    import argument

    argument.args.workers = 0  # both default to 4 loader processes; one process at a time here
    return argument.args


def patch_teacher_loader(module, wrap: Wrap) -> None:
    """The official `module.load_model` as it is; a pretrained net (the teacher, not the student) comes back
    through `wrap(net, teacher mean, teacher std)`, the method's input converter."""
    t = teacher_facts()
    orig = module.load_model

    def load_model(*args, **kw):
        net = orig(*args, **kw)
        return wrap(net, t["mean"], t["std"]) if kw.get("pretrained", True) else net

    module.load_model = load_model


def check_teacher(out: Path, official, converted, norm: Norm, where: Dict[str, str],
                  argmax: bool = False) -> Dict[str, Any]:
    """Assert that the official network built from the converted file gives ddkit's logits on 256 test images
    (inputs in the teacher's normalisation), and that `converted` (it behind the input converter) does on the same
    images in the official code's normalisation `norm`; writes and returns teacher_check.json."""
    import torch

    from ddkit.teachers.io import load_teacher

    test = load_split("test")
    ours = load_teacher(str(TEACHER), dataset=test)
    x = test.images[:256].float() / 255
    m, s = (torch.tensor(v).view(1, -1, 1, 1) for v in (ours.mean, ours.std))
    om, ost = (torch.tensor(v).view(1, -1, 1, 1) for v in norm)
    with torch.no_grad():
        a, b = official((x - m) / s), ours.model((x - m) / s)
        c = converted((x - om) / ost)
    diff, diff_conv = float((a - b).abs().max()), float((c - b).abs().max())
    assert diff < 1e-4 and diff_conv < 1e-4, f"converted teacher differs from ddkit's: {diff:.3g} / {diff_conv:.3g}"
    doc = {"teacher": str(TEACHER.relative_to(ROOT)), **where, "images": 256, "max_abs_logit_diff": diff,
           "max_abs_logit_diff_through_converter": diff_conv}
    if argmax:
        doc["argmax_agree"] = float((a.argmax(1) == b.argmax(1)).float().mean())
    write_json(out, doc)
    return doc


def write_timing(out: Path, argv: List[str], wall: float) -> None:
    """The official synthesis's timing.json: its wall time, per class (10 classes), load and machine."""
    write_json(out, {"argv": argv, "wall_s": round(wall, 2), "class_seconds_mean": round(wall / 10, 3),
                     "loadavg_at_end": os.getloadavg(), "machine": lscpu()})


def ddkit_env() -> Dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def ddkit_distill(w: Path, argv: List[str]) -> None:
    """`python -m <argv> --overwrite` (a `ddkit distill` writing <w>/ddkit_set), timed into ddkit_timing.json."""
    out = w / "ddkit_timing.json"
    if out.is_file():
        return
    t0 = time.monotonic()
    subprocess.run([PY, "-m"] + argv + ["--overwrite"], check=True, env=ddkit_env())
    meta = json.loads((w / "ddkit_set" / "meta.json").read_text())
    write_json(out, {"argv": argv, "wall_s": round(time.monotonic() - t0, 2),
                     "class_seconds": meta.get("class_seconds"), "loadavg_at_end": os.getloadavg(),
                     "machine": lscpu()})


def judge_ddkit(w: Path, side: str, seed: int, epochs: int) -> None:
    """ddkit's judge on <w>/<side>_set: `evaluate --protocol native` (the set's recipe, SL+KD with the teacher),
    one student seed."""
    out = w / f"eval_ddkit_{side}" / f"seed{seed}"
    if (out / "summary.json").is_file():
        return
    subprocess.run([PY, "-m", "ddkit", "evaluate", str(w / f"{side}_set"), "--dataset", DATA, "--cache-dir", CACHE,
                    "--device", "cpu", "--no-progress", "--no-random", "--protocol", "native", "--teacher",
                    str(TEACHER), "--seeds", "1", "--seed", str(seed), "--epochs", str(epochs), "--output", str(out),
                    "--overwrite"], check=True, env=ddkit_env())


def pair_row(a: argparse.Namespace, w: Path, *, settings: Dict[str, Any], official_argv: List[str],
             ddkit_argv: List[str], command: str, how: str, walls: bool = False,
             extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """One results row from whatever has finished under <w>: both judges on both sets, the teacher check, the
    speed per class (official: timing.json; ddkit: the mean of its set's class_seconds). `walls` adds both sides'
    wall seconds; `extra` goes in before the `written` stamp."""
    t_off, t_dd = read_json(w / "official" / "timing.json"), read_json(w / "ddkit_timing.json")
    s_dd = round(sum(t_dd["class_seconds"]) / len(t_dd["class_seconds"]), 3) if t_dd.get("class_seconds") else None
    row = {"settings": settings, "official_argv": official_argv,
           # repository-relative, whichever checkout ran the distillation (its teacher path is in the argv)
           "ddkit_command": re.sub(r"\S*/(bench/teachers/)", r"\1", " ".join(t_dd.get("argv", ddkit_argv))),
           "command": command,
           "judges": fold_judges(w, a.seeds), "teacher_check": read_json(w / "official" / "teacher_check.json"),
           "speed": {"official_s_per_iteration": t_off.get("class_seconds_mean"), "ddkit_s_per_iteration": s_dd,
                     "official_loadavg_at_end": t_off.get("loadavg_at_end"),
                     "ddkit_loadavg_at_end": t_dd.get("loadavg_at_end"), "how": how}}
    if walls:
        row.update(official_seconds={"wall_s": t_off.get("wall_s")}, ddkit_seconds={"wall_s": t_dd.get("wall_s")})
    # the revision that made ddkit's set (its meta), and the one that wrote this row (they differ on a rewrite)
    made = read_json(w / "ddkit_set" / "meta.json").get("git_revision")
    row.update(machine=t_off.get("machine") or lscpu(), ddkit_revision=made[:7] if made else revision(),
               row_revision=revision(), **(extra or {}))
    row["written"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return row


def write_row(method: str, repo: str, commit: str, edits: str, judges: Dict[str, str], row: Dict[str, Any]) -> None:
    """The row as `ipc10` of bench/results/parity_<method>.json (the file's other rows kept)."""
    save_row(method, {"repo": repo, "commit": commit}, edits, judges, "ipc10", row)


def pair_args(argv: Optional[List[str]], doc: str, steps: Sequence[str], eval_epochs: int,
              add: Optional[Callable[[argparse.ArgumentParser], None]] = None) -> argparse.Namespace:
    """The drivers' command line: `step`, (the method's own flags,) --seeds, --eval-epochs, --side, --seed, --runs
    (made absolute: the steps change directory)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("step", choices=tuple(steps))
    if add:
        add(ap)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--eval-epochs", type=int, default=eval_epochs)
    ap.add_argument("--side", default="official")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", default="/work/runs/h27s")
    a = ap.parse_args(argv)
    a.runs = str(Path(a.runs).resolve())
    return a


def run_step(script: str, a: argparse.Namespace, step: str, flags: List[str], side: str = "", seed: int = 0) -> None:
    """One step of `script` in its own process (the official modules read sys.argv at import and chdir)."""
    cmd = [PY, script, step, "--runs", a.runs] + flags + ["--seeds", str(a.seeds), "--eval-epochs", str(a.eval_epochs)]
    if side:
        cmd += ["--side", side, "--seed", str(seed)]
    subprocess.run(cmd, check=True)


def run_all(script: str, a: argparse.Namespace, w: Path, steps: Sequence[str], flags: List[str],
            row: Callable[[argparse.Namespace, Path], None]) -> None:
    """`all`: the set-up `steps`, then seed-major both judges on both sets, the row rewritten after each judge run
    (so a stopped run leaves a row of what has finished)."""
    for s in steps:
        run_step(script, a, s, flags)
    for seed in range(a.seeds):
        for side in ("official", "ddkit"):
            for judge in ("ddkit", "official"):
                run_step(script, a, f"judge-{judge}", flags, side, seed)
                row(a, w)
