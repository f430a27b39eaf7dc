"""Training dynamics of a proxy model: the raw material of every score-based coreset and of CAD-Prune.

`record_dynamics` trains a small proxy (ConvNet-D3 by default) on the FULL train split with
hard-label cross-entropy and, at each record point (end of every epoch, or every `record_every`
iterations for sub-epoch points), evaluates every training sample on its clean, non-augmented view
(model in eval mode, no grad, batched) and stores, per sample:

* `p_true`  R×N  softmax probability of the true class (Dyn-Unc / CAD-Prune's S(y|x)),
* `margin`  R×N  logit_y − max_{j≠y} logit_j (AUM on logits, Pleiss et al. 2020),
* `correct` R×N  argmax == y (forgetting events, Toneva et al. 2019),
* `entropy` N    entropy of the softmax at the final record point,
* `el2n` / `grand` runs×E×N at the E "early" record points (epoch position ≤ early_epochs) of each of
  `runs` independently seeded proxies: EL2N = ‖softmax − onehot‖₂ (Paul et al. 2021); GraNd = the norm
  of the per-sample gradient of the CE loss w.r.t. the LAST linear layer (weights and bias), in closed
  form: for logits z = W h + b, ∂ℓ/∂W = (p − onehot) hᵀ and ∂ℓ/∂b = p − onehot, so
  ‖∇‖ = ‖p − onehot‖₂ · sqrt(‖h‖² + 1) (DeepCore's last-layer GraNd; no per-sample backward needed).

Only run 0 trains for the full K epochs; runs 1… stop after the last early record point, because EL2N
and GraNd need nothing later (the LR schedule prefix is identical, so this is exact, not a shortcut).
Trajectory scores (forgetting, AUM, Dyn-Unc, CAD) therefore come from run 0.

The schedule is the hard-truths HL one compressed to K epochs (hardtruths §2.4): StepLR ×0.1 at epoch
round(K·151/300), or cosine. `stop_epochs` shortens a run to a fractional K (CAD-Prune's compute-matched
run at a budget below one epoch): it trains round(K·steps) iterations and compresses the schedule to them.
`schedule_epochs` lays the schedule out for a LONGER run than is trained (CAD-Prune's Table 14 ablation:
the first K epochs of a long run, i.e. an early checkpoint). With `soft_targets` (N×K teacher logits) and
`temperature` T > 0 the proxy trains with KL(softmax(q/T) ‖ softmax(z/T)) instead of CE (the SL regime)
and `el2n` holds EL2N-SL, ‖softmax(z/T) − softmax(q/T)‖₂ / T (hard truths Definition 1, hardtruths §4.4).
The whole split lives on the device as uint8; batches are gathered by index and augmented as tensor ops
(no DataLoader, no per-sample Python). A file-backed split (ImageNet) is streamed instead (`DeviceBatches`:
each batch decoded from disk, the next in a thread), with the same batches and the same result.

`dynamics_for` caches one recording per (dataset fingerprint, config hash) so EL2N, forgetting, AUM,
CCS, Dyn-Unc, CAD-Prune … all reuse a single training run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ddkit.config import config_hash, field, to_dict
from ddkit.data.base import ImageDataset, to_float
from ddkit.data.stream import DeviceBatches
from ddkit.models import create_model, resolve_model_name
from ddkit.optim import make_optimizer
from ddkit.teachers.train import random_flip_translate
from ddkit.utils import DDKitError, atomic_dir, autocast, derive_seed, make_generator

DYNAMICS_VERSION = 1  # bump when the stored quantities for the same config would change
_TENSORS = ("p_true", "margin", "correct", "entropy", "el2n", "grand", "labels", "record_epochs", "early_epochs")


@dataclass(frozen=True)
class DynamicsConfig:
    """How the proxy model is trained while its per-sample dynamics are recorded."""

    arch: str = field("ConvNet-3", "proxy model; ConvNet-D3 is the small-scale DD/coreset benchmark net")
    width: Optional[int] = field(None, "ConvNet width override (None = the model's default, 128)")
    epochs: int = field(10, "K: full-data epochs of the scoring run (CAD-Prune sets it to the compute budget)")
    batch_size: int = field(256, "DC/DSA and DeepCore batch size")
    optimizer: str = field("sgd", "sgd (momentum) or adamw")
    lr: float = field(0.01, "DC/DSA ConvNet lr; ResNet proxies usually want 0.1 (DeepCore)")
    momentum: float = field(0.9, "standard SGD momentum")
    weight_decay: float = field(5e-4, "DC/DeepCore weight decay")
    schedule: str = field("step", "step: ×0.1 at round(K·151/300) epochs (HL recipe compressed to K); cosine; none")
    augment: str = field("flip_translate", "flip_translate (random flip + ±size/8 px shift) or none")
    runs: int = field(1, "independently seeded proxies; EL2N/GraNd average over them (Paul et al. use 10)")
    seed: int = field(0, "seed of the proxy runs (run r uses a seed derived from (seed, r))")
    record_every: int = field(0, "0 = record once per epoch; >0 = every N iterations (sub-epoch points for small K)")
    stop_epochs: float = field(0.0, "train only this many full-data epochs (≤ epochs; fractional = a compute-matched "
                                    "run shorter than an epoch) with the schedule compressed to it; 0 = epochs")
    early_epochs: float = field(0.0, "EL2N/GraNd record points are those at epoch ≤ this; 0 = max(1, 10% of K)")
    schedule_epochs: float = field(0.0, "length in epochs the LR schedule is laid out for (> the trained length = "
                                        "an early checkpoint of a longer run, CAD-Prune's ablation); 0 = the run's")
    temperature: float = field(0.0, "> 0: train on soft_targets with KL at this T and record EL2N-SL (Definition "
                                    "1); 0 = hard-label CE")
    amp: bool = field(True, "bf16 autocast on CUDA (ignored on CPU)")

    def total_iterations(self, steps: int) -> int:
        """Iterations the run trains: epochs·steps, or round(stop_epochs·steps) (≥ 1) for a shortened run."""
        if self.stop_epochs > 0:
            return max(1, round(self.stop_epochs * steps))
        return steps * self.epochs

    def resolved_early_epochs(self) -> float:
        return float(self.early_epochs) if self.early_epochs > 0 else max(1.0, 0.1 * self.epochs)


@dataclass
class Dynamics:
    """Per-sample training dynamics of a proxy run (R record points, N samples, E early points).

    Attributes:
        p_true, margin: float32 R×N; correct: bool R×N; entropy: float32 N (final point).
        el2n, grand: float32 runs×E×N at the early record points.
        labels: int64 N (to check the dynamics belong to the dataset they are applied to).
        record_epochs: float32 R, epoch position of each record point (1.0 = end of epoch 1).
        early_epochs: float32 E, epoch position of each early point.
        config, dataset, classes, meta: provenance.
    """

    p_true: torch.Tensor
    margin: torch.Tensor
    correct: torch.Tensor
    entropy: torch.Tensor
    el2n: torch.Tensor
    grand: torch.Tensor
    labels: torch.Tensor
    record_epochs: torch.Tensor
    early_epochs: torch.Tensor
    config: Dict[str, Any] = dataclasses.field(default_factory=dict)
    dataset: str = ""
    classes: List[str] = dataclasses.field(default_factory=list)
    meta: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        r, n = self.p_true.shape
        for name in ("margin", "correct"):
            if tuple(getattr(self, name).shape) != (r, n):
                raise ValueError(f"{name} must be {r}×{n}, got {tuple(getattr(self, name).shape)}")
        if self.el2n.ndim != 3 or self.el2n.shape[-1] != n or self.grand.shape != self.el2n.shape:
            raise ValueError(f"el2n/grand must be runs×E×{n}, got {tuple(self.el2n.shape)} / "
                             f"{tuple(self.grand.shape)}")
        if len(self.labels) != n or len(self.entropy) != n or len(self.record_epochs) != r:
            raise ValueError("labels/entropy need N entries and record_epochs R entries")
        self.correct = self.correct.bool()

    @property
    def num_points(self) -> int:
        return int(self.p_true.shape[0])

    @property
    def num_samples(self) -> int:
        return int(self.p_true.shape[1])

    def check_matches(self, dataset: ImageDataset) -> None:
        """Raise DDKitError unless these dynamics were recorded on `dataset` (same size and labels)."""
        if len(dataset) != self.num_samples or not torch.equal(dataset.labels.cpu(), self.labels.cpu()):
            raise DDKitError(f"dynamics were recorded on {self.dataset!r} ({self.num_samples} samples), not on "
                             f"{dataset.name!r}/{dataset.split} ({len(dataset)}); record them on this train split")

    def save(self, path: Union[str, Path], overwrite: bool = True) -> Path:
        """Write `path/` = dynamics.safetensors + dynamics.json, atomically."""
        tensors = {k: getattr(self, k).contiguous() for k in _TENSORS}
        tensors["correct"] = tensors["correct"].to(torch.uint8)  # safetensors' bool support varies by reader
        info = {"version": DYNAMICS_VERSION, "config": self.config, "dataset": self.dataset, "classes": self.classes,
                "num_samples": self.num_samples, "num_points": self.num_points, "meta": self.meta}
        with atomic_dir(path, overwrite=overwrite) as tmp:
            save_file(tensors, str(tmp / "dynamics.safetensors"))
            (tmp / "dynamics.json").write_text(json.dumps(info, indent=1))
        return Path(path)

    @classmethod
    def load(cls, path: Union[str, Path]) -> "Dynamics":
        """Read a folder written by `save`."""
        p = Path(path)
        if not (p / "dynamics.safetensors").is_file():
            raise FileNotFoundError(f"no dynamics at {p} (expected {p}/dynamics.safetensors); record them first")
        info = json.loads((p / "dynamics.json").read_text())
        t = load_file(str(p / "dynamics.safetensors"))
        return cls(**{k: t[k] for k in _TENSORS}, config=info.get("config", {}), dataset=info.get("dataset", ""),
                   classes=info.get("classes", []), meta=info.get("meta", {}))


def window_std(p: torch.Tensor, span: int) -> torch.Tensor:
    """Unbiased std over every window of `span` consecutive record points: (R−span+1)×N.

    Row k is U_k = std(p[k:k+span]) — Dyn-Unc's / CAD-Prune Eq. 1 (divisor span−1, torch.std default).
    """
    r = p.shape[0]
    if span < 2 or span > r:
        raise DDKitError(f"window span must be in [2, {r}] (the number of record points), got {span}; "
                         f"record more points (more epochs or --proxy-record-every) or use a shorter span")
    return p.float().unfold(0, span, 1).std(dim=-1)


# --------------------------------------------------------------------------------------------------
# recording
# --------------------------------------------------------------------------------------------------
def _last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise DDKitError(f"{type(model).__name__} has no nn.Linear classifier; GraNd's closed form needs one")
    return linears[-1]


class _Recorder:
    """Evaluates all samples (clean view, eval mode) and keeps what the scores need."""

    def __init__(self, model: nn.Module, images: Union[DeviceBatches, torch.Tensor], labels: torch.Tensor,
                 mean: torch.Tensor, std: torch.Tensor, dev: torch.device, amp: bool, batch_size: int = 1024,
                 soft: Optional[torch.Tensor] = None, temperature: float = 0.0) -> None:
        self.model, self.images, self.labels = model, images, labels
        self.mean, self.std, self.dev, self.amp, self.bs = mean, std, dev, amp, batch_size
        self.soft, self.T = soft, temperature
        self.head = _last_linear(model)

    @torch.no_grad()
    def __call__(self) -> Dict[str, torch.Tensor]:
        was = self.model.training
        self.model.eval()
        cache: Dict[str, torch.Tensor] = {}
        hook = self.head.register_forward_hook(lambda m, i, o: cache.update(h=i[0], z=o))
        keys = ("p_true", "margin", "correct", "entropy", "el2n", "grand")
        out: Dict[str, List[torch.Tensor]] = {k: [] for k in keys}
        try:
            chunks = (self.images.chunks(self.bs) if isinstance(self.images, DeviceBatches) else
                      ((s, self.images[s:s + self.bs]) for s in range(0, len(self.labels), self.bs)))
            for s, xs in chunks:
                y = self.labels[s:s + self.bs]
                x = (to_float(xs) - self.mean) / self.std
                with autocast(self.dev, self.amp):
                    z = self.model(x)
                if cache.get("z") is not z:
                    raise DDKitError("GraNd's closed form needs the model's last nn.Linear to produce the logits")
                z, h = z.float(), cache["h"].float().flatten(1)
                p = z.softmax(1)
                onehot = F.one_hot(y, z.shape[1]).float()
                py = p.gather(1, y[:, None]).squeeze(1)
                other = z.masked_fill(onehot.bool(), float("-inf")).amax(1)
                err = (p - onehot).norm(dim=1)
                if self.soft is not None:  # EL2N-SL: (1/T)·‖softmax(z/T) − softmax(q/T)‖₂ (Definition 1)
                    q = (self.soft[s:s + self.bs].float() / self.T).softmax(1)
                    err = ((z / self.T).softmax(1) - q).norm(dim=1) / self.T
                hsq = h.pow(2).sum(1) + (1.0 if self.head.bias is not None else 0.0)
                out["p_true"].append(py)
                out["margin"].append(z.gather(1, y[:, None]).squeeze(1) - other)
                out["correct"].append(z.argmax(1) == y)
                out["entropy"].append(-(p * p.clamp_min(1e-12).log()).sum(1))
                out["el2n"].append(err)
                out["grand"].append(err * hsq.sqrt())
        finally:
            hook.remove()
            self.model.train(was)
        return {k: torch.cat(v).cpu() for k, v in out.items()}


def _lr_lambda(cfg: DynamicsConfig, steps: int) -> Callable[[int], float]:
    total = cfg.total_iterations(steps)
    if cfg.schedule_epochs > 0:  # the schedule of a longer run, of which only the first part is trained
        total = max(1, round(cfg.schedule_epochs * steps))
        if cfg.schedule == "step":
            return lambda it: 0.1 if it >= round(total * 151 / 300) else 1.0
    if cfg.schedule == "step":
        # hard-truths HL StepLR@151/300 compressed to K: at an epoch boundary for whole-epoch runs, at the
        # matching iteration for a shortened (stop_epochs) run, where an epoch boundary may not exist.
        milestone = (round(cfg.epochs * 151 / 300) * steps if cfg.stop_epochs <= 0
                     else round(total * 151 / 300))
        return lambda it: 0.1 if it >= milestone else 1.0
    if cfg.schedule == "cosine":
        return lambda it: 0.5 * (1.0 + math.cos(math.pi * min(it, total) / total))
    if cfg.schedule == "none":
        return lambda it: 1.0
    raise DDKitError(f"unknown dynamics schedule {cfg.schedule!r}; use step, cosine or none")


def record_dynamics(train: ImageDataset, cfg: DynamicsConfig = DynamicsConfig(),
                    device: Union[str, torch.device] = "cpu", progress: bool = True,
                    soft_targets: Optional[torch.Tensor] = None) -> Dynamics:
    """Train `cfg.runs` proxies on all of `train` and record per-sample dynamics (see module doc);
    with `soft_targets` (N×K logits) and cfg.temperature > 0 the proxies train under SL (KL at T)."""
    if (soft_targets is None) != (cfg.temperature <= 0):
        raise DDKitError("soft-label dynamics need both soft_targets and temperature > 0 (EL2N-SL)")
    soft = soft_targets.float().to(device) if soft_targets is not None else None
    if cfg.epochs < 1 or cfg.runs < 1 or cfg.batch_size < 1:
        raise DDKitError("dynamics need epochs ≥ 1, runs ≥ 1 and batch_size ≥ 1")
    if cfg.stop_epochs < 0 or cfg.stop_epochs > cfg.epochs + 1e-9:
        raise DDKitError(f"stop_epochs must be in [0, epochs={cfg.epochs}], got {cfg.stop_epochs}")
    if cfg.augment not in ("flip_translate", "none"):
        raise DDKitError(f"unknown dynamics augment {cfg.augment!r}; use flip_translate or none")
    dev = torch.device(device)
    arch = resolve_model_name(cfg.arch)
    images, labels = DeviceBatches(train, dev), train.labels.to(dev)  # uint8 on the device, or streamed
    mean = torch.tensor(train.mean, device=dev).view(1, -1, 1, 1)
    std = torch.tensor(train.std, device=dev).view(1, -1, 1, 1)
    n = len(train)
    bs = min(cfg.batch_size, n)
    steps = max(1, n // bs)  # drop the partial last batch (a 1-sample batch breaks BatchNorm)
    every = cfg.record_every if cfg.record_every > 0 else steps
    total = cfg.total_iterations(steps)
    record_its = list(range(every, total + 1, every))
    if not record_its:
        raise DDKitError(f"record_every={cfg.record_every} exceeds the run's {total} iterations; lower it")
    record_epochs = torch.tensor([it / steps for it in record_its], dtype=torch.float32)
    early_at = cfg.resolved_early_epochs()
    early_idx = [i for i, e in enumerate(record_epochs.tolist()) if e <= early_at + 1e-9] or [0]
    early_its = {record_its[i]: j for j, i in enumerate(early_idx)}
    translate, flip = round(train.image_size / 8), train.channels != 1
    kw = {"width": cfg.width} if cfg.width else {}

    r_pts, e_pts = len(record_its), len(early_idx)
    p_true = torch.empty(r_pts, n)
    margin = torch.empty(r_pts, n)
    correct = torch.empty(r_pts, n, dtype=torch.bool)
    entropy = torch.empty(n)
    el2n = torch.empty(cfg.runs, e_pts, n)
    grand = torch.empty(cfg.runs, e_pts, n)
    acc: List[float] = []
    t0 = time.perf_counter()
    for run in range(cfg.runs):
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
            torch.manual_seed(derive_seed(cfg.seed, "dynamics-init", run))
            model = create_model(arch, train.num_classes, train.image_size, train.channels, **kw).to(dev)
        opt = make_optimizer(model, cfg.optimizer, cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, steps))
        gen = make_generator(cfg.seed, "dynamics-train", run, device=dev)
        rec = _Recorder(model, images, labels, mean, std, dev, cfg.amp, soft=soft, temperature=cfg.temperature)
        # Runs after the first only serve EL2N/GraNd: stop after their last early point.
        last_it = record_its[-1] if run == 0 else record_its[early_idx[-1]]
        epochs_needed = math.ceil(last_it / steps)
        it = 0
        for _ in tqdm(range(epochs_needed), desc=f"dynamics {arch} run {run + 1}/{cfg.runs}", unit="epoch",
                      disable=not progress, dynamic_ncols=True, leave=False):
            model.train()
            perm = torch.randperm(n, device=dev, generator=gen)
            for idx, x in images.epoch(perm, bs, steps):
                if cfg.augment == "flip_translate":
                    x = random_flip_translate(x, translate, flip, gen)
                x = (to_float(x) - mean) / std
                with autocast(dev, cfg.amp):
                    out = model(x)
                if soft is None:
                    loss = F.cross_entropy(out.float(), labels[idx])
                else:  # the SL regime's loss (KL at T, batchmean), as the hardtruths-sl recipe
                    loss = F.kl_div((out.float() / cfg.temperature).log_softmax(1),
                                    (soft[idx] / cfg.temperature).softmax(1), reduction="batchmean")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                it += 1
                if it % every:
                    continue
                point = rec()
                if run == 0:
                    r = it // every - 1
                    p_true[r], margin[r], correct[r] = point["p_true"], point["margin"], point["correct"]
                    entropy.copy_(point["entropy"])  # ends as the final point's entropy
                    acc.append(float(point["correct"].float().mean()))
                if it in early_its:
                    el2n[run, early_its[it]], grand[run, early_its[it]] = point["el2n"], point["grand"]
                if it >= last_it:
                    break
    meta = {"train_acc": acc, "seconds": time.perf_counter() - t0, "arch": arch, "steps_per_epoch": steps,
            "record_iterations": record_its, "device": str(dev)}
    return Dynamics(p_true, margin, correct, entropy, el2n, grand, train.labels.cpu().clone(), record_epochs,
                    record_epochs[early_idx].clone(), config=to_dict(cfg), dataset=f"{train.name}/{train.split}",
                    classes=list(train.classes), meta=meta)


def dataset_fingerprint(ds: ImageDataset) -> str:
    """Short hash of (name, split, size, classes, labels, 64 evenly spaced images): detects another split."""
    h = hashlib.sha1(f"{ds.name}|{ds.split}|{len(ds)}|{ds.classes}".encode())
    h.update(ds.labels.cpu().numpy().tobytes())
    probe = torch.linspace(0, len(ds) - 1, min(64, len(ds))).long()
    h.update(ds.get(probe).contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def dynamics_for(train: ImageDataset, cfg: DynamicsConfig, cache_dir: Optional[Union[str, Path]],
                 device: Union[str, torch.device] = "cpu", progress: bool = True,
                 soft_targets: Optional[torch.Tensor] = None) -> Dynamics:
    """Load the cached recording for (train, cfg[, soft targets]) from `cache_dir`, or record and save it.

    cache_dir None records without caching. The key is `<name>-<split>-n<N>-<data hash>-<config hash>`
    (plus a hash of the soft targets for an SL proxy).
    """
    if cache_dir is None:
        return record_dynamics(train, cfg, device, progress, soft_targets)
    from ddkit.data.cache import safe_name

    name = safe_name(train.name or "data")
    key = f"{name}-{train.split}-n{len(train)}-{dataset_fingerprint(train)}-{config_hash(cfg)}"
    if soft_targets is not None:
        key += "-q" + hashlib.sha1(soft_targets.float().cpu().numpy().tobytes()).hexdigest()[:10]
    path = Path(cache_dir).expanduser() / f"{key}-v{DYNAMICS_VERSION}"
    if (path / "dynamics.safetensors").is_file():
        dyn = Dynamics.load(path)
        dyn.check_matches(train)
        return dyn
    dyn = record_dynamics(train, cfg, device, progress, soft_targets)
    dyn.save(path, overwrite=True)
    return dyn
