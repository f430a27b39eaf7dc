"""`ddkit study continual`: class-incremental learning with the distilled set as the only memory.

    from ddkit.study_continual import ContinualConfig, run_continual, class_steps
    run_continual(train, test, teacher, ContinualConfig(methods=("lic", "random"), steps=5, ipc=10))

SRe2L's continual experiment (after GDumb), as LIC Appendix G repeats it: the classes are split into `steps`
groups in a seeded order (`class_steps`); at step k the student is trained on the distilled images of the
classes of steps 1..k only and tested on the test images of those classes, its head covering exactly them.
`mode="scratch"` (GDumb, the default) trains a fresh student at every step; `mode="finetune"` starts step k's
student of seed s from step k-1's (the new classes' head rows fresh). Labels follow the regime: hl the hard
labels, sl/slkd the teacher's logits restricted to the classes seen (`teacher_for_classes`).

Each method's set is made once over all classes (sets/, shareable with `sets_dir`) and step k takes its
images of the classes seen: the methods here condense every class on its own (class_separable), so that is
the set they would make from those classes alone; a method that couples classes (dc, mtt) is refused. Cells
(method, step) go through `ddkit.evaluate.evaluate` with `seeds` students and are appended to results.csv as
they finish (finetune keeps each step's students under runs/ so a rerun continues from them); the curve per
method, random memory beside, is in report.md / report.html.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from ddkit import study_keys
from ddkit.config import field
from ddkit.data.base import ImageDataset
from ddkit.distilled import DistilledSet
from ddkit.evaluate import EvalConfig, evaluate, get_recipe, resolve_regime
from ddkit.methods import create_method, method_spec
from ddkit.study_cells import (CellTable, cached_set, log_invocation, missing_seeds, pin, seeds_row, set_name,
                               teacher_tag)
from ddkit.study_rows import write_cell_protocol
from ddkit.teachers import Teacher
from ddkit.teachers.frozen import teacher_identity
from ddkit.utils import DDKitError, get_device, make_generator

COLUMNS = ("method", "step", "classes_seen", "ipc", "regime", "recipe", "mode", "student", "mean", "std", "n",
           "accs", "seeds", "seconds", "set_seconds", "epochs", "iterations", "batch_size", "classes")
KEY = ("method", "step")
MODES = ("scratch", "finetune")


@dataclass(frozen=True)
class ContinualConfig:
    """The protocol of `ddkit study continual` (one flag per field)."""

    methods: Tuple[str, ...] = field(("lic", "rded", "sre2l", "dm", "random"), "methods (random is always added)")
    steps: int = field(5, "class-incremental steps: the classes split into this many groups")
    ipc: int = field(10, "images per class of the memory")
    order_seed: int = field(0, "seed of the class order (the same seed, the same split)")
    mode: str = field("scratch", "scratch: a fresh student per step (GDumb, SRe2L's); finetune: from the last step's")
    recipe: str = field("hardtruths-hl", "evaluation recipe (see `ddkit recipes`)")
    regime: str = field("hl", "labels: hl, sl or slkd (sl/slkd restrict the teacher's logits to the seen classes)")
    epochs: Optional[int] = field(None, "student epochs over the memory at each step (None: the recipe's)")
    student: Optional[str] = field(None, "student architecture (None: the teacher's)")
    seeds: int = field(3, "students per step")
    seed: int = field(0, "method seed and base student seed")
    output_dir: str = field("runs/continual", "folder of sets/, results.csv, report.* (rerun to resume)")
    sets_dir: Optional[str] = field(None, "where sets are cached (default OUTPUT/sets)")


def class_steps(num_classes: int, steps: int, seed: int = 0) -> List[List[int]]:
    """The classes in a seeded random order, split into `steps` groups of (nearly) equal size.

    Every class is in exactly one group; the same (num_classes, steps, seed) always gives the same groups.
    """
    if not 1 <= steps <= num_classes:
        raise DDKitError(f"steps must be between 1 and the number of classes ({num_classes}), got {steps}")
    order = torch.randperm(num_classes, generator=make_generator(seed, "continual-order")).tolist()
    base, extra = divmod(num_classes, steps)
    groups, i = [], 0
    for k in range(steps):
        n = base + (1 if k < extra else 0)
        groups.append(order[i:i + n])
        i += n
    return groups


def set_for_classes(s: DistilledSet, classes: Sequence[int]) -> DistilledSet:
    """The images of `classes` only, relabelled 0..len-1 in that order (soft labels restricted to them)."""
    idx = torch.tensor(list(classes), dtype=torch.long)
    remap = torch.full((s.num_classes,), -1, dtype=torch.long)
    remap[idx] = torch.arange(len(idx))
    keep = remap[s.labels] >= 0
    soft = {k: v[keep][..., idx] for k, v in s.soft.items() if v.shape[-1] == s.num_classes}
    return DistilledSet(s.images[keep], remap[s.labels[keep]], [s.classes[c] for c in classes], s.mean, s.std,
                        soft, {**s.meta, "continual_classes": [s.classes[c] for c in classes]})


def split_for_classes(ds: ImageDataset, classes: Sequence[int]) -> ImageDataset:
    """The test images of `classes`, relabelled 0..len-1 in that order."""
    idx = torch.tensor(list(classes), dtype=torch.long)
    remap = torch.full((ds.num_classes,), -1, dtype=torch.long)
    remap[idx] = torch.arange(len(idx))
    rows = torch.nonzero(remap[ds.labels] >= 0).flatten()
    return ImageDataset(ds.get(rows), remap[ds.labels[rows]], [ds.classes[c] for c in classes], ds.mean, ds.std,
                        ds.name, ds.split)


class _Columns(torch.nn.Module):
    """A classifier whose output is restricted to some of its classes (a frozen teacher seen on a subset)."""

    def __init__(self, net: torch.nn.Module, classes: Sequence[int]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("idx", torch.tensor(list(classes), dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, self.idx]


def teacher_for_classes(teacher: Optional[Teacher], classes: Sequence[int]) -> Optional[Teacher]:
    """`teacher` with its logits restricted to `classes` (in that order): the labeller of a continual step."""
    if teacher is None:
        return None
    t = Teacher(_Columns(teacher.model, classes).to(teacher.device), teacher.arch,
                [teacher.classes[c] for c in classes], teacher.mean, teacher.std, teacher.image_size,
                teacher.channels, meta=dict(teacher.meta), arch_kw=teacher.arch_kw)
    return t


def grow_into(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load `state` (the previous step's student) into `model`, whose head has more classes: tensors of the
    same shape are copied, a head tensor that only grew along its first dimension gets its old rows."""
    own = model.state_dict()
    for k, v in state.items():
        if k not in own:
            continue
        if own[k].shape == v.shape:
            own[k].copy_(v)
        elif own[k].ndim == v.ndim and own[k].shape[1:] == v.shape[1:] and own[k].shape[0] > v.shape[0]:
            own[k][: v.shape[0]].copy_(v)
    model.load_state_dict(own)


