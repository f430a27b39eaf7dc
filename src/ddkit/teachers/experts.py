"""Expert trajectories for trajectory matching (MTT/DATM): train, store, resume, shard and load them.

Training follows MTT's `buffer.py` (matching-synthesis.md §4(a)): each expert is a fresh network trained on
the real split with plain SGD (lr 0.01, momentum 0, weight decay 0, batch 256, per-sample DSA on the
normalised (or ZCA-whitened) images, optional ×0.1 decay at epochs//2+1); its flattened parameters are
snapshotted at init and after every epoch (epochs + 1 snapshots); test accuracy is recorded per epoch.
`sam=True` is DATM's FTD route (README: buffer/buffer_FTD.py): every SGD step becomes a GSAM step
(ddkit.teachers.gsam) with the README's ρ 0.01, α 0.3, adaptive, and 100 epochs. Inputs are normalised
with the official MTT/DATM statistics by default (`norm`, data.facts.OFFICIAL_STATS["mtt"]).

Buffer folder (one expert per file, every file written atomically: temporary name, then rename):

    BUF/buffer.json                 header: dataset, classes, arch, normalisation, parameter layout, config
    BUF/zca.safetensors             the fitted ZCA transform (only with zca), so distillation uses the same one
    BUF/expert_0000.safetensors     "trajectory": (epochs+1)×P float32; metadata "record": per-epoch test
                                    accuracy and train loss (deterministic: a resumed buffer is byte-identical)
    BUF/expert_0000.json            wall time and machine of that expert (not part of the byte-identity)
    BUF/.expert_0000.partial.pt     the unfinished expert after each epoch (model, optimiser, RNG state),
                                    so a run killed with -9 resumes at its last finished epoch

Expert i draws everything from seeds derived from (seed, i), so sharding (`shard=(i, n)`: experts with
index % n == i) and resuming give the same files as one uninterrupted run.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ddkit.augment import DEFAULT_STRATEGY, Augment, Identity, dsa
from ddkit.augment.zca import Space, fit_zca
from ddkit.config import field, to_dict
from ddkit.data.base import ImageDataset
from ddkit.data.facts import working_stats
from ddkit.data.stream import iter_chunks, prefetch
from ddkit.loaders import read_json, read_pt
from ddkit.models import create_model, resolve_model_name
from ddkit.teachers.expert_buffer import FORMAT, ExpertBuffer, load_buffer, read_zca
from ddkit.teachers.gsam import gsam_step
from ddkit.utils import DDKitError, atomic_write_bytes, derive_seed, machine_info, make_generator

#: CPU preset: 2 experts × 8 epochs on 100 images per class, test accuracy on 1000 test images.
EXPERT_CPU = {"num_experts": 2, "epochs": 8, "subset_per_class": 100, "test_limit": 1000}


@dataclass(frozen=True)
class ExpertConfig:
    """How the experts are trained; defaults are MTT buffer.py's (buffer.py:112-131)."""

    preset: str = field("paper", "paper: buffer.py defaults; cpu: 2 experts × 8 epochs on a class-balanced "
                                 "subset of 100 images per class, test accuracy on 1000 test images")
    arch: str = field("convnet-d3", "expert architecture (MTT: ConvNet-3 instancenorm)")
    num_experts: Optional[int] = field(None, "number of experts (paper 100, buffer.py:116; cpu 2)")
    epochs: Optional[int] = field(None, "epochs per expert = snapshots - 1 (paper 50, buffer.py:117; cpu 8)")
    lr: float = field(0.01, "SGD lr (lr_teacher, buffer.py:118)")
    momentum: float = field(0.0, "SGD momentum (mom, buffer.py:72)")
    weight_decay: float = field(0.0, "weight decay (l2, buffer.py:73)")
    batch_size: int = field(256, "batch (batch_train, buffer.py:119)")
    decay: bool = field(False, "lr ×0.1 at epoch epochs//2+1 (--decay, off by default, buffer.py:94-97)")
    dsa_strategy: str = field(DEFAULT_STRATEGY, "per-sample DSA on the real batches ('none' = off; dsa=True, "
                                                "buffer.py:120)")
    zca: bool = field(False, "ZCA-whiten [0,1] pixels instead of mean/std normalisation (MTT --zca; kornia "
                             "eps 0.1); the distillation must use the same setting")
    subset_per_class: Optional[int] = field(None, "train on this many images per class (0 = the full split; "
                                                  "paper 0; cpu 100)")
    test_limit: Optional[int] = field(None, "per-epoch test accuracy on the first N test images of a seeded "
                                            "permutation (0 = all; paper 0; cpu 1000)")
    seed: int = field(0, "base seed; expert i uses seeds derived from (seed, i)")
    norm: str = field("official", "mean/std space: official (MTT/DATM's statistics, e.g. CIFAR-10 std "
                                  "0.2023/0.1994/0.2010, utils.py:56-57) or true (the dataset's own); the "
                                  "distillation must use the same (unused with zca)")
    sam: bool = field(False, "FTD experts as DATM's README builds them (buffer_FTD.py): GSAM steps; paper "
                             "epochs become 100 (README --train_epochs=100)")
    rho: float = field(0.01, "GSAM radius ρ with --sam (README --rho_max=0.01 --rho_min=0.01; the argparse "
                             "default 2.0 at buffer_FTD.py:144-145 is overridden there)")
    alpha: float = field(0.3, "GSAM surrogate-gap weight α with --sam (README --alpha=0.3; argparse 0.4 at "
                              "buffer_FTD.py:146)")
    adaptive: bool = field(True, "adaptive (ASAM) perturbation with --sam (buffer_FTD.py:147, not overridden)")


