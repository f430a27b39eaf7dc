"""Train a teacher from scratch, fast: whole split on the device, batched GPU augmentation.

A file-backed split (the ImageNet family) is streamed instead: each batch is decoded from its files (the next
in a background thread), so host memory stays at two batches whatever the split's size.

The recipe is airbench-like (style.md §1.1): SGD + Nesterov with a one-cycle schedule, label
smoothing, random flip + translate done as tensor ops on the device (no DataLoader, no per-sample
Python), bf16 autocast and channels_last on CUDA. 40 epochs of resnet18_modified reach the
~94 % CIFAR-10 accuracy of the peers' teachers (peers.md §1.2).
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ddkit.config import field, to_dict
from ddkit.data.base import ImageDataset, to_float
from ddkit.data.stream import DeviceBatches
from ddkit.models import create_model, resolve_model_name
from ddkit.optim import make_optimizer
from ddkit.teachers.core import Teacher, accuracy
from ddkit.trackers import record
from ddkit.utils import DDKitError, atomic_write_bytes, autocast, compiled, derive_seed, make_generator


@dataclass(frozen=True)
class TeacherConfig:
    """How `train_teacher` trains a teacher; defaults reproduce a ~94 % CIFAR-10 ResNet-18."""

    arch: str = field("resnet18_modified", "teacher architecture; CIM/RDED/SRe2L use resnet18_modified on CIFAR")
    arch_kw: Dict[str, Any] = field({}, "extra create_model kwargs, e.g. {'width': 64} for a ConvNet", cli=False)
    epochs: int = field(40, "enough for ResNet-18 to reach the peers' teacher accuracy with one-cycle")
    batch_size: int = field(256, "torchvision-reference batch; large enough for BN, small enough for speed")
    lr: Optional[float] = field(None, "peak SGD lr of the one-cycle schedule; None = the architecture's default "
                                      "that converges (teachers/train.py DEFAULT_LR: resnets 0.2 = 0.1 per 128 "
                                      "images, ConvNets and MLP lower; bench/results/teacher_lr.json)")
    momentum: float = field(0.9, "standard SGD momentum")
    nesterov: bool = field(True, "Nesterov momentum: slightly better and free")
    weight_decay: float = field(5e-4, "CIFAR-standard decay; applied to conv/linear weights only, not norm/bias")
    label_smoothing: float = field(0.1, "smoother logits make better soft-label teachers")
    schedule: str = field("onecycle", "onecycle (warm-up to lr, cosine to ~0) or cosine (lr -> 0, no warm-up)")
    warmup_frac: float = field(0.15, "fraction of steps to reach the one-cycle peak")
    translate: int = field(-1, "max random shift in px (pad and crop); -1 = round(image_size/8), 4 px at 32 px")
    flip: Optional[bool] = field(None, "random horizontal flip; None = on unless the set has 1 channel (digits)")
    seed: int = field(0, "seeds init, order and augmentation")
    amp: bool = field(True, "bf16 autocast on CUDA")
    cpu_amp: bool = field(False, "bf16 autocast on CPU too, where the CPU computes bf16 natively "
                                 "(utils.cpu_bf16_native; else fp32). Off: CPU results stay fp32 and comparable "
                                 "across CPUs (docs/performance.md, issue 17)")
    channels_last: bool = field(True, "NHWC memory layout for faster convs (CUDA only; on CPU too with --compile)")
    compile: bool = field(False, "torch.compile the network for training (on CPU with channels_last, whose fused "
                                 "kernels are fastest there); pays after its compile time (~1 min), so for "
                                 "schedules of several epochs (bench/results/teacher_compile_cpu.json)")
    eval_every: int = field(0, "test every k epochs (0 = only at the end)")


#: peak one-cycle lr per architecture family (longest matching prefix of the canonical name wins), measured in
#: bench/results/teacher_lr.json: ConvNets diverge at 0.2 on a short schedule (digits, 2 epochs: loss 9 -> 14)
#: and converge at 0.05 on every variant (digits, 40 epochs: D1 99.2 %, D3 94.2 %, D3-BN 99.7 %, D1-NN 98.1 %).
DEFAULT_LR: Dict[str, float] = {"resnet": 0.2, "ResNet": 0.2, "convnet": 0.05, "mlp": 0.2}
#: Fewer optimizer steps than this cannot be judged: a teacher at chance after them is saved with a warning
#: (a smoke test), not refused as "did not converge". A judgement, not a measured threshold: real schedules
#: are hundreds of steps (CIFAR-10: 195 per epoch; the digits runs of bench/results/teacher_lr.json: 40 x 5),
#: smoke tests a handful (tests/test_subset.py: 1).
MIN_JUDGED_STEPS = 50
FALLBACK_LR = 0.1  # torchvision/timm names: torchvision's reference classification recipe (lr 0.1 at batch 256)


def default_lr(arch: str) -> float:
    """The default peak lr of `arch` (a canonical model name); see DEFAULT_LR."""
    hits = [k for k in DEFAULT_LR if arch.startswith(k)]
    return DEFAULT_LR[max(hits, key=len)] if hits else FALLBACK_LR


def _divergence(loss: float, epoch: int, num_classes: int, lr: float) -> Optional[str]:
    """Why training at `lr` has diverged after `epoch` (0-based) with mean loss `loss`, or None.

    NaN/Inf at any epoch, or from the second epoch on a loss 1.5× above chance level (ln K: what
    predicting the uniform distribution costs), which a converging run never shows.
    """
    chance = math.log(num_classes)
    if math.isfinite(loss) and (epoch == 0 or loss <= 1.5 * chance):
        return None
    return (f"teacher training diverged at lr {lr:g}: mean loss {loss:.3g} in epoch {epoch + 1} (chance level "
            f"{chance:.2f}); lower --lr, e.g. --lr {lr / 4:g}")


def random_flip_translate(x: torch.Tensor, translate: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random horizontal flip and translation (zero pad + crop) of a batch, as tensor ops.

    Works on any dtype (uint8 keeps it 4× cheaper); each sample gets its own shift in
    [-translate, translate]² and its own flip, drawn from `generator` on x's device.
    """
    b, _, h, w = x.shape
    dev = x.device
    if flip:
        mask = torch.rand(b, device=dev, generator=generator) < 0.5
        x = torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)
    if translate > 0:
        t = translate
        padded = F.pad(x, (t, t, t, t))
        dy = torch.randint(0, 2 * t + 1, (b,), device=dev, generator=generator)
        dx = torch.randint(0, 2 * t + 1, (b,), device=dev, generator=generator)
        rows = (dy.view(-1, 1) + torch.arange(h, device=dev)).view(b, 1, h, 1)
        cols = (dx.view(-1, 1) + torch.arange(w, device=dev)).view(b, 1, 1, w)
        bi = torch.arange(b, device=dev).view(b, 1, 1, 1)
        ci = torch.arange(x.shape[1], device=dev).view(1, -1, 1, 1)
        x = padded[bi, ci, rows, cols]  # gather of a shifted H×W window per sample
    return x


