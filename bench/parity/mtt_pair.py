"""Parity pair for MTT (GeorgeCazenavette/mtt-distillation @ 50dccea) against ddkit's `mtt` (issue #27).

    python bench/parity/mtt_pair.py all --buffer BUF --runs RUNS  # defaults: the committed row's settings

One expert buffer for both sides (ddkit's `experts train`, ZCA, 100 images per class; `convert` writes it as the
official replay_buffer_0.pt and checks both ConvNets give equal logits on it) and one ZCA space (the official
get_dataset is handed the experts' 1000 images as its train split, so its kornia ZCA is fitted on what the
buffer's was). Steps, each skipped when its output exists (bench/parity/README.md says them in full):
experts, convert, official-distill then ddkit-distill (one thread each), to-ddkit, the judge runs (ddkit
`evaluate --protocol native`; the official utils.evaluate_synset), row (bench/results/parity_mtt.json).
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
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (CACHE, DATA, PEERS, RESULTS, ROOT, HandedCIFAR10, StampedTee, load_split, lscpu,  # noqa: E402
                    mean_std, official_repo, read_json, revision, verdict, write_json)

REPO, COMMIT = "GeorgeCazenavette/mtt-distillation", "50dccea47ba48b9cfb3b9c59375d7da92e4e603b"
PEER = "mtt-distillation"
PYDEPS = PEERS / "pydeps"  # kornia 0.9.0 + kornia-rs (pip install --target), the official code's one extra need
STRATEGY = "color_crop_cutout_flip_scale_rotate"
#: MTT's CIFAR-10 rows (ddkit's MTT_ROWS, the paper appendix table; the README's table is an image)
ROWS = {10: {"syn_steps": 30, "expert_epochs": 2, "max_start_epoch": 20, "lr_img": 1e5, "lr_lr": 1e-5, "lr_teacher": 0.01},
        1: {"syn_steps": 50, "expert_epochs": 2, "max_start_epoch": 2, "lr_img": 1000.0, "lr_lr": 1e-7, "lr_teacher": 0.01}}
ROW: Dict[str, Any] = dict(ROWS[10])  # the row of this run (main sets it from --ipc)
PY = sys.executable
sys.path.append(str(PYDEPS))


def workdir(a: argparse.Namespace) -> Path:
    return Path(a.runs) / f"mtt_ipc{a.ipc}_it{a.iterations}" if not a.batch_syn else \
        Path(a.runs) / f"mtt_ipc{a.ipc}_it{a.iterations}_bs{a.batch_syn}"


def experts_argv(a: argparse.Namespace) -> List[str]:
    return ["ddkit", "experts", "train", "--dataset", DATA, "--cache-dir", CACHE, "--device", "cpu", "--no-progress",
            "--output", a.buffer, "--preset", "cpu", "--zca", "--epochs", str(a.expert_epochs_trained),
            "--num-experts", str(a.experts), "--batch-size", str(a.expert_batch)]


def experts(a: argparse.Namespace) -> None:
    """Train the shared buffer with ddkit (two shards side by side; resumes)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    procs = [subprocess.Popen([PY, "-m"] + experts_argv(a) + ["--shard", f"{i}/2"], env=env) for i in range(2)]
    if any(p.wait() for p in procs):
        raise SystemExit("expert training failed")


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


def official_buffer(a: argparse.Namespace) -> Path:
    return Path(a.runs) / f"mtt_official_{Path(a.buffer).name}"  # one per ddkit buffer, for every iteration count


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


def official_argv(a: argparse.Namespace) -> List[str]:
    return ["distill.py", "--dataset", "CIFAR10", "--model", "ConvNet", "--ipc", str(a.ipc),
            "--syn_steps", str(ROW["syn_steps"]), "--expert_epochs", str(ROW["expert_epochs"]),
            "--max_start_epoch", str(ROW["max_start_epoch"]), "--zca", "--lr_img", str(ROW["lr_img"]),
            "--lr_lr", str(ROW["lr_lr"]), "--lr_teacher", str(ROW["lr_teacher"]), "--Iteration", str(a.iterations),
            *(["--batch_syn", str(a.batch_syn)] if a.batch_syn else []),
            "--num_eval", "0", "--buffer_path", str(official_buffer(a)), "--data_path", "data"]


