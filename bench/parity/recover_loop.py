"""Shared parts of the recover-loop parity drivers (issue #27/#28): cvdd_recover.py, wmdd_recover.py, delt_recover.py,
cda_recover.py, dwa_recover.py.

A recover-loop check runs a method's official `get_images` in-process beside ddkit's method on one small batch
and compares the final images pixel by pixel (fadrm_recover.py was the first; it keeps its own copy of these
pieces so that its committed result stays exactly reproducible). What this module holds is ours only: tiny
random-weight BatchNorm networks with non-trivial running statistics, a toy image set, the pass rule, the
objective of the final images, a stand-in for a module's `torch.load`, a torch function mode that maps the
official "cuda" device strings to the CPU (and may answer its torch.randn), the JSON writer, and views drawn by
the driver and handed to both sides (`SharedViews`: CDA's curriculum is a view schedule, so its check cannot run
with the views off). Nothing of the official repositories is here.

The pass rule (as fadrm_recover.py): no two implementations agree bit for bit after a few Adam steps, because
Adam's first steps are lr·g/(|g| + 1e-8) and a pixel whose gradient is ~0 moves by up to ±lr on rounding noise;
the floor is the official code against itself from a start nudged by 1e-6, and ddkit passes when its mean
absolute pixel distance to the official images is at most 1.5× the floor's. Each driver also runs a control,
ddkit with the method's own ingredient removed, which must fail the same rule (it shows the check can fail).
"""
from __future__ import annotations

import datetime as _dt
import sys
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (bench/parity/common.py: lscpu, revision, write_json, PEERS)

#: ddkit's `DistilledSet`-free view of a result: [0,1] images N×C×H×W
Images = torch.Tensor
FACTOR = 1.5  # ddkit passes when mean |ddkit − official| <= FACTOR × mean |official − official nudged|
NUDGE = 1e-6


def bn_nets(arch: str, k: int, size: int, n: int, seed: int = 100, **kw: Any) -> List[nn.Module]:
    """n random-weight ddkit networks (`arch`) in eval mode whose BatchNorm running statistics were moved by three
    train-mode forwards of N(0,1) batches, so the BN term has a non-trivial target."""
    from ddkit.models import create_model

    nets = []
    for i in range(n):
        torch.manual_seed(seed + i)
        net = create_model(arch, num_classes=k, image_size=size, **kw)
        nets.append(warm_bn(net, size))
    return nets


def warm_bn(net: nn.Module, size: int, batches: int = 3) -> nn.Module:
    """Three train-mode forwards of N(0,1) 64-image batches (running statistics away from 0/1), then frozen."""
    net.train()
    with torch.no_grad():
        for _ in range(batches):
            net(torch.randn(64, 3, size, size))
    return net.eval().requires_grad_(False)


def toy_dataset(k: int, size: int, per: int, mean: Sequence[float], std: Sequence[float], seed: int = 7):
    """k classes of `per` uniform-noise uint8 images, declaring the given statistics (so ddkit's working space is
    the official code's normalisation and no affine map is involved)."""
    from ddkit.data.base import ImageDataset

    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(k * per, 3, size, size, generator=g) * 255).to(torch.uint8)
    labels = torch.arange(k).repeat_interleave(per)
    return ImageDataset(images, labels, [f"c{i}" for i in range(k)], tuple(mean), tuple(std), name="parity-toy")


