"""RDED's crop scoring and LIC's selection forward: the per-class path vs shared fixed-shape forwards.

One process, one thread, variants interleaved round by round (the order rotates every round):
  * `old`: the path before the shared forwards (revision 634be6a): each class scores its own
    candidates in forwards of at most --max-batch (256) rows at class-relative offsets, fp32 (re-stated
    here from that revision's `rded.best_patches` and `lic._select`, on the library's primitives);
  * `new`: the library default now: the candidates of all --classes in shared forwards of exactly
    `score_batch` rows (auto on CPU: 32; the last zero-padded) — `rded.best_patches_many`,
    `FrozenTeacher.shared_logits`, fp32;
  * `new_bf16`: the same with `cpu_amp` (bf16 autocast, where the CPU has native bf16);
  * attribution: `shared_b256` (shared forwards of --max-batch rows: the sharing alone) and `old_b32`
    (the old per-class path in chunks of score_batch rows: the forward size alone).
RDED: pool 300, 5 crops per image (1500 crops a class), factor 1 (32 px), then rank + stitch at IPC 10.
LIC: pool 300, logits → CE → the ipc·f² = 40 lowest (IPC 10, f = 2). Pools are read once up front
(the same for every variant, not timed). Rates are candidates (crops / pool images) per second of
process CPU time and of wall time; ratios to `old` are taken round by round.

Agreement (whether bf16 can be the default): per class, the chosen candidates of `new_bf16` vs `new`
at IPC 10 (and 50, from the same scores): RDED the (source image, crop box) pairs, LIC the images;
and whether `new` fp32 picks exactly what `old` picks (it must: same bytes up to kernel shape).

    OMP_NUM_THREADS=1 nice -n 10 python bench/selection_speed.py --rounds 3 \\
        --output bench/results/selection_speed_cpu.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ddkit.augment import RandomResizedCrop, resized_crop
from ddkit.data import create_dataset
from ddkit.data.base import to_float
from ddkit.methods.lic_ops import cross_entropy_per_sample
from ddkit.methods.rded import PatchScorer, _rank_and_stitch, best_patches_many
from ddkit.teachers import load_teacher
from ddkit.teachers.frozen import FrozenTeacher
from ddkit.teachers.shared import CPU_SCORE_BATCH
from ddkit.utils import cpu_bf16_native, git_revision, machine_info, make_generator

TEACHERS = ("/work/runs/teachers/cifar10_jpeg75_convnet3_e8",
            "bench/results/hardtruths_smallscale_cifar10_cpu/teacher/cifar10_jpeg75_convnet3_e1")
Picks = List[Tuple[torch.Tensor, torch.Tensor]]  # per class: (per-candidate score, per-candidate box or None)


def old_rded(pool_u8: torch.Tensor, label: int, scorer: PatchScorer, num_crop: int, patch: int,
             gen: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Revision 634be6a's `best_patches`: one class, class-relative chunks of max_batch, no padding, fp32."""
    pool01 = to_float(pool_u8)
    n = len(pool01)
    rrc = RandomResizedCrop(patch, scale=(0.08, 1.0), ratio=(1.0, 1.0), antialias=True)
    boxes = rrc.sample(n * num_crop, pool01.shape, generator=gen)["box"]
    ce = torch.empty(n * num_crop)
    for r0 in range(0, n * num_crop, scorer.max_batch):
        rows = torch.arange(r0, min(r0 + scorer.max_batch, n * num_crop))
        crops = resized_crop(pool01[rows // num_crop], boxes[rows], patch, antialias=True)
        ce[r0:r0 + len(rows)] = scorer.ce(crops, label)
    per_image = ce.view(n, num_crop)
    best = per_image.argmin(dim=1)
    win = boxes.view(n, num_crop, 4)[torch.arange(n), best]
    return resized_crop(pool01, win, patch, antialias=True), per_image.gather(1, best[:, None])[:, 0], win


def rded_variant(pools, classes, scorer: PatchScorer, shared: bool, num_crop: int, ipc: int) -> Picks:
    """One RDED pass over `classes` (scoring + rank + stitch); returns per class (kept CE, kept boxes)."""
    gens = [make_generator(0, "rded", "crop", c) for c in classes]
    if shared:
        best = best_patches_many([p for p, _ in pools], classes, scorer, num_crop, 32, 0.08, gens)
    else:
        best = [old_rded(p, c, scorer, num_crop, 32, g) for (p, _), c, g in zip(pools, classes, gens)]
    for b, (_, idx) in zip(best, pools):
        _rank_and_stitch(b, idx, ipc, 1, 32)
    return [(b[1], b[2]) for b in best]


def lic_variant(pools, classes, tch: FrozenTeacher, shared: bool, cpu_amp: bool, batch: int) -> Picks:
    """LIC's selection forward over `classes`; returns per class (CE of every pool image, None)."""
    imgs = [p for p, _ in pools]
    logits = (tch.shared_logits(imgs, cpu_amp, batch) if shared else [tch.logits(p, batch) for p in imgs])
    return [(cross_entropy_per_sample(z, c), None) for z, c in zip(logits, classes)]


def chosen(picks: Picks, k: int) -> List[set]:
    """Per class, the k lowest-score candidates as a set of (image, box) keys."""
    out = []
    for score, box in picks:
        order = torch.argsort(score, stable=True)[:k].tolist()
        out.append({(i, tuple(box[i].tolist()) if box is not None else None) for i in order})
    return out


def agreement(a: Picks, b: Picks, k: int) -> Dict[str, Any]:
    ca, cb = chosen(a, k), chosen(b, k)
    same = sum(len(x & y) for x, y in zip(ca, cb))
    return {"k_per_class": k, "same_choices": same, "of": k * len(ca), "fraction": same / (k * len(ca)),
            "classes_identical": sum(x == y for x, y in zip(ca, cb))}


def summary(xs: Sequence[float]) -> Dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="tar:/work/shared/data/cifar10-jpeg75.tar.gz")
    p.add_argument("--cache-dir", default="/work/runs/cache")
    p.add_argument("--teacher", default=None, help="default: the first of %s that exists" % (TEACHERS,))
    p.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9", help="LIC's timed classes; the agreement's classes")
    p.add_argument("--rded-classes", default="0,1,2,3,4", help="RDED's timed classes (the rest of --classes "
                                                              "get one untimed pass for the agreement)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-batch", type=int, default=256)
    p.add_argument("--score-batch", type=int, default=CPU_SCORE_BATCH, help="rows per forward of `new`")
    p.add_argument("--parts", default="rded,lic")
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    teacher_path = args.teacher or next(t for t in TEACHERS if Path(t + ".safetensors").exists())
    train = create_dataset(args.dataset, split="train", cache_dir=args.cache_dir)
    teacher = load_teacher(teacher_path, dataset=train)
    classes = [int(c) for c in args.classes.split(",")]
    rclasses = [int(c) for c in args.rded_classes.split(",")]
    pool_of = {c: train.class_images(c, 300, generator=make_generator(0, "class", c))
               for c in dict.fromkeys(classes + rclasses)}
    pools = [pool_of[c] for c in classes]
    rpools = [pool_of[c] for c in rclasses]
    rest = [c for c in classes if c not in rclasses]
    cpu = torch.device("cpu")
    variants: Dict[str, Tuple[str, Callable[[], Picks], int]] = {}
    parts = args.parts.split(",")
    sb, mb = args.score_batch, args.max_batch
    extra: Dict[str, Picks] = {}
    if "rded" in parts:
        def scorer(batch: int, score: int, amp: bool = False) -> PatchScorer:
            return PatchScorer(teacher, cpu, max_batch=batch, score_batch=score, cpu_amp=amp)

        n = 1500 * len(rclasses)
        for name, sc, shared in (("old", scorer(mb, mb), False), (f"old_b{sb}", scorer(sb, sb), False),
                                 (f"shared_b{mb}", scorer(mb, mb), True), ("new", scorer(mb, sb), True),
                                 ("new_bf16", scorer(mb, sb, True), True)):
            variants[f"rded/{name}"] = ("rded", (lambda sc=sc, shared=shared, ps=rpools, cs=rclasses:
                                                 rded_variant(ps, cs, sc, shared, 5, 10)), n)
            if name in ("old", "new", "new_bf16") and rest:  # untimed: the agreement's other classes
                extra[f"rded/{name}"] = rded_variant([pool_of[c] for c in rest], rest, sc, shared, 5, 10)
    if "lic" in parts:
        tch = FrozenTeacher(teacher, cpu)
        n = 300 * len(classes)
        for name, shared, amp, batch in (("old", False, False, mb), (f"old_b{sb}", False, False, sb),
                                         (f"shared_b{mb}", True, False, mb), ("new", True, False, sb),
                                         ("new_bf16", True, True, sb)):
            variants[f"lic/{name}"] = ("lic", (lambda shared=shared, amp=amp, batch=batch:
                                               lic_variant(pools, classes, tch, shared, amp, batch)), n)
    names = list(variants)
    cpu_s: Dict[str, List[float]] = {k: [] for k in names}
    wall_s: Dict[str, List[float]] = {k: [] for k in names}
    picks: Dict[str, Picks] = {}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate who goes first
        for name in order:
            t0, c0 = time.perf_counter(), time.process_time()
            out = variants[name][1]()
            wall_s[name].append(time.perf_counter() - t0)
            cpu_s[name].append(time.process_time() - c0)
            picks.setdefault(name, out + extra.get(name, []))
            print(f"round {r} {name}: {variants[name][2] / cpu_s[name][-1]:.0f} candidates / CPU s "
                  f"({wall_s[name][-1]:.1f} s wall)", flush=True)
    res: Dict[str, Any] = {
        "command": " ".join(["python", "bench/selection_speed.py"] + list(argv if argv is not None else sys.argv[1:])),
        "git_revision": git_revision(), "machine": machine_info(), "cpu_bf16_native": cpu_bf16_native(),
        "threads": torch.get_num_threads(), "data": f"{args.dataset} (CIFAR-10 (JPEG q75)), train split, "
        f"LIC classes {classes}, RDED timed classes {rclasses} (agreement: {classes}), "
        f"pools of 300 seeded by (0, class)", "teacher": teacher_path,
        "recipe": "RDED: pool 300, 5 RandomResizedCrops (scale 0.08-1, square) per image, factor 1, IPC 10; "
                  "LIC: pool 300, CE selection of ipc*f^2 = 40 (IPC 10, f = 2)",
        "max_batch": args.max_batch, "score_batch": args.score_batch, "rounds": args.rounds, "variants": {}, "agreement": {}}
    for name in names:
        part, _, n = variants[name]
        rates = [n / s for s in cpu_s[name]]
        base = f"{part}/old"
        entry = {"candidates_per_pass": n, "cpu_s": cpu_s[name], "wall_s": wall_s[name],
                 "candidates_per_cpu_s": summary(rates), "candidates_per_wall_s": summary([n / s for s in wall_s[name]])}
        if name != base:
            entry["ratio_to_old_cpu"] = summary([o / s for o, s in zip(cpu_s[base], cpu_s[name])])
            entry["ratio_to_old_wall"] = summary([o / s for o, s in zip(wall_s[base], wall_s[name])])
        res["variants"][name] = entry
    for part, ks in (("rded", (10, 50)), ("lic", (40, 200))):
        if f"{part}/old" not in picks:
            continue
        res["agreement"][part] = {
            "new_vs_old": [agreement(picks[f"{part}/new"], picks[f"{part}/old"], k) for k in ks],
            "new_exact_scores_vs_old": all(torch.equal(a[0], b[0]) for a, b in
                                           zip(picks[f"{part}/new"], picks[f"{part}/old"])),
            "bf16_vs_fp32": [agreement(picks[f"{part}/new_bf16"], picks[f"{part}/new"], k) for k in ks]}
    text = json.dumps(res, indent=2, default=str)
    print(json.dumps({k: res[k] for k in ("agreement",)}, indent=1))
    for name in names:
        v = res["variants"][name]
        print(name, {k: v[k] for k in v if k.startswith(("candidates_per_cpu", "ratio"))})
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
    return res


if __name__ == "__main__":
    main()
