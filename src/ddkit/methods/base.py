"""The method contract, the registry and the one driver every condensation method runs through.

A method is one function that knows nothing but its algorithm:

    @register_method("dm", config=DMConfig, needs_teacher=False)
    def dm(dataset, teacher, cfg, classes, *, device, progress) -> Iterator[ClassResult]:
        for c in classes:
            yield ClassResult(c, images_of_class_c)

It is given the classes to condense and yields one `ClassResult` per class (in any order; a method
that couples classes — `class_separable=False` — may yield them all at the end). The driver
(`Method.run`, used by `Method.__call__` and by `ddkit.distributed`) checks the inputs, times each
class, moves results to the CPU, shows the progress bar and, in `ddkit.distributed`, writes one part
per class, resumes and shards. No method touches any of that, so a method that forgets nothing can
never run the wrong classes. Per-class work should draw from `make_generator(seed, …, class)` so a
class's result never depends on which other classes share its process or GPU.
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import pkgutil
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Type

import torch
from tqdm.auto import tqdm

from ddkit.augment.zca import ZCA
from ddkit.config import build, field, option_names, to_dict
from ddkit.data.base import ImageDataset
from ddkit.distilled import DistilledSet
from ddkit.registry import Registry
from ddkit.teachers.frozen import teacher_identity
from ddkit.utils import DDKitError, get_device, peak_memory_mb, reset_peak_memory

#: modules of this package that hold no method (helpers); every other module is imported on first use of
#: the registry and registers itself — so adding a method is adding one file
HELPER_MODULES = {"base", "lic_ops", "lic_optim", "coresets_scores", "recover", "matching_ops", "mtt_ops",
                  "patch_init", "real_init", "gsm", "fast_embed", "edc_mosaic"}


@dataclass(frozen=True)
class MethodConfig:
    """Fields every method has."""

    ipc: int = field(10, "images per class of the distilled set")
    seed: int = field(0, "base seed; each class uses a seed derived from (seed, class)")


@dataclass(frozen=True)
class ClassResult:
    """One finished class.

    images: N_c×C×H×W float in [0,1] pixel space (optimised sets may leave it); soft: label tensors with N_c
    rows (→ DistilledSet.soft); extras: other per-row tensors (e.g. "source_index" → meta["source_indices"]);
    meta: JSON-safe per-class facts (→ meta[key] = list over classes); set_meta: JSON-safe facts about the
    whole set, equal for every class (e.g. the mosaic factor); set_tensors: tensors about the whole set, given
    on at least one class (the first one given wins; "zca_*" = `ZCA.state()` → DistilledSet.zca, the transform
    the set's student must whiten its inputs with); labels: N_c int64, default all == cls; seconds: compute
    time, measured by the driver when left NaN.
    """

    cls: int
    images: torch.Tensor
    soft: Dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    extras: Dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    meta: Dict[str, Any] = dataclasses.field(default_factory=dict)
    set_meta: Dict[str, Any] = dataclasses.field(default_factory=dict)
    set_tensors: Dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    labels: Optional[torch.Tensor] = None
    seconds: float = math.nan

    def on_cpu(self, seconds: float) -> "ClassResult":
        """A copy with CPU tensors (images float32), labels filled in and `seconds` set when unknown."""
        cpu = lambda d: {k: v.detach().cpu() for k, v in d.items()}  # noqa: E731
        imgs = self.images.detach().float().cpu()
        labels = (self.labels.detach().long().cpu() if self.labels is not None
                  else torch.full((len(imgs),), int(self.cls), dtype=torch.long))
        return dataclasses.replace(self, cls=int(self.cls), images=imgs, labels=labels, soft=cpu(self.soft),
                                   extras=cpu(self.extras), set_tensors=cpu(self.set_tensors), seconds=seconds if math.isnan(self.seconds)
                                   else float(self.seconds))


@dataclass(frozen=True)
class Unit:
    """A batch unit of work: IPC index `index` of the class group `classes` (one row per class, in this order)."""

    index: int
    classes: Tuple[int, ...]

    @property
    def key(self) -> Tuple[int, int]:
        """(IPC index, first class): unique within a run, the part file's name and the sort order."""
        return (int(self.index), int(self.classes[0]))

    @property
    def name(self) -> str:
        return f"ipc{self.index:05d}_cls{self.classes[0]:05d}"


@dataclass(frozen=True)
class UnitResult:
    """One finished batch unit: images has k rows per class of `unit.classes`, class-major in that order (k = 1
    for an IPC-index unit; k = ipc for a unit that holds every image of its classes, WMDD/DELT); soft / extras
    are per-row tensors; meta: JSON-safe facts of the unit (→ meta["unit_meta"], a list over units); set_meta as
    ClassResult's; seconds: measured by the driver when left NaN."""

    unit: Unit
    images: torch.Tensor
    soft: Dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    extras: Dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    meta: Dict[str, Any] = dataclasses.field(default_factory=dict)
    set_meta: Dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: float = math.nan

    @property
    def rows_per_class(self) -> int:
        return len(self.images) // max(1, len(self.unit.classes))

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor(self.unit.classes, dtype=torch.long).repeat_interleave(self.rows_per_class)

    def on_cpu(self, seconds: float) -> "UnitResult":
        """A copy with CPU tensors (images float32) and `seconds` set when unknown."""
        n, k = len(self.images), len(self.unit.classes)
        if n == 0 or n % k:
            raise DDKitError(f"unit {self.unit.name}: {n} images for {k} classes (need the same number per class)")
        cpu = lambda d: {k: v.detach().cpu() for k, v in d.items()}  # noqa: E731
        return dataclasses.replace(self, images=self.images.detach().float().cpu(), soft=cpu(self.soft),
                                   extras=cpu(self.extras), seconds=seconds if math.isnan(self.seconds)
                                   else float(self.seconds))


def ipc_units(num_classes: int, ipc: int, group: int) -> List[Unit]:
    """Every (IPC index × class group) unit: groups of `group` consecutive classes (the last may be smaller), in
    the official loop order — IPC index outer, groups inner (SRe2L recover/data_synthesis.py:34-37, 224-227)."""
    if group < 1:
        raise DDKitError(f"a class group needs at least one class, got {group}")
    return [Unit(i, tuple(range(a, min(a + group, num_classes))))
            for i in range(ipc) for a in range(0, num_classes, group)]


def group_units(num_classes: int, group: int) -> List[Unit]:
    """Units that each hold every image of a group of `group` consecutive classes (index 0): WMDD's and DELT's
    batches of ⌊100 / ipc⌋ classes × ipc images (WMDD data_synthesis_new.py:82-91, DELT recover.py:254-287)."""
    if group < 1:
        raise DDKitError(f"a class group needs at least one class, got {group}")
    return [Unit(0, tuple(range(a, min(a + group, num_classes)))) for a in range(0, num_classes, group)]


MethodFn = Callable[..., Iterator[Any]]
#: (dataset, config) -> the run's units, or None when this configuration works class by class
UnitsFn = Callable[[ImageDataset, "MethodConfig"], Optional[List[Unit]]]


#: What a method may need besides a dataset and a teacher, by the name it declares (`needs=`). A driver that
#: runs many methods (the demo, CI's smoke run) provides what it can and reports the rest as "skipped: needs …",
#: so a newly registered method never breaks it by needing something nobody knew about.
NEEDS: Dict[str, str] = {
    "bn-teacher": "a teacher with BatchNorm layers (its running statistics are the target)",
    "expert-buffer": "an expert trajectory buffer from `ddkit experts train`, passed as the `buffer` option",
}


@dataclass(frozen=True)
class MethodSpec:
    name: str
    fn: MethodFn
    config: Type[MethodConfig]
    needs_teacher: bool
    description: str
    class_separable: bool = True  # classes can be condensed independently (sharding by class is valid)
    needs: Tuple[str, ...] = ()  # names of NEEDS (or a plugin's own words) beyond the dataset and teacher
    # options that make a small but real run of the same algorithm (a named CPU preset, fewer proxy runs), for
    # the demo and CI's smoke run; never the defaults a user gets
    quick: Tuple[Tuple[str, Any], ...] = ()
    # the evaluation protocol of the method's paper, by name (`ddkit evaluate --protocol native` reads it from
    # the set's meta "native", never from the method's name); "" = not declared
    native: str = ""
    units: Optional[UnitsFn] = None  # batch units (IPC index × class group) instead of classes, per config
    # the method accepts a `teachers.committee.Committee` of several teachers as its teacher (CV-DD, FADRM+, …);
    # any other method is refused one in `Method.check`
    committee: bool = False


METHODS: Registry[MethodSpec] = Registry("method")


def register_method(name: str, config: Type[MethodConfig] = MethodConfig, aliases: Sequence[str] = (),
                    needs_teacher: bool = False, class_separable: bool = True, needs: Sequence[str] = (),
                    quick: Optional[Mapping[str, Any]] = None, native: str = "",
                    units: Optional[UnitsFn] = None, committee: bool = False) -> Callable[[MethodFn], MethodFn]:
    """Decorator: register a condensation method under `name` (+ peers' spellings as aliases).

    The function's signature is `fn(dataset, teacher, cfg, classes, *, device, progress)` and it yields
    one ClassResult per class of `classes`; the first line of its docstring is its description. `needs` names
    what else it must be given (keys of NEEDS, e.g. "bn-teacher"); `quick` holds config options for a small
    but real run (checked against the config's fields here, so a typo fails at import, not in the demo);
    `native` names its paper's evaluation protocol (`ddkit protocols`), written into every set's meta.
    `units(dataset, cfg)` declares the batch unit of work: when it returns a list of `Unit`s the function is
    given those units instead of classes and yields one `UnitResult` per unit. `committee=True`: the method may be
    given a `Committee` of several teachers (`ddkit distill --teacher A --teacher B`).
    """
    quick_items = tuple(sorted((quick or {}).items()))
    bad = sorted(set(k for k, _ in quick_items) - set(option_names(config)))
    if bad:
        raise DDKitError(f"method {name!r}: quick option(s) {', '.join(bad)} are not fields of {config.__name__}")

    def deco(fn: MethodFn) -> MethodFn:
        doc = (fn.__doc__ or "").strip().splitlines()
        METHODS.register(name, aliases=aliases, obj=MethodSpec(name, fn, config, needs_teacher,
                                                               doc[0] if doc else "", class_separable,
                                                               tuple(needs), quick_items, native, units,
                                                               bool(committee)))
        return fn

    return deco


_LOADED = False


def builtin_modules() -> List[str]:
    """The method modules shipped in ddkit.methods (every module but the helpers), in name order."""
    import ddkit.methods as pkg

    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name not in HELPER_MODULES)


