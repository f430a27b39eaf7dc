"""`mtt` (Matching Training Trajectories, Cazenavette et al. 2022) and `datm` (Difficulty-Aligned Trajectory
Matching, Guo et al. 2024), as the official `distill.py` and `distill/DATM.py` code them
(matching-synthesis.md §4-5):

    syn_lr = lr_teacher (learnable); per iteration (inclusive range, distill.py):
        expert = next one of the buffer (cycled in a shuffled order); t ~ U{min_start, …, upper-1}
        θ = θ*_t;  N times: θ ← θ − syn_lr · ∇θ ℓ(student_θ(DSA(syn batch)), labels)    (per-sample DSA)
        loss = ‖θ − θ*_{t+M}‖² / ‖θ*_t − θ*_{t+M}‖²;  SGD (momentum 0.5) on images and syn_lr
    DATM adds: upper = DATM's difficulty-aligned rule (moves with the IPC config and over the run); init
    from real images the experts classify correctly; learned soft labels (logits, soft CE in the unroll,
    SGD lr_y momentum 0.9) initialised from the experts; steps only when loss ≤ threshold.

Settings are the official ones of the dataset and IPC (MTT_ROWS / DATM_ROWS, one source per row; a set
without a row must name the values that differ between rows, or use --preset cpu); the dataset is named by
data.facts.official_name, so a tar:/folder: copy of CIFAR-10 gets CIFAR-10's rows. Experts come from
`ddkit experts train` (ddkit.teachers.experts) and must match the dataset, architecture and normalisation
(ZCA, or mean/std = the official MTT statistics by default, `norm`). Classes are learned jointly (one unroll sees every class), so both
declare class_separable=False. DATM stores its learned labels as soft["learned"]; with a teacher it also
stores the teacher's logits as soft["soft"], which SL evaluation uses (the hard-truths protocol replaces
learned labels by teacher labels). The set carries what its student needs (ddkit.distilled): the learned step
size as meta learned_lr (also syn_lr), the learned labels' key as learned_labels and, with ZCA, the buffer's
transform; `evaluate --protocol native` trains with them, `--protocol hard-truths` does not.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import torch

from ddkit.allocator import return_freed_memory
from ddkit.augment import DEFAULT_STRATEGY, Augment, dsa
from ddkit.config import field
from ddkit.data.base import ImageDataset
from ddkit.data.facts import official_name, working_stats
from ddkit.methods.base import ClassResult, MethodConfig, register_method
from ddkit.methods.matching_ops import (NORM_HELP, LossLog, RealPool, check_real_init, fresh_net, net_seed,
                                        resolve_settings)
from ddkit.methods.mtt_ops import (Batches, FlatNet, correct_init, datm_upper_bound, init_label_logits, param_loss,
                                   unroll)
from ddkit.teachers.experts import load_buffer
from ddkit.utils import DDKitError, make_generator

#: distill.py argparse defaults (distill.py:413-471) for what no table row sets (iterations: no README
#: command passes --Iteration; batch_syn None = every image; model ConvNet = ConvNet-3, instancenorm).
MTT_DEFAULTS = {"iterations": 5000, "batch_syn": 0, "model": "convnet-d3", "init": "real"}
#: What a run needs from a table row or from the user: these vary between every official row, so a
#: (dataset, IPC) without a row and without them is refused rather than run on another setting's numbers.
MTT_REQUIRED = ("syn_steps", "expert_epochs", "max_start_epoch", "zca", "lr_img", "lr_lr")
_M = ("syn_steps", "expert_epochs", "max_start_epoch", "batch_syn", "zca", "lr_img", "lr_lr")
#: MTT rows (dataset -> IPC -> values) in _M's order. The README's full hyper-parameter table is an image, so
#: these are the paper appendix's rows as matching-synthesis.md §4(b) reconstructs them, [unverified] except
#: CIFAR-100 IPC 1 (README distill command, readme.md:88); the sheet notes third-party disagreement on
#: CIFAR-10 IPC 10 (lr_img 1e5 vs 1000, lr_lr 1e-5 vs 1e-4) and could not read Tiny's ZCA column (so Tiny
#: needs --zca). Tiny-ImageNet uses ConvNet-4 (the paper's setting, [unverified]).
MTT_ROWS: Dict[str, Dict[int, Dict[str, Any]]] = {
    "cifar10": {1: dict(zip(_M, (50, 2, 2, 0, True, 1000.0, 1e-7))),
                10: dict(zip(_M, (30, 2, 20, 0, True, 1e5, 1e-5))),
                50: dict(zip(_M, (30, 2, 40, 0, False, 1000.0, 1e-5)))},
    "cifar100": {1: dict(zip(_M, (20, 3, 20, 0, True, 1000.0, 1e-5))),
                 10: dict(zip(_M, (20, 2, 20, 0, False, 1000.0, 1e-5))),
                 50: dict(zip(_M, (80, 2, 40, 125, True, 1000.0, 1e-5)))},
    "tiny-imagenet": {1: dict(zip(_M[:4] + _M[5:], (10, 2, 10, 0, 1e4, 1e-4))),
                      10: dict(zip(_M[:4] + _M[5:], (20, 2, 40, 200, 1e4, 1e-4))),
                      50: dict(zip(_M[:4] + _M[5:], (80, 2, 40, 300, 1e4, 1e-4)))},
}
#: The README table's CIFAR-10 IPC-10 lr_img (1e5) is a typo in the author's own words, with no corrected value
#: given (GeorgeCazenavette/mtt-distillation issue #31, 2023-06-28); users there report 100 or 1000 stable, DATM's
#: CIFAR-10 IPC-10 config (same experts, 80 steps) uses 100. The row keeps the published value; runs are told.
TYPO_WARNING = ("mtt: CIFAR-10 IPC 10 uses the README table's lr_img 1e5, which the author called a typo "
                "(mtt-distillation issue #31; no corrected value given; 100-1000 reported stable, DATM uses 100): "
                "pass --lr-img to choose")
MTT_SOURCES = {"cifar10": "MTT paper appendix table (README image), [unverified]",
               "cifar100": "MTT paper appendix table; IPC 1 = readme.md:88",
               "tiny-imagenet": "MTT paper appendix table, [unverified]; ZCA not known"}
#: Per-dataset network of both methods (DATM configs/TinyImageNet/ConvIN/*.yaml: model ConvNetD4, res 64).
DATASET_MODEL = {"tiny-imagenet": "convnet-d4"}

#: DATM global defaults (utils/cfg.py:27-127) for what a YAML leaves out.
DATM_DEFAULTS = {"iterations": 10000, "batch_syn": 0, "model": "convnet-d3", "init": "correct", "zca": True,
                 "threshold": 1.0, "min_start_epoch": 0, "current_max_start_epoch": 20, "expansion_end_epoch": 3000,
                 "sequential_generation": True}
DATM_REQUIRED = ("syn_steps", "expert_epochs", "max_start_epoch", "lr_img", "lr_lr", "lr_y")
_D = ("syn_steps", "expert_epochs", "lr_img", "lr_lr", "lr_y", "threshold", "batch_syn", "min_start_epoch",
      "current_max_start_epoch", "max_start_epoch", "expansion_end_epoch", "sequential_generation", "init")
_COR, _REAL = "correct", "real"  # pix_init samples_predicted_correctly / real
#: DATM rows: every configs/<dataset>/ConvIN/IPC<n>.yaml at 97ae510, in _D's order (all: Iteration 10000,
#: lr_teacher 0.01, Momentum_y 0.9, zca True; a key a YAML omits takes the cfg.py default, e.g. SeqGen True).
DATM_ROWS: Dict[str, Dict[int, Dict[str, Any]]] = {
    "cifar10": {1: dict(zip(_D, (80, 2, 100.0, 1e-7, 5.0, 1.1, 10, 0, 20, 4, 3000, False, _COR))),
                10: dict(zip(_D, (80, 2, 100.0, 1e-5, 2.0, 1.0, 100, 0, 10, 20, 1000, True, _COR))),
                50: dict(zip(_D, (80, 2, 1000.0, 1e-5, 2.0, 1.0, 500, 0, 20, 40, 2000, True, _COR))),
                500: dict(zip(_D, (40, 2, 50.0, 1e-5, 10.0, 1.0, 1000, 40, 20, 60, 3000, False, _COR))),
                1000: dict(zip(_D, (100, 2, 50.0, 1e-5, 10.0, 1.0, 1000, 40, 20, 60, 3000, False, _COR)))},
    "cifar100": {1: dict(zip(_D, (40, 3, 1000.0, 1e-5, 10.0, 1.0, 1000, 0, 10, 20, 1000, True, _COR))),
                 10: dict(zip(_D, (80, 2, 1000.0, 1e-5, 10.0, 1.0, 1000, 0, 30, 50, 2000, True, _COR))),
                 50: dict(zip(_D, (80, 2, 1000.0, 1e-5, 10.0, 1.0, 1000, 20, 20, 70, 3000, False, _REAL))),
                 100: dict(zip(_D, (80, 2, 50.0, 1e-5, 10.0, 1.0, 1000, 30, 20, 70, 3000, False, _COR)))},
    "tiny-imagenet": {1: dict(zip(_D, (40, 2, 1e4, 1e-4, 10.0, 1.0, 1000, 0, 15, 20, 2000, True, _COR))),
                      10: dict(zip(_D, (40, 2, 100.0, 1e-4, 10.0, 1.0, 500, 10, 20, 50, 3000, False, _COR))),
                      50: dict(zip(_D, (20, 2, 100.0, 1e-4, 10.0, 1.0, 1000, 40, 20, 70, 1, False, _COR)))},
}
DATM_SOURCES = {"cifar10": "DATM configs/CIFAR-10/ConvIN/IPC{ipc}.yaml@97ae510",
                "cifar100": "DATM configs/CIFAR-100/ConvIN/IPC{ipc}.yaml@97ae510",
                "tiny-imagenet": "DATM configs/TinyImageNet/ConvIN/IPC{ipc}.yaml@97ae510"}
#: CPU preset (not a paper setting): short unrolls on a small batch, a short run, a shallow start range that
#: fits the CPU expert buffer (8 epochs), no ZCA (one mean/std buffer serves every IPC), and the smallest
#: official step-size lr (1e-7, MTT/DATM IPC 1: with experts of a few steps per epoch the target distance is
#: tiny and lr_lr 1e-5 drove syn_lr to 1e7 and the loss to NaN within 6 iterations, MTT, IPC 10, CIFAR-10).
#: These override the row; it needs no row: where none exists, DATM takes the pixel/label lrs of its
#: CIFAR-10 IPC-10 YAML (TM_CPU_FILL).
TM_CPU = {"iterations": 30, "syn_steps": 10, "expert_epochs": 2, "max_start_epoch": 4, "batch_syn": 20, "zca": False,
          "min_start_epoch": 0, "current_max_start_epoch": 2, "expansion_end_epoch": 20, "lr_lr": 1e-7}
TM_CPU_FILL = {"lr_img": 100.0, "lr_y": 2.0}
#: MTT's IPC-10 lr_img 1e5 is a ZCA-space value ([unverified] row); the CPU preset runs without ZCA, so it
#: uses the mean/std-space value of its other rows.
MTT_CPU = {**TM_CPU, "lr_img": 1000.0}
MTT_KEYS = ("iterations", "syn_steps", "expert_epochs", "max_start_epoch", "batch_syn", "zca", "lr_img", "lr_lr",
            "model", "init")
DATM_KEYS = MTT_KEYS + ("lr_y", "threshold", "min_start_epoch", "current_max_start_epoch", "expansion_end_epoch",
                        "sequential_generation")


@dataclass(frozen=True)
class MTTConfig(MethodConfig):
    """MTT options; None = the preset's value (paper: the row of this dataset and IPC, MTT_ROWS)."""

    preset: str = field("paper", "paper: the official row of this dataset and IPC (CIFAR-10/100, Tiny-ImageNet "
                                 "at IPC 1/10/50; elsewhere pass --syn-steps --expert-epochs --max-start-epoch "
                                 "--zca --lr-img --lr-lr); cpu: 30 iterations, 10 steps on 20 images, start epoch "
                                 "< 4, no ZCA, lr_img 1000, lr_lr 1e-7; explicit options override both")
    buffer: str = field("", "expert buffer folder from `ddkit experts train` (required)")
    model: Optional[str] = field(None, "student/expert network, must match the buffer (paper: convnet-d3; "
                                       "convnet-d4 on Tiny-ImageNet)")
    iterations: Optional[int] = field(None, "iterations, inclusive range (paper 5000, distill.py; cpu 30)")
    syn_steps: Optional[int] = field(None, "student steps N per iteration (CIFAR-10 50/30/30, CIFAR-100 20/20/80, "
                                           "Tiny 10/20/80 at IPC 1/10/50)")
    expert_epochs: Optional[int] = field(None, "expert epochs M matched (paper 2; CIFAR-100 IPC 1: 3)")
    max_start_epoch: Optional[int] = field(None, "start epoch drawn in [0, this) (CIFAR-10 2/20/40, CIFAR-100 "
                                                 "20/20/40, Tiny 10/40/40)")
    batch_syn: Optional[int] = field(None, "synthetic images per student step (0 = all; paper all, CIFAR-100 IPC "
                                           "50: 125, Tiny IPC 10/50: 200/300; cpu 20)")
    zca: Optional[bool] = field(None, "ZCA-whitened inputs (CIFAR-10 on/on/off, CIFAR-100 on/off/on; Tiny: not "
                                      "known, pass it; the buffer must match)")
    lr_img: Optional[float] = field(None, "SGD lr on the pixels (CIFAR-10 1000/1e5/1000, CIFAR-100 1000, Tiny 1e4; "
                                          "[unverified] but CIFAR-100 IPC 1)")
    lr_lr: Optional[float] = field(None, "SGD lr on the learnable step size (CIFAR-10 1e-7/1e-5/1e-5, CIFAR-100 "
                                         "1e-5, Tiny 1e-4)")
    lr_teacher: float = field(0.01, "initial learnable student step size syn_lr (distill.py:118; every row)")
    momentum: float = field(0.5, "SGD momentum of the image and step-size optimisers (distill.py:138-139)")
    init: Optional[str] = field(None, "real (paper, distill.py:120-130) or correct (real images the experts "
                                      "classify correctly)")
    dsa_strategy: str = field(DEFAULT_STRATEGY, "per-sample DSA in the unroll ('none' = off)")
    max_experts: int = field(0, "use only the first N finished experts (0 = all)")
    norm: str = field("official", NORM_HELP + "; MTT/DATM: utils.py:56-57, CIFAR-10's numbers for CIFAR-100 too; "
                                  "unused with zca; the buffer must match")


