"""Top-k stored soft labels: what keeping only the k largest teacher logits per view costs in accuracy.

Students are trained on one distilled set with a KL loss against four kinds of targets, everything
else held fixed. All of them see the same augmented views: the views of a label store are
regenerated from its seed, and every store here is built with the same seed and augmentation. The
students also share the init seeds, the batch order and the optimizer.

* `online`: the teacher's fp32 logits, computed on the fly on the view being trained on (the reference);
* `full_fp16`: the full store (every logit rounded once to fp16, as SRe2L stores them);
* `top{k}_uniform`: a top-k store read back with fill "uniform": the k stored logits are exact and
  the remaining probability mass (at T = 1) is spread evenly over the other classes;
* `top{k}_neg_inf` (with --fills uniform,neg_inf): the other classes get -inf, so the target is the
  softmax over the top k alone. With KL this stays finite, because a zero target probability
  contributes nothing.

The views are FactorCrop(2) (CIM's quadrant-or-whole crop, as the `cim` recipe uses: LIC stores 2×2
mosaics, and a student trained on whole mosaics reached 28 % instead of 50 % in a first trial), then
RandomResizedCrop(0.5..1), then a flip, all drawn per sample. Each view is used once: the store holds
`epochs` views per image, and a student trains for `epochs` epochs.

Each variant records the store's data bytes (LabelStore.nbytes), the size projected to ImageNet-1K at
IPC 10 with 300 epochs (label_store_nbytes(300, 10000, 1000, k)), how far its targets are from the
reference (mean total-variation distance between softmax(t/T) distributions, over all views), and the
last-epoch test accuracy per seed with mean ± std (ddof 0). The JSON is rewritten after every student,
and a rerun skips students already in it. `--table FILE` prints the markdown table of a results JSON.

Example (the CPU run committed in bench/results/topk_labels_cifar10_cpu.json):
    OMP_NUM_THREADS=1 python bench/topk_labels.py --dataset tar:../shared/data/cifar10-jpeg75.tar.gz \
        --teacher runs/teachers/cifar10_jpeg75_convnet3 --set runs/bench/sets/lic_ipc10 \
        --output bench/results/topk_labels_cifar10_cpu.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ddkit.augment import Augment, Compose, FactorCrop, Flip, Normalize, RandomResizedCrop
from ddkit.config import add_dataclass_args, field, from_args, to_dict
from ddkit.data import create_dataset
from ddkit.data.base import ImageDataset
from ddkit.distilled import DistilledSet
from ddkit.evaluate.evaluator import check_classes
from ddkit.evaluate.losses import kl_div
from ddkit.evaluate.metrics import summarize
from ddkit.evaluate.recipes import Recipe
from ddkit.evaluate.student import build_optimizer, lr_factor
from ddkit.labels import FILLS, LabelStore, build_label_store, label_store_nbytes
from ddkit.models import create_model
from ddkit.teachers import Teacher, accuracy, check_teacher, load_teacher
from ddkit.utils import DDKitError, atomic_write_bytes, derive_seed, get_device, git_revision, machine_info, \
    make_generator

#: the projection the library docstring uses: ImageNet-1K, IPC 10 (10,000 images), 300 epochs, 1000 classes
PROJECTION = {"epochs": 300, "num_images": 10_000, "num_classes": 1000}


@dataclass(frozen=True)
class TopkBenchConfig:
    """The training protocol, shared by every variant. Only the targets change from one variant to another."""

    epochs: int = field(100, "epochs over the set, which is also the number of stored views per image. 100 epochs "
                             "of a 100-image set are 10,000 samples = 0.2 CIFAR-10 epochs, the CPU budget of "
                             "bench/accuracy.py")
    batch_size: int = field(100, "student batch size (100 = the whole set at CIFAR-10 IPC 10)")
    lr: float = field(1e-3, "AdamW learning rate; full cosine to 0, stepped per epoch")
    weight_decay: float = field(0.01, "AdamW weight decay on weights with ndim > 1 (as RDED and SRe2L)")
    temperature: float = field(4.0, "KL temperature T. 4 is the usual CIFAR KD value. T = 1 would hide most of "
                                    "what top-k drops: the uniform fill keeps the T = 1 probabilities of the "
                                    "top k exactly. At RDED/SRe2L's T = 20, softmax(t/T) over 10 classes is "
                                    "close to flat")
    seeds: int = field(3, "students per variant, seeds seed .. seed+seeds-1 (init and batch order)")
    seed: int = field(0, "first student seed")
    store_seed: int = field(0, "seed of the stored views; every store uses it, so every variant sees the same views")
    ks: Tuple[int, ...] = field((1, 2, 3, 5), "top-k sizes to store")
    fills: Tuple[str, ...] = field(("uniform",), "top-k reconstructions to train on: uniform and/or neg_inf")
    factor: int = field(2, "FactorCrop factor applied first (CIM's quadrant-or-whole crop, as in the `cim` "
                           "recipe): LIC stores 2x2 mosaics, and without it students train on mosaics. 1 = off")
    rrc_min: float = field(0.5, "smallest RandomResizedCrop area fraction of the stored views. 0.5 instead "
                                "of 0.08, because at 32 px small crops leave little of the object")
    test_batch_size: int = field(500, "batch size for test inference")


#: the fields that change the numbers. A rerun that changes one of them refuses the old JSON
PROTOCOL_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "temperature", "store_seed", "factor", "rrc_min")


@dataclass(frozen=True)
class Variant:
    """One kind of target: the online teacher (no store), the full fp16 store, or top-k with a fill."""

    name: str
    topk: Optional[int] = None
    fill: str = "uniform"
    online: bool = False


def make_variants(cfg: TopkBenchConfig) -> List[Variant]:
    """online, full_fp16, then top-k from the largest k down, for each fill."""
    bad = [f for f in cfg.fills if f not in FILLS]
    if bad:
        raise DDKitError(f"unknown fill {bad[0]!r}; choose from {', '.join(FILLS)}")
    out = [Variant("online", online=True), Variant("full_fp16")]
    for fill in cfg.fills:
        out += [Variant(f"top{k}_{fill}", topk=k, fill=fill) for k in sorted(set(cfg.ks), reverse=True)]
    return out


def store_augment(image_size: int, rrc_min: float, factor: int = 1) -> Augment:
    """Per-sample views to store: [FactorCrop(factor)] + RandomResizedCrop(rrc_min..1) + flip (nothing mixes the
    batch). FactorCrop(f) picks one of the f×f cells (or, with prob 1/f², the whole image) and resizes it back."""
    ops: List[Augment] = [FactorCrop(factor)] if factor > 1 else []
    return Compose([*ops, RandomResizedCrop(image_size, scale=(rrc_min, 1.0)), Flip()])


def build_stores(ds: DistilledSet, teacher: Teacher, cfg: TopkBenchConfig, root: Path, device: torch.device,
                 progress: bool) -> Dict[Optional[int], LabelStore]:
    """The full store (key None) and one top-k store per k, under `root`. Existing stores are reused."""
    aug = store_augment(ds.images.shape[-1], cfg.rrc_min, cfg.factor)
    stores: Dict[Optional[int], LabelStore] = {}
    for k in [None, *sorted(set(cfg.ks))]:
        path = root / ("full" if k is None else f"top{k}")
        stores[k] = build_label_store(ds, teacher, aug, cfg.epochs, cfg.store_seed, path, topk=k,
                                      device=device, progress=progress, resume=True)
    ref = stores[None].views(0, [0, len(ds) - 1])[0]
    for k, s in stores.items():  # cheap guard on the claim that every variant trains on the same views
        if not torch.equal(s.views(0, [0, len(ds) - 1])[0], ref):
            raise DDKitError(f"store top{k} regenerates other views than the full store")
    return stores


def teacher_logits(teacher: Teacher, x: torch.Tensor) -> torch.Tensor:
    """fp32 teacher logits of [0,1] views, normalised with the teacher's statistics as the store builder does."""
    with torch.no_grad():
        return teacher.model(Normalize(teacher.mean, teacher.std).apply(x, {})).float()


