"""Settings, command lines and the result row of the MTT parity pair (bench/parity/mtt_pair.py; issue #27).

What every step of the pair reads: the official CIFAR-10 rows, the run's row (set once by `configure` from the
command line), the work folder, both sides' argvs, and the data hand-over of the experts' training split (the
official get_dataset is handed the 1000 images the shared buffer was trained and whitened on). And what the
pair records: `write_row` folds the finished steps into bench/results/parity_mtt.json (key ipc<k>): both
judges on both sets (common.fold_judges), the two by-hand checks the README describes (each set at the other's
learned lr; each side's starting images), speeds, memory, the commands, and the official code's changes in
words (EDITS). Nothing of the official code is here.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (CACHE, DATA, PEERS, HandedCIFAR10, draw_fold, draw_set, fold_judges, load_split,  # noqa: E402
                    lscpu, official_run_dir, read_json, save_row, written)

REPO, COMMIT = "GeorgeCazenavette/mtt-distillation", "50dccea47ba48b9cfb3b9c59375d7da92e4e603b"
PEER = "mtt-distillation"
PYDEPS = PEERS / "pydeps"  # kornia 0.9.0 + kornia-rs (pip install --target), the official code's one extra need
STRATEGY = "color_crop_cutout_flip_scale_rotate"
#: MTT's CIFAR-10 rows (ddkit's MTT_ROWS, the paper appendix table; the README's table is an image)
ROWS = {10: {"syn_steps": 30, "expert_epochs": 2, "max_start_epoch": 20, "lr_img": 1e5, "lr_lr": 1e-5, "lr_teacher": 0.01},
        1: {"syn_steps": 50, "expert_epochs": 2, "max_start_epoch": 2, "lr_img": 1000.0, "lr_lr": 1e-7, "lr_teacher": 0.01}}
ROW: Dict[str, Any] = dict(ROWS[10])  # the row of this run (configure sets it from --ipc)
PY = sys.executable
sys.path.append(str(PYDEPS))
#: the parsed command line of this process (configure); the data hand-over reads the buffer path from it, since
#: torchvision-style dataset classes are built by the official code with its own arguments
ARGS = argparse.Namespace(buffer="/work/runs/parity/mtt_buffer")
#: the ddkit side's sets when its real start is drawn from the experts' 1000 training images (--ddkit-start
#: experts), as the official side's is through the hand-over: the diagnostic `mtt_pair.py experts-start`
XS = "ddkit_xs"


def configure(a: argparse.Namespace) -> None:
    """Make `a` this process's run: ROW from its IPC (and --max-start-epoch), ARGS for the data hand-over."""
    global ARGS
    ARGS = a
    ROW.update(ROWS[a.ipc])
    if a.max_start_epoch:
        ROW["max_start_epoch"] = a.max_start_epoch
    if getattr(a, "lr_img", 0):
        ROW["lr_img"] = a.lr_img


def variant(a: argparse.Namespace) -> str:
    """'' for the row's own settings; '-lrimg<v>' when --lr-img replaces its lr_img (a second row, same IPC)."""
    return f"-lrimg{a.lr_img:g}" if getattr(a, "lr_img", 0) else ""


def workdir(a: argparse.Namespace) -> Path:
    name = f"mtt_ipc{a.ipc}_it{a.iterations}" + (f"_bs{a.batch_syn}" if a.batch_syn else "")
    return Path(a.runs) / (name + variant(a).replace("-", "_"))


def draw_name(a: argparse.Namespace, side: str) -> str:
    """A side's set name for distillation draw --draw K: the pair's own (K = 0) is `<side>`, another `<side>_seedK`
    (common.draw_fold reads them so). Draw K seeds the official run's Python/numpy/torch RNGs and ddkit's --seed."""
    if side == "ddkit" and getattr(a, "ddkit_start", "all") == "experts":
        side = XS
    return draw_set(side, getattr(a, "draw", 0))


def official_dir(a: argparse.Namespace) -> Path:
    """The official run's work folder of this draw (its logged_files, stdout, final.pt, timing.json)."""
    return official_run_dir(workdir(a), getattr(a, "draw", 0))