@dataclass(frozen=True)
class DATMConfig(MTTConfig):
    """DATM options; None = the preset's value (paper: configs/<dataset>/ConvIN/IPC<n>.yaml, DATM_ROWS)."""

    preset: str = field("paper", "paper: DATM's YAML of this dataset and IPC (CIFAR-10 IPC 1/10/50/500/1000, "
                                 "CIFAR-100 1/10/50/100, Tiny-ImageNet 1/10/50; elsewhere pass --syn-steps "
                                 "--expert-epochs --max-start-epoch --lr-img --lr-lr --lr-y); cpu: 30 iterations, "
                                 "10 steps on 20 images, start epoch < 4, no ZCA, lr_lr 1e-7; explicit options "
                                 "override both")
    iterations: Optional[int] = field(None, "iterations (paper 10000, every YAML; cpu 30)")
    syn_steps: Optional[int] = field(None, "student steps N per iteration (CIFAR-10 80, CIFAR-100 40/80/80, Tiny "
                                           "40/40/20 at IPC 1/10/50)")
    expert_epochs: Optional[int] = field(None, "expert epochs M matched (paper 2; CIFAR-100 IPC 1: 3)")
    max_start_epoch: Optional[int] = field(None, "final upper bound of the start epoch (CIFAR-10 4/20/40, CIFAR-100 "
                                                 "20/50/70, Tiny 20/50/70)")
    batch_syn: Optional[int] = field(None, "synthetic images per student step (0 = all; YAML batch_syn, e.g. "
                                           "CIFAR-100 1000, Tiny 1000/500/1000; cpu 20)")
    zca: Optional[bool] = field(None, "ZCA-whitened inputs (paper on, every YAML; the buffer must match)")
    lr_img: Optional[float] = field(None, "SGD lr on the pixels (CIFAR-10 100/100/1000, CIFAR-100 1000, Tiny "
                                          "1e4/100/100)")
    lr_lr: Optional[float] = field(None, "SGD lr on syn_lr (CIFAR-10 1e-7/1e-5/1e-5, CIFAR-100 1e-5, Tiny 1e-4)")
    init: Optional[str] = field(None, "correct (samples_predicted_correctly, DATM.py:185-236; paper) or real "
                                      "(CIFAR-100 IPC 50)")
    lr_y: Optional[float] = field(None, "SGD lr on the label logits (CIFAR-10 5/2/2, CIFAR-100 and Tiny 10)")
    momentum_y: float = field(0.9, "momentum of the label optimiser (Momentum_y, every YAML)")
    threshold: Optional[float] = field(None, "update only when the loss ≤ this (paper 1.0; CIFAR-10 IPC 1: 1.1)")
    min_start_epoch: Optional[int] = field(None, "lower bound of the start epoch (paper 0; CIFAR-100 IPC 50: 20, "
                                                 "Tiny IPC 10/50: 10/40)")
    current_max_start_epoch: Optional[int] = field(None, "initial upper bound (CIFAR-10 –/10/20, CIFAR-100 10/30/–, "
                                                         "Tiny 15/–/–)")
    expansion_end_epoch: Optional[int] = field(None, "iteration at which the bound reaches max (CIFAR-10 "
                                                     "–/1000/2000, CIFAR-100 1000/2000/–, Tiny 2000/–/–)")
    sequential_generation: Optional[bool] = field(None, "move the bound over the run (on where the YAML leaves it "
                                                        "out; off at CIFAR-10 IPC 1, CIFAR-100 IPC 50, Tiny 10/50)")
    learn_labels: bool = field(True, "learn soft labels (logits, SoftCrossEntropy in the unroll)")
    label_experts: int = field(0, "experts averaged for the label init (0 = all finished experts, DATM)")