def wandb_stub(record: Dict[str, Any]) -> types.ModuleType:
    """What distill.py uses of wandb, recording instead of logging; finish() keeps the final set."""
    w = types.ModuleType("wandb")
    w.config = types.SimpleNamespace(_items={})
    w.run = types.SimpleNamespace(name="parity")

    def init(config: Any = None, **_: Any) -> None:
        w.config._items = dict(vars(config))

    def log(d: Dict[str, Any], step: Any = None) -> None:
        if "Progress" in d:
            record["stamps"].append([int(d["Progress"]), time.monotonic()])
        for k in ("Grand_Loss", "Synthetic_LR"):
            if k in d:
                record.setdefault(k, []).append(float(d[k]))

    def finish() -> None:
        f = sys._getframe(1).f_locals  # distill.main's locals at its end
        record["stamps"].append([len(record["stamps"]), time.monotonic()])
        record["final"] = {"image_syn": f["image_syn"].detach().cpu().clone(), "syn_lr": float(f["syn_lr"]),
                           "label_syn": f["label_syn"].cpu().clone()}

    w.init, w.log, w.finish = init, log, finish
    w.Histogram = w.Image = lambda *x, **k: None
    return w


def official_distill(a: argparse.Namespace) -> None:
    import numpy as np
    import torch
    import torchvision.datasets

    out = workdir(a) / "official"
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)
    record: Dict[str, Any] = {"stamps": []}
    sys.modules["wandb"] = wandb_stub(record)
    tee = StampedTee(out / "stdout.log", sys.__stdout__)
    cuda, torch.Tensor.cuda = torch.Tensor.cuda, lambda self, *x, **k: self
    random.seed(0), np.random.seed(0), torch.manual_seed(0)  # the official code seeds nothing
    with official_repo(PEER) as repo:
        torchvision.datasets.CIFAR10 = SubsetCIFAR10
        sys.argv, sys.stdout = official_argv(a), tee
        try:
            runpy.run_path(str(repo / "distill.py"), run_name="__main__")
        finally:
            sys.stdout, torch.Tensor.cuda = sys.__stdout__, cuda
    final = record.pop("final")
    torch.save(final, out / "final.pt")
    st = record.pop("stamps")
    write_json(out / "timing.json", {"argv": official_argv(a), "stamps": st, **record, **per_it(st),
                                     "final_syn_lr": final["syn_lr"], "peak_rss_mb": peak_mb(),
                                     "machine": lscpu()})


def peak_mb() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def per_it(stamps: List[List[float]]) -> Dict[str, Any]:
    """Seconds/iteration from [iteration, time] stamps, iteration 0 (set-up, the official it-0 save) left out."""
    (i0, t0), (i1, t1) = stamps[1], stamps[-1]
    return {"s_per_iteration": round((t1 - t0) / (i1 - i0), 3), "timed_iterations": [int(i0), int(i1)]}


def ddkit_argv(a: argparse.Namespace) -> List[str]:
    return ["distill", "--dataset", DATA, "--cache-dir", CACHE, "--device", "cpu", "--no-progress", "--method", "mtt",
            "--buffer", a.buffer, "--ipc", str(a.ipc), "--iterations", str(a.iterations), "--seed", "0",
            "--syn-steps", str(ROW["syn_steps"]), "--expert-epochs", str(ROW["expert_epochs"]),
            "--max-start-epoch", str(ROW["max_start_epoch"]), "--zca", "true", "--lr-img", str(ROW["lr_img"]),
            "--lr-lr", str(ROW["lr_lr"]), "--lr-teacher", str(ROW["lr_teacher"]), "--batch-syn", str(a.batch_syn),
            "--output", str(workdir(a) / "ddkit_set"), "--overwrite"]


