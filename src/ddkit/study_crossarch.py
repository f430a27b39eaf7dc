"""`ddkit study cross-arch`: distil with one observer network, train students of every verifier architecture.

    from ddkit.study_crossarch import CrossArchConfig, run_crossarch
    run_crossarch(train, test, {"convnet-d3": teacher}, CrossArchConfig(verifiers=("convnet-d3", "resnet18_modified")))

The matrix of LIC Table 2 / CIM's cross-architecture table: for every (method, observer) the method distils
once (sets/, reused by every verifier and by a rerun) looking through the observer — the teacher of
teacher-based methods (lic, rded, sre2l; a method that needs BatchNorm statistics takes the observer's BN
twin from `bn_teachers` when given), the `model` option of the matching methods (dm, dc) — and every
verifier architecture trains `seeds` students on the set through `ddkit.evaluate.evaluate` under the chosen
recipe and regime, scored on the test split. Under sl/slkd the observer's teacher labels the students' views
(LIC's protocol); a method that uses no observer (random) is one row "-" under hl and one row per observer's
labels otherwise. Random real images are always beside (added to the methods when missing).

Every verifier is built and fed two images of the set's shape before anything runs: one that cannot take the
resolution is refused in one line. Cells (method, observer, verifier) are appended to results.csv as they
finish, verifier by verifier (every method on the first verifier, then the next: an interrupted run leaves whole
columns); study.json pins the protocol and data (ddkit.study_cells), so a rerun resumes, tops cells up when given
more seeds, and refuses another protocol. matrix.csv, report.md and report.html (with the heatmap) are
rewritten from results.csv at the end.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from tqdm.auto import tqdm

from ddkit import study_keys
from ddkit.config import field, option_names
from ddkit.evaluate import EvalConfig, evaluate, get_recipe, resolve_regime
from ddkit.methods import create_method, method_spec
from ddkit.study_cells import (CellTable, cached_set, check_verifier, log_invocation, missing_seeds, pin,
                               seeds_row, set_name, teacher_tag)
from ddkit.study_rows import write_cell_protocol
from ddkit.teachers.frozen import teacher_identity
from ddkit.utils import DDKitError, get_device

COLUMNS = ("method", "observer", "verifier", "ipc", "regime", "recipe", "teacher", "mean", "std", "n", "accs",
           "seeds", "seconds", "set_seconds", "epochs", "iterations", "batch_size", "crop")
KEY = ("method", "observer", "verifier")
NO_OBSERVER = "-"


@dataclass(frozen=True)
class CrossArchConfig:
    """The grid and protocol of `ddkit study cross-arch` (one flag per field; observers come as teachers)."""

    methods: Tuple[str, ...] = field(("lic", "rded", "sre2l", "random"), "methods (random is always added)")
    verifiers: Tuple[str, ...] = field(("convnet-d3", "resnet18_modified", "mobilenet_v2_cifar"),
                                       "student architectures every set is evaluated on (see `ddkit models`); "
                                       "mobilenet_v2_cifar is torchvision's MobileNetV2 with stride 1 in the stem "
                                       "and in features[2] (8x downsampling: 32 px ends at 4x4, not 1x1)")
    ipc: int = field(10, "images per class of every set")
    recipe: str = field("cim", "evaluation recipe (see `ddkit recipes`)")
    regime: str = field("slkd", "label regime: hl, sl or slkd (sl/slkd: the observer's teacher labels)")
    epochs: Optional[int] = field(None, "student epochs over the set (None: the recipe's)")
    seeds: int = field(3, "students per cell (≥ 3 for a mean ± std); more on a finished folder tops cells up")
    seed: int = field(0, "method seed and base student seed")
    output_dir: str = field("runs/cross-arch", "folder of sets/, results.csv, matrix.csv, report.* (rerun to resume)")
    sets_dir: Optional[str] = field(None, "where sets are cached (default OUTPUT/sets; share it between studies "
                                          "that distil the same sets)")


def _observer_kw(spec: Any, teacher: Any) -> Tuple[str, Dict[str, Any]]:
    """(the set's observer tag, method options) of `spec` looking through `teacher`'s network."""
    if spec.needs_teacher:
        return teacher_tag(teacher), {}
    if "model" in option_names(spec.config):  # the matching methods' network is their observer
        return teacher.arch.replace(":", "_"), {"model": teacher.arch}
    return NO_OBSERVER, {}


def _cell_observer(tag: str, obs: str, regime: str) -> str:
    """An observer-free set under hl is one cell; under sl/slkd each observer's teacher labels it."""
    return obs if tag != NO_OBSERVER or regime != "hl" else NO_OBSERVER


def run_crossarch(train: Any, test: Any, observers: Mapping[str, Any], config: Optional[CrossArchConfig] = None, *,
                  bn_teachers: Optional[Mapping[str, Any]] = None, device: Any = None, progress: bool = True,
                  method_overrides: Optional[Mapping[str, Mapping[str, Any]]] = None,
                  eval_overrides: Optional[Mapping[str, Any]] = None, test_facts: Optional[Mapping[str, Any]] = None,
                  **fields: Any) -> List[Dict[str, Any]]:
    """Run every missing (method, observer, verifier) cell; returns every row of results.csv.

    Args:
        observers: observer name -> Teacher (its architecture is the observer network).
        bn_teachers: observer name -> a BatchNorm teacher of the same family, for methods that need one.
        eval_overrides: extra EvalConfig fields for every student (e.g. {"cpu_amp": True}).
        test_facts: what was done to the test split (e.g. a class-balanced subset), pinned in study.json.
    """
    from ddkit.studies_report import write_crossarch_report

    cfg = dataclasses.replace(config or CrossArchConfig(), **fields)
    methods = tuple(dict.fromkeys([method_spec(m).name for m in cfg.methods] + ["random"]))
    cfg = dataclasses.replace(cfg, methods=methods, regime=resolve_regime(cfg.regime))
    if not observers:
        raise DDKitError("cross-arch needs at least one observer: --observers NAME=TEACHER_CKPT")
    if cfg.seeds < 1 or cfg.ipc < 1 or not cfg.verifiers:
        raise DDKitError("cross-arch needs verifiers, ipc ≥ 1 and seeds ≥ 1")
    get_recipe(cfg.recipe)
    eval_overrides = dict(eval_overrides or {})
    bad = set(eval_overrides) & {"protocol", "recipe", "regime", "epochs", "seeds", "seed", "student"}
    if bad:
        raise DDKitError(f"eval options {', '.join(sorted(bad))} are study settings, not --eval-opt")
    EvalConfig(**eval_overrides)  # unknown evaluator options fail here
    overrides = {method_spec(k).name: dict(v) for k, v in (method_overrides or {}).items()}
    bn_teachers = dict(bn_teachers or {})
    for v in cfg.verifiers:  # before any set is made: one line for a verifier that cannot take the images
        check_verifier(v, train.channels, train.image_size, train.num_classes)
    for m in methods:
        spec = method_spec(m)
        if "bn-teacher" in spec.needs and not all(o in bn_teachers or _has_bn(observers[o]) for o in observers):
            raise DDKitError(f"{m} matches BatchNorm statistics: give a BN teacher for every observer without "
                             f"BatchNorm (--bn-teachers NAME=CKPT)")
    dev = device if hasattr(device, "type") else get_device(device)
    out = Path(cfg.output_dir)
    sets_dir = Path(cfg.sets_dir) if cfg.sets_dir else out / "sets"
    proto = {"dataset": train.name, "train_size": len(train), "methods_overrides": overrides,
             "eval_overrides": eval_overrides, "ipc": cfg.ipc, "recipe": cfg.recipe, "regime": cfg.regime,
             "epochs": cfg.epochs, "seeds": cfg.seeds, "seed": cfg.seed,
             "observers": {o: teacher_identity(t) for o, t in observers.items()},
             "bn_teachers": {o: teacher_identity(t) for o, t in bn_teachers.items()}, "test": dict(test_facts or {})}
    data = {**study_keys.study_data(train, test, None),
            "observer_weights": {o: study_keys.teacher_weights(t) for o, t in observers.items()}}
    pin(out, proto, data)
    table = CellTable(out / "results.csv", COLUMNS, KEY)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    plan = []  # (spec, set tag, teacher that makes the set, cell observer, labelling teacher, method kw)
    for m in methods:
        spec = method_spec(m)
        seen = set()
        for obs, teacher in observers.items():
            maker = bn_teachers.get(obs, teacher) if "bn-teacher" in spec.needs else teacher
            tag, kw = _observer_kw(spec, maker)
            cell_obs = _cell_observer(tag, obs, cfg.regime)
            if cell_obs not in seen:
                seen.add(cell_obs)
                plan.append((spec, tag, maker, cell_obs, maker if cfg.regime != "hl" else None, kw))
    bar = tqdm(total=len(plan) * len(cfg.verifiers), desc="cross-arch cell", unit="cell", disable=not progress,
               leave=True, dynamic_ncols=True)
    evaluated = 0
    made: Dict[Path, Any] = {}
    # Verifier-major: every method on the cheapest verifier first, so an interrupted run leaves whole columns.
    for verifier in cfg.verifiers:
        for spec, tag, maker, cell_obs, labeller, kw in plan:
            bar.update(1)
            prev = table.cells().get((spec.name, cell_obs, verifier))
            n, first = missing_seeds(prev, cfg.seeds, cfg.seed)
            if n == 0:
                continue
            bar.set_postfix_str(f"{spec.name} / {cell_obs} → {verifier}")
            mkw = {"ipc": cfg.ipc, "seed": cfg.seed, **kw, **overrides.get(spec.name, {})}
            folder = sets_dir / set_name(spec.name, tag, cfg.ipc, cfg.seed, {**kw, **overrides.get(spec.name, {})})
            if folder not in made:
                made[folder] = cached_set(folder, lambda: create_method(spec.name, **mkw)(
                    train, maker if spec.needs_teacher else None, device=dev, progress=progress))
            s = made[folder]
            ecfg = EvalConfig(protocol="hard-truths", recipe=cfg.recipe, regime=cfg.regime, seeds=n, seed=first,
                              student=verifier,
                              epochs=cfg.epochs, **eval_overrides)
            cell = out / "runs" / f"{spec.name}-{cell_obs}-{verifier}".replace("/", "_")
            res = evaluate(s, test, ecfg, labeller, device=dev, progress=progress, output=cell,
                           set_name=f"{spec.name}/{cell_obs}/{verifier}")
            write_cell_protocol(cell, res.to_dict().get("protocol"))  # the report's protocol lines
            table.append({"method": spec.name, "observer": cell_obs, "verifier": verifier, "ipc": cfg.ipc,
                          "regime": cfg.regime, "recipe": res.recipe.name, "teacher": teacher_identity(labeller) or "",
                          **seeds_row(prev, res.accs, res.seeds),
                          "seconds": f"{res.info.get('wall_seconds', float('nan')):.2f}",
                          "set_seconds": f"{float(s.meta.get('wall_seconds', float('nan'))):.2f}",
                          "epochs": f"{res.plan.epochs:.4f}", "iterations": res.plan.iterations,
                          "batch_size": res.plan.batch_size, "crop": res.info.get("crop", "")})
            evaluated += 1
    bar.close()
    write_crossarch_report(out)
    log_invocation(out, started, dev, evaluated=evaluated)
    return table.rows()


def _has_bn(teacher: Any) -> bool:
    import torch

    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in teacher.model.modules())