def _load_builtin() -> None:
    """Import the built-in method modules once (they register themselves)."""
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for mod in builtin_modules():
            importlib.import_module(f"ddkit.methods.{mod}")


def list_methods() -> List[str]:
    """Names of all registered methods."""
    _load_builtin()
    return METHODS.names()


def method_spec(name: str) -> MethodSpec:
    """The registered spec of `name` (any alias); unknown names fail with the list of known ones."""
    _load_builtin()
    return METHODS.get(name)


def check_ipc(dataset: ImageDataset, need: int, what: str = "ipc") -> None:
    """Refuse when some class has fewer than `need` images (name the class)."""
    for c, n in enumerate(dataset.class_counts()):
        if n < need:
            raise DDKitError(f"{what} needs {need} images per class but class {c} ({dataset.classes[c]!r}) has only {n}")


def assemble(results: Sequence[ClassResult], classes: Sequence[str], mean: Sequence[float], std: Sequence[float],
             meta: Optional[Dict[str, Any]] = None) -> DistilledSet:
    """The DistilledSet of finished classes, in class order (the same rule as merging on-disk parts).

    Per-class meta becomes lists over classes; extras become flat per-row lists ("source_index" →
    "source_indices"); set_meta is taken once; class_seconds lists each class's compute time.
    """
    if not results:
        raise DDKitError("no class was condensed: the method was given (or yielded) no classes")
    rs = sorted(results, key=lambda r: r.cls)
    out: Dict[str, Any] = {}
    for r in rs:
        out.update(r.set_meta)
    for key in dict.fromkeys(k for r in rs for k in r.meta):
        out[key] = [r.meta.get(key) for r in rs]
    for key in dict.fromkeys(k for r in rs for k in r.extras):
        out["source_indices" if key == "source_index" else key] = torch.cat([r.extras[key] for r in rs]).tolist()
    out["class_seconds"] = [None if math.isnan(r.seconds) else r.seconds for r in rs]
    out.update(meta or {})
    soft = {k: torch.cat([r.soft[k] for r in rs]) for k in rs[0].soft}
    whole: Dict[str, torch.Tensor] = {}
    for r in results:  # yield order: the first class that carried a set tensor gives it
        for key, t in r.set_tensors.items():
            whole.setdefault(key, t)
    zca = ZCA.from_state(whole) if "zca_matrix" in whole else None
    return DistilledSet(torch.cat([r.images for r in rs]), torch.cat([r.labels for r in rs]), list(classes),
                        list(mean), list(std), soft=soft, meta=out, zca=zca)