def _scheduler(opt: torch.optim.Optimizer, cfg: TeacherConfig, total: int):
    if cfg.schedule == "onecycle":
        # Momentum stays fixed at cfg.momentum (cycling it would override the configured value).
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total,
                                                   pct_start=cfg.warmup_frac, cycle_momentum=False)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    raise ValueError(f"unknown teacher schedule {cfg.schedule!r}; use onecycle or cosine")


def _log_epoch(run: str, rec: Dict[str, Any], total: int, fh: Any) -> None:
    record(run, rec, total)
    if fh is not None:
        fh.write(json.dumps(rec) + "\n")
        fh.flush()


def _save_checkpoint(path: Path, cfg: TeacherConfig, data: str, epoch: int, model: nn.Module,
                     opt: torch.optim.Optimizer, sched: Any, gen: torch.Generator, history: list,
                     seconds: float) -> None:
    """Everything the next epoch depends on, written atomically (a kill mid-write keeps the previous one)."""
    buf = io.BytesIO()
    torch.save({"recipe": to_dict(cfg), "data": data, "epoch": epoch, "model": model.state_dict(),
                "opt": opt.state_dict(), "sched": sched.state_dict(), "gen": gen.get_state(),
                "gen_device": gen.device.type, "history": history,
                "seconds": seconds}, buf)
    atomic_write_bytes(path, buf.getvalue())