def experts_argv(a: argparse.Namespace) -> List[str]:
    return ["ddkit", "experts", "train", "--dataset", DATA, "--cache-dir", CACHE, "--device", "cpu", "--no-progress",
            "--output", a.buffer, "--preset", "cpu", "--zca", "--epochs", str(a.expert_epochs_trained),
            "--num-experts", str(a.experts), "--batch-size", str(a.expert_batch)]


def official_buffer(a: argparse.Namespace) -> Path:
    return Path(a.runs) / f"mtt_official_{Path(a.buffer).name}"  # one per ddkit buffer, for every iteration count


def official_argv(a: argparse.Namespace) -> List[str]:
    return ["distill.py", "--dataset", "CIFAR10", "--model", "ConvNet", "--ipc", str(a.ipc),
            "--syn_steps", str(ROW["syn_steps"]), "--expert_epochs", str(ROW["expert_epochs"]),
            "--max_start_epoch", str(ROW["max_start_epoch"]), "--zca", "--lr_img", str(ROW["lr_img"]),
            "--lr_lr", str(ROW["lr_lr"]), "--lr_teacher", str(ROW["lr_teacher"]), "--Iteration", str(a.iterations),
            *(["--batch_syn", str(a.batch_syn)] if a.batch_syn else []),
            "--num_eval", "0", "--buffer_path", str(official_buffer(a)), "--data_path", "data"]


def ddkit_argv(a: argparse.Namespace) -> List[str]:
    return ["distill", "--dataset", DATA, "--cache-dir", CACHE, "--device", "cpu", "--no-progress", "--method", "mtt",
            "--buffer", a.buffer, "--ipc", str(a.ipc), "--iterations", str(a.iterations), "--seed", str(getattr(a, "draw", 0)),
            "--syn-steps", str(ROW["syn_steps"]), "--expert-epochs", str(ROW["expert_epochs"]),
            "--max-start-epoch", str(ROW["max_start_epoch"]), "--zca", "true", "--lr-img", str(ROW["lr_img"]),
            "--lr-lr", str(ROW["lr_lr"]), "--lr-teacher", str(ROW["lr_teacher"]), "--batch-syn", str(a.batch_syn),
            "--output", str(workdir(a) / f"{draw_name(a, 'ddkit')}_set"), "--overwrite"]


def opts(a: argparse.Namespace) -> List[str]:
    """The options of a pair, as the steps and the recorded command pass them."""
    return [f"--{k.replace('_', '-')}={getattr(a, k)}" for k in ("ipc", "iterations", "seeds", "eval_epochs", "experts",
                                                                 "expert_epochs_trained", "expert_batch",
                                                                 "max_start_epoch", "batch_syn", "buffer", "runs")] + \
        ([f"--lr-img={a.lr_img:g}"] if getattr(a, "lr_img", 0) else []) + (["--together"] if a.together else [])


def expert_subset():
    """The experts' training split (ddkit's class-balanced 100-per-class draw) and its ZCA from the buffer."""
    from ddkit.teachers.expert_buffer import read_zca
    from ddkit.teachers.experts import _subset

    header = json.loads((Path(ARGS.buffer) / "buffer.json").read_text())
    cfg = header["config"]
    return _subset(load_split("train"), cfg["subset_per_class"], cfg["seed"]), read_zca(Path(ARGS.buffer) / "zca.safetensors")


class SubsetCIFAR10(HandedCIFAR10):
    """common.HandedCIFAR10 whose train split is the experts' subset (so the official ZCA is fitted on it)."""

    def __init__(self, root: Any = None, train: bool = True, **kw: Any) -> None:
        super().__init__(root, train, **kw)
        if train:
            sub, _ = expert_subset()
            self.data = sub.images.permute(0, 2, 3, 1).contiguous().numpy()
            self.targets = [int(v) for v in sub.labels.tolist()]


def peak_mb() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def per_it(stamps: List[List[float]]) -> Dict[str, Any]:
    """Seconds/iteration from [iteration, time] stamps, iteration 0 (set-up, the official it-0 save) left out."""
    (i0, t0), (i1, t1) = stamps[1], stamps[-1]
    return {"s_per_iteration": round((t1 - t0) / (i1 - i0), 3), "timed_iterations": [int(i0), int(i1)]}


