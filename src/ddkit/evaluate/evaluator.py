"""`evaluate()`: train fresh students (one per seed) on a distilled set and report test accuracy.

Honest protocol: the headline is the LAST-epoch test accuracy, mean ± std (ddof 0, with n) over
seeds, seeds recorded. Intermediate test evaluations are logged but never pick the headline; a
validation slice (carved from the train split) is the only thing allowed to choose anything.
"""
from __future__ import annotations

import dataclasses

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from ddkit.allocator import keep_freed_memory
from ddkit.config import to_dict
from ddkit.data.base import ImageDataset
from ddkit.data.stream import STREAM_CHUNK, iter_chunks
from ddkit.distilled import DistilledSet
from ddkit.evaluate import fastpath
from ddkit.evaluate import parallel as edist
from ddkit.evaluate.protocol import EvalConfig
from ddkit.evaluate.losses import LOSSES, make_criterion
from ddkit.evaluate.metrics import summarize
from ddkit.evaluate.native import SetProtocol, check_regime, input_space, resolve_protocol
from ddkit.evaluate.recipes import Recipe, get_recipe, resolve_recipe
from ddkit.evaluate.stacked import run_stacked
from ddkit.evaluate.student import Plan, RunResult, Targets, Views, make_plan, teacher_forward, train_run
from ddkit.models import create_model
from ddkit.utils import DDKitError, derive_seed
from ddkit.utils import compiled as compiled_fn

DEFAULT_STUDENT = "convnet-d3"
_STAGE_LIMIT_BYTES = 8 << 30  # keep a set on the GPU as float32 up to 8 GiB, else a lossless/fp16 copy