def target_distortion(stores: Dict[Optional[int], LabelStore], teacher: Teacher, variants: Sequence[Variant],
                      temperature: float, device: torch.device) -> Dict[str, Dict[str, float]]:
    """For each variant, the mean over all views of TV(softmax(ref/T), softmax(target/T)), where ref is the fp32
    teacher, plus the teacher's T=1 mass outside the top k. This is how much each variant changes the labels."""
    full = stores[None]
    n = full.num_images
    tv: Dict[str, float] = {v.name: 0.0 for v in variants}
    tail: Dict[str, float] = {v.name: 0.0 for v in variants if v.topk is not None}
    for e in range(full.epochs):
        x, _ = full.views(e, torch.arange(n), device=device)
        ref = teacher_logits(teacher, x).cpu()
        q_ref = F.softmax(ref / temperature, 1)
        p1 = F.softmax(ref, 1)
        for v in variants:
            if v.online:
                continue
            t = stores[v.topk].logits(e, torch.arange(n), fill=v.fill)
            tv[v.name] += 0.5 * float((q_ref - F.softmax(t / temperature, 1)).abs().sum(1).sum())
            if v.topk is not None:
                tail[v.name] += float((1 - p1.topk(v.topk, 1).values.sum(1)).clamp(min=0).sum())
    views = full.epochs * n
    return {v.name: {"target_tv": tv[v.name] / views,
                     **({"teacher_mass_outside_topk": tail[v.name] / views} if v.name in tail else {})}
            for v in variants}


