"""Parity pair for MTT (GeorgeCazenavette/mtt-distillation @ 50dccea) against ddkit's `mtt` (issue #27).

    python bench/parity/mtt_pair.py all --buffer BUF --runs RUNS  # defaults: the committed row's settings

One expert buffer for both sides (ddkit's `experts train`, ZCA, 100 images per class; `convert` writes it as the
official replay_buffer_0.pt and checks both ConvNets give equal logits on it) and one ZCA space (the official
get_dataset is handed the experts' 1000 images as its train split, so its kornia ZCA is fitted on what the
buffer's was). Steps, each skipped when its output exists (bench/parity/README.md says them in full):
experts, convert, official-distill then ddkit-distill (one thread each), to-ddkit, the judge runs (ddkit
`evaluate --protocol native`; the official utils.evaluate_synset), row (bench/results/parity_mtt.json).
Settings, argvs, the data hand-over and the row: mtt_setup.py.
Nothing of the official code is here: it runs from /work/peers/mtt-distillation, changed only from outside (EDITS).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import runpy
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (CACHE, DATA, RESULTS, ROOT, StampedTee, add_diagnostics, dispatch, judge_file,  # noqa: E402
                    load_split, lscpu, official_repo, read_json, run_draw_steps, run_pool, write_json)
from mtt_setup import (COMMIT, PEER, PY, REPO, ROWS, STRATEGY, SubsetCIFAR10, configure,  # noqa: E402
                       ddkit_argv, draw_name, draws, expert_subset, experts_argv, official_argv,
                       official_buffer, official_dir, opts, peak_mb, per_it, variant, workdir, write_row)


def experts(a: argparse.Namespace) -> None:
    """Train the shared buffer with ddkit (two shards side by side; resumes)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    procs = [subprocess.Popen([PY, "-m"] + experts_argv(a) + ["--shard", f"{i}/2"], env=env) for i in range(2)]
    if any(p.wait() for p in procs):
        raise SystemExit("expert training failed")


def convert(a: argparse.Namespace) -> None:
    """ddkit buffer -> <workdir>/official_buffer/CIFAR10/ConvNet/replay_buffer_0.pt (ZCA: no _NO_ZCA suffix)."""
    import torch

    from ddkit.models import create_model
    from ddkit.teachers.expert_buffer import load_buffer

    buf = load_buffer(a.buffer, load_split("train"), arch="convnet-d3", zca=True, need_epochs=0)
    with official_repo(PEER):
        from utils import get_network

        net = get_network("ConvNet", 3, 10, (32, 32), dist=False)
    shapes = [p.shape for p in net.parameters()]
    trajs = []
    for e in range(buf.num_experts):
        t = buf.trajectory(e)
        trajs.append([[c.reshape(s).clone() for c, s in zip(row.split([s.numel() for s in shapes]), shapes)]
                      for row in t])
    # check: the same flat vector in both networks gives the same logits
    ours = create_model("convnet-d3", 10, 32, 3)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for model, params in ((net, trajs[0][-1]), (ours, trajs[0][-1])):
        with torch.no_grad():
            for p, v in zip(model.parameters(), params):
                p.copy_(v)
    with torch.no_grad():
        diff = float((net(x) - ours(x)).abs().max())
    out = official_buffer(a) / "CIFAR10" / "ConvNet"
    out.mkdir(parents=True, exist_ok=True)
    torch.save(trajs, out / "replay_buffer_0.pt")
    write_json(official_buffer(a) / "convert.json", {"from": a.buffer, "experts": buf.num_experts, "snapshots": len(trajs[0]),
                                             "max_logit_difference": diff, "file": str(out / "replay_buffer_0.pt")})