def official_row(cfg: MTTConfig, name: Optional[str]) -> Tuple[Optional[Dict[str, Any]], str]:
    """The official row for (dataset `name`, cfg.ipc) and its source, or (None, why there is none)."""
    datm = isinstance(cfg, DATMConfig)
    rows, sources = (DATM_ROWS, DATM_SOURCES) if datm else (MTT_ROWS, MTT_SOURCES)
    row = rows.get(name or "", {}).get(cfg.ipc)
    if row is None:
        have = ", ".join(f"{d} IPC {'/'.join(map(str, r))}" for d, r in rows.items())
        return None, f"no official row for {name or 'this dataset'} at IPC {cfg.ipc} (rows: {have})"
    return row, sources[name].format(ipc=cfg.ipc) + f" (IPC {cfg.ipc})"  # type: ignore[index]


def settings(cfg: MTTConfig, name: Optional[str]) -> Dict[str, Any]:
    """Effective values for this config, preset and official dataset `name` (data.facts.official_name).

    paper: the code defaults, the dataset's network, then the (dataset, IPC) row; with no row, the values
    that differ between rows must be given (one-line refusal naming them). cpu: the same overlaid with the
    CPU reductions; it never needs a row. Explicit options win over both.
    """
    datm = isinstance(cfg, DATMConfig)
    defaults, required = (DATM_DEFAULTS, DATM_REQUIRED) if datm else (MTT_DEFAULTS, MTT_REQUIRED)
    row, why = official_row(cfg, name)
    paper = {**defaults, **({"model": DATASET_MODEL[name]} if name in DATASET_MODEL else {}), **(row or {})}
    if getattr(cfg, "preset", "paper") == "paper":
        missing = [k for k in required if getattr(cfg, k) is None and k not in paper]
        if missing:
            method = "datm" if datm else "mtt"
            if row is not None:
                why = f"the official row ({why}) does not give {', '.join(missing)}"
            raise DDKitError(f"{method}: {why}; pass " + " ".join(f"--{k.replace('_', '-')}" for k in missing)
                             + " (or --preset cpu)")
    if datm:
        return resolve_settings(cfg, DATM_KEYS, paper, {**{k: v for k, v in TM_CPU_FILL.items() if k not in paper},
                                                        **TM_CPU})
    if (name, cfg.ipc) == ("cifar10", 10) and getattr(cfg, "preset", "paper") == "paper" and cfg.lr_img is None:
        warnings.warn(TYPO_WARNING, stacklevel=2)
    return resolve_settings(cfg, MTT_KEYS, paper, {k: v for k, v in MTT_CPU.items() if k in MTT_KEYS})


