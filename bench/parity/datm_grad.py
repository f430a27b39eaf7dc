"""Same-start gradient check of DATM against NUS-HPC-AI-Lab/DATM @ 97ae510 (issue #27).

    python bench/parity/datm_grad.py --buffer BUF --official-buffer OFFBUF [--ipc 10] [--iterations 1]

mtt_grad.py's check for DATM, whose loss adds learned soft labels: both sides from the same state — the
official run's starting images (its samples_predicted_correctly init, ZCA space, handed to ddkit), the label
logits each side initialises from them (ddkit's own init, compared too), syn_lr, the experts in the order
0, 1, 2 (the official random.shuffle of its expert ids is the identity; ddkit's expert permutation is served
reversed, since it pops from the end), the same start epochs (each side's asked-for range recorded, so DATM's
difficulty-aligned upper bound is compared as well), the same per-step minibatch order, augmentation off —
and compares per iteration the gradients w.r.t. the images, syn_lr and the label logits, the loss, and the
set after the last update. Floor, rule and control as in mtt_grad.py. Nothing of the official code is here:
distill/DATM.py runs unmodified from /work/peers/DATM, changed only from outside (EDITS).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import random
import runpy
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mtt_setup  # noqa: E402
from common import RESULTS, lscpu, official_repo, write_json, written  # noqa: E402
from tm_grad import (NUDGE, RULE, Replay, _read, capture_steps, compare_runs, grad_verdict,  # noqa: E402
                     refresh_verdicts, rel_diff, run_ddkit_replayed, summarise)
from mtt_setup import SubsetCIFAR10, load_split  # noqa: E402

REPO, COMMIT, PEER = "NUS-HPC-AI-Lab/DATM", "97ae5109d98e749e897bd1af29bccd0515f8137e", "DATM"


def config(a: argparse.Namespace, off_buffer: str, no_aug: bool = True) -> Dict[str, Any]:
    """The YAML handed to DATM.py --cfg (types as its utils/cfg.py defaults, which yacs enforces); `no_aug`
    False keeps its DSA in the unroll (the accuracy pair, datm_pair.py)."""
    return {"dataset": "CIFAR10", "model": "ConvNet", "ipc": a.ipc, "syn_steps": a.syn_steps,
            "expert_epochs": a.expert_epochs, "lr_img": int(a.lr_img), "lr_teacher": 0.01, "lr_lr": float(a.lr_lr),
            "lr_y": float(a.lr_y), "Momentum_y": 0.9, "threshold": float(a.threshold), "batch_syn": a.batch_syn,
            "min_start_epoch": 0, "current_max_start_epoch": a.current_max_start_epoch,
            "max_start_epoch": a.max_start_epoch, "expansion_end_epoch": a.expansion_end_epoch,
            "Sequential_Generation": True, "zca": True, "pix_init": "samples_predicted_correctly",
            "parall_eva": True, "Iteration": a.iterations, "num_eval": 0, "eval_it": 10 ** 6, "skip_first_eva": True,
            "no_aug": no_aug, "buffer_path": off_buffer, "data_path": "data", "project": "parity"}


def run_official(a: argparse.Namespace, replay: Replay, nudge: float = 0.0) -> Dict[str, Any]:
    import yaml

    from mtt_pair import wandb_stub

    out = Path(a.work) / ("official_nudged" if nudge else "official")
    out.mkdir(parents=True, exist_ok=True)
    (out / "cfg.yaml").write_text(yaml.safe_dump(config(a, str(Path(a.official_buffer).resolve()))))
    here = os.getcwd()
    os.chdir(out)
    wb: Dict[str, Any] = {"stamps": []}
    sys.modules["wandb"] = wandb_stub(wb)
    rec: Dict[str, Any] = {}
    randint, shuffle = np.random.randint, random.shuffle
    np.random.randint = lambda low, high, *x, **k: replay.start(low, high)  # its one randint: the start epoch
    random.shuffle = lambda x, *r: None  # expert ids in file order: 0, 1, 2
    t0 = time.monotonic()
    try:
        with official_repo(PEER) as repo, replay.active(), capture_steps(rec, nudge):
            import torchvision.datasets

            torchvision.datasets.CIFAR10 = SubsetCIFAR10
            sys.argv = ["DATM.py", "--cfg", str(out / "cfg.yaml")]
            with contextlib.redirect_stdout(open(out / "stdout.log", "w")):
                runpy.run_path(str(repo / "distill" / "DATM.py"), run_name="__main__")
    finally:
        np.random.randint, random.shuffle = randint, shuffle
        os.chdir(here)
    rec["loss"] = [torch.tensor(v) for v in wb.get("Grand_Loss", [])]
    rec["seconds"] = round(time.monotonic() - t0, 1)
    rec["served"], rec["start_bounds"] = dict(replay.served), list(replay.bounds)
    return rec


def run_ddkit(a: argparse.Namespace, start: torch.Tensor, replay: Replay, syn_steps: int) -> Dict[str, Any]:
    """ddkit's registered `datm`, every draw served by `replay`, its correct-sample init = `start`."""
    from ddkit.methods import mtt as M

    def same_start(*x: Any, **k: Any) -> Any:
        return start.clone(), torch.arange(len(start))

    cfg = M.DATMConfig(ipc=a.ipc, seed=0, buffer=a.buffer, iterations=a.iterations, syn_steps=syn_steps,
                       expert_epochs=a.expert_epochs, max_start_epoch=a.max_start_epoch, batch_syn=a.batch_syn,
                       zca=True, lr_img=a.lr_img, lr_lr=a.lr_lr, lr_teacher=0.01, init="correct",
                       dsa_strategy="none", lr_y=a.lr_y, momentum_y=0.9, threshold=a.threshold, min_start_epoch=0,
                       current_max_start_epoch=a.current_max_start_epoch,
                       expansion_end_epoch=a.expansion_end_epoch, sequential_generation=True)
    dataset = load_split("train")
    return run_ddkit_replayed(
        lambda: list(M.datm(dataset, None, cfg, list(range(10)), device=torch.device("cpu"), progress=False)),
        replay, (M, "correct_init", same_start))


