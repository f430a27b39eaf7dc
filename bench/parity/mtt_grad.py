"""Same-start gradient check of MTT against GeorgeCazenavette/mtt-distillation @ 50dccea (issue #27).

    python bench/parity/mtt_grad.py --buffer BUF --official-buffer OFFBUF [--ipc 1] [--iterations 0]

The MTT pair (mtt_pair.py) compares two distillations that differ in every random draw, so a set-level gap
cannot tell a draw from a deviation. This check puts both sides in the SAME state and compares what one
(or a few) MTT iterations compute: the same synthetic images (the official run's real-image start, in ZCA
space, handed to ddkit), the same syn_lr, the same expert (expert 0 of the shared buffer: --max_experts 1 /
max_experts 1), the same start epoch per iteration, the same per-step minibatch order of the synthetic images
(both sides' torch.randperm over the set served from one list of permutations), DSA off on both. Compared per
iteration: the gradient w.r.t. the images and w.r.t. syn_lr (read where each side's SGD optimiser steps),
the matching loss, and after the last update the images themselves.

The floor is the official code against itself from a start nudged by 1e-6 (recover_loop.py's rule); ddkit
passes when every quantity of the first iteration is within 1.5x the floor's relative difference, and a
control (ddkit with one student step fewer) must fail that; later iterations are reported apart
(tm_grad.RULE). Nothing of the official code is here: distill.py runs
unmodified from /work/peers/mtt-distillation, changed only from outside (EDITS says how, in words).
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
from mtt_setup import COMMIT, PEER, REPO, STRATEGY, SubsetCIFAR10  # noqa: E402
from tm_grad import (NUDGE, RULE, DSADraws, Replay, _read, capture_steps, compare_runs,  # noqa: E402
                     grad_verdict, refresh_verdicts, run_ddkit_replayed, summarise)

def official_argv(a: argparse.Namespace, off_buffer: str) -> List[str]:
    return ["distill.py", "--dataset", "CIFAR10", "--model", "ConvNet", "--ipc", str(a.ipc), "--syn_steps",
            str(a.syn_steps), "--expert_epochs", str(a.expert_epochs), "--max_start_epoch", str(a.max_start_epoch),
            "--zca", "--lr_img", str(a.lr_img), "--lr_lr", str(a.lr_lr), "--lr_teacher", "0.01", "--Iteration",
            str(a.iterations), "--num_eval", "0", *([] if a.dsa else ["--no_aug", "True"]), "--max_experts", "1",
            "--buffer_path", off_buffer,
            "--data_path", "data", *(["--batch_syn", str(a.batch_syn)] if a.batch_syn else [])]


def run_official(a: argparse.Namespace, replay: Replay, dsa: Optional[DSADraws], nudge: float = 0.0) -> Dict[str, Any]:
    """One run of the official distill.py (seeded as mtt_pair.py does), draws served by `replay`."""
    from mtt_pair import wandb_stub

    out = Path(a.work) / ("official_nudged" if nudge else "official")
    out.mkdir(parents=True, exist_ok=True)
    here = os.getcwd()
    os.chdir(out)
    wb: Dict[str, Any] = {"stamps": []}
    sys.modules["wandb"] = wandb_stub(wb)
    rec: Dict[str, Any] = {}
    cuda, torch.Tensor.cuda = torch.Tensor.cuda, lambda self, *x, **k: self
    randint = np.random.randint
    np.random.randint = lambda low, high, *x, **k: replay.start(low, high)  # its only randint: the start epoch
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    t0 = time.monotonic()
    try:
        with official_repo(PEER) as repo, replay.active(), capture_steps(rec, nudge), \
                dsa.official() if dsa else contextlib.nullcontext():
            import torchvision.datasets

            torchvision.datasets.CIFAR10 = SubsetCIFAR10
            sys.argv = official_argv(a, str(Path(a.official_buffer).resolve()))
            with contextlib.redirect_stdout(open(out / "stdout.log", "w")):
                runpy.run_path(str(repo / "distill.py"), run_name="__main__")
    finally:
        torch.Tensor.cuda, np.random.randint = cuda, randint
        os.chdir(here)
    rec["loss"] = [torch.tensor(v) for v in wb.get("Grand_Loss", [])]
    rec["seconds"] = round(time.monotonic() - t0, 1)
    rec["served"], rec["start_bounds"] = dict(replay.served), list(replay.bounds)
    return rec


def run_ddkit(a: argparse.Namespace, start: torch.Tensor, replay: Replay, dsa: Optional[DSADraws],
              syn_steps: int) -> Dict[str, Any]:
    """ddkit's registered `mtt` method, every draw it makes served by `replay`, its real-image start = `start`."""
    from ddkit.methods import mtt as M
    from mtt_setup import load_split

    ipc = a.ipc

    class SameStart:  # stands in for matching_ops.RealPool: class c's rows of the official start
        def __init__(self, *x: Any) -> None:
            pass

        def batch(self, c: int, n: int, g: Any) -> Any:
            return start[c * ipc:(c + 1) * ipc].clone(), torch.arange(c * ipc, (c + 1) * ipc)

    cfg = M.MTTConfig(ipc=ipc, seed=0, buffer=a.buffer, iterations=a.iterations, syn_steps=syn_steps,
                      expert_epochs=a.expert_epochs, max_start_epoch=a.max_start_epoch, batch_syn=a.batch_syn,
                      zca=True, lr_img=a.lr_img, lr_lr=a.lr_lr, lr_teacher=0.01, init="real",
                      dsa_strategy=STRATEGY if dsa else "none",
                      max_experts=1)
    dataset = load_split("train")
    return run_ddkit_replayed(
        lambda: list(M.mtt(dataset, None, cfg, list(range(10)), device=torch.device("cpu"), progress=False)),
        replay, (M, "RealPool", SameStart), dsa.ddkit() if dsa else None)



