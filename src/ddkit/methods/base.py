"""Method registry and the shared driver every condensation method runs through.

Contract: a method is a function `fn(dataset, teacher, cfg, *, device, progress) -> DistilledSet`
registered with `@register_method(name, config=CfgClass)`. `create_method(name, **overrides)` binds a
frozen config; calling the result runs the method and fills meta.json facts (method, config, dataset,
teacher, ipc, seed, wall time, peak memory) so no method repeats that bookkeeping.
Per-class work gets a generator seeded from (seed, class) so a class's result never depends on which
other classes share its batch, process or GPU.

Class scope (sharding, resume): `ddkit.distributed` runs a class-separable method inside
`class_scope(classes, on_done)`. Drivers then loop over `scoped_classes(num_classes)` instead of all
classes and report each finished class with `class_done(...)`, so it can be written to disk at once.
`per_class` does both by itself; a method with its own loop (lic) calls the two functions. Outside a
scope both are no-ops and every class runs.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Type

import torch
from tqdm.auto import tqdm

from ddkit.config import field, to_dict
from ddkit.data.base import ImageDataset
from ddkit.distilled import DistilledSet
from ddkit.registry import Registry
from ddkit.utils import DDKitError, get_device, make_generator, peak_memory_mb, reset_peak_memory


@dataclass(frozen=True)
class MethodConfig:
    """Fields every method has."""

    ipc: int = field(10, "images per class of the distilled set")
    seed: int = field(0, "base seed; each class uses a seed derived from (seed, class)")


@dataclass(frozen=True)
class MethodSpec:
    name: str
    fn: Callable[..., DistilledSet]
    config: Type[MethodConfig]
    needs_teacher: bool
    description: str
    class_separable: bool = True  # classes can be condensed independently (sharding by class is valid)


METHODS: Registry[MethodSpec] = Registry("method")


def register_method(name: str, config: Type[MethodConfig] = MethodConfig, aliases: Sequence[str] = (),
                    needs_teacher: bool = False, class_separable: bool = True) -> Callable:
    """Decorator: register a condensation method under `name` (+ peers' spellings as aliases)."""

    def deco(fn: Callable[..., DistilledSet]) -> Callable[..., DistilledSet]:
        doc = (fn.__doc__ or "").strip().splitlines()
        METHODS.register(name, aliases=aliases, obj=MethodSpec(name, fn, config, needs_teacher,
                                                               doc[0] if doc else "", class_separable))
        return fn

    return deco


def list_methods() -> List[str]:
    """Names of all registered methods."""
    _load_builtin()
    return METHODS.names()


def method_spec(name: str) -> MethodSpec:
    _load_builtin()
    return METHODS.get(name)


class Method:
    """A method bound to a frozen config; call it on a dataset (and teacher) to get a DistilledSet."""

    def __init__(self, spec: MethodSpec, config: MethodConfig) -> None:
        self.spec = spec
        self.config = config

    @property
    def name(self) -> str:
        return self.spec.name

    def __call__(self, dataset: ImageDataset, teacher: Any = None, *, device: str | torch.device | None = None,
                 progress: bool = True) -> DistilledSet:
        dev = get_device(device) if not isinstance(device, torch.device) else device
        if self.spec.needs_teacher and teacher is None:
            raise DDKitError(f"method {self.name!r} needs a teacher: pass --teacher CKPT (train one with `ddkit teacher train`)")
        if teacher is not None and list(teacher.classes) != list(dataset.classes):
            raise DDKitError(f"teacher classes {list(teacher.classes)[:5]}… differ from the dataset's "
                             f"{list(dataset.classes)[:5]}…: use a teacher trained on this class list")
        if self.config.ipc < 1:
            raise DDKitError(f"--ipc must be ≥ 1, got {self.config.ipc}")
        reset_peak_memory(dev)
        t0 = time.perf_counter()
        out = self.spec.fn(dataset, teacher, self.config, device=dev, progress=progress)
        wall = time.perf_counter() - t0
        out.meta.update(
            method=self.name, config=to_dict(self.config), ipc=self.config.ipc, seed=self.config.seed,
            dataset=dataset.name, split=dataset.split, wall_seconds=wall, peak_memory_mb=peak_memory_mb(dev),
            device=str(dev), teacher=(teacher.meta.get("path") or teacher.arch) if teacher is not None else None,
            teacher_arch=getattr(teacher, "arch", None),
        )
        return out


def create_method(name: str, **overrides: Any) -> Method:
    """Look up `name` and bind its config with `overrides` (unknown keys fail with the valid ones)."""
    spec = method_spec(name)
    valid = {f.name for f in dataclasses.fields(spec.config)}
    bad = set(overrides) - valid
    if bad:
        raise DDKitError(f"method {spec.name!r} has no option(s) {', '.join(sorted(bad))}; valid: {', '.join(sorted(valid))}")
    return Method(spec, spec.config(**overrides))


def check_ipc(dataset: ImageDataset, need: int, what: str = "ipc") -> None:
    """Refuse when some class has fewer than `need` images (name the class)."""
    counts = dataset.class_counts()
    for c, n in enumerate(counts):
        if n < need:
            raise DDKitError(f"{what} needs {need} images per class but class {c} ({dataset.classes[c]!r}) has only {n}")


# -- class scope ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassResult:
    """One finished class, as reported to the scope's callback (all tensors on CPU).

    images: N_c×C×H×W float; labels: N_c int64; soft: label tensors with N_c rows (go to DistilledSet.soft);
    extras: other per-row tensors (e.g. "source_index"); meta: JSON-safe per-class facts; seconds: compute time.
    """

    cls: int
    images: torch.Tensor
    labels: torch.Tensor
    soft: Dict[str, torch.Tensor]
    extras: Dict[str, torch.Tensor]
    meta: Dict[str, Any]
    seconds: float


_SCOPE: contextvars.ContextVar[Optional[Tuple[List[int], Callable[[ClassResult], None]]]] = \
    contextvars.ContextVar("ddkit_class_scope", default=None)


@contextlib.contextmanager
def class_scope(classes: Sequence[int], on_class_done: Callable[[ClassResult], None]) -> Iterator[None]:
    """Restrict scope-aware drivers to `classes` and call `on_class_done` as each class finishes."""
    token = _SCOPE.set((sorted(int(c) for c in classes), on_class_done))
    try:
        yield
    finally:
        _SCOPE.reset(token)


def scoped_classes(num_classes: int) -> List[int]:
    """The classes a driver must run: the active scope's, else all of them."""
    scope = _SCOPE.get()
    if scope is None:
        return list(range(num_classes))
    bad = [c for c in scope[0] if not 0 <= c < num_classes]
    if bad:
        raise DDKitError(f"class scope holds class {bad[0]} but the dataset has {num_classes} classes")
    return list(scope[0])


def class_done(c: int, images: torch.Tensor, *, soft: Optional[Dict[str, torch.Tensor]] = None,
               extras: Optional[Dict[str, torch.Tensor]] = None, meta: Optional[Dict[str, Any]] = None,
               seconds: float = float("nan")) -> None:
    """Report that class `c` is finished (no-op outside a scope); tensors are copied to CPU."""
    scope = _SCOPE.get()
    if scope is None:
        return
    cpu = lambda d: {k: v.detach().cpu() for k, v in (d or {}).items()}  # noqa: E731
    imgs = images.detach().float().cpu()
    scope[1](ClassResult(int(c), imgs, torch.full((len(imgs),), int(c), dtype=torch.long), cpu(soft),
                         cpu(extras), dict(meta or {}), float(seconds)))


def per_class(dataset: ImageDataset, fn: Callable[[int, torch.Generator], Tuple[torch.Tensor, Dict[str, torch.Tensor]]],
              seed: int, *, desc: str = "classes", progress: bool = True,
              classes: Optional[Sequence[int]] = None,
              on_class_done: Optional[Callable[[ClassResult], None]] = None
              ) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
    """Run `fn(c, generator)` for each class with a generator seeded by (seed, c); stack the results.

    `fn` returns (images float N_c×C×H×W, extra label tensors with N_c rows). Returns (images, labels, extras).
    `classes` None means the active class scope's classes (all classes outside a scope); finished
    classes are reported to the scope and to `on_class_done`.
    """
    scoped = classes is None
    cls = scoped_classes(dataset.num_classes) if scoped else list(classes)
    images: List[torch.Tensor] = []
    labels: List[torch.Tensor] = []
    extras: Dict[str, List[torch.Tensor]] = {}
    for c in tqdm(cls, desc=desc, disable=not progress, dynamic_ncols=True, mininterval=1.0):
        t0 = time.perf_counter()
        imgs, ex = fn(c, make_generator(seed, "class", c))
        images.append(imgs.detach().float().cpu())
        labels.append(torch.full((len(imgs),), c, dtype=torch.long))
        ex = {k: v.detach().cpu() for k, v in ex.items()}
        for k, v in ex.items():
            extras.setdefault(k, []).append(v)
        seconds = time.perf_counter() - t0
        if scoped:
            class_done(c, images[-1], extras=ex, seconds=seconds)
        if on_class_done is not None:
            on_class_done(ClassResult(c, images[-1], labels[-1], {}, ex, {}, seconds))
    if not images:  # an empty class list (e.g. every class of a shard already done)
        raise DDKitError("per_class was given no classes to run")
    return torch.cat(images), torch.cat(labels), {k: torch.cat(v) for k, v in extras.items()}


_LOADED = False


def _load_builtin() -> None:
    """Import the built-in method modules once (they register themselves)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import importlib

    for mod in ("random", "lic", "dynamics", "coresets", "el2n", "rded", "cad", "sre2l", "dwa"):
        try:
            importlib.import_module(f"ddkit.methods.{mod}")
        except ModuleNotFoundError as e:  # a method module not written yet must not break the others
            if e.name != f"ddkit.methods.{mod}":
                raise