def wandb_stub(record: Dict[str, Any], keep: Sequence[str] = ("Grand_Loss", "Synthetic_LR"),
               reseed: Optional[int] = None) -> types.ModuleType:
    """What distill.py (and DATM's DATM.py) use of wandb, recording instead of logging: the logged scalars named
    in `keep`, one list each; finish() keeps the final set (DATM's label_syn: its learned label logits). With
    `reseed`, init() first calls the script's own manual_seed(reseed): DATM.py's main seeds 0 itself before
    anything draws, and its wandb.init is the first call back into the driver after that (only get_dataset,
    which draws nothing, runs between), so the run's streams start as if main had seeded `reseed`."""
    w = types.ModuleType("wandb")
    w.config = types.SimpleNamespace(_items={})
    w.run = types.SimpleNamespace(name="parity")

    def init(config: Any = None, **_: Any) -> None:
        if reseed is not None:
            seeder = sys._getframe(1).f_globals.get("manual_seed")  # the script's module namespace
            if seeder is None:
                raise SystemExit("wandb.init: the official script defines no manual_seed to reseed with")
            seeder(reseed)
            record["reseeded"] = reseed
        w.config._items = dict(vars(config))

    def log(d: Dict[str, Any], step: Any = None) -> None:
        if "Progress" in d:
            record["stamps"].append([int(d["Progress"]), time.monotonic()])
        for k in keep:
            if k in d:
                record.setdefault(k, []).append(float(d[k]))

    def finish() -> None:
        f = sys._getframe(1).f_locals  # distill.main's locals at its end
        record["stamps"].append([len(record["stamps"]), time.monotonic()])
        record["final"] = {"image_syn": f["image_syn"].detach().cpu().clone(), "syn_lr": float(f["syn_lr"]),
                           "label_syn": f["label_syn"].detach().cpu().clone()}

    w.init, w.log, w.finish = init, log, finish
    w.Histogram = w.Image = lambda *x, **k: None
    return w


def official_distill(a: argparse.Namespace) -> None:
    run_official(official_dir(a), "distill.py", official_argv(a), seed=a.draw)


def run_official(out: Path, script: str, argv: List[str], peer: str = PEER,
                 keep: Sequence[str] = ("Grand_Loss", "Synthetic_LR"), seed: int = 0, reseed: bool = False) -> None:
    """Run the official `script` (a path in the checkout /work/peers/`peer`) as __main__ with `argv`, in `out`,
    changed from outside as EDITS says; write its final set (final.pt) and timing.json (stamps, the logged
    scalars named in `keep`, seconds/iteration, peak RSS, machine). Python/numpy/torch are seeded with `seed`;
    `reseed`: the script's own manual_seed is called with `seed` again at its wandb.init (wandb_stub)."""
    import numpy as np
    import torch
    import torchvision.datasets

    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)
    record: Dict[str, Any] = {"stamps": []}
    sys.modules["wandb"] = wandb_stub(record, keep, seed if reseed else None)
    tee = StampedTee(out / "stdout.log", sys.__stdout__)
    cuda, torch.Tensor.cuda = torch.Tensor.cuda, lambda self, *x, **k: self
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)  # MTT's distill.py seeds nothing (DATM.py: 0)
    with official_repo(peer) as repo:
        torchvision.datasets.CIFAR10 = SubsetCIFAR10
        sys.argv, sys.stdout = list(argv), tee
        try:
            runpy.run_path(str(repo / script), run_name="__main__")
        finally:
            sys.stdout, torch.Tensor.cuda = sys.__stdout__, cuda
    final = record.pop("final")
    torch.save(final, out / "final.pt")
    st = record.pop("stamps")
    write_json(out / "timing.json", {"argv": list(argv), "stamps": st, **record, **per_it(st),
                                     "final_syn_lr": final["syn_lr"], "peak_rss_mb": peak_mb(),
                                     "machine": lscpu()})


def ddkit_distill(a: argparse.Namespace) -> None:
    """ddkit's side of a draw; with --ddkit-start experts its train split is the experts' 1000 images (the
    official side's through the hand-over), so its real start is drawn from them: expert_subset keeps the
    split's name and classes, which is all the buffer check asks of it."""
    if a.ddkit_start == "experts":
        from ddkit import cli_commands

        whole = cli_commands._dataset
        cli_commands._dataset = lambda args, split: expert_subset()[0] if split == "train" else whole(args, split)
    run_ddkit(ddkit_argv(a), workdir(a), draw_name(a, "ddkit"))