def same_lr(w: Path) -> Dict[str, Any]:
    """ddkit-judge runs (seed 0) of each set at the OTHER set's learned lr (diag_<side>_lr<lr>/, made by hand with
    `ddkit evaluate ... --lr`, README): how much of the gap between the sets the learned lr explains."""
    out = {}
    for d in sorted(w.glob("diag_*_lr*")):
        summ = d / "summary.json"
        if summ.is_file():
            r = [x for x in json.loads(summ.read_text())["results"] if x.get("set") == "distilled"][0]
            out[d.name] = {"set": d.name.split("_")[1], "lr": float(d.name.split("_lr")[1]),
                           "acc_seed0": round(100 * float(r["accs"][0]), 2)}
    return out


def init_check(w: Path) -> Dict[str, Any]:
    """ddkit-judge runs (seed 0, the official set's learned lr) of each side's starting images (init-sets; init_<side>/,
    made by hand, README): what the two starting draws alone give."""
    out = {}
    for side in ("official", "ddkit"):
        summ = w / f"init_{side}" / "summary.json"
        if summ.is_file():
            r = [x for x in json.loads(summ.read_text())["results"] if x.get("set") == "distilled"][0]
            out[side] = {"acc_seed0": round(100 * float(r["accs"][0]), 2), "lr": r["protocol"]["lr"]}
    return out


def draws(w: Path) -> Dict[str, Any]:
    """`diagnostics.draws` where extra distillation draws were judged (`mtt_pair.py draws`), and
    `diagnostics.experts_start` where the ddkit side's experts'-start draws were (`mtt_pair.py experts-start`)."""
    d = draw_fold(w, "ddkit judge, student seed 0, one accuracy per distillation draw (the row's set first; draw K "
                     "seeds the official run's Python/numpy/torch RNGs with K and runs ddkit with --seed K: other "
                     "start images, experts, start epochs, minibatches and DSA draws); the pass rule of issue #27 "
                     "on these: the set-level spread is inside the tolerance")
    x = draw_fold(w, "ddkit judge, student seed 0, one accuracy per distillation draw; the ddkit side's real start "
                     "drawn from the experts' 1000 training images (as the official side's is, through the data "
                     "hand-over) instead of the whole train split, with the same --seed K per draw as the row's "
                     "ddkit draws; the official side's draws as in `draws`", (XS, "official"))
    diag = {k: v for k, v in (("draws", d), ("experts_start", x)) if "verdict" in v}
    return {"diagnostics": diag} if diag else {}