def ddkit_distill(a: argparse.Namespace) -> None:
    from ddkit.cli import main as cli
    from ddkit.methods import matching_ops

    stamps: List[List[float]] = []
    step = matching_ops.LossLog.step

    def stamped(self: Any, it: int, *x: Any, **k: Any) -> None:
        stamps.append([it, time.monotonic()])
        step(self, it, *x, **k)

    matching_ops.LossLog.step = stamped
    t0 = time.monotonic()
    if cli(ddkit_argv(a)):
        raise SystemExit("ddkit distill failed")
    meta = json.loads((workdir(a) / "ddkit_set" / "meta.json").read_text())
    write_json(workdir(a) / "ddkit_timing.json", {"argv": ["ddkit"] + ddkit_argv(a), "stamps": stamps, **per_it(stamps),
                                                  "wall_s": round(time.monotonic() - t0, 1),
                                                  "syn_lr": meta.get("learned_lr"), "peak_rss_mb": peak_mb(),
                                                  "machine": lscpu()})


def to_ddkit(a: argparse.Namespace) -> None:
    import torch

    from ddkit.distilled import DistilledSet

    final = torch.load(workdir(a) / "official" / "final.pt", weights_only=True)
    sub, zca = expert_subset()
    test = load_split("test")
    images = zca.invert(final["image_syn"].float())
    meta = {"method": "official-mtt", "ipc": a.ipc, "native": "mtt", "learned_lr": final["syn_lr"],
            "parity": {"repo": f"{REPO}@{COMMIT[:7]}", "argv": official_argv(a)}}
    DistilledSet(images, final["label_syn"].long(), list(test.classes), test.mean, test.std, {}, meta,
                 zca=zca).save(workdir(a) / "official_set", overwrite=True, pngs=False)


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