def _class_rows(r: UnitResult, j: int, t: torch.Tensor) -> torch.Tensor:
    """The rows of the j-th class of unit result `r` in its per-row tensor `t` (class-major, k per class)."""
    k = r.rows_per_class
    return t[j * k:(j + 1) * k]


def _rows(got: Sequence[Tuple[UnitResult, int]], attr: str) -> Dict[str, torch.Tensor]:
    """One class's rows of the per-row tensors `attr` ("soft" or "extras") of its units, in unit order."""
    return {k: torch.cat([_class_rows(r, j, getattr(r, attr)[k]) for r, j in got]) for k in getattr(got[0][0], attr)}


def assemble_units(results: Sequence[UnitResult], classes: Sequence[str], mean: Sequence[float],
                   std: Sequence[float], meta: Optional[Dict[str, Any]] = None) -> DistilledSet:
    """The DistilledSet of finished batch units: each class's rows in (IPC index, unit) order, classes in order,
    so the bytes never depend on the order in which (or the process by which) units finished.

    Per-unit meta becomes meta["unit_meta"] (a list in unit order, each with its index and classes); a class's
    seconds are its share of the time of every unit it was in.
    """
    if not results:
        raise DDKitError("no unit was run: the method was given (or yielded) no units")
    rs = sorted(results, key=lambda r: r.unit.key)
    rows: Dict[int, List[Tuple[UnitResult, int]]] = {}
    for r in rs:
        for j, c in enumerate(r.unit.classes):
            rows.setdefault(int(c), []).append((r, j))
    per_class = []
    for c in sorted(rows):
        got = rows[c]
        secs = [r.seconds / len(r.unit.classes) for r, _ in got if not math.isnan(r.seconds)]
        imgs = torch.cat([_class_rows(r, j, r.images) for r, j in got])
        per_class.append(ClassResult(c, imgs, soft=_rows(got, "soft"),
                                     extras=_rows(got, "extras"), set_meta={k: v for r, _ in got for k, v in r.set_meta.items()},
                                     labels=torch.full((len(imgs),), c, dtype=torch.long),
                                     seconds=float(sum(secs)) if secs else math.nan))
    units_meta = [{"index": r.unit.index, "classes": [r.unit.classes[0], r.unit.classes[-1]],
                   "seconds": None if math.isnan(r.seconds) else r.seconds, **r.meta} for r in rs]
    return assemble(per_class, classes, mean, std, {"unit": "batch", "unit_meta": units_meta, **(meta or {})})