def write_row(a: argparse.Namespace) -> None:
    """Fold the finished steps of the pair into bench/results/parity_mtt.json (key ipc<k>)."""
    w = workdir(a)
    t_off, t_dd = read_json(w / "official" / "timing.json"), read_json(w / "ddkit_timing.json")
    s_off, s_dd = t_off.get("s_per_iteration"), t_dd.get("s_per_iteration")
    ev = read_json(w / "eval_official_ddkit" / "seed0.json") or read_json(w / "eval_official_official" / "seed0.json")
    row = {"settings": {"ipc": a.ipc, "iterations": a.iterations, **ROW, "batch_syn": a.batch_syn or "all", "zca": True,
                        "dsa": STRATEGY, "experts": a.experts, "expert_epochs_trained": a.expert_epochs_trained,
                        "expert_images_per_class": 100, "expert_batch": a.expert_batch, "seeds": a.seeds, "eval_epochs": a.eval_epochs,
                        "text": f"IPC {a.ipc}, {a.iterations} it (+1: inclusive range), N {ROW['syn_steps']}, M "
                                f"{ROW['expert_epochs']}, T+ {ROW['max_start_epoch']}, batch_syn {a.batch_syn or 'all'}, ZCA, "
                                f"lr_img {ROW['lr_img']:g}, "
                                f"{a.experts} shared experts x {a.expert_epochs_trained} ep on 100 img/class (batch "
                                f"{a.expert_batch}), "
                                f"judges {a.eval_epochs} ep, {a.seeds} seeds"},
           "command": " ".join(["python", "bench/parity/mtt_pair.py", "all"] + opts(a)),
           "official_argv": official_argv(a), "ddkit_command": " ".join(["ddkit"] + ddkit_argv(a)),
           "experts_command": " ".join(experts_argv(a)), "buffer_conversion": read_json(official_buffer(a) / "convert.json"),
           "learned_syn_lr": {"official": t_off.get("final_syn_lr"), "ddkit": t_dd.get("syn_lr")},
           "loss_per_iteration": {"official": t_off.get("Grand_Loss"), "ddkit": [v for _, v in read_json(
               w / "ddkit_set" / "meta.json").get("loss_curve", [])]},
           "peak_memory_mb": {"official": t_off.get("peak_rss_mb"), "ddkit": t_dd.get("peak_rss_mb")},
           **({"ddkit_allocator": t_dd["allocator"]} if t_dd.get("allocator") else {}),
           "official_syn_lr_per_iteration": t_off.get("Synthetic_LR"),
           "kornia_vs_ddkit_zca_max_abs": ev.get("kornia_vs_ddkit_zca_max_abs"),
           "judges": fold_judges(w, a.seeds), "same_lr_check": same_lr(w), "init_check": init_check(w),
           **draws(w),
           "speed": {"official_s_per_iteration": s_off, "ddkit_s_per_iteration": s_dd,
                     "ddkit_over_official": round(s_dd / s_off, 3) if s_off and s_dd else None,
                     "official_loadavg_at_end": (t_off.get("machine") or {}).get("loadavg"),
                     "ddkit_loadavg_at_end": (t_dd.get("machine") or {}).get("loadavg"),
                     "how": ("both distillations at the same time, one thread each" if a.together else
                             "the two distillations one after the other, one thread each (~10 GB each at batch_syn "
                             "50: two did not fit the 23 GB machine beside the other jobs)") + "; seconds between the time stamps of iteration 1 and the end, per iteration "
                            "(official: its wandb.log('Progress') calls; ddkit: LossLog.step)",
                     "timed_iterations": t_off.get("timed_iterations")},
           "machine": t_off.get("machine") or lscpu(), **written()}
    save_row("mtt", {"repo": REPO, "commit": COMMIT}, EDITS, JUDGES, f"ipc{a.ipc}{variant(a)}", row)


EDITS = ("None to the official files. The driver runs distill.py as __main__ (runpy) with its own argparse and "
         "changes from outside: (1) `wandb` is a stub module (distill.py imports it and rebuilds its args from "
         "wandb.config): init keeps the args, log records the per-iteration time stamps, Grand_Loss and "
         "Synthetic_LR, finish reads the final image_syn and syn_lr from distill.main's frame (the official code "
         "saves its set only at evaluation iterations; with --num_eval 0 its in-loop evaluation is skipped and the "
         "judges below evaluate the final set); (2) torch.Tensor.cuda is the identity during the run (its "
         "iteration-0 save calls image_syn.cuda() unconditionally); (3) torchvision.datasets.CIFAR10 serves ddkit's "
         "uint8 decode of CIFAR-10 (JPEG q75) with its train split cut to the experts' 100-per-class subset, so its "
         "kornia ZCAWhitening(eps=0.1) is fitted on the images the shared expert buffer was trained and whitened "
         "with, and its real-image init draws from those 1000 images (ddkit's from the whole split); (4) kornia "
         "0.9.0 (pip --target /work/peers/pydeps) is on the path; (5) Python's random, numpy and torch are seeded "
         "with 0 before the run (it seeds none; its get_network reseeds torch from the clock every iteration). "
         "Expert buffer: ddkit's, converted to replay_buffer_0.pt (same parameter order; logits checked equal).")
JUDGES = {"ddkit": "ddkit evaluate --protocol native (both sets declare 'mtt': recipe dc (DSA), HL, the set's "
                   "learned lr, inputs and test split whitened with the set's ZCA; --epochs as the row says)",
          "official": f"utils.evaluate_synset of {REPO}@{COMMIT[:7]} as distill.py calls it: lr_net = the set's "
                      "learned syn_lr, SGD momentum 0.9 wd 5e-4, x0.1 at epoch E//2+1, batch 256, per-sample DSA, "
                      "test split whitened by its get_dataset (kornia ZCA fitted on the experts' subset); network "
                      "init from the clock (its get_network), shuffling/DSA seeded by the driver"}