EDITS = ("None to the official files. distill/DATM.py runs as __main__ (runpy) from the pinned checkout with a "
         "--cfg YAML of ours (the settings below; num_eval 0, skip_first_eva, no_aug True: its switch for no "
         "augmentation in the unroll; parall_eva True so its samples_predicted_correctly init runs on the CPU "
         "device instead of cuda:0; threshold as set) and these changes from outside, for the duration of the run: "
         "(1) torch.randperm of the synthetic set's size returns the next of a list of permutations drawn once by "
         "the driver (the same list for every run and for ddkit); (2) numpy.random.randint (its one call in the "
         "loop: the start epoch) returns the next of a list of start epochs drawn once, and records the range "
         "asked for; (3) random.shuffle is a no-op (its expert-file and expert-id shuffles: experts 0, 1, 2 in "
         "order); (4) torch.optim.SGD.step wrapped to copy each parameter's .grad and value before, and the value "
         "after, the update (image_syn, syn_lr, label_syn); for the floor run only, SGD.__init__ first adds 1e-6 "
         "to the 4-D parameter (image_syn, ZCA space); (5) as mtt_pair.py: a wandb stub (records Grand_Loss), "
         "torchvision.datasets.CIFAR10 = ddkit's decode cut to the experts' 1000-image subset, kornia 0.9.0 and "
         "yacs 0.1.8 (pip --target /work/peers/pydeps) on the path. Expert buffer: ddkit's, converted by "
         "mtt_pair.py convert (the same replay_buffer_0.pt as the MTT check). ddkit side: its registered `datm` "
         "method in-process, the same settings, dsa_strategy none; mtt.correct_init replaced by a stand-in "
         "returning the official run's starting image_syn (ZCA space); its label init (init_label_logits) runs "
         "as it is; torch.randint (the start epoch) and torch.randperm served from the same lists, its expert "
         "permutation served as [2, 1, 0] (it pops from the end: experts 0, 1, 2); SGD and LossLog.step wrapped.")


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--buffer", default="/work/runs/h27m/buffer_b16")
    ap.add_argument("--official-buffer", default="/work/runs/mttg/parity/mtt_official_buffer_b16")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--syn-steps", type=int, default=30, help="CIFAR-10 IPC-10 YAML: 80")
    ap.add_argument("--expert-epochs", type=int, default=2)
    ap.add_argument("--batch-syn", type=int, default=20, help="YAML: 100 (every image)")
    ap.add_argument("--lr-img", type=float, default=100.0)
    ap.add_argument("--lr-lr", type=float, default=1e-5)
    ap.add_argument("--lr-y", type=float, default=2.0)
    ap.add_argument("--threshold", type=float, default=100.0, help="YAML 1.0; high so every iteration updates")
    ap.add_argument("--current-max-start-epoch", type=int, default=4)
    ap.add_argument("--max-start-epoch", type=int, default=10)
    ap.add_argument("--expansion-end-epoch", type=int, default=2, help="iterations over which the bound grows")
    ap.add_argument("--iterations", type=int, default=1)
    ap.add_argument("--draw-seed", type=int, default=0)
    ap.add_argument("--key", default="")
    ap.add_argument("--work", default="/work/runs/mttg/datm_grad")
    ap.add_argument("--out", default=str(RESULTS / "datm_grad_parity_cpu.json"))
    a = ap.parse_args(argv)
    command = f"python bench/parity/{Path(__file__).name} " + " ".join(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(1)
    mtt_setup.ARGS.buffer = a.buffer
    n, experts = 10 * a.ipc, 3
    key = a.key or f"ipc{a.ipc}_n{a.syn_steps}_b{a.batch_syn}_it{a.iterations}"
    a.work = str(Path(a.work) / key)
    g = torch.Generator().manual_seed(a.draw_seed)
    perms = [torch.randperm(n, generator=g) for _ in range((a.iterations + 1) * a.syn_steps)]
    starts = torch.randint(0, a.current_max_start_epoch, (a.iterations + 1,), generator=g).tolist()

    def replay() -> Replay:
        return Replay(n, perms, starts, fixed={experts: torch.arange(experts).flip(0)})

    off = run_official(a, replay())
    floor = run_official(a, replay(), nudge=NUDGE)
    start = off["before_images"][0]
    dd = run_ddkit(a, start, replay(), a.syn_steps)
    ctl = run_ddkit(a, start, replay(), a.syn_steps - 1)
    d_dd, d_floor, d_ctl = compare_runs(dd, off), compare_runs(floor, off), compare_runs(ctl, off)
    verdict = grad_verdict(d_dd, d_floor, d_ctl)
    labels0 = {"ddkit_vs_official": rel_diff(dd["before_labels"][0], off["before_labels"][0]),
               "official_nudged_vs_official": rel_diff(floor["before_labels"][0], off["before_labels"][0])}
    row = {"settings": {k: v for k, v in config(a, a.official_buffer).items() if k not in ("buffer_path", "data_path")},
           "start_epochs": starts, "draw_seed": a.draw_seed,
           "command": command,  # sys.argv is the official script's by now
           "relative_difference_to_official": {"ddkit": d_dd, "floor_official_nudged_1e-6": d_floor,
                                               "control_ddkit_syn_steps_minus_1": d_ctl},
           "initial_label_logits_relative_difference": labels0,
           "start_bounds_equal": dd["start_bounds"] == off["start_bounds"],
           "verdict": verdict, "runs": {"official": summarise(off), "official_nudged": summarise(floor),
                                        "ddkit": summarise(dd), "control": summarise(ctl)},
           "machine": lscpu(), "torch": torch.__version__, **written()}
    doc = _read(Path(a.out))
    doc.update({"official": {"repo": REPO, "commit": COMMIT}, "edits": EDITS,
                "rule": RULE + "; DATM adds the label-logit gradient and the initial label logits"})
    doc.setdefault("rows", {})[key] = row
    refresh_verdicts(doc)
    write_json(Path(a.out), doc)
    print(f"{key}: {'PASS' if verdict['pass'] else 'FAIL'} ddkit {d_dd} floor {d_floor} control {d_ctl} "
          f"labels0 {labels0} bounds {dd['start_bounds']} vs {off['start_bounds']}")


if __name__ == "__main__":
    main()
