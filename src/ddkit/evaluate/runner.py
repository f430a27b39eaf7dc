"""`run_evaluation()`: the plain-values entry the CLI calls; writes config, per-run metrics, summary, table.

```
<output>/config.yaml                         resolved EvalConfig + recipe + plan + inputs + machine
<output>/runs/<set>/<student>/seed<k>/metrics.jsonl   one line per epoch (loss, lr, seconds, images/s, accs)
<output>/soft_labels.safetensors             SL targets computed by the teacher (when it had to)
<output>/summary.json                        per student × set: accs per seed, seeds, mean, std (ddof 0), n, IOR;
                                             the set's IPC; the protocol that ran (native | hard-truths, what
                                             it took from the set); optional baselines left out, with the reason
<output>/results.md                          the same as a markdown table, each set's protocol in words, best-of-test
                                             in its own column (never the headline)
```
The folder is written atomically (temporary sibling, then rename); an existing one is refused
unless overwrite=True. Under torchrun only rank 0 writes it and prints (see evaluate/parallel.py).
The evaluator judges sets without knowing who made them: baselines (e.g. the random real subset of the
same IPC) are given by the caller, as sets or as functions of the train pool they must be drawn from.
A baseline the caller marks optional (the CLI's default random subset) is left out with a one-line note
when this protocol cannot have it (no train split, a class smaller than the IPC, `--labels stored`, SL
without a teacher), so a default never turns into a failure the user did not ask for.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Callable, Collection, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import yaml
from safetensors.torch import save_file

from ddkit.config import to_dict
from ddkit.data.base import ImageDataset
from ddkit.distilled import DistilledSet
from ddkit.ranks import barrier
from ddkit.evaluate import parallel as edist
from ddkit.evaluate.protocol import EvalConfig
from ddkit.evaluate.evaluator import DEFAULT_STUDENT, EvalResult, check_classes, evaluate, soft_labels_for
from ddkit.evaluate.losses import LOSSES
from ddkit.evaluate.metrics import hlr, ior, summarize
from ddkit.evaluate.native import SetProtocol, check_regime, follow, protocol_line, resolve_protocol
from ddkit.evaluate.recipes import resolve_recipe
from ddkit.evaluate.student import make_plan
from ddkit.teachers.frozen import teacher_identity
from ddkit.utils import DDKitError, git_revision, machine_info, make_generator
from ddkit.validate import json_safe

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")

#: a baseline: a set, or a function of the train pool (train minus any validation slice) that draws one
Baseline = Union[DistilledSet, Callable[[ImageDataset], DistilledSet]]


def split_val(train: ImageDataset, fraction: float, seed: int) -> Tuple[ImageDataset, ImageDataset]:
    """(val, rest): a seeded, class-stratified validation slice of round(fraction·count) (≥ 1) per class."""
    if not 0.0 < fraction < 1.0:
        raise DDKitError(f"--val-fraction must be in (0, 1), got {fraction}")
    val_idx: List[torch.Tensor] = []
    rest_idx: List[torch.Tensor] = []
    for c in range(train.num_classes):
        idx = train.class_indices(c)
        perm = idx[torch.randperm(len(idx), generator=make_generator(seed, "val", c))]
        m = min(len(idx) - 1, max(1, round(fraction * len(idx))))
        val_idx.append(perm[:m])
        rest_idx.append(perm[m:])
    return train.subset(torch.cat(val_idx), split="val"), train.subset(torch.cat(rest_idx))


def _pct(v: float) -> str:
    return f"{100 * v:.2f}"


def set_ipc(ds: DistilledSet) -> int:
    """The set's IPC as its maker stated it (meta["ipc"]), else images per class counted from the labels.

    The stated value comes first because it is what the user asked for (`--ipc 10`); the count is the
    fallback for imported sets whose meta does not say."""
    v = ds.meta.get("ipc")
    if isinstance(v, int) and not isinstance(v, bool) and v > 0:
        return v
    return ds.ipc


def best_of_test_text(row: Mapping[str, Any]) -> str:
    """summary.json's best-of-test of one student × set as 'mean ± std' (%), or '–' when not recorded."""
    b = row.get("best_of_test") or {}
    if not b or b.get("mean") is None:
        return "–"
    return f"{_pct(b['mean'])} ± {_pct(b.get('std') or 0.0)}" if len(b.get("accs") or []) > 1 else _pct(b["mean"])