def _load_checkpoint(path: Path, cfg: TeacherConfig, data: str, model: nn.Module, opt: torch.optim.Optimizer,
                     sched: Any, gen: torch.Generator) -> Tuple[int, list, float]:
    """Restore a run from `path` (epochs done, test history, seconds so far); refuses other data or recipe."""
    state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain types only: no code
    if state.get("data") != data:
        raise DDKitError(f"checkpoint {path} was trained on other data ({state.get('data')}, not {data}); delete it "
                         "to start over")
    theirs, ours = state["recipe"], json.loads(json.dumps(to_dict(cfg)))
    diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    if diff:
        raise DDKitError(f"checkpoint {path} is another training run (differs in {', '.join(diff)}); delete it to "
                         "start over, or train with the recipe it was started with")
    # The augmentation generator lives on the training device and CPU and CUDA generators keep different states
    # (a 5056-byte Mersenne twister, a 16-byte Philox): the run can only go on where it started. (A checkpoint
    # from before gen_device was stored is told apart by its state's size.)
    theirs_dev = state.get("gen_device") or ("cpu" if state["gen"].numel() == gen.get_state().numel() ==
                                             torch.Generator().get_state().numel() else "other")
    if theirs_dev != gen.device.type:
        where = f"on {theirs_dev}" if theirs_dev != "other" else "on another device"
        raise DDKitError(f"checkpoint {path} was started {where} and cannot go on on {gen.device.type} (its "
                         f"augmentation generator state belongs to that device): resume with the device it was "
                         f"started on (--device {theirs_dev if theirs_dev != 'other' else 'cuda'}), or delete it "
                         "to start over")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    gen.set_state(state["gen"])  # generator states are CPU byte tensors on every device
    return int(state["epoch"]), list(state["history"]), float(state["seconds"])


