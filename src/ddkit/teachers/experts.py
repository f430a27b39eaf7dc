"""Expert trajectories for trajectory matching (MTT/DATM): train, store, resume, shard and load them.

Training follows MTT's `buffer.py` (matching-synthesis.md §4(a)): each expert is a fresh network trained on
the real split with plain SGD (lr 0.01, momentum 0, weight decay 0, batch 256, per-sample DSA on the
normalised (or ZCA-whitened) images, optional ×0.1 decay at epochs//2+1); its flattened parameters are
snapshotted at init and after every epoch (epochs + 1 snapshots); test accuracy is recorded per epoch.

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
from ddkit.augment.zca import ZCA, Space, fit_zca
from ddkit.config import field, to_dict
from ddkit.data.base import ImageDataset
from ddkit.loaders import (check_safetensors, read_json, read_json_keys, read_pt, read_safetensors,
                           safetensors_metadata)
from ddkit.models import create_model, resolve_model_name
from ddkit.utils import DDKitError, atomic_write_bytes, derive_seed, machine_info, make_generator

FORMAT = "ddkit-expert-buffer"
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


def resolve_expert_config(cfg: ExpertConfig) -> Dict[str, Any]:
    """The effective values (preset filled in) that define the buffer."""
    if cfg.preset not in ("paper", "cpu"):
        raise DDKitError(f"unknown preset {cfg.preset!r}; use paper or cpu")
    table = {"num_experts": 100, "epochs": 50, "subset_per_class": 0, "test_limit": 0}
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
    return {"format": FORMAT, "version": 1, "dataset": train.name, "classes": train.classes,
            "image_size": train.image_size, "channels": train.channels, "arch": eff["arch"],
            "normalisation": {"kind": "zca" if eff["zca"] else "meanstd", "mean": list(train.mean),
                              "std": list(train.std)},
            "params": param_layout(model), "num_params": int(sum(p.numel() for p in model.parameters())),
            "config": eff}


def _space(train: ImageDataset, eff: Dict[str, Any], out: Path) -> Space:
    """mean/std normalisation, or the ZCA stored in the buffer (fitted once on the expert training set)."""
    if not eff["zca"]:
        return Space(train.mean, train.std)
    from safetensors.torch import save

    path = out / "zca.safetensors"
    if path.exists():
        return Space(train.mean, train.std, _zca(path))
    zca = fit_zca(train.images)
    atomic_write_bytes(path, save(zca.state()))
    return Space(train.mean, train.std, zca)


def _test_accuracy(model: nn.Module, test: ImageDataset, space: Space, dev: torch.device, batch: int = 500) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(test), batch):
            x = space.encode(test.images[i:i + batch].to(dev))
            correct += int((model(x).argmax(1).cpu() == test.labels[i:i + batch]).sum())
    model.train()
    return correct / max(1, len(test))


def _partial_state(model, opt, g, traj, record) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "rng": g.get_state(), "traj": traj,
                "record": record}, buf)
    return buf.getvalue()


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
        for i in range(0, n, bs):  # the last partial batch is kept, as a DataLoader without drop_last
            idx = perm[i:i + bs]
            x = space.encode(train.images[idx].to(device))
            if not isinstance(aug, Identity):
                x = aug.apply(x, aug.sample(len(x), x.shape, generator=g))
            y = train.labels[idx].to(device)
            out_ = model(x)
            loss = F.cross_entropy(out_, y)
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
        if old != json.loads(json.dumps(header)):
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


class ExpertBuffer:
    """The finished experts of a buffer folder; trajectories are read one file at a time (cached)."""

    def __init__(self, path: Path, header: Dict[str, Any], files: List[Path], space: Space) -> None:
        self.path, self.header, self.files, self.space = path, header, files, space
        self._cache: Tuple[int, Optional[torch.Tensor]] = (-1, None)

    @property
    def num_experts(self) -> int:
        return len(self.files)

    @property
    def epochs(self) -> int:
        return int(self.header["config"]["epochs"])

    @property
    def lr(self) -> float:
        return float(self.header["config"]["lr"])

    def trajectory(self, i: int) -> torch.Tensor:
        """(epochs+1)×P float32 parameters of expert `i` (index into the finished files)."""
        if self._cache[0] != i:
            t = read_safetensors(self.files[i], "expert file").get("trajectory")
            shape = (self.epochs + 1, int(self.header["num_params"]))
            if t is None or tuple(t.shape) != shape or not t.is_floating_point():
                found = "no 'trajectory'" if t is None else f"{t.dtype} {tuple(t.shape)}"
                raise DDKitError(f"expert file {self.files[i]} holds {found}, expected float "
                                 f"{shape[0]}×{shape[1]}; delete it and rerun `ddkit experts train` (it resumes)")
            if not bool(torch.isfinite(t).all()):
                raise DDKitError(f"expert file {self.files[i]} holds NaN or Inf parameters; delete it and rerun "
                                 f"`ddkit experts train` (it resumes)")
            self._cache = (i, t)
        return self._cache[1]  # type: ignore[return-value]

    def record(self, i: int) -> Dict[str, Any]:
        meta = safetensors_metadata(self.files[i], "expert file")
        try:
            return json.loads(meta["record"])
        except (KeyError, ValueError):
            raise DDKitError(f"expert file {self.files[i]} lacks a readable 'record' header; delete it and rerun "
                             f"`ddkit experts train` (it resumes)") from None


def load_buffer(path: str | Path, dataset: ImageDataset, *, arch: str, zca: bool, need_epochs: int) -> ExpertBuffer:
    """Open an expert buffer for distillation on `dataset`, refusing one that does not fit.

    Checks (each a one-line DDKitError): the folder holds a buffer with at least one finished expert; it
    was trained on the same dataset (name, classes, image size), architecture and normalisation (mean/std,
    or ZCA); each expert has at least `need_epochs` epochs (max_start_epoch + expert_epochs).
    """
    p = Path(path)
    hpath = p / "buffer.json"
    hint = f"build one with `ddkit experts train --dataset {dataset.name} --output {p}`"
    if not hpath.is_file():
        raise DDKitError(f"no expert buffer at {p} (no buffer.json): {hint}")
    # Every key read below, checked first: a hand-edited or foreign header is one line, not a KeyError.
    h = read_json_keys(hpath, "expert buffer header", keys=("format", "dataset", "classes", "image_size", "channels",
                                                            "arch", "normalisation", "num_params", "config"),
                       types={"classes": list, "image_size": int, "channels": int, "num_params": int,
                              "normalisation": dict, "config": dict})
    if h.get("format") != FORMAT:
        raise DDKitError(f"{hpath} is not a ddkit expert buffer (format {h.get('format')!r})")
    if h["dataset"] != dataset.name or h["classes"] != list(dataset.classes):
        raise DDKitError(f"expert buffer {p} was trained on {h['dataset']!r} ({len(h['classes'])} classes), not on "
                         f"{dataset.name!r} ({dataset.num_classes} classes): {hint}")
    if (h["image_size"], h["channels"]) != (dataset.image_size, dataset.channels):
        raise DDKitError(f"expert buffer {p} holds {h['channels']}×{h['image_size']}² px experts, the dataset is "
                         f"{dataset.channels}×{dataset.image_size}² px")
    want = resolve_model_name(arch)
    if h["arch"] != want:
        raise DDKitError(f"expert buffer {p} holds {h['arch']} experts but the distillation uses {want}: "
                         f"pass --model {h['arch']} or train experts for {want}")
    norm = h["normalisation"]
    if (not all(k in norm for k in ("kind", "mean", "std")) or not isinstance(norm["mean"], list)
            or not isinstance(norm["std"], list)):
        raise DDKitError(f"expert buffer header {hpath}: 'normalisation' must hold kind, mean and std lists; "
                         f"{hint}")
    if not isinstance(h["config"].get("epochs"), int) or not isinstance(h["config"].get("lr"), (int, float)):
        raise DDKitError(f"expert buffer header {hpath}: 'config' must hold whole 'epochs' and a number 'lr'; {hint}")
    kind = "zca" if zca else "meanstd"
    if norm["kind"] != kind:
        raise DDKitError(f"expert buffer {p} was trained with {norm['kind']} inputs but the distillation asks for "
                         f"{kind}: pass --zca {'true' if norm['kind'] == 'zca' else 'false'} or retrain the experts")
    ours = list(dataset.mean) + list(dataset.std)
    if [round(v, 6) for v in norm["mean"] + norm["std"]] != [round(v, 6) for v in ours]:
        raise DDKitError(f"expert buffer {p} was trained with mean/std {norm['mean']}/{norm['std']}, the dataset "
                         f"uses {list(dataset.mean)}/{list(dataset.std)}")
    epochs = int(h["config"]["epochs"])
    if epochs < need_epochs:
        raise DDKitError(f"expert buffer {p} has {epochs} epochs per expert, fewer than max_start_epoch + "
                         f"expert_epochs = {need_epochs}: lower them or train longer experts")
    files = sorted(p.glob("expert_*.safetensors"))
    if not files:
        raise DDKitError(f"expert buffer {p} has no finished expert yet: finish it with `ddkit experts train` "
                         "(it resumes)")
    for f in files:  # before any work: a truncated or disguised expert is refused from its header
        check_safetensors(f, "expert file")
        safetensors_metadata(f, "expert file")
    space = Space(dataset.mean, dataset.std)
    if zca:
        space = Space(dataset.mean, dataset.std, _zca(p / "zca.safetensors"))
    return ExpertBuffer(p, h, files, space)


def _zca(path: Path) -> ZCA:
    """The buffer's fitted ZCA transform, read through the loader layer."""
    state = read_safetensors(path, "ZCA file of the expert buffer")
    try:
        return ZCA.from_state(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise DDKitError(f"ZCA file {path} is not a ZCA state ({' '.join(str(e).split())[:80]}); delete it and "
                         f"rerun `ddkit experts train`") from None
