"""Host synchronisations and kernels per student step: what a GPU would wait for in one `StudentTrainer.step()`.

A CUDA step runs ahead of the host until something makes the host wait: a host→device copy of data the host
just made (a parameter drawn on the CPU generator, a `torch.tensor(list, device=…)`), or a device→host read
(`.item()`, `float(t)`, `.tolist()`, `.cpu()`). `SyncCounter` counts both on ANY machine, the CPU included, by
following where each tensor lives as it would on a GPU run:

* host tensors: made by a CPU generator (`torch.rand(…, generator=cpu_gen)`), from Python data (`torch.tensor`
  without a device), or by a factory without a device; an op whose inputs are host tensors (and no non-empty
  device tensor) makes a host tensor;
* device tensors: everything made before counting starts (the set, the model) or by a factory given the step's
  device as a `torch.device`; an op with a device input makes a device tensor;
* an H2D copy is `.to(…)`/`.cuda()` of a host tensor onto the step's device, or `torch.tensor(data, device=…)`;
  a D2H read is `.item()`/`.tolist()`/`.cpu()`/`.numpy()`/`float()`/`int()`/`bool()` of a device tensor.
Calls made inside torch are not counted (its own bookkeeping, such as AdamW's host-side step counter, is not a
data-path sync). Each count keeps its call site (file:line) so a regression says where it is.

Kernels: the number of aten ops per step on CPU (torch.profiler), and on CUDA the number of device kernels.

    OMP_NUM_THREADS=1 python bench/step_syncs.py --device cpu --steps 20 --out bench/results/step_syncs_cpu.json
    python bench/step_syncs.py --device cuda --steps 50 --out bench/results/step_syncs_cuda.json
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
_TAG = "_bench_host"
_TORCH_DIR = str(Path(torch.__file__).resolve().parent) + os.sep
_READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.__float__,
          torch.Tensor.__int__, torch.Tensor.__bool__, torch.Tensor.__index__}
_MOVES = {torch.Tensor.to, torch.Tensor.cuda}
_RANDOM = {torch.rand, torch.randint, torch.randperm, torch.randn, torch.bernoulli, torch.multinomial,
           torch.normal, torch.Tensor.uniform_, torch.Tensor.random_, torch.Tensor.normal_}
_FROM_DATA = {torch.tensor, torch.as_tensor}


def _is_host(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and bool(getattr(t, _TAG, False))


def _tag(out: Any, host: bool) -> None:
    for t in tree_flatten(out)[0]:
        if isinstance(t, torch.Tensor):
            try:
                setattr(t, _TAG, host)
            except (AttributeError, RuntimeError):  # a tensor type without a __dict__
                pass


def _target(args: tuple, kwargs: dict) -> Optional[Any]:
    """The device a `.to(...)` call names (None: a dtype-only call)."""
    if "device" in kwargs:
        return kwargs["device"]
    for a in args[1:]:
        if isinstance(a, (torch.device, str)):
            return a
        if isinstance(a, torch.Tensor):
            return a.device
    return None


class SyncCounter(TorchFunctionMode):
    """Count H2D copies and D2H reads per call site while active (see the module docstring)."""

    def __init__(self, device: torch.device | str) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.h2d: collections.Counter = collections.Counter()
        self.d2h: collections.Counter = collections.Counter()

    def _site(self) -> Optional[str]:
        """file:line of the code that made this call; None when torch itself made it (optimizer bookkeeping)."""
        f = sys._getframe(1)
        while f is not None and f.f_code.co_filename == __file__:
            f = f.f_back
        if f is None or f.f_code.co_filename.startswith(_TORCH_DIR):
            return None
        return f"{Path(f.f_code.co_filename).name}:{f.f_lineno}"

    def _on_device(self, d: Any) -> bool:
        return isinstance(d, torch.device) and d.type == self.device.type

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if func in _READS:
            if tensors and not _is_host(tensors[0]):
                site = self._site()
                if site:
                    self.d2h[site] += 1
            return func(*args, **kwargs)
        if func in _MOVES and tensors and _is_host(tensors[0]):
            dev = _target(args, kwargs) if func is torch.Tensor.to else torch.device("cuda")
            if dev is not None and self._on_device(torch.device(dev) if isinstance(dev, str) and dev != "cpu"
                                                   else dev):
                site = self._site()
                if site:
                    self.h2d[site] += 1
                out = func(*args, **kwargs)
                if out is tensors[0]:  # a no-op on the CPU: a fresh tensor, so the host one keeps its tag
                    out = out.clone()
                _tag(out, False)
                return out
        out = func(*args, **kwargs)
        if func in _FROM_DATA:
            dev = kwargs.get("device")
            on_dev = self._on_device(dev) or (dev is None and tensors and not _is_host(tensors[0]))
            if on_dev and not tensors:
                site = self._site()
                if site:
                    self.h2d[site] += 1
            _tag(out, not on_dev)
        elif func in _RANDOM and isinstance(kwargs.get("generator"), torch.Generator):
            _tag(out, kwargs["generator"].device.type == "cpu")
        elif not tensors:  # a factory: on the host unless it was given the step's device
            _tag(out, not self._on_device(kwargs.get("device")))
        else:
            host = any(_is_host(t) for t in tensors)
            device_in = any(not _is_host(t) and t.dim() > 0 and t.numel() > 0 for t in tensors)
            _tag(out, host and not device_in)
        return out

    def per_step(self, steps: int) -> Dict[str, Any]:
        return {"h2d_per_step": sum(self.h2d.values()) / steps, "d2h_per_step": sum(self.d2h.values()) / steps,
                "h2d_sites": dict(self.h2d), "d2h_sites": dict(self.d2h)}


def cim_trainer(device: torch.device, draw_ahead: int, ipc: int = 10, classes: int = 10, size: int = 32,
                regime: str = "hl", seed: int = 0):
    """A default `cim` student step as `ddkit evaluate` builds it: a ConvNet-3 on an IPC-`ipc` set at `size` px
    (random pixels: only the data path matters), FactorCrop(2) → normalise → per-sample DSA chain → loss → AdamW."""
    from ddkit.evaluate import EvalConfig, make_criterion, make_plan, resolve_recipe
    from ddkit.evaluate.losses import LOSSES
    from ddkit.evaluate.student import StudentTrainer, Targets, Views
    from ddkit.models import create_model
    from ddkit.utils import make_generator

    n = ipc * classes
    recipe = resolve_recipe(EvalConfig(recipe="cim", regime=regime), n_images=n, num_classes=classes, ipc=ipc,
                            image_size=size, set_factor=2)  # a LIC/RDED 2×2 mosaic set: FactorCrop(2)
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(n, 3, size, size, generator=g) * 255).to(torch.uint8).to(device)
    labels = torch.arange(classes).repeat_interleave(ipc).to(device)
    plan = make_plan(recipe, n)
    spec = LOSSES.get({"hl": recipe.hl_loss, "sl": recipe.sl_loss, "slkd": recipe.slkd_loss}[regime])
    crit = make_criterion(spec.name, temperature=recipe.temperature)
    targets = Targets(regime, classes, spec, recipe.temperature)
    torch.manual_seed(seed)
    net = create_model("convnet-d3", num_classes=classes, image_size=size).to(device)
    import inspect

    # A ddkit from before draw-ahead (run this script with PYTHONPATH=<old checkout>/src) has no such option.
    ahead = {"draw_ahead": draw_ahead} if "draw_ahead" in inspect.signature(StudentTrainer).parameters else {}
    return StudentTrainer(net, images, labels, recipe, plan, Views(recipe, size, MEAN, STD), targets, crit,
                          device=device, order_gen=make_generator(seed, "order"), aug_gen=make_generator(seed, "aug"),
                          **ahead)


def count_syncs(trainer, steps: int, warmup: Optional[int] = None) -> Dict[str, Any]:
    """H2D copies and D2H reads per step over `steps` steps, after `warmup` uncounted ones (default: one full
    draw-ahead buffer, at least 2: the constants are made once and every counted step's params were drawn while
    the counter watched — a tensor made before counting is taken for a device tensor)."""
    ahead = getattr(trainer, "ahead", None)
    warmup = max(2, ahead.steps if ahead is not None else 0) if warmup is None else warmup
    for _ in range(warmup):
        trainer.step()
    with SyncCounter(trainer.device) as c:
        for _ in range(steps):
            trainer.step()
    return c.per_step(steps)


def count_kernels(trainer, steps: int) -> Dict[str, float]:
    """aten ops per step (CPU) and device kernels per step (CUDA), from one profiler run."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if trainer.device.type == "cuda" else [])
    trainer.step()
    with profile(activities=acts) as prof:
        for _ in range(steps):
            trainer.step()
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
    events = prof.events()
    aten = sum(1 for e in events if e.name.startswith("aten::"))
    kernels = sum(1 for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA)
    return {"aten_ops_per_step": aten / steps, "cuda_kernels_per_step": kernels / steps}


def _machine() -> Dict[str, Any]:
    from ddkit.utils import machine_info

    info = machine_info()
    try:
        info["lscpu"] = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if ":" in line)
            if k.strip() in ("Model name", "Flags", "CPU(s)")}
    except OSError:
        pass
    return info


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the JSON here (bench/results/…)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    rows = {}
    for name, ahead in (("per_step_draws", 0), ("draw_ahead_32", 32)):
        rows[name] = {**count_syncs(cim_trainer(dev, ahead), a.steps),
                      **count_kernels(cim_trainer(dev, ahead), a.steps)}
    import ddkit
    from ddkit.utils import git_revision

    rev = f"{git_revision()} ({Path(ddkit.__file__).parent})"  # the ddkit measured (PYTHONPATH may name another)
    out = {"command": "python " + " ".join(["bench/step_syncs.py", *(argv if argv is not None else sys.argv[1:])]),
           "git_revision": rev, "machine": _machine(), "device": str(dev), "steps": a.steps,
           "workload": "default cim student step, HL: ConvNet-3, IPC 10 × 10 classes, 32 px, batch by CIM's rule",
           "results": rows}
    text = json.dumps(out, indent=1)
    print(json.dumps(rows, indent=1))
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