def normalise(x01: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    return (x01 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def nudged(x: torch.Tensor) -> torch.Tensor:
    """The floor's start: every [0,1] pixel moved by 1e-6 (float rounding's size), kept in range."""
    return (x + NUDGE).clamp(0, 1)


def compare(ours: Images, theirs: Images, floor_run: Images, start: Images) -> Dict[str, Any]:
    """Pixel distances and the verdict (module docstring)."""
    diff, floor = (ours - theirs).abs(), (floor_run - theirs).abs()
    return {"pass": bool(diff.mean() <= FACTOR * floor.mean()),
            "pixels_ddkit_vs_official": {"max": float(diff.max()), "mean": float(diff.mean())},
            "pixels_official_vs_official_nudged_1e-6": {"max": float(floor.max()), "mean": float(floor.mean())},
            "mean_abs_move_from_start": float((ours - start).abs().mean()),
            "official_mean_abs_move_from_start": float((theirs - start).abs().mean())}


@torch.no_grad()
def objective(nets: Sequence[nn.Module], x01: Images, y: torch.Tensor, mean: Sequence[float],
              std: Sequence[float], first_bn: float = 10.0) -> Dict[str, float]:
    """Mean over `nets` of CE and the (running-statistics) BN term of the images: a sanity number beside the
    pixel distances (the verdict is the pixels)."""
    x = normalise(x01, mean, std)
    ce, bn = 0.0, 0.0
    for net in nets:
        stats: List[torch.Tensor] = []

        def hook(m: nn.Module, inp: Any, out: Any) -> None:
            v = inp[0].float()
            mu, var = v.mean([0, 2, 3]), v.var([0, 2, 3], unbiased=False)
            stats.append(torch.norm(m.running_mean - mu) + torch.norm(m.running_var - var))

        hs = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        try:
            ce += float(F.cross_entropy(net(x), y)) / len(nets)
        finally:
            for h in hs:
                h.remove()
        bn += float(sum(s * (first_bn if i == 0 else 1.0) for i, s in enumerate(stats))) / len(nets)
    return {"ce": round(ce, 5), "bn": round(bn, 5)}


def stub_modules(*names: str) -> List[str]:
    """Empty stand-ins for modules the official file imports but the path we run never uses (cv2, pandas,
    timm); returns the names that were really missing (to say so in the JSON)."""
    import importlib.util

    missing = [n for n in names if n not in sys.modules and importlib.util.find_spec(n) is None]
    for n in missing:
        sys.modules[n] = types.ModuleType(n)
    return missing


def on_cpu(randn: Optional[Callable[[], torch.Tensor]] = None):
    """A torch function mode turning every 'cuda' device argument of a torch call into 'cpu' (the official code's
    hard-coded `device='cuda'` / `.to('cuda')`); with `randn`, every torch.randn call is answered by randn()
    (an official start drawn inside its function, handed the shared start instead)."""
    from torch.overrides import TorchFunctionMode

    def cpu(d: Any) -> Any:
        if (isinstance(d, str) and d.startswith("cuda")) or (isinstance(d, torch.device) and d.type == "cuda"):
            return "cpu"
        return d

    class OnCpu(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if randn is not None and func is torch.randn:
                return randn()
            kwargs = {k: (cpu(v) if k == "device" else v) for k, v in (kwargs or {}).items()}
            return func(*(cpu(x) for x in args), **kwargs)

    return OnCpu()


class TorchProxy(types.SimpleNamespace):
    """A module's `torch` name, with `load` answered from a dict (path -> state dict) and everything else torch's:
    the official loaders read checkpoints we do not have; their `torch.load` returns our networks' weights."""

    def __init__(self, weights: Callable[[str], Dict[str, torch.Tensor]]) -> None:
        super().__init__()
        self._weights = weights

    def load(self, path: Any, *args: Any, **kwargs: Any) -> Dict[str, torch.Tensor]:
        return self._weights(str(path))

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


@contextmanager
def official_path(name: str, *sub: str) -> Iterator[Path]:
    """sys.path with the official checkout PARITY_PEERS/<name> (and its sub-folders `sub`) first."""
    repo = common.PEERS / name
    if not repo.is_dir():
        raise SystemExit(f"{repo} missing: bring the official code there first (bench/parity/README.md)")
    paths = [str(repo / s) for s in sub] + [str(repo)]
    sys.path[:0] = paths
    try:
        yield repo
    finally:
        for p in paths:
            sys.path.remove(p)


def document(what: str, official: str, edits: str, settings: Dict[str, Any], settings_text: str,
             run: Dict[str, Any], control: Dict[str, Any], seconds: Dict[str, float], argv: Sequence[str]
             ) -> Dict[str, Any]:
    """The results JSON of a recover-loop driver (render.py reads run/control's pass and pixel means)."""
    return {"what": what, "official": official, "edits": edits, "settings": settings, "settings_text": settings_text,
            "rule": f"pass = mean |ddkit - official| <= {FACTOR} x mean |official - official from a start nudged by "
                    f"{NUDGE}| (pixels in [0,1]); the control must fail it",
            "run": run, "control": control, "seconds": {k: round(v, 2) for k, v in seconds.items()},
            "command": "OMP_NUM_THREADS=1 PYTHONPATH=src python " + " ".join(argv),
            "git": common.revision(), "machine": common.lscpu(), "torch": torch.__version__,
            "written": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def write(path: Optional[str], doc: Dict[str, Any]) -> None:
    import json

    print(json.dumps({k: doc[k] for k in ("run", "control", "seconds")}, indent=1))
    if path:
        common.write_json(Path(path), doc)
        print(f"wrote {path}")


class SharedViews:
    """Views handed to both sides (cda_recover.py, dwa_recover.py): the n-th view of a run (one per Adam step, the
    same order on both sides) is a RandomResizedCrop box, a flip and a roll drawn by the driver from seeds of
    (seed, n) — not from either side's generator. The box is torchvision's own `RandomResizedCrop.get_params` run
    on a fork of torch's RNG seeded for n, with the lower scale bound the ASKING side computed at that step: so
    each side's own crop-scale schedule (CDA's curriculum) decides its boxes, and two sides with the same schedule
    get the same boxes. `scales` records the bound each side asked with (the schedule check)."""

    RATIO = (3 / 4, 4 / 3)

    def __init__(self, size: int, jitter: int, seed: int = 11) -> None:
        self.size, self.jitter, self.seed = size, jitter, seed
        self.scales: Dict[str, List[float]] = {"ddkit": [], "official": []}

    def _gen(self, n: int, what: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + 4 * n + what)

    def box(self, n: int, lo: float, side: str) -> Sequence[int]:
        """(top, left, height, width) of the n-th view at lower scale bound `lo`."""
        import torchvision.transforms as T

        self.scales[side].append(float(lo))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2 ** 62, (1,), generator=self._gen(n, 0))))
            return [int(v) for v in T.RandomResizedCrop.get_params(torch.empty(1, self.size, self.size),
                                                                    [float(lo), 1.0], list(self.RATIO))]

    def flip(self, n: int) -> bool:
        return bool(torch.rand(1, generator=self._gen(n, 1)) < 0.5)

    def roll(self, n: int) -> Sequence[int]:
        """(rows, columns) shift, each uniform in 0..jitter (random.randint's inclusive range)."""
        return [int(v) for v in torch.randint(0, self.jitter + 1, (2,), generator=self._gen(n, 2))]


@contextmanager
def ddkit_views(views: SharedViews) -> Iterator[None]:
    """ddkit's recover engine takes its views from `views`: `recover._draw_views` still runs (ddkit's own
    schedule computes the crop bound and builds its RandomResizedCrop), but that class is a stand-in whose box is
    views.box(n, its bound), and the drawn flip and roll are replaced by views.flip(n) / views.roll(n)."""
    import ddkit.methods.recover as R

    real_draw, real_rrc = R._draw_views, R.RandomResizedCrop
    n = [0]

    class Box:  # stands in for ddkit.augment.RandomResizedCrop inside _draw_views
        def __init__(self, size: Any, scale: Sequence[float] = (0.08, 1.0), **kw: Any) -> None:
            self.lo = scale[0]

        def sample(self, k: int, hw: Any, generator: Any = None, device: Any = None) -> Dict[str, torch.Tensor]:
            return {"box": torch.tensor([views.box(n[0], self.lo, "ddkit")], dtype=torch.float32)}

    def draw(gens: Sequence[torch.Generator], spec: Any, it: int, hw: Any) -> Dict[str, torch.Tensor]:
        if len(gens) != 1 or spec.one_view:
            raise ValueError("shared views are for one group per step")
        out = real_draw(gens, spec, it, hw)
        out["roll"] = torch.tensor([views.roll(n[0])])
        if "flip" in out:
            out["flip"] = torch.tensor([views.flip(n[0])])
        n[0] += 1
        return out

    R._draw_views, R.RandomResizedCrop = draw, Box
    try:
        yield
    finally:
        R._draw_views, R.RandomResizedCrop = real_draw, real_rrc


def official_views(views: SharedViews) -> Tuple[types.SimpleNamespace, types.SimpleNamespace]:
    """Stand-ins for an official module's `transforms` and `random` names taking their views from `views`:
    torchvision's RandomResizedCrop whose get_params returns views.box(n, the scale it was built with) (its own
    resized_crop then runs), a RandomHorizontalFlip flipping when views.flip(n), and a `random` whose randint(0,
    jitter) answers views.roll(n) in two calls; n counts the constructions (one per step) and the randint pairs."""
    import torchvision.transforms as T
    import torchvision.transforms.functional as TF

    made = {"crop": 0, "flip": 0, "randint": 0}

    class Crop(T.RandomResizedCrop):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.n, made["crop"] = made["crop"], made["crop"] + 1

        def get_params(self, img: Any, scale: Sequence[float], ratio: Sequence[float]):  # type: ignore[override]
            return views.box(self.n, scale[0], "official")

    class Flip(T.RandomHorizontalFlip):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.n, made["flip"] = made["flip"], made["flip"] + 1

        def forward(self, img: torch.Tensor) -> torch.Tensor:
            return TF.hflip(img) if views.flip(self.n) else img

    def randint(a: int, b: int) -> int:
        if (a, b) != (0, views.jitter):
            raise ValueError(f"randint({a}, {b}) is not the roll 0..{views.jitter}")
        k, made["randint"] = made["randint"], made["randint"] + 1
        return views.roll(k // 2)[k % 2]

    transforms = types.SimpleNamespace(Compose=T.Compose, Normalize=T.Normalize, RandomResizedCrop=Crop,
                                       RandomHorizontalFlip=Flip)
    return transforms, types.SimpleNamespace(randint=randint)


def schedule_check(views: SharedViews) -> Dict[str, Any]:
    """The crop bounds the two sides asked with, step by step (CDA's curriculum on each side)."""
    a, b = views.scales["ddkit"], views.scales["official"]
    if not a and not b:
        return {"steps": 0}
    diff = max(abs(x - y) for x, y in zip(a, b)) if len(a) == len(b) else float("inf")
    return {"steps": [len(a), len(b)], "max_abs_difference": diff, "ddkit_first_last": [a[0], a[-1]],
            "official_first_last": [b[0], b[-1]]}