def train_student(ds: DistilledSet, store: LabelStore, variant: Variant, teacher: Teacher, test: ImageDataset,
                  cfg: TopkBenchConfig, seed: int, device: torch.device, bar: Optional[tqdm] = None
                  ) -> Tuple[float, float]:
    """One student on the store's views with KL(target/T ‖ student/T); returns (last-epoch test acc, last loss)."""
    n, k = len(ds), ds.num_classes
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed(seed, "init"))  # the same init for every variant
        model = create_model(teacher.arch, num_classes=k, image_size=ds.images.shape[-1],
                             channels=ds.images.shape[1], **teacher.arch_kw).to(device)
    recipe = Recipe("topk-bench", "AdamW + full cosine", optimizer="adamw", lr=cfg.lr,
                    weight_decay=cfg.weight_decay, wd_norm_bias=False, schedule="cosine", epochs=cfg.epochs,
                    batch_size=cfg.batch_size)
    opt = build_optimizer(model, recipe)
    order = make_generator(seed, "order")  # the same batches for every variant
    norm = Normalize(ds.mean, ds.std)
    loss = torch.zeros(())
    for e in range(cfg.epochs):
        for g in opt.param_groups:
            g["lr"] = cfg.lr * lr_factor(recipe, e, cfg.epochs)
        perm = torch.randperm(n, generator=order)
        for a in range(0, n, cfg.batch_size):
            x, t = store.views(e % store.epochs, perm[a:a + cfg.batch_size], device=device, fill=variant.fill)
            if variant.online:
                t = teacher_logits(teacher, x)
            model.train()
            loss = kl_div(model(norm.apply(x, {})), t, cfg.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if bar is not None:
            bar.update(1)
    acc = accuracy(model, test, mean=ds.mean, std=ds.std, device=device, batch_size=cfg.test_batch_size)
    return acc, float(loss.detach())


def _save(out: Path, state: Dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, json.dumps(state, indent=1, default=str).encode())


def measure(ds: DistilledSet, test: ImageDataset, teacher: Teacher, cfg: TopkBenchConfig, *, set_name: str,
            output: Path, store_dir: Path, command: str, device: torch.device, progress: bool = True,
            extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Train every (seed, variant) student that `output` does not hold yet. The JSON is rewritten after each."""
    check_classes(ds, test, teacher)
    state: Dict[str, Any] = json.loads(output.read_text()) if output.exists() else {"sets": {}}
    state.update(command=command, git_revision=git_revision(), machine=machine_info(device), **(extra or {}))
    proto = {key: getattr(cfg, key) for key in PROTOCOL_KEYS}
    old = state.get("protocol")
    if old is not None and {key: old.get(key) for key in PROTOCOL_KEYS} != json.loads(json.dumps(proto)):
        raise DDKitError(f"{output} holds results of another protocol ({old}); pass another --output")
    state["protocol"] = {**to_dict(cfg), "student": teacher.arch, "optimizer": "adamw", "schedule": "cosine",
                         "loss": f"KL(softmax(t/T) || softmax(s/T)), batchmean, no T^2, T={cfg.temperature}",
                         "store_aug": repr(store_augment(ds.images.shape[-1], cfg.rrc_min, cfg.factor)),
                         "headline": "last-epoch test accuracy, mean ± std (ddof 0) over seeds"}
    variants = make_variants(cfg)
    tag = f"{set_name}_e{cfg.epochs}_s{cfg.store_seed}_f{cfg.factor}_rrc{cfg.rrc_min}"
    stores = build_stores(ds, teacher, cfg, store_dir / tag, device, progress)
    entry = state["sets"].setdefault(set_name, {"variants": {}})
    entry.update(num_images=len(ds), num_classes=ds.num_classes, views_per_image=cfg.epochs,
                 samples_per_student=cfg.epochs * len(ds))
    dist = target_distortion(stores, teacher, variants, cfg.temperature, device)
    for v in variants:
        rec = entry["variants"].setdefault(v.name, {"accs": [], "seeds": [], "final_losses": [], "seconds": []})
        nbytes = 0 if v.online else stores[v.topk].nbytes()
        proj = None if v.online else label_store_nbytes(PROJECTION["epochs"], PROJECTION["num_images"],
                                                        PROJECTION["num_classes"], v.topk)
        rec.update(topk=v.topk, fill=v.fill if v.topk is not None else None, online=v.online, store_bytes=nbytes,
                   projected_imagenet1k_ipc10_300ep_bytes=proj, **dist[v.name])
    _save(output, state)
    seeds = list(range(cfg.seed, cfg.seed + cfg.seeds))
    todo = [(s, v) for s in seeds for v in variants if s not in entry["variants"][v.name]["seeds"]]
    bar = tqdm(total=len(todo) * cfg.epochs, desc=f"{set_name} students", disable=not progress,
               dynamic_ncols=True, mininterval=2.0)
    for seed, v in todo:  # seed-major: a run stopped early still has every variant at the same seeds
        bar.set_postfix(variant=v.name, seed=seed, refresh=False)
        t0 = time.perf_counter()
        acc, loss = train_student(ds, stores[None if v.online else v.topk], v, teacher, test, cfg, seed, device, bar)
        rec = entry["variants"][v.name]
        rec["accs"].append(acc)
        rec["seeds"].append(seed)
        rec["final_losses"].append(loss)
        rec["seconds"].append(time.perf_counter() - t0)
        s = summarize(rec["accs"])
        rec.update(mean=s["mean"], std=s["std"], n=s["n"], command=command, git_revision=state["git_revision"])
        _save(output, state)
        bar.write(f"{set_name:14s} {v.name:16s} seed {seed}: {100 * acc:5.2f}%  "
                  f"(mean {100 * s['mean']:.2f} ± {100 * s['std']:.2f}, n={s['n']})")
    bar.close()
    return state


def _size(b: Optional[int]) -> str:
    if b is None:
        return "– (teacher at training time)"
    return next((f"{b / s:.3g} {u}" for u, s in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)) if b >= s), f"{b} B")


def markdown_table(state: Dict[str, Any]) -> str:
    """The docs/results.md table of a results JSON, one per set (numbers are never typed by hand)."""
    T = state["protocol"]["temperature"]
    out = []
    for name, entry in state["sets"].items():
        lines = [f"**{name}** ({entry['num_images']} images, {entry['samples_per_student']:,} samples per student)", "",
                 f"| variant | label bytes, this set | ImageNet-1K IPC 10 × 300 ep | TV to fp32 labels (T={T:g}) "
                 "| teacher mass outside top-k (T=1) | accuracy % (mean ± std) | seeds |", "|---" * 7 + "|"]
        for vname, v in entry["variants"].items():
            if not v["accs"]:
                continue
            tail = v.get("teacher_mass_outside_topk")
            lines.append(f"| {vname} | {_size(v['store_bytes']) if not v['online'] else '0 (no store)'} "
                         f"| {_size(v['projected_imagenet1k_ipc10_300ep_bytes'])} | {v['target_tv']:.3f} "
                         f"| {'–' if tail is None else f'{tail:.3f}'} "
                         f"| {100 * v['mean']:.2f} ± {100 * v['std']:.2f} | {len(v['seeds'])} |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry: load the test split, the teacher and each set; run `measure` per set.
    `--table FILE` only prints the markdown table of a results JSON."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--table", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.table:
        print(markdown_table(json.loads(Path(known.table).read_text())))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", default=None, help="print the markdown table of this results JSON and exit")
    p.add_argument("--dataset", required=True, help="dataset spec, e.g. tar:../shared/data/cifar10-jpeg75.tar.gz")
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", default="runs/cache")
    p.add_argument("--teacher", required=True)
    p.add_argument("--set", dest="sets", nargs="+", required=True, help="DistilledSet folder(s)")
    p.add_argument("--output", required=True)
    p.add_argument("--store-dir", default="runs/topk_stores", help="where the label stores are built (git-ignored)")
    p.add_argument("--device", default="auto")
    p.add_argument("--note", default=None, help="free text stored in the JSON (e.g. why seeds were cut)")
    p.add_argument("--no-progress", action="store_true")
    add_dataclass_args(p, TopkBenchConfig)
    args = p.parse_args(argv)
    cfg = from_args(TopkBenchConfig, args)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    command = " ".join([Path(sys.executable).name, "bench/topk_labels.py", *argv_list])
    dev = get_device(args.device)
    test = create_dataset(args.dataset, root=args.data_root, split="test", cache_dir=args.cache_dir,
                          progress=not args.no_progress)
    teacher = load_teacher(args.teacher, dataset=test, device=dev)
    extra: Dict[str, Any] = {"data": args.dataset, "teacher": {
        "path": args.teacher, "arch": teacher.arch, "test_acc": teacher.meta.get("accuracy"),
        "sanity_acc": check_teacher(teacher, test, device=dev)}}
    if args.note:
        extra["note"] = args.note
    for path in args.sets:
        ds = DistilledSet.load(path)
        measure(ds, test, teacher, cfg, set_name=Path(path).name, output=Path(args.output),
                store_dir=Path(args.store_dir), command=command, device=dev, progress=not args.no_progress,
                extra=extra)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