def judge_ddkit(a: argparse.Namespace, side: str, seed: int) -> None:
    out = workdir(a) / f"eval_ddkit_{side}" / f"seed{seed}"
    argv = [PY, "-m", "ddkit", "evaluate", str(workdir(a) / f"{side}_set"), "--dataset", DATA, "--cache-dir", CACHE,
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


def accs(a: argparse.Namespace, judge: str, side: str) -> List[float]:
    got = []
    for s in range(a.seeds):
        if judge == "ddkit":
            p = workdir(a) / f"eval_ddkit_{side}" / f"seed{s}" / "summary.json"
            if p.is_file():
                got += [100 * float(x) for r in json.loads(p.read_text())["results"] if r.get("set") == "distilled"
                        for x in r["accs"]]
        elif (workdir(a) / f"eval_official_{side}" / f"seed{s}.json").is_file():
            got.append(read_json(workdir(a) / f"eval_official_{side}" / f"seed{s}.json")["acc"])
    return got


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


def write_row(a: argparse.Namespace) -> None:
    w = workdir(a)
    judges: Dict[str, Dict[str, Any]] = {}
    for judge in ("official", "ddkit"):
        for side in ("official", "ddkit"):
            got = accs(a, judge, side)
            if got:
                judges.setdefault(judge, {})[side] = mean_std(got)
        if len(judges.get(judge, {})) == 2:
            judges[judge]["verdict"] = verdict(judges[judge]["ddkit"], judges[judge]["official"])
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
           "official_syn_lr_per_iteration": t_off.get("Synthetic_LR"),
           "kornia_vs_ddkit_zca_max_abs": ev.get("kornia_vs_ddkit_zca_max_abs"),
           "judges": judges, "same_lr_check": same_lr(w), "init_check": init_check(w),
           "speed": {"official_s_per_iteration": s_off, "ddkit_s_per_iteration": s_dd,
                     "ddkit_over_official": round(s_dd / s_off, 3) if s_off and s_dd else None,
                     "official_loadavg_at_end": (t_off.get("machine") or {}).get("loadavg"),
                     "ddkit_loadavg_at_end": (t_dd.get("machine") or {}).get("loadavg"),
                     "how": ("both distillations at the same time, one thread each" if a.together else
                             "the two distillations one after the other, one thread each (~10 GB each at batch_syn "
                             "50: two did not fit the 23 GB machine beside the other jobs)") + "; seconds between the time stamps of iteration 1 and the end, per iteration "
                            "(official: its wandb.log('Progress') calls; ddkit: LossLog.step)",
                     "timed_iterations": t_off.get("timed_iterations")},
           "machine": t_off.get("machine") or lscpu(), "ddkit_revision": revision(),
           "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    path = RESULTS / "parity_mtt.json"
    doc = read_json(path) or {"method": "mtt", "official": {"repo": REPO, "commit": COMMIT}, "rows": {}}
    doc["official"]["edits"] = EDITS
    doc["judges"] = JUDGES
    doc["rows"][f"ipc{a.ipc}"] = row
    write_json(path, doc)
    print(f"wrote {path}")


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


def done(a: argparse.Namespace, judge: str, side: str, seed: int) -> bool:
    if judge == "ddkit":
        return (workdir(a) / f"eval_ddkit_{side}" / f"seed{seed}" / "summary.json").is_file()
    return (workdir(a) / f"eval_official_{side}" / f"seed{seed}.json").is_file()


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
    pool(base, [[t] for t in todo], 2 if a.together else 1)
    if not (w / "official_set" / "meta.json").is_file():
        subprocess.run(base + ["to-ddkit"], check=True)
    pool(base, [[f"judge-{j}", side, "--seed", str(s)] for s in range(a.seeds) for j in ("ddkit", "official")
                for side in ("official", "ddkit") if not done(a, j, side, s)], a.workers)
    write_row(a)


def opts(a: argparse.Namespace) -> List[str]:
    """The options of a pair, as the steps and the recorded command pass them."""
    return [f"--{k.replace('_', '-')}={getattr(a, k)}" for k in ("ipc", "iterations", "seeds", "eval_epochs", "experts",
                                                                 "expert_epochs_trained", "expert_batch",
                                                                 "max_start_epoch", "batch_syn", "buffer", "runs")] + \
        (["--together"] if a.together else [])


def pool(base: List[str], tasks: List[List[str]], workers: int) -> None:
    running: List[subprocess.Popen] = []
    failed = []
    for t in tasks:
        while len(running) >= workers:
            time.sleep(5)
            for p in [p for p in running if p.poll() is not None]:
                running.remove(p)
                failed += [p.args] if p.returncode else []
        running.append(subprocess.Popen(base + t))
    failed += [p.args for p in running if p.wait()]
    if failed:
        raise SystemExit(f"failed: {failed}")


ARGS = argparse.Namespace(buffer="/work/runs/parity/mtt_buffer")


def main(argv: List[str] | None = None) -> None:
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=("all", "experts", "convert", "official-distill", "ddkit-distill", "to-ddkit",
                                     "judge-ddkit", "judge-official", "init-sets", "row"))
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
    ap.add_argument("--together", action="store_true", help="both distillations at the same time")
    ap.add_argument("--buffer", default="/work/runs/parity/mtt_buffer")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runs", default="/work/runs/parity")
    a = ARGS = ap.parse_args(argv)
    ROW.update(ROWS[a.ipc])
    if a.max_start_epoch:
        ROW["max_start_epoch"] = a.max_start_epoch
    steps = {"all": run_all, "experts": experts, "convert": convert, "official-distill": official_distill,
             "ddkit-distill": ddkit_distill, "to-ddkit": to_ddkit, "init-sets": init_sets, "row": write_row}
    if a.step in steps:
        steps[a.step](a)
    else:
        for side in a.sides:
            (judge_ddkit if a.step == "judge-ddkit" else judge_official)(a, side, a.seed)


if __name__ == "__main__":
    main()