def run_continual(train: Any, test: Any, teacher: Any = None, config: Optional[ContinualConfig] = None, *,
                  bn_teacher: Any = None, device: Any = None, progress: bool = True,
                  method_overrides: Optional[Mapping[str, Mapping[str, Any]]] = None,
                  eval_overrides: Optional[Mapping[str, Any]] = None, test_facts: Optional[Mapping[str, Any]] = None,
                  **fields: Any) -> List[Dict[str, Any]]:
    """Run every missing (method, step) cell; returns every row of results.csv.

    `teacher` makes the teacher-based sets and labels under sl/slkd; `bn_teacher` (optional) makes the sets of
    methods that match BatchNorm statistics (sre2l) when `teacher` has none; `test_facts`: what was done to the
    test split (e.g. a class-balanced subset), pinned in study.json.
    """
    from safetensors.torch import load_file, save_file

    from ddkit.studies_report import write_continual_report

    cfg = dataclasses.replace(config or ContinualConfig(), **fields)
    methods = tuple(dict.fromkeys([method_spec(m).name for m in cfg.methods] + ["random"]))
    cfg = dataclasses.replace(cfg, methods=methods, regime=resolve_regime(cfg.regime))
    if cfg.mode not in MODES:
        raise DDKitError(f"unknown continual mode {cfg.mode!r}; use scratch or finetune")
    if cfg.seeds < 1 or cfg.ipc < 1:
        raise DDKitError("continual needs ipc ≥ 1 and seeds ≥ 1")
    groups = class_steps(train.num_classes, cfg.steps, cfg.order_seed)
    get_recipe(cfg.recipe)
    specs = [method_spec(m) for m in methods]
    coupled = [s.name for s in specs if not s.class_separable]
    if coupled:
        raise DDKitError(f"{', '.join(coupled)} condense all classes jointly, so a step's memory is not the set "
                         "they would make from its classes alone; drop them")
    needy = [s.name for s in specs if s.needs_teacher] + ([cfg.regime] if cfg.regime != "hl" else [])
    if teacher is None and needy:
        raise DDKitError(f"{', '.join(needy)} need a teacher: pass --teacher CKPT")
    eval_overrides = dict(eval_overrides or {})
    EvalConfig(**eval_overrides)
    overrides = {method_spec(k).name: dict(v) for k, v in (method_overrides or {}).items()}
    dev = device if hasattr(device, "type") else get_device(device)
    out = Path(cfg.output_dir)
    sets_dir = Path(cfg.sets_dir) if cfg.sets_dir else out / "sets"
    proto = {"dataset": train.name, "train_size": len(train), "steps": [[train.classes[c] for c in g] for g in groups],
             "ipc": cfg.ipc, "mode": cfg.mode, "recipe": cfg.recipe, "regime": cfg.regime, "epochs": cfg.epochs,
             "student": cfg.student, "seeds": cfg.seeds, "seed": cfg.seed, "teacher": teacher_identity(teacher),
             "bn_teacher": teacher_identity(bn_teacher),
             "method_overrides": overrides, "eval_overrides": eval_overrides, "test": dict(test_facts or {})}
    pin(out, proto, study_keys.study_data(train, test, teacher))
    table = CellTable(out / "results.csv", COLUMNS, KEY)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    bar = tqdm(total=len(specs) * cfg.steps, desc="continual cell", unit="cell", disable=not progress, leave=True)
    evaluated = 0
    for spec in specs:
        kw = {"ipc": cfg.ipc, "seed": cfg.seed, **overrides.get(spec.name, {})}
        maker = bn_teacher if (bn_teacher is not None and "bn-teacher" in spec.needs) else teacher
        tag = teacher_tag(maker) if spec.needs_teacher else "-"
        folder = sets_dir / set_name(spec.name, tag, cfg.ipc, cfg.seed, overrides.get(spec.name, {}))
        s = None
        for k in range(1, cfg.steps + 1):
            bar.update(1)
            prev = table.cells().get((spec.name, str(k)))
            n, first = missing_seeds(prev, cfg.seeds, cfg.seed)
            if n == 0:
                continue
            bar.set_postfix_str(f"{spec.name} step {k}")
            if s is None:
                s = cached_set(folder, lambda: create_method(spec.name, **kw)(
                    train, maker if spec.needs_teacher else None, device=dev, progress=progress))
            seen = [c for g in groups[:k] for c in g]
            cell = out / "runs" / f"{spec.name}-step{k}"

            def init(seed: int, model: torch.nn.Module, _k: int = k, _spec: Any = spec) -> None:
                if cfg.mode == "finetune" and _k > 1:
                    path = out / "runs" / f"{_spec.name}-step{_k - 1}" / f"student-seed{seed}.safetensors"
                    if not path.is_file():
                        raise DDKitError(f"finetune: {path} is missing (step {_k - 1} of seed {seed} was not kept)")
                    grow_into(model, load_file(str(path)))

            def keep(seed: int, model: torch.nn.Module, _cell: Path = cell) -> None:
                if cfg.mode == "finetune":
                    _cell.mkdir(parents=True, exist_ok=True)
                    save_file({k_: v.detach().cpu().contiguous() for k_, v in model.state_dict().items()},
                              str(_cell / f"student-seed{seed}.safetensors"))

            ecfg = EvalConfig(protocol="hard-truths", recipe=cfg.recipe, regime=cfg.regime, seeds=n, seed=first,
                              student=cfg.student,
                              epochs=cfg.epochs, **eval_overrides)
            res = evaluate(set_for_classes(s, seen), split_for_classes(test, seen), ecfg,
                           teacher_for_classes(teacher, seen) if cfg.regime != "hl" else None, device=dev,
                           progress=progress, output=cell, set_name=f"{spec.name}/step{k}",
                           on_student=keep if cfg.mode == "finetune" else None,
                           init_student=init if cfg.mode == "finetune" else None)
            write_cell_protocol(cell, res.to_dict().get("protocol"))  # the report's protocol lines
            table.append({"method": spec.name, "step": k, "classes_seen": len(seen), "ipc": cfg.ipc,
                          "regime": cfg.regime, "recipe": res.recipe.name, "mode": cfg.mode, "student": res.student,
                          **seeds_row(prev, res.accs, res.seeds),
                          "seconds": f"{res.info.get('wall_seconds', float('nan')):.2f}",
                          "set_seconds": f"{float(s.meta.get('wall_seconds', float('nan'))):.2f}",
                          "epochs": f"{res.plan.epochs:.4f}", "iterations": res.plan.iterations,
                          "batch_size": res.plan.batch_size, "classes": ";".join(train.classes[c] for c in seen)})
            evaluated += 1
    bar.close()
    write_continual_report(out)
    log_invocation(out, started, dev, evaluated=evaluated)
    return table.rows()