@dataclass
class EvalResult:
    """Result of `evaluate`: one RunResult per seed plus the resolved protocol."""

    set_name: str
    student: str
    regime: str
    recipe: Recipe
    plan: Plan
    runs: List[RunResult]
    soft_label_source: Optional[str] = None
    info: Dict[str, Any] = field(default_factory=dict)

    @property
    def accs(self) -> List[float]:
        return [r.final_acc for r in self.runs]

    @property
    def seeds(self) -> List[int]:
        return [r.seed for r in self.runs]

    @property
    def mean(self) -> float:
        return summarize(self.accs)["mean"]

    @property
    def std(self) -> float:
        return summarize(self.accs)["std"]

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready summary (what summary.json holds per student × set)."""
        s = summarize(self.accs)
        d: Dict[str, Any] = {
            "set": self.set_name, "student": self.student, "regime": self.regime, "recipe": self.recipe.name,
            "headline": "last-epoch test accuracy, mean ± std (ddof 0) over seeds",
            "accs": self.accs, "seeds": self.seeds, "mean": s["mean"], "std": s["std"],
            "std_ddof1": s["std_ddof1"], "n": s["n"], "final_losses": [r.final_loss for r in self.runs],
            "iterations": self.plan.iterations, "batch_size": self.plan.batch_size, "epochs": self.plan.epochs,
            "samples_seen": self.plan.samples, "images_per_s": [r.images_per_s for r in self.runs],
            "train_seconds": [r.seconds for r in self.runs], "soft_labels": self.soft_label_source,
        }
        best = [r.best_test_acc for r in self.runs]
        if all(b is not None for b in best) and best:
            d["best_test_acc (selected on test, not a headline)"] = best
        if self.runs and all(r.test_history for r in self.runs):
            # Best-of-test, the number several peers report (e.g. RDED's best of its last evaluations):
            # recorded so a reader sees how much it inflates, NEVER the headline (issue #16).
            picks = [max(r.test_history, key=lambda ea: ea[1]) for r in self.runs]
            bs = summarize([a for _, a in picks])
            d["best_of_test"] = {"accs": [a for _, a in picks], "epochs": [e for e, _ in picks],
                                 "mean": bs["mean"], "std": bs["std"],
                                 "evaluations": len(self.runs[0].test_history),
                                 "note": "max over the recorded test evaluations: chosen ON THE TEST SET, "
                                         "not a headline"}
        if all(r.val_history for r in self.runs) and self.runs:
            # The one legitimate selection: the test accuracy at the evaluation with the best val accuracy.
            sel = []
            for r in self.runs:
                k = max(range(len(r.val_history)), key=lambda i: r.val_history[i][1])
                sel.append(r.test_history[k][1])
            d["val_selected_test_acc"] = sel
            d["val_accs_final"] = [r.val_history[-1][1] for r in self.runs]
        if self.runs and all(r.class_accs is not None for r in self.runs):
            d["class_accs"] = [r.class_accs for r in self.runs]  # per seed, per class (last epoch)
        d.update(self.info)
        return d


def class_scorer(ds: ImageDataset, mean: Any, std: Any, device: torch.device, batch_size: int,
                 sink: List[Optional[List[float]]]) -> Any:
    """model -> test accuracy exactly as `teachers.accuracy` computes it (same batched logits), leaving the
    per-class accuracies of that call in sink[0] (for the report's distilled-vs-random-per-class plot)."""
    from ddkit.teachers import predict_logits

    k = ds.num_classes
    y = ds.labels.cpu()

    def score(model: Any) -> float:
        hits = torch.zeros(k, dtype=torch.long)
        step = batch_size * 8  # argmax per chunk: never all N×K logits at once
        for i, x in iter_chunks(ds, step):  # a file-backed split is decoded a chunk at a time, never whole
            z = predict_logits(model, x, mean, std, device=device, batch_size=batch_size)
            yi = y[i:i + step]
            hits += torch.bincount(yi[z.argmax(1) == yi], minlength=k)
        counts = torch.bincount(y, minlength=k)
        sink[0] = (hits.double() / counts.clamp(min=1)).tolist()
        return int(hits.sum()) / max(1, len(ds))

    return score


def check_classes(distilled: DistilledSet, test: ImageDataset, teacher: Any = None) -> None:
    """DDKitError when the set, the test split and the teacher disagree on the class list."""
    if list(distilled.classes) != list(test.classes):
        raise DDKitError(f"the distilled set's {distilled.num_classes} classes {list(distilled.classes)[:3]}… differ "
                         f"from the test set's {test.num_classes} {list(test.classes)[:3]}…: evaluate on the dataset "
                         "the set was distilled from")
    if teacher is not None and list(teacher.classes) != list(distilled.classes):
        raise DDKitError(f"the teacher's {len(teacher.classes)} classes {list(teacher.classes)[:3]}… differ from the "
                         f"set's {distilled.num_classes} {list(distilled.classes)[:3]}…: use a teacher trained on "
                         "this class list")
    shape = (test.channels, test.image_size, test.image_size)  # shape facts: a file-backed split decodes nothing
    if shape != tuple(distilled.images.shape[1:]):
        raise DDKitError(f"test images are {shape} but the set's are {tuple(distilled.images.shape[1:])}: load the "
                         f"test split at the set's resolution (--image-size {distilled.images.shape[-1]})")


def exact_uint8(images: torch.Tensor, chunk: int = STREAM_CHUNK) -> bool:
    """True when every pixel is an exact k/255 value in [0, 1] (a random real subset), checked `chunk` images
    at a time: the temporaries are two float copies of one chunk, never of the set (ImageNet-1K IPC 50 at 224 px
    is 30 GB as float32; whole-set temporaries took four copies of it)."""
    for a in range(0, len(images), chunk):
        x = images[a:a + chunk].float()
        if float(x.min()) < 0 or float(x.max()) > 1:
            return False
        x255 = x * 255.0
        if not bool((x255.sub_(x255.round()).abs_() < 1e-4).all()):  # in place: two chunk-sized temporaries
            return False
    return True


def stage_images(images: torch.Tensor, device: torch.device, chunk: int = STREAM_CHUNK) -> torch.Tensor:
    """The set on `device`: float32 up to 8 GiB; beyond, a lossless uint8 copy when the pixels are exact
    k/255 values (random real subsets), else float16 (error < 2.5e-4, well below one 8-bit level).

    Beyond the limit both the check and the conversion run `chunk` images at a time, straight into the device
    copy: the host holds the set once plus one chunk's temporaries (docs/performance.md, memory)."""
    if images.dtype == torch.uint8 or images.numel() * 4 <= _STAGE_LIMIT_BYTES or device.type == "cpu":
        return images.to(device)
    exact = exact_uint8(images, chunk)
    out = torch.empty(images.shape, dtype=torch.uint8 if exact else torch.float16, device=device)
    for a in range(0, len(images), chunk):
        x = images[a:a + chunk]
        out[a:a + chunk] = (x.float() * 255.0).round_().to(torch.uint8) if exact else x.half()
    return out


def describe_crop(recipe: Recipe, set_factor: int, decoded: bool, cfg: EvalConfig) -> str:
    """Which crop ran, in words, for the summary line and summary.json (issue #16)."""
    if recipe.crop == "factor":
        why = ("decoding the set's mosaics" if decoded else "--factor" if cfg.factor is not None
               else "the set's factor" if cfg.crop_factor_from_set else "the recipe's factor")
        return f"factor f={recipe.factor} (quadrant-or-whole, {why})"
    if recipe.crop == "none":
        return f"none (set factor {set_factor})"
    if recipe.crop == "rded":
        return f"rded f={recipe.factor} (ShufflePatches + RRC({1 / recipe.factor:g}..1))"
    return f"rrc({recipe.rrc_min:g}..1)"


def teacher_soft_labels(images: torch.Tensor, teacher: Any, device: torch.device, batch_size: int = 500
                        ) -> torch.Tensor:
    """One fixed soft label per image: teacher logits of the un-augmented [0,1] image (computed once)."""
    from ddkit.teachers import predict_logits

    return predict_logits(teacher, images, device=device, batch_size=batch_size).float()


def _on_device(ds: ImageDataset, device: torch.device) -> ImageDataset:
    # Test/val sets up to the staging limit live on the device (no per-eval host->device copies); a file-backed
    # split (ImageNet val: 7.5 GB at 224 px) stays on disk and is decoded a chunk at a time at each test.
    if not ds.in_memory or ds.pixel_bytes(ds.images.element_size()) > _STAGE_LIMIT_BYTES // 2:
        return ds
    return ImageDataset(ds.images.to(device), ds.labels.to(device), ds.classes, ds.mean, ds.std, ds.name, ds.split)


def evaluate(distilled: DistilledSet, test: ImageDataset, cfg: EvalConfig, teacher: Any = None, *,
             full_train_size: Optional[int] = None, device: Any = None, progress: bool = True,
             output: Optional[Path] = None, val: Optional[ImageDataset] = None,
             soft_labels: Optional[torch.Tensor] = None, soft_source: str = "provided",
             set_name: str = "distilled", on_student: Optional[Callable[[int, torch.nn.Module], None]] = None,
             protocol: Optional[SetProtocol] = None,
             init_student: Optional[Callable[[int, torch.nn.Module], None]] = None) -> EvalResult:
    """Train `cfg.seeds` fresh students on `distilled` and report last-epoch test accuracy.

    Args:
        distilled: the set (images in [0,1], hard labels, optional stored soft / region_soft logits).
        test: the real test split (same classes and resolution).
        cfg: protocol (native | hard-truths; recipe + overrides, regime, seeds, budget).
        teacher: a ddkit Teacher; needed for SL+KD and for SL without stored soft labels.
        full_train_size: |train| for --budget-epochs.
        output: when given, per-run metrics.jsonl files are written under it (seed<k>/metrics.jsonl).
        val: optional validation split (recorded; only used for the val-selected number).
        soft_labels: precomputed SL logits (N×K) to reuse across students (`soft_source` names them).
        on_student: the public hook for callers that measure more than accuracy (DCS's test loss):
            called as on_student(seed, student) with each trained student, in the process that trained it,
            before the next seed starts; students then train one at a time (no --stack).
        protocol: the protocol already resolved (`native.follow` for a baseline judged beside another set);
            default: cfg.protocol resolved against this set (`native.resolve_protocol`).
        init_student: called as init_student(seed, student) on each freshly built student before it trains
            (fine-tuning from earlier weights: `ddkit study continual --mode finetune`); one at a time too.

    Under torchrun (joined lazily) the seeds are spread over the ranks and gathered, giving the
    single-process result; with cfg.ddp every seed is one DDP run over all ranks (see
    `ddkit.evaluate.parallel`). Only rank 0 prints; every rank returns the full EvalResult.

    Example:
        >>> res = evaluate(dset, test, EvalConfig(recipe="cim", regime="hl", epochs=50))
        >>> res.mean, res.std, res.accs
    """
    keep_freed_memory()  # students reuse the heap step to step: no page faults per step (ddkit.allocator)
    ctx = edist.setup(cfg, device)
    dev = ctx.device
    progress = progress and ctx.main
    proto = protocol if protocol is not None else resolve_protocol(cfg, distilled)
    cfg = proto.cfg  # recipe and regime filled in, the set's lr / labels applied (evaluate/native.py)
    regime = check_regime(cfg)
    check_classes(distilled, test, teacher)
    if cfg.epochs is not None and cfg.budget_epochs is not None:
        raise DDKitError("give either --epochs or --budget-epochs, not both")
    if cfg.seeds < 1:
        raise DDKitError(f"--seeds must be >= 1, got {cfg.seeds}")
    if cfg.stack < 1:
        raise DDKitError(f"--stack must be >= 1 (1 = one student at a time), got {cfg.stack}")
    n, k = len(distilled), distilled.num_classes
    if n == 0:
        raise DDKitError("the distilled set is empty")
    size = distilled.images.shape[-1]
    mosaic = int(distilled.meta.get("factor") or 1)
    recipe = resolve_recipe(cfg, n_images=n, num_classes=k, ipc=distilled.ipc, image_size=size, set_factor=mosaic)
    decoded = cfg.decode_mosaic and mosaic > 1 and recipe.crop == "none"
    if decoded:  # a recipe without crops (DC, hard-truths) would train on 4 shrunken images glued together
        recipe = dataclasses.replace(recipe, crop="factor", factor=mosaic)
    crop_desc = describe_crop(recipe, mosaic, decoded, cfg)
    plan = make_plan(recipe, n, budget_epochs=cfg.budget_epochs, full_train_size=full_train_size,
                     eval_every=cfg.eval_every)
    ctx.check_plan(plan)
    spec = LOSSES.get(recipe.loss_for(regime))
    # The machine's fast default or --exact (evaluate/fastpath.py), for what this process trains: its seeds.
    path = fastpath.choose(cfg, dev, plan.samples * len(ctx.run_indices(cfg.seeds)), image_size=size,
                           stacked=cfg.stack > 1 and cfg.seeds > 1)
    amp, cpu_amp, compiled = (path.bf16 if dev.type == "cuda" else cfg.amp), path.bf16 and dev.type == "cpu", \
        path.compile

    # Targets for the regime --------------------------------------------------------------------------
    soft = region = None
    source = None
    stored = None
    if cfg.labels != "online":  # views and logits from a `ddkit relabel` store (evaluate/stored.py)
        from ddkit.evaluate.stored import open_stored
        stored = open_stored(cfg, distilled, recipe, dev)
        source = stored.source
    if proto.zca is not None and regime == "slkd" and stored is None:
        raise DDKitError("the online teacher (slkd) sees mean/std-normalised views, not the set's ZCA-whitened "
                         "ones: pass --zca false, or another --regime")
    if regime == "slkd" and teacher is None and stored is None:
        raise DDKitError("regime slkd (SL+KD) needs a teacher to label every augmented view: pass --teacher CKPT")
    if regime == "sl" and spec.needs_logits:
        mode = recipe.sl_labels
        if mode not in ("image", "region"):  # a named stored key (e.g. DATM's "learned")
            if mode not in distilled.soft:
                raise DDKitError(f"--sl-labels {mode!r}: the set stores soft labels {sorted(distilled.soft)}; use "
                                 "image, region or one of those keys")
            soft, source = distilled.soft[mode], f"stored:{mode}"
        elif soft_labels is not None:
            soft, source = soft_labels, soft_source
        elif "soft" in distilled.soft:
            soft, source = distilled.soft["soft"], "stored"
        elif teacher is not None:
            soft, source = teacher_soft_labels(distilled.images, teacher, dev, cfg.test_batch_size), "teacher"
        else:
            raise DDKitError("regime sl needs soft labels: the set stores none, so pass --teacher CKPT "
                             "(they are then computed once on the un-augmented images)")
        if soft.shape != (n, k):
            raise DDKitError(f"stored soft labels have shape {tuple(soft.shape)}, expected {(n, k)}")
        reg = distilled.soft.get("region_soft")
        # "image" is the paper's one fixed label per image; "region" adds LIC's cell labels (CIM's reading).
        if mode == "region" and reg is not None and recipe.crop == "factor" and reg.shape[1] == recipe.factor ** 2:
            region = reg.float().to(dev)
            source += "+region"
        soft = soft.float().to(dev)
    teacher_fn = None
    if regime == "slkd" and spec.needs_logits and stored is None:
        if teacher.device != dev:
            teacher.to(dev)
        if cfg.channels_last and (dev.type == "cuda" or compiled):
            teacher.model.to(memory_format=torch.channels_last)
        teacher_fn = teacher_forward(teacher, distilled.mean, distilled.std, size, dev, amp, cpu_amp,
                                     compile=compiled and dev.type == "cpu")
        source = "online teacher"
    targets = Targets(regime, k, spec, recipe.temperature, soft=soft, region=region, teacher_fn=teacher_fn,
                      ce_unmixed=recipe.ce_unmixed)
    crit = make_criterion(spec.name, temperature=recipe.temperature, t2_scale=recipe.t2_scale,
                          mse_weight=recipe.mse_weight, ce_weight=recipe.ce_weight)

    # Student ----------------------------------------------------------------------------------------
    student = cfg.student or (teacher.arch if teacher is not None else DEFAULT_STUDENT)
    kw: Dict[str, Any] = dict(teacher.arch_kw) if (teacher is not None and not cfg.student
                                                   and getattr(teacher, "arch_kw", None)) else {}
    if cfg.student_width is not None:
        kw["width"] = cfg.student_width
    images = stage_images(distilled.images, dev)
    if stored is not None:  # the store's views read this very copy: one copy of the set per device
        stored.use_images(images)
    labels = distilled.labels.to(dev)
    test_d = _on_device(ctx.shard(test), dev)  # this rank's slice in a DDP run
    val_d = _on_device(ctx.shard(val), dev) if val is not None else None
    # A ZCA set: its views and the test split are whitened with its transform instead of mean/std.
    norm, mean, std, seen = input_space(proto.zca, distilled.mean, distilled.std, dev)
    views = Views(recipe, size, distilled.mean, distilled.std, norm=norm)
    if stored is not None:
        views, targets = stored.views(views), stored.targets(targets)
    test_acc = seen(ctx.scorer(test_d, mean, std, cfg.test_batch_size))
    per_class: List[Optional[List[float]]] = [None]
    if not ctx.ddp:  # per-class accuracy needs the whole test split here (a DDP rank holds a shard)
        test_acc = seen(class_scorer(test_d, mean, std, dev, cfg.test_batch_size, per_class))
    val_acc = seen(ctx.scorer(val_d, mean, std, cfg.test_batch_size)) if val_d is not None else None

    if progress:
        print(f"[evaluate] {set_name}: {n} images, {k} classes, student {student}{kw or ''}, regime {regime} "
              f"({spec.name}), recipe {recipe.name}: batch {plan.batch_size}, {plan.iterations} iterations "
              f"= {plan.epochs:.2f} epochs, evals at {list(plan.eval_epochs)}, crop {crop_desc}, "
              f"soft labels: {source or 'none'}, protocol {proto.protocol}"
              f"{f' ({proto.native})' if proto.native else ''}" + "".join(f"; {n}" for n in proto.notes))
        print(f"[evaluate] compute: {path.summary}")
    runs: List[Tuple[int, RunResult]] = []
    t0 = time.perf_counter()
    todo = ctx.run_indices(cfg.seeds)
    if cfg.stack > 1 and ctx.mode == "single" and stored is None and len(todo) > 1 and on_student is None \
            and init_student is None:  # seeds as one stacked model
        def build(seed: int):
            with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
                torch.manual_seed(derive_seed(seed, "init"))  # the same init draw as the loop below
                return create_model(student, num_classes=k, image_size=size, channels=distilled.images.shape[1],
                                    **kw).to(dev)

        def log_path(seed: int) -> Optional[Path]:
            if output is None:
                return None
            log = edist.run_log_path(Path(output), seed)
            log.parent.mkdir(parents=True, exist_ok=True)
            return log

        done = run_stacked(build, [cfg.seed + r for r in todo], cfg.stack, images=images, labels=labels,
                           recipe=recipe, plan=plan, views=views, targets=targets, criterion=crit, device=dev,
                           amp=amp, cpu_amp=cpu_amp, evaluate=test_acc, validate=val_acc, log_path=log_path,
                           progress=progress, desc=f"{set_name}/{student}", class_accs=lambda: per_class[0])
        runs += list(zip(todo, done))
        todo = todo[len(done):]
    for r in todo:
        seed = cfg.seed + r
        # Seed the global RNGs too (dropout, torchvision inits) inside a fork so callers are unaffected.
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(derive_seed(seed, "init"))
            model = create_model(student, num_classes=k, image_size=size, channels=distilled.images.shape[1], **kw)
            if init_student is not None:
                init_student(seed, model)
            model = ctx.prepare(model)
            model.to(dev)
            # One layout per network: channels_last on CUDA, and on CPU for a compiled student (its fused
            # kernels are fastest there); eager CPU students stay NCHW (GroupNorm is slow channels_last).
            if cfg.channels_last and (dev.type == "cuda" or compiled):
                model.to(memory_format=torch.channels_last)
            net = compiled_fn(model) if compiled else model
            make = ctx.make_trainer if stored is None else stored.make_trainer
            trainer = make(seed, ctx.wrap(net), images, labels, recipe, plan, views, targets, crit,
                           amp=amp, channels_last=cfg.channels_last, cpu_amp=cpu_amp,
                           cpu_channels_last=compiled)
            log = None
            if output is not None:
                log = edist.run_log_path(Path(output), seed)
                log.parent.mkdir(parents=True, exist_ok=True)
            res = train_run(trainer, seed, evaluate=test_acc, validate=val_acc,
                            log_path=log, progress=progress, desc=f"{set_name}/{student}/seed{seed}")
        res.class_accs, per_class[0] = per_class[0], None  # from the last (headline) test evaluation
        if on_student is not None:
            on_student(seed, model)
        runs.append((r, res))
        if progress:
            print(f"[evaluate] {set_name}/{student} seed {seed}: test acc {res.final_acc:.4f} "
                  f"(loss {res.final_loss:.4f}, {res.images_per_s:.0f} img/s)")
    all_runs = ctx.gather_runs(runs, Path(output) if output is not None else None)
    out = EvalResult(set_name, student, regime, recipe, plan, all_runs, source,
                     info={"wall_seconds": time.perf_counter() - t0, "device": str(dev),
                           "config": to_dict(cfg), "student_kwargs": kw,
                           "decoded_mosaic_factor": mosaic if decoded else None, "crop": crop_desc,
                           "set_factor": mosaic, "classes": list(test.classes), "protocol": proto.describe(),
                           "compute_path": path.to_dict(),
                           **ctx.describe(),
                           **(stored.describe(plan.epochs) if stored is not None else {})})
    if progress:
        s = summarize(out.accs)
        print(f"[evaluate] {set_name}/{student}: {s['mean']:.4f} ± {s['std']:.4f} (n={s['n']}, seeds {out.seeds})")
    return out


def soft_labels_for(distilled: DistilledSet, cfg: EvalConfig, teacher: Any, device: torch.device
                    ) -> Optional[torch.Tensor]:
    """The SL targets `evaluate` would compute with the teacher (None when stored or not SL); `cfg` is the
    protocol-resolved config (`native.resolve_protocol(...).cfg`)."""
    regime = check_regime(cfg)
    key = cfg.sl_labels or get_recipe(cfg.recipe).sl_labels
    if regime != "sl" or "soft" in distilled.soft or teacher is None or key not in ("image", "region"):
        return None
    return teacher_soft_labels(distilled.images, teacher, device, cfg.test_batch_size)

