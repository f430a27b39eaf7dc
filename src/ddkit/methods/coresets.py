"""Score-based and feature-based coreset baselines, registered as methods.

Dynamics-based (one proxy recording, cached and shared by all of them — ddkit.methods.dynamics):
`el2n` (+ `el2n-easy`, `el2n-hard`), `grand`, `forgetting` (+ `forgetting-easy`), `aum`, `entropy`,
`dyn-unc` (alias `dynamic-uncertainty`), `ccs`. (`el2n-best` and `el2n-sl` are in ddkit.methods.el2n.) Teacher-feature-based: `herding`, `kcenter` (alias
`k-center`). Every method is class-balanced (ipc real images per class), returns the selected real
images with hard labels, and stores `source_indices` and a `scores` summary in meta.

Selection modes (score methods): `easy` keeps the lowest difficulty per class, `hard` the highest,
`window` a contiguous window (see coresets_scores.select_by_difficulty). Difficulty directions are in
coresets_scores.HIGHER_IS_HARDER (AUM is the only "higher = easier" score).

The proxy is configured by one nested `proxy: DynamicsConfig` (flattened to `--proxy-*` flags by
ddkit.config, so `--proxy-epochs 1`, `proxy_epochs: 1` and `proxy: {epochs: 1}` all set it) or replaced by a
precomputed `dynamics_path`; recordings are cached under `dynamics_cache` (default $DDKIT_CACHE/dynamics).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import torch

from ddkit.config import config_hash, field
from ddkit.data.base import ImageDataset, to_float
from ddkit.methods.base import ClassResult, MethodConfig, check_ipc, register_method
from ddkit.methods.coresets_scores import (HIGHER_IS_HARDER, ccs_select, compute_score, difficulty, herding_select,
                                           kcenter_select, select_by_difficulty)
from ddkit.methods.dynamics import Dynamics, DynamicsConfig, dynamics_for
from ddkit.teachers.frozen import FrozenTeacher
from ddkit.utils import DDKitError, make_generator

_D = DynamicsConfig()
#: the DynamicsConfig fields a coreset exposes as --proxy-* flags (the SL temperature and the schedule
#: length belong to EL2N-SL and CAD-Prune's ablation, which set them themselves)
PROXY_FLAGS = tuple(f.name for f in dataclasses.fields(DynamicsConfig) if f.name not in ("schedule_epochs",
                                                                                           "temperature"))


@dataclass(frozen=True)
class ProxyConfig(MethodConfig):
    """Where the training dynamics come from: a precomputed file, or a (cached) proxy run."""

    dynamics_path: str = field("", "precomputed dynamics folder (Dynamics.save); '' = record, or reuse the cache")
    dynamics_cache: str = field("", "dynamics cache; '' = $DDKIT_CACHE/dynamics (~/.cache/ddkit/dynamics), 'none' = off")
    proxy: DynamicsConfig = field(_D, "the proxy run that records the dynamics (DynamicsConfig; flags --proxy-*)",
                                  only=PROXY_FLAGS)


def load_dynamics(dataset: ImageDataset, cfg: ProxyConfig, device: torch.device, progress: bool) -> Dynamics:
    """Dynamics for `dataset`: from cfg.dynamics_path, else recorded (and cached) with the proxy fields."""
    if cfg.dynamics_path:
        dyn = Dynamics.load(cfg.dynamics_path)
        dyn.check_matches(dataset)
        return dyn
    if cfg.dynamics_cache.lower() == "none":
        cache: Optional[Path] = None
    elif cfg.dynamics_cache:
        cache = Path(cfg.dynamics_cache)
    else:
        from ddkit.data.cache import default_cache_dir
        cache = default_cache_dir() / "dynamics"
    return dynamics_for(dataset, cfg.proxy, cache, device, progress)


def _summary(values: torch.Tensor) -> Dict[str, float]:
    v = values.float()
    return {"min": float(v.min()), "mean": float(v.mean()), "max": float(v.max())}


def _results(dataset: ImageDataset, picks: Callable[[int, torch.Generator], torch.Tensor], cfg: MethodConfig,
             classes: Sequence[int], score: Optional[torch.Tensor], info: Dict[str, Any]) -> Iterator[ClassResult]:
    """Yield each class's `picks(c, g)` (dataset indices, g seeded by (seed, class)) with provenance.

    With a score, every pick is made first (index arithmetic only) so the set-level summary of the
    selected scores is known to every class; feature methods (no score) pick lazily, class by class.
    """
    chosen = {c: picks(c, make_generator(cfg.seed, "class", c)) for c in classes} if score is not None else {}
    set_meta: Dict[str, Any] = {"scores": info}
    if score is not None:
        sel = torch.cat([chosen[c] for c in classes])
        set_meta = {"scores": {**info, "all": _summary(score), "selected": _summary(score[sel])}}
    for c in classes:
        idx = chosen[c] if score is not None else picks(c, make_generator(cfg.seed, "class", c))
        yield ClassResult(c, to_float(dataset.get(idx)), extras={"source_index": idx}, set_meta=set_meta)


# --------------------------------------------------------------------------------------------------
# score-based methods
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoreConfig(ProxyConfig):
    """A dynamics score + a per-class selection rule."""

    mode: str = field("hard", "easy (lowest difficulty), hard (highest) or window (contiguous at window_offset)")
    window_offset: float = field(0.0, "window start β in [0,1]: ⌊β·n_c⌋ into the easy→hard order (unit class)")
    window_unit: str = field("class", "class (offset β·class size from the easy end) or selmatch "
                                      "(skip the ⌊β·ipc⌋ hardest)")


@dataclass(frozen=True)
class EarlyScoreConfig(ScoreConfig):
    """EL2N/GraNd: Paul et al.'s defaults, the score at epoch 20 averaged over 10 independently seeded proxies
    (hardtruths §6; their CIFAR-10 setting). Lower --proxy-runs / --proxy-early-epochs for cheap runs."""

    proxy: DynamicsConfig = field(dataclasses.replace(_D, epochs=20, runs=10, early_epochs=20.0),
                                  "the proxy run: Paul et al.'s 10 seeded proxies scored at epoch 20 of 20 "
                                  "(CIFAR-10); flags --proxy-*", only=PROXY_FLAGS)
    early_reduce: str = field("last", "EL2N/GraNd at the last early point (Paul et al.) or mean over them (CCS)")


@dataclass(frozen=True)
class El2nEasyConfig(EarlyScoreConfig):
    mode: str = field("easy", "EL2N-easy (hard truths): keep the lowest-EL2N samples per class")


@dataclass(frozen=True)
class ForgettingConfig(ScoreConfig):
    unlearned: str = field("top", "never-learned samples: top (count R, above any reachable count: Toneva et al.'s "
                                  "'infinitely forgotten') or zero (DeepCore's forgetting.py never counts them)")


@dataclass(frozen=True)
class ForgettingEasyConfig(ForgettingConfig):
    mode: str = field("easy", "Forgetting-easy (hard truths): keep the least-forgotten samples per class")


@dataclass(frozen=True)
class DynUncConfig(ScoreConfig):
    span: int = field(10, "J: record points per sliding std window (Dyn-Unc uses 10 on ImageNet)")


def _score_method(score_name: str, doc: str) -> Callable[..., Iterator[ClassResult]]:
    def fn(dataset: ImageDataset, teacher: Any, cfg: ScoreConfig, classes: Sequence[int], *,
           device: torch.device, progress: bool = True) -> Iterator[ClassResult]:
        check_ipc(dataset, cfg.ipc)
        dyn = load_dynamics(dataset, cfg, device, progress)
        score = compute_score(score_name, dyn, early_reduce=getattr(cfg, "early_reduce", "last"),
                              span=getattr(cfg, "span", 10), unlearned=getattr(cfg, "unlearned", "top"))
        diff = difficulty(score_name, score)

        def picks(c: int, g: torch.Generator) -> torch.Tensor:
            idx = dataset.class_indices(c)
            return idx[select_by_difficulty(diff[idx], cfg.ipc, cfg.mode, cfg.window_offset, cfg.window_unit)]

        info = {"score": score_name, "higher_is_harder": HIGHER_IS_HARDER[score_name], "mode": cfg.mode,
                **({"unlearned": cfg.unlearned} if hasattr(cfg, "unlearned") else {}),
                "dynamics": cfg.dynamics_path or config_hash(cfg.proxy),
                "proxy_train_acc": (dyn.meta.get("train_acc") or [None])[-1]}
        yield from _results(dataset, picks, cfg, classes, score, info)

    fn.__doc__ = doc
    fn.__name__ = f"coreset_{score_name.replace('-', '_')}"
    return fn


_SCORES: Sequence[Tuple[str, type, Tuple[str, ...], str, str]] = (
    ("el2n", EarlyScoreConfig, (), "el2n", "EL2N (Paul et al. 2021): ‖softmax − onehot‖ early in training."),
    ("el2n-easy", El2nEasyConfig, (), "el2n", "EL2N-easy: the lowest-EL2N samples per class."),
    ("el2n-hard", EarlyScoreConfig, (), "el2n", "EL2N-hard: the highest-EL2N samples per class."),
    ("grand", EarlyScoreConfig, (), "grand", "GraNd (Paul et al. 2021): early last-layer gradient norm."),
    ("forgetting", ForgettingConfig, (), "forgetting", "Forgetting (Toneva et al. 2019): correct→wrong transitions."),
    ("forgetting-easy", ForgettingEasyConfig, (), "forgetting", "Forgetting-easy: the least-forgotten samples."),
    ("aum", ScoreConfig, (), "aum", "AUM (Pleiss et al. 2020): mean logit margin; hard = lowest AUM."),
    ("entropy", ScoreConfig, (), "entropy", "Entropy of the final proxy softmax; hard = highest."),
    ("dyn-unc", DynUncConfig, ("dynamic-uncertainty", "dynunc"), "dyn-unc",
     "Dynamic Uncertainty (He et al. 2024): mean windowed std of p_y; hard = most uncertain."),
)
for _name, _cfg, _aliases, _score, _doc in _SCORES:
    register_method(_name, config=_cfg, aliases=_aliases, class_separable=False)(_score_method(_score, _doc))


# --------------------------------------------------------------------------------------------------
# CCS
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CCSConfig(ProxyConfig):
    """Coverage-centric coreset selection (Zheng et al. 2023), class-balanced."""

    ccs_score: str = field("aum", "score whose range is stratified (CCS default AUM; also forgetting, el2n, …)")
    mislabel_ratio: float = field(0.1, "β: drop this fraction of each class with the lowest AUM (likely mislabeled)")
    strata: int = field(50, "equal-width strata of the score range (CCS k = 50)")
    early_reduce: str = field("last", "for ccs_score el2n/grand: last early point or mean")
    span: int = field(10, "for ccs_score dyn-unc: window J")


@register_method("ccs", config=CCSConfig, aliases=("coverage-centric",), class_separable=False)
def ccs(dataset: ImageDataset, teacher: Any, cfg: CCSConfig, classes: Sequence[int], *, device: torch.device,
        progress: bool = True) -> Iterator[ClassResult]:
    """CCS: AUM mislabel cut, then stratified sampling over equal-width score strata (per class)."""
    check_ipc(dataset, cfg.ipc)
    if cfg.ccs_score not in HIGHER_IS_HARDER:
        raise DDKitError(f"unknown --ccs-score {cfg.ccs_score!r}; choose one of {', '.join(HIGHER_IS_HARDER)}")
    dyn = load_dynamics(dataset, cfg, device, progress)
    score = compute_score(cfg.ccs_score, dyn, cfg.early_reduce, cfg.span)
    aum_all = compute_score("aum", dyn)
    # CCS's official code stratifies globally; per class keeps the ipc-per-class contract of the toolkit.

    def picks(c: int, g: torch.Generator) -> torch.Tensor:
        idx = dataset.class_indices(c)
        return idx[ccs_select(score[idx], aum_all[idx], cfg.ipc, cfg.mislabel_ratio, cfg.strata, g)]

    info = {"score": cfg.ccs_score, "mislabel_ratio": cfg.mislabel_ratio, "strata": cfg.strata,
            "dynamics": cfg.dynamics_path or config_hash(cfg.proxy)}
    yield from _results(dataset, picks, cfg, classes, score, info)


# --------------------------------------------------------------------------------------------------
# teacher-feature methods
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureConfig(MethodConfig):
    feature_layer: str = field("penultimate", "teacher layer whose (flattened) output is the embedding φ")
    batch_size: int = field(512, "images per teacher forward")
    amp: bool = field(True, "bf16 autocast for the teacher (CUDA only)")


@dataclass(frozen=True)
class KCenterConfig(FeatureConfig):
    start: str = field("random", "first centre: random (seeded; DeepCore) or mean (closest to the class mean)")


def _embedder(teacher: Any, cfg: FeatureConfig, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """images (uint8 or [0,1]) -> flattened teacher features at cfg.feature_layer, chunked."""
    ft = FrozenTeacher(teacher, device, amp=cfg.amp, channels_last=False, max_batch=cfg.batch_size)
    return lambda images: ft.features(images, cfg.feature_layer)


@register_method("herding", config=FeatureConfig, needs_teacher=True)
def herding(dataset: ImageDataset, teacher: Any, cfg: FeatureConfig, classes: Sequence[int], *,
            device: torch.device, progress: bool = True) -> Iterator[ClassResult]:
    """Herding on teacher features per class: the running mean tracks the class mean (argmin)."""
    check_ipc(dataset, cfg.ipc)
    emb = _embedder(teacher, cfg, device)

    def picks(c: int, g: torch.Generator) -> torch.Tensor:
        idx = dataset.class_indices(c)
        return idx[herding_select(emb(dataset.get(idx)), cfg.ipc).cpu()]

    yield from _results(dataset, picks, cfg, classes, None, {"layer": cfg.feature_layer})


@register_method("kcenter", config=KCenterConfig, aliases=("k-center", "kcenter-greedy"), needs_teacher=True)
def kcenter(dataset: ImageDataset, teacher: Any, cfg: KCenterConfig, classes: Sequence[int], *,
            device: torch.device, progress: bool = True) -> Iterator[ClassResult]:
    """k-center greedy on teacher features per class: farthest-first traversal."""
    check_ipc(dataset, cfg.ipc)
    if cfg.start not in ("random", "mean"):
        raise DDKitError(f"unknown --start {cfg.start!r}; use random or mean")
    emb = _embedder(teacher, cfg, device)

    def picks(c: int, g: torch.Generator) -> torch.Tensor:
        idx = dataset.class_indices(c)
        f = emb(dataset.get(idx))
        if cfg.start == "mean":
            first = int((f - f.mean(0)).norm(dim=1).argmin())
        else:
            first = int(torch.randint(len(idx), (1,), generator=g))
        return idx[kcenter_select(f, cfg.ipc, first).cpu()]

    yield from _results(dataset, picks, cfg, classes, None, {"layer": cfg.feature_layer, "start": cfg.start})