def resolve_expert_config(cfg: ExpertConfig) -> Dict[str, Any]:
    """The effective values (preset filled in) that define the buffer."""
    if cfg.preset not in ("paper", "cpu"):
        raise DDKitError(f"unknown preset {cfg.preset!r}; use paper or cpu")
    # FTD trains 100 epochs (DATM README: buffer_FTD.py --train_epochs=100); MTT 50 (buffer.py:117).
    table = {"num_experts": 100, "epochs": 100 if cfg.sam else 50, "subset_per_class": 0, "test_limit": 0}
    if cfg.preset == "cpu":
        table.update(EXPERT_CPU)
    out = to_dict(cfg)
    for k, v in table.items():
        if out[k] is None:
            out[k] = v
    out["arch"] = resolve_model_name(cfg.arch)
    return out


def flat_params(model: nn.Module) -> torch.Tensor:
    """All parameters (module order) as one float32 vector on the CPU."""
    return torch.cat([p.detach().reshape(-1).float().cpu() for p in model.parameters()])


def param_layout(model: nn.Module) -> List[List[Any]]:
    return [[n, list(p.shape)] for n, p in model.named_parameters()]


def _subset(train: ImageDataset, per_class: int, seed: int) -> ImageDataset:
    if per_class <= 0:
        return train
    g = make_generator(seed, "expert-subset")
    idx = torch.cat([train.class_images(c, per_class, generator=g)[1] for c in range(train.num_classes)])
    return train.subset(idx.sort().values)


def _header(train: ImageDataset, eff: Dict[str, Any], model: nn.Module) -> Dict[str, Any]:
    ws = working_stats(train, "mtt", eff["norm"])
    return {"format": FORMAT, "version": 1, "dataset": train.name, "classes": train.classes,
            "image_size": train.image_size, "channels": train.channels, "arch": eff["arch"],
            "normalisation": {"kind": "zca" if eff["zca"] else "meanstd", "mean": list(ws.mean),
                              "std": list(ws.std)},
            "params": param_layout(model), "num_params": int(sum(p.numel() for p in model.parameters())),
            "config": eff}


def _space(train: ImageDataset, eff: Dict[str, Any], out: Path) -> Space:
    """mean/std normalisation, or the ZCA stored in the buffer (fitted once on the expert training set)."""
    ws = working_stats(train, "mtt", eff["norm"])
    if not eff["zca"]:
        return Space(ws.mean, ws.std)
    from safetensors.torch import save

    path = out / "zca.safetensors"
    if path.exists():
        return Space(ws.mean, ws.std, read_zca(path))
    zca = fit_zca(train.images if train.in_memory else _zca_rows(train))
    atomic_write_bytes(path, save(zca.state()))
    return Space(ws.mean, ws.std, zca)


#: the largest ZCA covariance (float64 D×D, D = C·H·W) fitted on a file-backed split: 32 px is 75 MB, 64 px 1.2 GB,
#: 128 px 19 GB, 224 px 181 GB
_ZCA_MAX_BYTES = 4 << 30