def train_teacher(train: ImageDataset, test: Optional[ImageDataset], cfg: TeacherConfig,
                  device: Union[str, torch.device], progress: bool = True,
                  log_path: Optional[Union[str, Path]] = None,
                  checkpoint: Optional[Union[str, Path]] = None) -> Tuple[Teacher, Dict[str, Any]]:
    """Train `cfg.arch` on `train`; returns (Teacher, metrics).

    checkpoint: a file written after every epoch (weights, optimizer, schedule, augmentation RNG); when it exists
    at the start, training resumes after its last epoch and ends with the weights an uninterrupted run gives
    (same device and threads). A checkpoint of another recipe or of other training data is refused.

    metrics: test_acc (None without a test set), train_seconds, images_per_s, epochs, history
    (test accuracy every `eval_every` epochs). Every epoch gives one record (epoch, loss, lr, seconds,
    images_per_s, test_acc when tested) to the `ddkit.epochs` log line and the active trackers, and
    to `log_path` (metrics.jsonl, one JSON line per epoch) when given.
    """
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    arch = resolve_model_name(cfg.arch)
    if cfg.lr is None:  # resolved here so the saved recipe states the lr that was used
        cfg = dataclasses.replace(cfg, lr=default_lr(arch))
    lr = float(cfg.lr)  # type: ignore[arg-type]
    with torch.random.fork_rng(devices=[]):  # seeded init without disturbing the caller's global RNG
        torch.manual_seed(derive_seed(cfg.seed, "teacher-init"))
        model = create_model(arch, train.num_classes, train.image_size, train.channels, **cfg.arch_kw)
    model.to(dev)
    # channels_last where it is fastest: always on CUDA, on CPU only under compile (eager CPU convs and
    # GroupNorm/InstanceNorm are slower NHWC; the compiled graph fuses them).
    nhwc = cfg.channels_last and (cuda or cfg.compile)
    if nhwc:
        model.to(memory_format=torch.channels_last)
    # The compiled wrapper shares the parameters with `model`: the optimizer, the test passes and the saved
    # weights all use `model` itself.
    net = compiled(model) if cfg.compile else model

    # uint8 stays compact on the device; a file-backed split (ImageNet) is never held whole: each batch is
    # decoded from disk (the next one in a thread while this one trains), the same batches in the same order.
    pixels, labels = DeviceBatches(train, dev), train.labels.to(dev)
    mean = torch.tensor(train.mean, device=dev).view(1, -1, 1, 1)
    std = torch.tensor(train.std, device=dev).view(1, -1, 1, 1)
    n = len(train)
    bs = min(cfg.batch_size, n)
    steps = n // bs  # drop the last partial batch: a batch of 1 breaks BatchNorm
    total = steps * cfg.epochs
    translate = round(train.image_size / 8) if cfg.translate < 0 else cfg.translate
    flip = (train.channels != 1) if cfg.flip is None else cfg.flip

    opt = make_optimizer(model, "sgd", lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                         nesterov=cfg.nesterov, decay_norm_bias=False)
    sched = _scheduler(opt, cfg, total)
    gen = make_generator(cfg.seed, "teacher-train", device=dev)
    history: list = []
    ckpt = Path(checkpoint) if checkpoint is not None else None
    # Which images the run trains on (a --max-per-class subset or another split must not resume this run).
    data_id = f"{train.name}/{train.split}: {n} images, labels sum {int(train.labels.sum())}"
    start, done_s = 0, 0.0
    if ckpt is not None and ckpt.is_file():
        start, history, done_s = _load_checkpoint(ckpt, cfg, data_id, model, opt, sched, gen)
    # A stage-level bar: it stays on screen when done (one line per finished stage).
    bar = tqdm(total=total, initial=start * steps, disable=not progress, desc=f"teacher {arch}", unit="step",
               leave=True)
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    # A resumed run appends to the epochs it already logged (their lines are the checkpoint's history).
    log = open(log_path, "a" if start else "w") if log_path is not None else None
    last_rec: Dict[str, Any] = {}
    t0 = t_epoch = time.perf_counter() - done_s
    diverged: Optional[str] = None
    for epoch in range(start, cfg.epochs):
        model.train()
        perm = torch.randperm(n, device=dev, generator=gen)
        loss_sum = torch.zeros((), device=dev)
        for idx, xb in pixels.epoch(perm, bs, steps):
            x = random_flip_translate(xb, translate, flip, gen)
            x = (to_float(x) - mean) / std
            if nhwc:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(dev, cfg.amp, cpu=cfg.cpu_amp):
                out = net(x)
            loss = F.cross_entropy(out.float(), labels[idx], label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach()
            bar.update(1)
        # One host sync per epoch for the progress line (per-step .item() would stall the GPU).
        seen = (epoch + 1) * steps * bs
        epoch_loss = loss_sum.item() / max(1, steps)
        secs = time.perf_counter() - t_epoch
        bar.set_postfix(epoch=epoch + 1, loss=f"{epoch_loss:.3f}", img_s=f"{seen / (time.perf_counter() - t0):.0f}")
        last_rec = {"epoch": epoch + 1, "iteration": (epoch + 1) * steps, "loss": epoch_loss,
                    "lr": float(opt.param_groups[0]["lr"]), "seconds": secs, "images_per_s": steps * bs / max(secs, 1e-9)}
        if test is not None and cfg.eval_every > 0 and (epoch + 1) % cfg.eval_every == 0 and epoch + 1 < cfg.epochs:
            history.append({"epoch": epoch + 1, "test_acc": accuracy(model, test, train.mean, train.std, dev)})
            last_rec["test_acc"] = history[-1]["test_acc"]
        diverged = _divergence(epoch_loss, epoch, train.num_classes, lr)
        if ckpt is not None and not diverged and epoch + 1 < cfg.epochs:
            _save_checkpoint(ckpt, cfg, data_id, epoch + 1, model, opt, sched, gen, history, time.perf_counter() - t0)
        if epoch + 1 < cfg.epochs or diverged:  # the last epoch's line waits for the final test accuracy
            _log_epoch(f"teacher {arch}", last_rec, cfg.epochs, log)
        if diverged:
            break
        t_epoch = time.perf_counter()
    if cuda:
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    bar.close()
    if diverged:
        if log is not None:
            log.close()
        raise DDKitError(diverged + "; nothing was saved")

    test_acc = accuracy(model, test, train.mean, train.std, dev) if test is not None else None
    if test_acc is not None:
        history.append({"epoch": cfg.epochs, "test_acc": test_acc})
        last_rec["test_acc"] = test_acc
    if last_rec:
        _log_epoch(f"teacher {arch}", last_rec, cfg.epochs, log)
    if log is not None:
        log.close()
    chance = 1.0 / train.num_classes
    if test_acc is not None and test_acc < min(2 * chance, (1 + chance) / 2):
        if total >= MIN_JUDGED_STEPS:
            raise DDKitError(f"teacher ended at {test_acc:.1%} test accuracy (chance {chance:.1%}) after {total} steps: "
                             f"training did not converge at lr {lr:g}; lower --lr (e.g. --lr {lr / 4:g}) or train "
                             "longer; nothing was saved")
        # A smoke-test schedule (a handful of steps) is expected to sit at chance: refusing it would say
        # "lower the lr" when the truth is "this was never meant to learn". Save it and say so.
        warnings.warn(f"teacher ended at {test_acc:.1%} test accuracy (chance {chance:.1%}) after only {total} "
                      f"optimizer steps (< {MIN_JUDGED_STEPS}): too short to judge convergence; saved anyway, "
                      "do not use it for results")
    metrics = {"test_acc": test_acc, "train_seconds": seconds, "epochs": cfg.epochs,
               "images_per_s": total * bs / max(seconds, 1e-9), "history": history}
    model.to(memory_format=torch.contiguous_format)
    teacher = Teacher(model, arch, train.classes, train.mean, train.std, train.image_size, train.channels,
                      meta={"dataset": train.name, "accuracy": test_acc, "recipe": to_dict(cfg)}, arch_kw=cfg.arch_kw)
    return teacher, metrics