def _run(name: str, dataset: ImageDataset, teacher: Any, cfg: MTTConfig, classes: Sequence[int],
         device: torch.device, progress: bool) -> Iterator[ClassResult]:
    datm = isinstance(cfg, DATMConfig)
    if not cfg.buffer:
        raise DDKitError(f"{name} needs an expert buffer: train one with `ddkit experts train --dataset "
                         f"{dataset.name} --output BUF`, then pass --buffer BUF")
    official = official_name(dataset)
    s = settings(cfg, official)
    buffer = load_buffer(cfg.buffer, dataset, arch=s["model"], zca=bool(s["zca"]),
                         need_epochs=s["max_start_epoch"] + s["expert_epochs"], norm=cfg.norm)
    if cfg.max_experts:
        buffer.files = buffer.files[:cfg.max_experts]
    classes, ipc = list(classes), cfg.ipc
    space = buffer.space.to(device)
    fnet = FlatNet(fresh_net(s["model"], dataset, net_seed(cfg.seed, name, "student"), device))
    g = make_generator(cfg.seed, name, "run")
    if s["init"] == "correct":
        syn, src = correct_init(dataset, classes, ipc, buffer, fnet, device, make_generator(cfg.seed, name, "init"))
    elif s["init"] == "real":
        check_real_init(dataset, classes, ipc)
        pool = RealPool(dataset, space, device)
        parts = [pool.batch(c, ipc, make_generator(cfg.seed, name, "init", c)) for c in classes]
        syn, src = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    else:
        raise DDKitError(f"unknown init {s['init']!r}; use real or correct")
    hard = torch.tensor(classes, device=device).repeat_interleave(ipc)
    label_logits = None
    if datm and cfg.learn_labels:
        label_logits = init_label_logits(buffer, fnet, syn, hard, s["init"] == "correct",
                                         cfg.label_experts).requires_grad_(True)
    syn = syn.detach().clone().requires_grad_(True)
    syn_lr = torch.tensor(cfg.lr_teacher, device=device, requires_grad=True)
    opts = [torch.optim.SGD([syn], lr=s["lr_img"], momentum=cfg.momentum),
            torch.optim.SGD([syn_lr], lr=s["lr_lr"], momentum=cfg.momentum)]
    if label_logits is not None:
        opts.append(torch.optim.SGD([label_logits], lr=s["lr_y"], momentum=cfg.momentum_y))
    aug: Augment = dsa(cfg.dsa_strategy, mode="single")
    order: list = []
    skipped = 0
    log = LossLog(s["iterations"] + 1, f"{name} ipc{ipc}", progress, name)
    # The unrolled graph of syn_steps student steps is the live set; a never-returned heap fragments around it
    # (17.7 vs 11.4 GiB peak at batch_syn 100: ddkit.allocator), so glibc hands big blocks back meanwhile.
    with return_freed_memory():
        for it in range(s["iterations"] + 1):
            if not order:  # cycle through the experts in a fresh shuffled order (distill.py:162-179,305-322)
                order = torch.randperm(buffer.num_experts, generator=g).tolist()
            traj = buffer.trajectory(order.pop())
            if datm:
                upper = datm_upper_bound(it, s["max_start_epoch"], s["current_max_start_epoch"],
                                         s["expansion_end_epoch"], s["sequential_generation"])
                low = s["min_start_epoch"]
            else:
                upper, low = s["max_start_epoch"], 0
            t = int(torch.randint(low, upper, (1,), generator=g))  # upper bound exclusive, as np.random.randint
            start, target = traj[t].to(device), traj[t + s["expert_epochs"]].to(device)
            targets = label_logits if label_logits is not None else hard
            # a fresh chunk list every iteration (distill.py's per-iteration indices_chunks = []): a chunk left
            # over from the last unroll never opens this one
            batches = Batches(len(syn), s["batch_syn"] or None, g)
            student = unroll(fnet, start, syn, targets, syn_lr, s["syn_steps"], batches, aug, g)
            loss = param_loss(student, start, target)
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss.backward()
            lrs = {"lr_img": s["lr_img"], "lr_lr": s["lr_lr"], "syn_lr": float(syn_lr.detach())}
            log.step(it, float(loss.detach()), lrs, syn_lr=f"{lrs['syn_lr']:.4g}")
            if datm and float(loss.detach()) > s["threshold"]:
                skipped += 1  # DATM's threshold gate: gradients computed, no update (DATM.py:556-561)
                continue
            for o in opts:
                o.step()
    log.close()
    images = space.decode(syn.detach())
    soft: Dict[str, torch.Tensor] = {}
    if label_logits is not None:
        soft["learned"] = label_logits.detach()
        if teacher is not None:
            with torch.no_grad():
                soft["soft"] = teacher.logits(images.to(teacher.device)).float()
    row = official_row(cfg, official)[1] if cfg.preset == "paper" else "cpu preset"
    ws = working_stats(dataset, "mtt", cfg.norm).meta() if space.kind == "meanstd" else None
    # What the set's student needs (ddkit.distilled): the learned step size as its lr, the learned labels, and
    # the buffer's ZCA transform (carried once, on the first class), all read by `evaluate --protocol native`.
    set_meta = {"preset": cfg.preset, "settings": s, "table": row, "space": space.kind, "working_stats": ws,
                "syn_lr": float(syn_lr.detach()), "learned_lr": float(syn_lr.detach()),
                "buffer": str(cfg.buffer), "experts": buffer.num_experts, "skipped_iterations": skipped,
                **log.meta()}
    if "learned" in soft:
        set_meta["learned_labels"] = "learned"
    whole = buffer.space.zca.state() if buffer.space.zca is not None else {}
    for k, c in enumerate(classes):
        rows = slice(k * ipc, (k + 1) * ipc)
        yield ClassResult(c, images[rows], soft={n: v[rows] for n, v in soft.items()},
                          extras={"source_index": src[rows].cpu()}, set_meta=set_meta,
                          set_tensors=whole if k == 0 else {})


@register_method("mtt", config=MTTConfig, aliases=("tm", "trajectory-matching"), class_separable=False,
                 needs=("expert-buffer",), quick={"preset": "cpu"}, native="mtt")
def mtt(dataset: ImageDataset, teacher: Any, cfg: MTTConfig, classes: Sequence[int], *, device: torch.device,
        progress: bool = True) -> Iterator[ClassResult]:
    """MTT: match N student steps on the set to M expert epochs, learnable step size (Cazenavette et al. 2022)."""
    yield from _run("mtt", dataset, teacher, cfg, classes, device, progress)


@register_method("datm", config=DATMConfig, aliases=("difficulty-aligned-tm",), class_separable=False,
                 needs=("expert-buffer",), quick={"preset": "cpu"}, native="datm")
def datm(dataset: ImageDataset, teacher: Any, cfg: DATMConfig, classes: Sequence[int], *, device: torch.device,
         progress: bool = True) -> Iterator[ClassResult]:
    """DATM: MTT + difficulty-aligned start range, correct-sample init, learned soft labels (Guo et al. 2024)."""
    yield from _run("datm", dataset, teacher, cfg, classes, device, progress)