class _zca_rows:
    """A file-backed split as the sliceable N×C×H×W uint8 rows `fit_zca` reads in chunks (decoded per chunk)."""

    def __init__(self, ds: ImageDataset) -> None:
        d = ds.channels * ds.image_size ** 2
        if d * d * 8 > _ZCA_MAX_BYTES:
            raise DDKitError(f"--zca on {ds.name} at {ds.image_size} px needs a {d}×{d} float64 covariance "
                             f"({d * d * 8 / 1e9:.0f} GB); MTT whitens CIFAR only: train these experts without --zca")
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: Any) -> torch.Tensor:
        if isinstance(key, slice):
            return self.ds.read(key.start or 0, len(self.ds) if key.stop is None else key.stop)
        return self.ds.get(key)


def _test_accuracy(model: nn.Module, test: ImageDataset, space: Space, dev: torch.device, batch: int = 500) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i, xs in iter_chunks(test, batch):  # a file-backed split is decoded a chunk at a time
            x = space.encode(xs.to(dev))
            correct += int((model(x).argmax(1).cpu() == test.labels[i:i + batch].cpu()).sum())
    model.train()
    return correct / max(1, len(test))


def _partial_state(model, opt, g, traj, record) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "rng": g.get_state(), "traj": traj,
                "record": record}, buf)
    return buf.getvalue()