class Method:
    """A method bound to a frozen config; call it on a dataset (and teacher) to get a DistilledSet."""

    def __init__(self, spec: MethodSpec, config: MethodConfig) -> None:
        self.spec = spec
        self.config = config

    @property
    def name(self) -> str:
        return self.spec.name

    def check(self, dataset: ImageDataset, teacher: Any, classes: Optional[Sequence[int]]) -> List[int]:
        """Refuse impossible runs before any compute; return the sorted classes to run."""
        if self.spec.needs_teacher and teacher is None:
            raise DDKitError(f"method {self.name!r} needs a teacher: pass --teacher CKPT (train one with "
                             f"`ddkit teacher train`)")
        if len(getattr(teacher, "members", ())) > 1 and not self.spec.committee:
            raise DDKitError(f"method {self.name!r} recovers through one teacher, not a committee of "
                             f"{len(teacher.members)}: pass one --teacher")
        if teacher is not None and list(teacher.classes) != list(dataset.classes):
            raise DDKitError(f"teacher classes {list(teacher.classes)[:5]}… differ from the dataset's "
                             f"{list(dataset.classes)[:5]}…: use a teacher trained on this class list")
        if self.config.ipc < 1:
            raise DDKitError(f"--ipc must be ≥ 1, got {self.config.ipc}")
        k = dataset.num_classes
        todo = list(range(k)) if classes is None else sorted({int(c) for c in classes})
        bad = [c for c in todo if not 0 <= c < k]
        if bad:
            raise DDKitError(f"class {bad[0]} does not exist: the dataset has {k} classes")
        if not self.spec.class_separable and todo != list(range(k)):
            raise DDKitError(f"method {self.name!r} couples classes (class_separable=False): it runs on all "
                             f"classes at once, not on a shard; parallelise over seeds instead")
        if todo != list(range(k)) and self.units(dataset) is not None:
            raise DDKitError(f"method {self.name!r} works in batches of (IPC index × class group) that mix the "
                             f"classes: run it on all classes (its shards split the batches), or per class with "
                             f"its unit=class variant")
        return todo

    def units(self, dataset: ImageDataset) -> Optional[List[Unit]]:
        """Every batch unit of this run (IPC index × class group), or None when it works class by class."""
        return self.spec.units(dataset, self.config) if self.spec.units is not None else None

    def run_units(self, dataset: ImageDataset, teacher: Any = None, *, units: Optional[Sequence[Unit]] = None,
                  device: str | torch.device | None = None, progress: bool = True) -> Iterator[UnitResult]:
        """Yield the result of each batch unit of `units` (default all) as it finishes, on the CPU."""
        dev = device if isinstance(device, torch.device) else get_device(device)
        self.check(dataset, teacher, None)
        every = self.units(dataset)
        if every is None:
            raise DDKitError(f"method {self.name!r} works class by class in this configuration: use run()")
        todo = sorted(every if units is None else units, key=lambda u: u.key)
        known = {u.key: u for u in every}
        bad = [u.name for u in todo if known.get(u.key) != u]
        if bad:
            raise DDKitError(f"unit(s) {bad[:5]} are not units of this run of {self.name!r}")
        want = {u.key for u in todo}
        seen: set = set()
        t = time.perf_counter()
        for r in self.spec.fn(dataset, teacher, self.config, list(todo), device=dev, progress=progress):
            key = r.unit.key if isinstance(r, UnitResult) else None
            if key not in want or key in seen:
                raise DDKitError(f"method {self.name!r} yielded unit {getattr(r, 'unit', r)}, which it was not "
                                 f"asked for (or twice)")
            seen.add(key)
            now = time.perf_counter()
            yield r.on_cpu(now - t)
            t = time.perf_counter()  # time spent by the consumer (e.g. writing a part) is not the unit's
        missing = [u.name for u in todo if u.key not in seen]
        if missing:
            raise DDKitError(f"method {self.name!r} yielded no result for unit(s) {missing[:10]}")

    def run(self, dataset: ImageDataset, teacher: Any = None, *, classes: Optional[Sequence[int]] = None,
            device: str | torch.device | None = None, progress: bool = True) -> Iterator[ClassResult]:
        """Yield the method's result for each class of `classes` (default all) as it finishes, on the CPU
        (a method whose run works in batch units goes through `run_units`)."""
        dev = device if isinstance(device, torch.device) else get_device(device)
        todo = self.check(dataset, teacher, classes)
        if self.units(dataset) is not None:
            raise DDKitError(f"method {self.name!r} works in batch units in this configuration: use run_units()")
        seen: set = set()
        t = time.perf_counter()
        for r in self.spec.fn(dataset, teacher, self.config, list(todo), device=dev, progress=progress):
            if int(r.cls) not in todo or int(r.cls) in seen:
                raise DDKitError(f"method {self.name!r} yielded class {r.cls}, which it was not asked for "
                                 f"(or twice)")
            seen.add(int(r.cls))
            now = time.perf_counter()
            yield r.on_cpu(now - t)
            t = time.perf_counter()  # time spent by the consumer (e.g. writing a part) is not the class's
        missing = [c for c in todo if c not in seen]
        if missing:
            raise DDKitError(f"method {self.name!r} yielded no result for class(es) {missing[:10]}")

    def facts(self, dataset: ImageDataset, teacher: Any, device: torch.device) -> Dict[str, Any]:
        """The meta.json facts the driver records for every set (never the method's job)."""
        return dict(method=self.name, config=to_dict(self.config), ipc=self.config.ipc, seed=self.config.seed,
                    dataset=dataset.name, split=dataset.split, device=str(device),
                    teacher=teacher_identity(teacher),
                    teacher_arch=getattr(teacher, "arch", None), native=self.spec.native or None)

    def __call__(self, dataset: ImageDataset, teacher: Any = None, *, device: str | torch.device | None = None,
                 progress: bool = True, classes: Optional[Sequence[int]] = None) -> DistilledSet:
        """Run on `classes` (default all) in this process and return the assembled set."""
        dev = device if isinstance(device, torch.device) else get_device(device)
        todo = self.check(dataset, teacher, classes)
        reset_peak_memory(dev)
        t0 = time.perf_counter()
        units = self.units(dataset)
        if units is not None:
            bar = tqdm(self.run_units(dataset, teacher, device=dev, progress=progress), total=len(units),
                       desc=self.name, unit="batch", disable=not progress, dynamic_ncols=True, mininterval=1.0)
        else:
            bar = tqdm(self.run(dataset, teacher, classes=todo, device=dev, progress=progress), total=len(todo),
                       desc=self.name, unit="class", disable=not progress, dynamic_ncols=True, mininterval=1.0)
        results = list(bar)
        facts = self.facts(dataset, teacher, dev)
        facts.update(wall_seconds=time.perf_counter() - t0, peak_memory_mb=peak_memory_mb(dev))
        if units is not None:
            return assemble_units(results, dataset.classes, dataset.mean, dataset.std, facts)
        return assemble(results, dataset.classes, dataset.mean, dataset.std, facts)


def create_method(name: str, **overrides: Any) -> Method:
    """Look up `name` and bind its config with `overrides` (unknown keys fail with the valid ones)."""
    spec = method_spec(name)
    valid = option_names(spec.config)  # nested sub-configs by their flat keys too (proxy_epochs)
    bad = set(overrides) - set(valid)
    if bad:
        raise DDKitError(f"method {spec.name!r} has no option(s) {', '.join(sorted(bad))}; valid: {', '.join(valid)}")
    return Method(spec, build(spec.config, overrides))