def run_ddkit(argv: List[str], w: Path, name: str = "ddkit") -> None:
    """`ddkit` + `argv` (a distill writing <w>/<name>_set) in-process, LossLog.step time-stamped; write
    <w>/<name>_timing.json (stamps, seconds/iteration, wall time, learned lr, peak RSS, allocator, machine)."""
    from ddkit.cli import main as cli
    from ddkit.methods import matching_ops

    stamps: List[List[float]] = []
    step = matching_ops.LossLog.step

    def stamped(self: Any, it: int, *x: Any, **k: Any) -> None:
        stamps.append([it, time.monotonic()])
        step(self, it, *x, **k)

    matching_ops.LossLog.step = stamped
    t0 = time.monotonic()
    if cli(argv):
        raise SystemExit("ddkit distill failed")
    meta = json.loads((w / f"{name}_set" / "meta.json").read_text())
    write_json(w / f"{name}_timing.json", {"argv": ["ddkit"] + argv, "stamps": stamps, **per_it(stamps),
                                         "wall_s": round(time.monotonic() - t0, 1),
                                         "syn_lr": meta.get("learned_lr"), "peak_rss_mb": peak_mb(),
                                         "allocator": allocator(), "machine": lscpu()})


def allocator() -> Dict[str, Any]:
    """ddkit's allocator setting in this process (ddkit.allocator: on unless DDKIT_KEEP_FREED_MEMORY=0), since it
    moves the peak memory of an MTT unroll (bench/results/mtt_allocator_memory_cpu.json)."""
    from ddkit import allocator as alloc

    return {"DDKIT_KEEP_FREED_MEMORY": os.environ.get("DDKIT_KEEP_FREED_MEMORY"), "keep_freed_memory": alloc.active()}


def to_ddkit(a: argparse.Namespace) -> None:
    import torch

    from ddkit.distilled import DistilledSet

    final = torch.load(official_dir(a) / "final.pt", weights_only=True)
    sub, zca = expert_subset()
    test = load_split("test")
    images = zca.invert(final["image_syn"].float())
    meta = {"method": "official-mtt", "ipc": a.ipc, "native": "mtt", "learned_lr": final["syn_lr"],
            "parity": {"repo": f"{REPO}@{COMMIT[:7]}", "argv": official_argv(a)}}
    DistilledSet(images, final["label_syn"].long(), list(test.classes), test.mean, test.std, {}, meta,
                 zca=zca).save(workdir(a) / f"{draw_name(a, 'official')}_set", overwrite=True, pngs=False)


def init_sets(a: argparse.Namespace) -> None:
    """Each side's STARTING images as a set (official: its iteration-0 save, ZCA space; ddkit: the real images of
    its meta source_indices), learned lr = the official set's, to judge what the initial draw alone gives."""
    import torch

    from ddkit.distilled import DistilledSet

    _, zca = expert_subset()
    test, train = load_split("test"), load_split("train")
    start = torch.load(workdir(a) / "official" / "logged_files" / "CIFAR10" / "parity" / "images_0.pt",
                       weights_only=True)
    src = json.loads((workdir(a) / "ddkit_set" / "meta.json").read_text())["source_indices"]
    lr = read_json(workdir(a) / "official" / "timing.json")["final_syn_lr"]
    labels = torch.arange(10).repeat_interleave(a.ipc)
    for side, images in (("official", zca.invert(start.float())), ("ddkit", train.get(torch.tensor(src)).float() / 255)):
        DistilledSet(images, labels, list(test.classes), test.mean, test.std, {}, {"native": "mtt", "learned_lr": lr},
                     zca=zca).save(workdir(a) / f"{side}_init_set", overwrite=True, pngs=False)