def _forward(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    out = model(x)
    return out, F.cross_entropy(out, y)


def train_expert(index: int, train: ImageDataset, test: Optional[ImageDataset], eff: Dict[str, Any], space: Space,
                 out: Path, device: torch.device, progress: bool = True,
                 on_epoch: Optional[Callable[[int, int], None]] = None) -> Dict[str, Any]:
    """Train expert `index` (resuming from its partial file) and write expert_{index:04d}.safetensors."""
    from safetensors.torch import save

    name = f"expert_{index:04d}"
    partial = out / f".{name}.partial.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(eff["seed"], "expert-init", index))
        model = create_model(eff["arch"], train.num_classes, train.image_size, train.channels)
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=eff["lr"], momentum=eff["momentum"], weight_decay=eff["weight_decay"])
    g = make_generator(eff["seed"], "expert-train", index)
    traj: List[torch.Tensor] = [flat_params(model)]
    record: Dict[str, Any] = {"index": index, "test_acc": [], "train_loss": [], "train_acc": []}
    if partial.exists():  # resume after the last finished epoch
        # weights_only: a planted pickle is refused (one line naming the file), never run.
        st = read_pt(partial, f"partial expert file (delete it to restart expert {index})")
        try:
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["opt"])
            g.set_state(st["rng"])
            traj, record = list(st["traj"]), dict(st["record"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise DDKitError(f"partial expert file {partial} does not hold this expert's state "
                             f"({' '.join(str(e).split())[:100]}); delete it to restart expert {index}") from None
    aug: Augment = dsa(eff["dsa_strategy"], mode="single")
    n, bs, epochs = len(train), min(eff["batch_size"], len(train)), eff["epochs"]
    t0, cpu0 = time.perf_counter(), time.process_time()
    bar = tqdm(total=epochs, initial=len(traj) - 1, desc=f"expert {index}", disable=not progress, leave=False)
    start_epoch = len(traj) - 1
    for epoch in range(start_epoch, epochs):
        lr = eff["lr"] * (0.1 if eff["decay"] and epoch >= epochs // 2 + 1 else 1.0)
        for grp in opt.param_groups:
            grp["lr"] = lr
        perm = torch.randperm(n, generator=g)
        loss_sum, correct = 0.0, 0
        batches = perm.split(bs)  # the last partial batch is kept, as a DataLoader without drop_last
        for idx, xb in zip(batches, prefetch(train, batches)):  # file-backed: decoded per batch, one ahead
            x = space.encode(xb.to(device))
            if not isinstance(aug, Identity):
                x = aug.apply(x, aug.sample(len(x), x.shape, generator=g))
            y = train.labels[idx].to(device)
            if eff["sam"]:  # both GSAM passes see the same augmented batch (FTD's closure)
                out_, loss = gsam_step(model, lambda: _forward(model, x, y), opt, eff["rho"], eff["alpha"],
                                       eff["adaptive"])
            else:
                out_, loss = _forward(model, x, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((out_.argmax(1) == y).sum())
        traj.append(flat_params(model))
        record["train_loss"].append(loss_sum / n)
        record["train_acc"].append(correct / n)
        record["test_acc"].append(_test_accuracy(model, test, space, device) if test is not None else None)
        atomic_write_bytes(partial, _partial_state(model, opt, g, traj, record))
        bar.update(1)
        msg = (f"expert {index} epoch {epoch + 1}/{epochs}: train loss {record['train_loss'][-1]:.4f} "
               f"acc {record['train_acc'][-1]:.3f}"
               + (f", test acc {record['test_acc'][-1]:.3f}" if test is not None else ""))
        tqdm.write(msg)  # one line per epoch, with or without the bar (long CPU runs need a trace)
        if on_epoch is not None:
            on_epoch(index, epoch + 1)
    bar.close()
    trajectory = torch.stack(traj)
    atomic_write_bytes(out / f"{name}.safetensors",
                       save({"trajectory": trajectory.contiguous()}, metadata={"record": json.dumps(record)}))
    facts = {"seconds_this_process": time.perf_counter() - t0, "cpu_seconds_this_process": time.process_time() - cpu0,
             "epochs_this_process": epochs - start_epoch, "machine": machine_info(device),
             "bytes": (out / f"{name}.safetensors").stat().st_size}
    atomic_write_bytes(out / f"{name}.json", json.dumps(facts, indent=1).encode())
    partial.unlink(missing_ok=True)
    return {**record, **facts}


def train_experts(train: ImageDataset, test: Optional[ImageDataset], cfg: ExpertConfig, out: str | Path, *,
                  device: torch.device, shard: Tuple[int, int] = (0, 1), progress: bool = True,
                  on_epoch: Optional[Callable[[int, int], None]] = None) -> List[int]:
    """Train every unfinished expert of this shard into folder `out`; returns the indices trained now.

    A folder made with other settings or data is refused; a folder with the same header is resumed.
    """
    out = Path(out)
    eff = resolve_expert_config(cfg)
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise DDKitError(f"--shard must be i/n with 0 <= i < n, got {i}/{n}")
    data = _subset(train, eff["subset_per_class"], eff["seed"])
    if test is not None and eff["test_limit"]:
        idx = torch.randperm(len(test), generator=make_generator(eff["seed"], "expert-test"))[:eff["test_limit"]]
        test = test.subset(idx.sort().values)
    probe = create_model(eff["arch"], data.num_classes, data.image_size, data.channels)
    header = _header(data, eff, probe)
    out.mkdir(parents=True, exist_ok=True)
    hpath = out / "buffer.json"
    if hpath.exists():
        old = read_json(hpath, "expert buffer header")
        if old != _as_old(json.loads(json.dumps(header)), old):
            diff = sorted(k for k in set(old) | set(header) if old.get(k) != json.loads(json.dumps(header)).get(k))
            raise DDKitError(f"expert buffer {out} was made with other settings ({', '.join(diff)} differ); "
                             "use another --output or the same options to resume it")
    else:
        atomic_write_bytes(hpath, json.dumps(header, indent=1).encode())
    space = _space(data, eff, out).to(device)
    todo = [e for e in range(eff["num_experts"]) if e % n == i and not (out / f"expert_{e:04d}.safetensors").exists()]
    for e in todo:
        train_expert(e, data, test, eff, space, out, device, progress=progress, on_epoch=on_epoch)
    return todo


#: Options added after the first buffers: a header without them was made with these values.
_BEFORE = {"norm": "true", "sam": False, "rho": None, "alpha": None, "adaptive": None}


def _as_old(header: Dict[str, Any], old: Dict[str, Any]) -> Dict[str, Any]:
    """`header` without the options an older header lacks, where their values reproduce the old behaviour
    (norm=true, no SAM), so such a buffer still resumes; any real difference is kept and refused."""
    cfg, old_cfg = dict(header.get("config", {})), old.get("config")
    if not isinstance(old_cfg, dict):
        return header
    sam = cfg.get("sam")
    for k, v in _BEFORE.items():
        if k not in old_cfg and k in cfg and ((v is None and not sam) or cfg[k] == v):
            cfg.pop(k)
    return {**header, "config": cfg}


def parse_shard(text: Optional[str]) -> Tuple[int, int]:
    """'i/n' -> (i, n); None -> torchrun's RANK/WORLD_SIZE, else (0, 1)."""
    if text:
        try:
            a, b = text.split("/")
            return int(a), int(b)
        except ValueError:
            raise DDKitError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if "RANK" in os.environ:
        return int(os.environ["RANK"]), int(os.environ.get("WORLD_SIZE", 1))
    return 0, 1


__all__ = ["FORMAT", "ExpertBuffer", "ExpertConfig", "load_buffer", "parse_shard", "resolve_expert_config",
           "train_expert", "train_experts"]