def results_markdown(results: Sequence[EvalResult], summary: Dict[str, Any]) -> str:
    """A markdown table: one row per student × set, then IOR / HLR when available."""
    r0 = results[0]
    proto = summary.get("protocol") or {}
    ran = f"{protocol_line(proto)}; " if proto else ""
    lines = [
        f"{ran}regime **{r0.regime}** (loss `{r0.recipe.loss_for(r0.regime)}`), recipe **{r0.recipe.name}**; "
        f"headline = last-epoch test accuracy (%), mean ± std (ddof 0) over n seeds. Best-of-test = the best of "
        f"the recorded test evaluations, chosen on the test set: shown beside, never the headline.",
        *([f"", *(f"- {n}" for n in proto.get("notes", []))] if proto.get("notes") else []),
        *(["", f"Compute: {summary['compute_path']['why']}."] if summary.get("compute_path") else []),
        "",
        "| student | set | acc % (mean ± std) | n | per seed | seeds | best-of-test % (not the headline) | "
        "iterations × batch | img/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    baseline_protocols: Dict[str, Any] = {}
    for r in results:
        s = summarize(r.accs)
        ips = sum(x.images_per_s for x in r.runs) / max(1, len(r.runs))
        lines.append(f"| {r.student} | {r.set_name} | {_pct(s['mean'])} ± {_pct(s['std'])} | {s['n']} | "
                     f"{', '.join(_pct(a) for a in r.accs)} | {', '.join(map(str, r.seeds))} | "
                     f"{best_of_test_text(r.to_dict())} | {r.plan.iterations} × {r.plan.batch_size} | {ips:.0f} |")
        if r.set_name != "distilled" and r.info.get("protocol"):
            baseline_protocols.setdefault(r.set_name, r.info["protocol"])
    for name, d in baseline_protocols.items():  # a baseline follows the set's protocol; say what it ran
        notes = "; ".join(d.get("notes") or [])
        lines += ["", f"{name}: {protocol_line(d)}" + (f" ({notes})" if notes else "")]
    extra = summary.get("ior") or {}
    if extra:
        lines += ["", "| student | IOR = acc(distilled) − acc(random), points | per seed (paired) |", "|---|---|---|"]
        for st, v in extra.items():
            lines.append(f"| {st} | {_pct(v['ior'])} | {', '.join(_pct(x) for x in v['per_seed'])} |")
    for st, v in (summary.get("hlr") or {}).items():
        lines.append(f"\nHLR ({st}) = full {_pct(v['full_acc'])} − distilled {_pct(v['syn_acc'])} = {_pct(v['hlr'])} points")
    return "\n".join(lines) + "\n"


def run_evaluation(distilled_dir: str, cfg: EvalConfig, *, test: ImageDataset, train: Optional[ImageDataset] = None,
                   teacher: Any = None, output: str, overwrite: bool = False,
                   baselines: Optional[Mapping[str, Baseline]] = None, optional: Collection[str] = (),
                   students: Optional[Tuple[str, ...]] = None, device: Any = None, progress: bool = True
                   ) -> Dict[str, Any]:
    """Evaluate the set at `distilled_dir` and each of `baselines` for each student under the same
    protocol, write the output folder atomically, print the table; return summary.json's dict.

    baselines: {name: set or pool -> set}; "random" gets the IOR column (acc(distilled) − acc(random)).
    A callable is given the train pool (train minus the validation slice), so a baseline never sees
    validation images. Under torchrun every rank calls it inside the entry point's process group.
    optional: names of baselines left out with a one-line note (printed, and recorded as summary.json's
    "skipped_baselines") instead of an error when they cannot be drawn or judged under this protocol."""
    ctx = edist.setup(cfg, device)
    dev = ctx.device
    progress = progress and ctx.main
    distilled = DistilledSet.load(distilled_dir)
    proto = resolve_protocol(cfg, distilled)  # once, from the set under evaluation; baselines follow it
    cfg = proto.cfg
    regime = check_regime(cfg)
    baselines = dict(baselines or {})
    if "distilled" in baselines:
        raise DDKitError("a baseline cannot be named 'distilled' (that is the set under evaluation)")
    optional = set(optional)
    skipped: Dict[str, str] = {}

    def leave_out(reason: str, error: str) -> None:
        """Drop the optional baselines for `reason`; raise `error` when a baseline the caller required is left."""
        for name in [n for n in baselines if n in optional]:
            skipped[name] = reason
            del baselines[name]
        if baselines:
            raise DDKitError(error)

    if cfg.labels == "stored":  # the set's own `ddkit relabel` store (evaluate/stored.py)
        if baselines:
            leave_out("--labels stored trains from this set's label store, which a random subset does not have",
                      "--labels stored trains from this set's label store; a baseline has none: distill and "
                      "relabel the random subset and evaluate it on its own")
        if cfg.label_store is None:
            cfg = dataclasses.replace(cfg, label_store=str(Path(distilled_dir) / "fkd"))
            proto = dataclasses.replace(proto, cfg=cfg)
    check_classes(distilled, test, teacher)
    if baselines and train is None:
        leave_out("no train split to draw it from (give the dataset's train split)",
                  "a baseline (the random subset) is drawn from the train split: give the train split")
    if (cfg.budget_epochs is not None or cfg.val_fraction > 0) and train is None:
        raise DDKitError("--budget-epochs and --val-fraction need the train split")
    if train is not None and list(train.classes) != list(distilled.classes):
        raise DDKitError("the train split's classes differ from the distilled set's")
    # Resolve once up front so a bad flag fails before any training and config.yaml shows the values.
    recipe = resolve_recipe(cfg, n_images=len(distilled), num_classes=distilled.num_classes, ipc=distilled.ipc,
                            image_size=distilled.images.shape[-1])
    if cfg.epochs is not None and cfg.budget_epochs is not None:
        raise DDKitError("give either --epochs or --budget-epochs, not both")
    needs_logits = LOSSES.get(recipe.loss_for(regime)).needs_logits
    no_teacher = teacher is None and needs_logits and cfg.labels == "online"
    teacher_labels = (cfg.sl_labels or recipe.sl_labels) in ("image", "region")  # else a stored key (learned)
    if no_teacher and regime == "sl" and baselines and teacher_labels:
        # Before any training: a baseline subset (random) has no stored soft labels, only a teacher gives them.
        leave_out(f"regime {regime} needs teacher soft labels for it: pass --teacher CKPT",
                  f"regime {regime} needs a teacher here (soft labels for the random subset): pass --teacher CKPT")
    if no_teacher and regime == "slkd":
        raise DDKitError(f"regime {regime} needs a teacher here (online labels): pass --teacher CKPT")
    full = len(train) if train is not None else None
    plan = make_plan(recipe, len(distilled), budget_epochs=cfg.budget_epochs, full_train_size=full,
                     eval_every=cfg.eval_every)
    val, pool = (split_val(train, cfg.val_fraction, cfg.seed) if cfg.val_fraction > 0 else (None, train))
    sets: Dict[str, DistilledSet] = {"distilled": distilled}
    protos: Dict[str, SetProtocol] = {"distilled": proto}
    for name, b in list(baselines.items()):
        try:
            sets[name] = b if isinstance(b, DistilledSet) else b(pool)
        except DDKitError as e:  # e.g. a class of the pool smaller than the IPC
            if name not in optional:
                raise
            skipped[name] = str(e)
            del baselines[name]
            continue
        check_classes(sets[name], test, teacher)
        protos[name] = follow(proto, sets[name])
    with_random = "random" in baselines
    if ctx.main:
        for name, why in skipped.items():
            print(f"{name} baseline not evaluated: {why}")
    names = list(students) if students else [cfg.student]

    with edist.rank_output_dir(output, overwrite, ctx.main) as tmp:
        conf = {
            "protocol": proto.describe(), "eval": to_dict(cfg), "recipe": to_dict(recipe),
            "plan": {"batch_size": plan.batch_size, "iterations": plan.iterations, "epochs": plan.epochs,
                     "samples_seen": plan.samples, "eval_epochs": list(plan.eval_epochs)},
            "distilled": str(distilled_dir), "test": f"{test.name}/{test.split} ({len(test)} images)",
            "train": f"{train.name}/{train.split} ({len(train)} images)" if train is not None else None,
            "teacher": teacher_identity(teacher),
            "students": names, "baselines": list(baselines), "with_random": with_random,
            "skipped_baselines": skipped, "device": str(dev),
            "git_revision": git_revision(), "machine": machine_info(dev), **ctx.describe(),
        }
        conf = json.loads(json.dumps(conf, default=str))  # plain types only (torch's version is a str subclass)
        (tmp / "config.yaml").write_text(yaml.safe_dump(conf, sort_keys=False))
        if progress:
            print(yaml.safe_dump({"recipe": to_dict(recipe), "plan": conf["plan"]}, sort_keys=False).rstrip())
        soft: Dict[str, torch.Tensor] = {}
        for name, ds in sets.items():
            t = soft_labels_for(ds, protos[name].cfg, teacher, dev)
            if t is not None:
                soft[name] = t
        if soft:
            save_file({k: v.contiguous() for k, v in soft.items()}, str(tmp / "soft_labels.safetensors"))
        results: List[EvalResult] = []
        for st in names:
            for name, ds in sets.items():
                res = evaluate(ds, test, dataclasses.replace(cfg, student=st), teacher, full_train_size=full,
                               device=dev, progress=progress, output=tmp / "runs" / name / _SAFE.sub(
                                   "_", str(st or getattr(teacher, "arch", None) or DEFAULT_STUDENT)),
                               val=val, soft_labels=soft.get(name), soft_source="teacher", set_name=name,
                               protocol=dataclasses.replace(protos[name], cfg=dataclasses.replace(
                                   protos[name].cfg, student=st)))
                results.append(res)
        summary: Dict[str, Any] = {
            "headline": "last-epoch test accuracy (fraction), mean ± std (ddof 0) over n seeds",
            "protocol": proto.describe(), "regime": regime, "recipe": recipe.name, "ipc": set_ipc(distilled),
            "results": [r.to_dict() for r in results],
        }
        paths = {json.dumps(r.info["compute_path"], sort_keys=True) for r in results if "compute_path" in r.info}
        if len(paths) == 1:  # every student ran the same path (the usual case); else each result has its own
            summary["compute_path"] = json.loads(paths.pop())
        if skipped:
            summary["skipped_baselines"] = skipped
        by = {(r.student, r.set_name): r for r in results}
        iors = {}
        for st in dict.fromkeys(r.student for r in results):
            if (st, "random") in by:
                a, b = by[(st, "distilled")], by[(st, "random")]
                iors[st] = {"ior": ior(a.mean, b.mean), "per_seed": [x - y for x, y in zip(a.accs, b.accs)],
                            "distilled": a.mean, "random": b.mean}
        if iors:
            summary["ior"] = iors
            rnd = sets["random"]
            summary["random_subset"] = {"method": rnd.meta.get("method"), "ipc": rnd.ipc, "seed": rnd.meta.get("seed"),
                                        "drawn_from": f"{pool.name}/{pool.split} ({len(pool)} images)"}
        if regime == "hl" and cfg.full_acc is not None:
            summary["hlr"] = {st: {"hlr": hlr(cfg.full_acc, r.mean), "full_acc": cfg.full_acc, "syn_acc": r.mean}
                              for (st, name), r in by.items() if name == "distilled"}
        (tmp / "summary.json").write_text(json.dumps(json_safe(summary), indent=2, default=str, allow_nan=False))
        md = results_markdown(results, summary)
        # The file keeps the skipped baselines' reasons; the console said them once already, before training.
        notes = "".join(f"\n{name} baseline not evaluated: {why}\n" for name, why in skipped.items())
        (tmp / "results.md").write_text(f"# ddkit evaluate: {distilled_dir}\n\n" + md + notes)
    if ctx.main:
        print(md)
    if ctx.world > 1:
        barrier()  # nobody leaves before rank 0 has renamed the output into place
    return summary