EDITS = ("None to the official files. distill.py runs as __main__ (runpy) from the pinned checkout with its own "
         "argparse (--no_aug True: its own switch for no augmentation in the unroll, since with --dsa False its "
         "iteration-0 block fails on args.dc_aug_param; or, with --dsa, its default DSA; --max_experts 1; "
         "--num_eval 0) and these changes from outside, for the duration of "
         "the run: (1) torch.randperm, when asked for a permutation of the synthetic set's size (distill.py's "
         "minibatch order), returns the next of a list of permutations drawn once by the driver (the same list for "
         "every run and for ddkit); any other length is torch's own; (2) numpy.random.randint (its one call is the "
         "start epoch) returns the next of a list of start epochs drawn once by the driver; (3) torch.optim.SGD.step "
         "is wrapped to copy each parameter's .grad and value before, and the value after, the update (image_syn "
         "and syn_lr); for the floor run only, SGD.__init__ first adds 1e-6 to the 4-D parameter (image_syn, ZCA "
         "space) it is given; (4) as mtt_pair.py: a wandb stub (records Grand_Loss), torch.Tensor.cuda the "
         "identity, torchvision.datasets.CIFAR10 = ddkit's decode cut to the experts' 1000-image subset (its kornia "
         "ZCA is fitted on it and the real-image start drawn from it), kornia 0.9.0 on the path, random/numpy/torch "
         "seeded 0; (5) with --dsa only: torch.rand/torch.randint called from its utils.py (DiffAugment's draws) "
         "draw from a torch.Generator of ours seeded --draw-seed instead of the global RNG (which its get_network "
         "reseeds from the clock every iteration, so the floor run could not draw alike) and are recorded. Expert "
         "buffer: ddkit's, converted by mtt_pair.py convert (replay_buffer_0.pt); --max_experts 1 makes expert 0 "
         "the trajectory of every iteration. ddkit side (ours, changed from outside as well): its registered `mtt` "
         "method run in-process with max_experts 1, dsa_strategy none (with --dsa: the official strategy, one op "
         "per call, its OneOf.sample wrapped to take the op the official call chose and build that op's "
         "parameters through its own sample() from the official raw draws) and the same settings; "
         "matching_ops.RealPool replaced by a stand-in that returns the official run's starting image_syn rows "
         "(ZCA space) for each class, torch.randint (its one call: the start epoch) and torch.randperm served "
         "from the same lists, SGD wrapped the same way, LossLog.step wrapped to record the loss.")


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--buffer", default="/work/runs/h27m/buffer_b16", help="ddkit expert buffer (ZCA)")
    ap.add_argument("--official-buffer", default="/work/runs/mttg/parity/mtt_official_buffer_b16",
                    help="its conversion (mtt_pair.py convert): the folder holding CIFAR10/ConvNet/replay_buffer_0.pt")
    ap.add_argument("--ipc", type=int, default=1)
    ap.add_argument("--syn-steps", type=int, default=50)
    ap.add_argument("--expert-epochs", type=int, default=2)
    ap.add_argument("--max-start-epoch", type=int, default=2)
    ap.add_argument("--batch-syn", type=int, default=0, help="0: every image per step")
    ap.add_argument("--lr-img", type=float, default=1000.0)
    ap.add_argument("--lr-lr", type=float, default=1e-7)
    ap.add_argument("--iterations", type=int, default=0, help="inclusive range: N + 1 iterations (updates)")
    ap.add_argument("--draw-seed", type=int, default=0, help="seed of the shared permutations, start epochs and "
                                                              "augmentation draws")
    ap.add_argument("--dsa", action="store_true", help="DSA on both sides, ddkit served the official draws")
    ap.add_argument("--key", default="", help="row key in the result file (default ipc<k>_n<steps>_b<batch>_it<N>)")
    ap.add_argument("--work", default="/work/runs/mttg/grad")
    ap.add_argument("--out", default=str(RESULTS / "mtt_grad_parity_cpu.json"))
    a = ap.parse_args(argv)
    command = f"python bench/parity/{Path(__file__).name} " + " ".join(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(1)
    mtt_setup.ARGS.buffer = a.buffer
    n = 10 * a.ipc
    key = a.key or f"ipc{a.ipc}_n{a.syn_steps}_b{a.batch_syn or 'all'}_it{a.iterations}" + ("_dsa" if a.dsa else "")
    a.work = str(Path(a.work) / key)
    g = torch.Generator().manual_seed(a.draw_seed)
    perms = [torch.randperm(n, generator=g) for _ in range((a.iterations + 1) * a.syn_steps)]
    starts = torch.randint(0, a.max_start_epoch, (a.iterations + 1,), generator=g).tolist()

    def replay() -> Replay:
        return Replay(n, perms, starts)

    dsa = DSADraws("mtt-distillation/utils.py", a.draw_seed) if a.dsa else None
    off = run_official(a, replay(), dsa)
    floor = run_official(a, replay(), dsa, nudge=NUDGE)  # the same draws again: the same seeded stream
    start = off["before_images"][0]
    dd = run_ddkit(a, start, replay(), dsa, a.syn_steps)
    ctl = run_ddkit(a, start, replay(), dsa, a.syn_steps - 1)
    d_dd, d_floor, d_ctl = compare_runs(dd, off), compare_runs(floor, off), compare_runs(ctl, off)
    verdict = grad_verdict(d_dd, d_floor, d_ctl)
    row = {"settings": {"ipc": a.ipc, "syn_steps": a.syn_steps, "expert_epochs": a.expert_epochs,
                        "max_start_epoch": a.max_start_epoch, "batch_syn": a.batch_syn or "all", "lr_img": a.lr_img,
                        "lr_lr": a.lr_lr, "lr_teacher": 0.01, "iterations": a.iterations, "zca": True,
                        "dsa": f"{STRATEGY}, one op per call, the official draws" if a.dsa else "off",
                        "expert": 0, "start_epochs": starts, "draw_seed": a.draw_seed},
           "command": command,  # sys.argv is the official script's by now
           "official_argv": official_argv(a, a.official_buffer),
           "relative_difference_to_official": {"ddkit": d_dd, "floor_official_nudged_1e-6": d_floor,
                                               "control_ddkit_syn_steps_minus_1": d_ctl},
           "verdict": verdict, "runs": {"official": summarise(off), "official_nudged": summarise(floor),
                                        "ddkit": summarise(dd), "control": summarise(ctl)},
           "start_images_rms": float(start.double().pow(2).mean().sqrt()),
           "machine": lscpu(), "torch": torch.__version__, **written()}
    doc = _read(Path(a.out))
    doc.update({"official": {"repo": REPO, "commit": COMMIT}, "edits": EDITS,
                "rule": RULE})
    doc.setdefault("rows", {})[key] = row
    refresh_verdicts(doc)
    write_json(Path(a.out), doc)
    print(f"{key}: {'PASS' if verdict['pass'] else 'FAIL'} ddkit {d_dd} floor {d_floor} control {d_ctl}")


if __name__ == "__main__":
    main()