def judge_ddkit(a: argparse.Namespace, side: str, seed: int, w: Optional[Path] = None) -> None:
    """`ddkit evaluate <w>/<side>_set --protocol native` for one student seed (w: the pair's work folder)."""
    w = w or workdir(a)
    out = w / f"eval_ddkit_{side}" / f"seed{seed}"
    argv = [PY, "-m", "ddkit", "evaluate", str(w / f"{side}_set"), "--dataset", DATA, "--cache-dir", CACHE,
            "--device", "cpu", "--no-progress", "--no-random", "--seeds", "1", "--seed", str(seed), "--output",
            str(out), "--overwrite", "--protocol", "native", "--epochs", str(a.eval_epochs)]
    subprocess.run(argv, check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def judge_official(a: argparse.Namespace, side: str, seed: int) -> None:
    """The official evaluate_synset: ZCA'd test split from its get_dataset, lr_net = the set's learned lr."""
    import torch
    import torchvision.datasets

    from ddkit.distilled import load_distilled

    out = workdir(a) / f"eval_official_{side}" / f"seed{seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    ds = load_distilled(workdir(a) / f"{side}_set")
    with official_repo(PEER):
        torchvision.datasets.CIFAR10 = SubsetCIFAR10
        import utils as off

        args = argparse.Namespace(zca=True, device="cpu", dataset="CIFAR10", lr_net=ds.learned_lr, batch_train=256,
                                  dsa=True, dsa_strategy=STRATEGY, dsa_param=off.ParamDiffAug(), dc_aug_param=None,
                                  epoch_eval_train=a.eval_epochs)
        got = off.get_dataset("CIFAR10", "data", 256, args=args)
        testloader, kornia_zca = got[8], args.zca_trans
        with torch.no_grad():
            images = kornia_zca(ds.images.float())  # the set's [0,1] pixels into the official ZCA space
            sub, zca = expert_subset()
            x = sub.images[:500].float() / 255
            zca_diff = float((kornia_zca(x) - zca.apply(x)).abs().max())
        net = off.get_network("ConvNet", 3, 10, (32, 32))  # init from the clock, as officially
        torch.manual_seed(seed)  # shuffling and DSA draws follow the seed
        t0 = time.monotonic()
        _, _, acc = off.evaluate_synset(seed, net, images, ds.labels.clone(), testloader, args)
    write_json(out, {"seed": seed, "acc": round(100 * acc, 2), "lr_net": ds.learned_lr, "epochs": a.eval_epochs,
                     "kornia_vs_ddkit_zca_max_abs": zca_diff, "seconds": round(time.monotonic() - t0, 1)})


def run_all(a: argparse.Namespace) -> None:
    """Every step not done yet; the distillations side by side, the judge runs two at a time."""
    w = workdir(a)
    w.mkdir(parents=True, exist_ok=True)
    base = [PY, __file__] + opts(a)
    if not (Path(a.buffer) / f"expert_{a.experts - 1:04d}.safetensors").is_file():
        subprocess.run(base + ["experts"], check=True)
    if not (official_buffer(a) / "convert.json").is_file():
        subprocess.run(base + ["convert"], check=True)
    todo = [t for t, f in (("official-distill", w / "official" / "timing.json"),
                           ("ddkit-distill", w / "ddkit_timing.json")) if not f.is_file()]
    # one after the other unless --together: an IPC-10 unroll holds ~10 GB on either side (batch_syn 50)
    run_pool(base, [[t] for t in todo], 2 if a.together else 1)
    if not (w / "official_set" / "meta.json").is_file():
        subprocess.run(base + ["to-ddkit"], check=True)
    run_pool(base, [[f"judge-{j}", side, "--seed", str(s)] for s in range(a.seeds) for j in ("ddkit", "official")
                    for side in ("official", "ddkit") if not judge_file(w, j, side, s).is_file()], a.workers)
    write_row(a)


def at_draw(a: argparse.Namespace, k: int, **kw: Any) -> argparse.Namespace:
    """A copy of the run's options at draw K (and any other option given), `a` left as it is."""
    return argparse.Namespace(**{**vars(a), "draw": k, **kw})


def run_draws(a: argparse.Namespace) -> None:
    """Distillation draws 1 .. --draws-1 of both sides (the pair's own is draw 0), each judged by ddkit (student
    seed 0), then the row: its diagnostics.draws holds the draw-level verdict. One distillation at a time (~10 GB
    each at IPC 10), under --lock where the machine is shared; every finished step is kept (common.run_draw_steps)."""
    w = workdir(a)

    def steps(k: int) -> List[Any]:
        b = at_draw(a, k)
        return [("official-distill", official_dir(b) / "timing.json", True),
                ("to-ddkit", w / f"{draw_name(b, 'official')}_set" / "meta.json", False),
                ("ddkit-distill", w / f"{draw_name(b, 'ddkit')}_timing.json", True)]

    run_draw_steps([PY, __file__] + opts(a), w, range(1, a.draws), steps,
                   lambda k: [draw_name(at_draw(a, k), s) for s in ("official", "ddkit")], a.lock)
    add_draws(a)


def experts_start(a: argparse.Namespace) -> None:
    """Diagnostic: ddkit draws 0 .. --draws-1 with the real start drawn from the experts' 1000 images (as the
    official side's is), each judged by ddkit (student seed 0), folded against the official draws already judged
    (`draws`) into the row's diagnostics.experts_start. Separates the start pool from the method."""
    w = workdir(a)

    def name(k: int) -> str:
        return draw_name(at_draw(a, k, ddkit_start="experts"), "ddkit")

    run_draw_steps([PY, __file__] + opts(a) + ["--ddkit-start=experts"], w, range(a.draws),
                   lambda k: [("ddkit-distill", w / f"{name(k)}_timing.json", True)], lambda k: [name(k)], a.lock)
    add_draws(a)


def add_draws(a: argparse.Namespace) -> None:
    """Put the draw-level verdicts into the pair's existing row of bench/results/parity_mtt.json, the rest of the
    row (its commands, revision and notes) untouched."""
    add_diagnostics(RESULTS / "parity_mtt.json", f"ipc{a.ipc}{variant(a)}", draws(workdir(a)).get("diagnostics", {}))


def main(argv: List[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=("all", "experts", "convert", "official-distill", "ddkit-distill", "to-ddkit",
                                     "judge-ddkit", "judge-official", "init-sets", "draws", "experts-start",
                                     "row"))
    ap.add_argument("sides", nargs="*", help="judge steps: official and/or ddkit")
    ap.add_argument("--ipc", type=int, default=10, choices=sorted(ROWS))
    ap.add_argument("--iterations", type=int, default=3, help="both sides: N (inclusive range, N + 1 updates)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="judge steps: the student seed")
    ap.add_argument("--eval-epochs", type=int, default=60, help="both judges (MTT's native: 1000)")
    ap.add_argument("--experts", type=int, default=3)
    ap.add_argument("--expert-epochs-trained", type=int, default=12, help="max_start_epoch + expert_epochs")
    ap.add_argument("--expert-batch", type=int, default=16, help="expert SGD batch (buffer.py: 256; README)")
    ap.add_argument("--max-start-epoch", type=int, default=10, help="both sides (0: the row's, IPC 10: 20, IPC 1: 2)")
    ap.add_argument("--batch-syn", type=int, default=50, help="synthetic images per student step, both sides (0: all, "
                                                              "the row's)")
    ap.add_argument("--lr-img", type=float, default=0, help="both sides' lr_img instead of the row's (0: the row's); "
                                                             "the row is then written as ipc<k>-lrimg<v>")
    ap.add_argument("--together", action="store_true", help="both distillations at the same time")
    ap.add_argument("--buffer", default="/work/runs/parity/mtt_buffer")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runs", default="/work/runs/parity")
    ap.add_argument("--draw", type=int, default=0, help="distill steps: the draw (0: the pair's own sets)")
    ap.add_argument("--draws", type=int, default=5, help="draws: draws per side in all, the pair's own included")
    ap.add_argument("--lock", default=None, help="draws: a file locked (flock) around each distillation")
    ap.add_argument("--ddkit-start", default="all", choices=("all", "experts"),
                    help="ddkit-distill: draw the real start from the whole train split (the row) or from the "
                         "experts' 1000 images, as the official side does (the experts-start diagnostic)")
    a = ap.parse_args(argv)
    if a.ddkit_start != "all" and a.step not in ("ddkit-distill", "judge-ddkit"):
        # the row's steps and `draws` name and hand over ddkit's sets from the whole split; `experts-start` passes
        # the option to its own ddkit-distill steps
        ap.error(f"--ddkit-start {a.ddkit_start} is for the ddkit-distill step (run it through `experts-start`), "
                 f"not for {a.step}")
    configure(a)
    steps = {"all": run_all, "experts": experts, "convert": convert, "official-distill": official_distill,
             "ddkit-distill": ddkit_distill, "to-ddkit": to_ddkit, "init-sets": init_sets, "draws": run_draws,
             "experts-start": experts_start,
             "row": write_row}
    dispatch(a, steps, {"judge-ddkit": judge_ddkit, "judge-official": judge_official})


if __name__ == "__main__":
    main()
