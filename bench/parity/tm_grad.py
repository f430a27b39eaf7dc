"""The pieces of the same-start gradient checks of the trajectory-matching methods (issue #27): mtt_grad.py
(MTT against GeorgeCazenavette/mtt-distillation) and datm_grad.py (DATM against NUS-HPC-AI-Lab/DATM).

Ours only: the shared draws both sides are served (Replay: the minibatch permutations, the start epochs, a fixed
expert order; DSADraws: the official run's augmentation draws, handed to ddkit's sampler), the optimiser-step
capture, the relative difference and the pass rule. The floor of the rule is the official code against itself
from a start nudged by NUDGE; ddkit passes when every compared quantity is within FACTOR x the floor's difference,
and a control (ddkit with one student step fewer) must be outside it. Nothing of the official code is here.
"""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

FACTOR = 1.5  # pass: relative difference ddkit-official <= FACTOR x official-vs-nudged-official
NUDGE = 1e-6  # the floor's start: every ZCA-space pixel of the official set moved by this
RULE = (f"per iteration, the relative L2 difference ‖x − x_official‖/‖x_official‖ of the gradients w.r.t. "
        f"the images and syn_lr, of the matching loss, and of the images after the last update; the floor is the "
        f"official code against itself from a start nudged by {NUDGE} (ZCA space); pass = every quantity of the "
        f"FIRST iteration (both sides in one state) <= {FACTOR} x the floor, and the control (ddkit with "
        f"syn_steps - 1) outside that; later iterations (states apart by the rounding of earlier updates, "
        f"amplified by the unrolls) are reported as later_iterations_within_floor, a drift measure")


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64 (b the reference); 0 when both are zero, inf when only b is."""
    a, b = a.double().flatten(), b.double().flatten()
    den = float(b.norm())
    num = float((a - b).norm())
    return num / den if den else (0.0 if num == 0 else float("inf"))


def compare_runs(run: Dict[str, List[torch.Tensor]], ref: Dict[str, List[torch.Tensor]]) -> Dict[str, List[float]]:
    """Per compared quantity (every grad_* the reference has, the loss), the relative difference of `run` to `ref`
    at every iteration both have, and of the images after the last update."""
    out = {}
    for q in sorted({k for k in ref if k.startswith("grad_")} | {"loss"}):
        out[q] = [rel_diff(x, y) for x, y in zip(run.get(q, []), ref.get(q, []))]
    # the set after the last update (the optimisers' momentum and syn_lr included when iterations > 0)
    out["final_images"] = [rel_diff(run["after_images"][-1], ref["after_images"][-1])] if "after_images" in run else []
    return out


def grad_verdict(ddkit: Dict[str, List[float]], floor: Dict[str, List[float]], control: Dict[str, List[float]],
                 factor: float = FACTOR) -> Dict[str, Any]:
    """The same-start verdict: ddkit passes when every quantity of the FIRST iteration (both sides in one state)
    is within `factor` x the floor's difference, and the control is outside it (a control inside voids the
    check). Later iterations start from states that already differ by the rounding of the earlier updates, which
    the unrolls amplify; they are judged apart (`later_iterations_within_floor`, every quantity at every
    iteration and the set after the last update), a drift measure, not the criterion."""
    def within(d: Dict[str, List[float]], first: bool) -> bool:
        return all(x <= factor * f for q in floor if not (first and q == "final_images")
                   for x, f in list(zip(d.get(q, []), floor[q]))[:1 if first else None])

    ok, ctl = within(ddkit, True), within(control, True)
    return {"pass": ok and not ctl, "ddkit_within_floor": ok, "control_within_floor": ctl, "factor": factor,
            "later_iterations_within_floor": within(ddkit, False)}


def refresh_verdicts(doc: Dict[str, Any]) -> None:
    """Re-derive every row's verdict from its stored differences (the rule lives here, the numbers in the file)."""
    for row in doc.get("rows", {}).values():
        d = row["relative_difference_to_official"]
        row["verdict"] = grad_verdict(d["ddkit"], d["floor_official_nudged_1e-6"], d["control_ddkit_syn_steps_minus_1"])


class Replay:
    """Hands both sides the same draws: the n-element permutations (the per-step minibatch order of an n-image
    set) in one fixed order, and the start epochs; counts what it served. `fixed` gives one permutation for
    another length, every time it is asked (e.g. the expert order); any other length is left to torch."""

    def __init__(self, n: int, perms: Sequence[torch.Tensor], starts: Sequence[int],
                 fixed: Optional[Dict[int, torch.Tensor]] = None) -> None:
        self.n, self.perms, self.starts = n, [p.clone() for p in perms], list(starts)
        self.fixed = dict(fixed or {})
        self.served = {"randperm": 0, "start_epoch": 0}
        self.bounds: List[List[int]] = []  # the [low, high) each side asked its start epoch from
        self._randperm = torch.randperm

    def randperm(self, n: int, *a: Any, **k: Any) -> torch.Tensor:
        if n != self.n:
            return self.fixed[n].clone() if n in self.fixed else self._randperm(n, *a, **k)
        p = self.perms[self.served["randperm"]].clone()
        self.served["randperm"] += 1
        return p

    def start(self, low: int, high: int) -> int:
        t = self.starts[self.served["start_epoch"]]
        if not low <= t < high:
            raise ValueError(f"replayed start epoch {t} outside the range [{low}, {high}) asked for")
        self.bounds.append([int(low), int(high)])
        self.served["start_epoch"] += 1
        return t

    def start_randint(self, caller: str = "methods/mtt.py") -> Any:
        """A torch.randint for ddkit's side: its start-epoch draw (the call from `caller`) is served, any other
        call (e.g. the augmentation sampler's) is torch's own."""
        randint = torch.randint

        def drawn(*a: Any, **k: Any) -> torch.Tensor:
            if not sys._getframe(1).f_code.co_filename.endswith(caller):
                return randint(*a, **k)
            low, high, size = a[:3]
            if tuple(size) != (1,):
                raise ValueError(f"a randint of size {tuple(size)} from {caller}: not the start epoch")
            return torch.tensor([self.start(low, high)])
        return drawn

    @contextlib.contextmanager
    def active(self) -> Iterator["Replay"]:
        torch.randperm = self.randperm
        try:
            yield self
        finally:
            torch.randperm = self._randperm


@contextlib.contextmanager
def capture_steps(record: Dict[str, List[torch.Tensor]], nudge: float = 0.0) -> Iterator[None]:
    """Wrap torch.optim.SGD: at each step, record every parameter's gradient and its value before and after the
    update (4-D: the images, 0-D: syn_lr, 2-D: DATM's label logits); with `nudge`, move a 4-D parameter by it
    when its optimiser is built."""
    sgd_step, sgd_init = torch.optim.SGD.step, torch.optim.SGD.__init__

    def init(self: Any, params: Any, *a: Any, **k: Any) -> None:
        params = list(params)
        if nudge:
            with torch.no_grad():
                for p in params:
                    if isinstance(p, torch.Tensor) and p.dim() == 4:
                        p.add_(nudge)
        sgd_init(self, params, *a, **k)

    def step(self: Any, *a: Any, **k: Any) -> Any:
        seen = []
        for group in self.param_groups:
            for p in group["params"]:
                name = {4: "images", 0: "syn_lr", 2: "labels"}.get(p.dim())
                if name and p.grad is not None:
                    record.setdefault(f"grad_{name}", []).append(p.grad.detach().clone())
                    record.setdefault(f"before_{name}", []).append(p.detach().clone())
                    seen.append((name, p))
        out = sgd_step(self, *a, **k)
        for name, p in seen:
            record.setdefault(f"after_{name}", []).append(p.detach().clone())
        return out

    torch.optim.SGD.step, torch.optim.SGD.__init__ = step, init
    try:
        yield
    finally:
        torch.optim.SGD.step, torch.optim.SGD.__init__ = sgd_step, sgd_init


def run_ddkit_replayed(run: Callable[[], Any], replay: "Replay", start: Tuple[Any, str, Any],
                       extra: Any = None) -> Dict[str, Any]:
    """ddkit's side of a gradient check: `run()` (the registered method, in-process) with every draw it makes
    served by `replay`, the start stand-in `start` = (owner, attribute, stand-in) in place (mtt's RealPool,
    datm's correct_init), LossLog.step recording each iteration's loss, and `extra` (a context) around it; all
    restored after. The record holds the captured steps (capture_steps), seconds, the draws served."""
    import time

    from ddkit.methods import matching_ops

    rec: Dict[str, Any] = {"loss": []}
    owner, name, stand_in = start
    log_step, before, randint = matching_ops.LossLog.step, getattr(owner, name), torch.randint

    def logged(self: Any, it: int, loss: float, *x: Any, **k: Any) -> None:
        rec["loss"].append(torch.tensor(loss))
        log_step(self, it, loss, *x, **k)

    matching_ops.LossLog.step, torch.randint = logged, replay.start_randint()
    setattr(owner, name, stand_in)
    t0 = time.monotonic()
    try:
        with replay.active(), capture_steps(rec), extra if extra is not None else contextlib.nullcontext():
            run()
    finally:
        matching_ops.LossLog.step, torch.randint = log_step, randint
        setattr(owner, name, before)
    rec["seconds"] = round(time.monotonic() - t0, 1)
    rec["served"], rec["start_bounds"] = dict(replay.served), list(replay.bounds)
    return rec


def summarise(rec: Dict[str, Any]) -> Dict[str, Any]:
    """The JSON-safe numbers of one run: loss and syn_lr per iteration, gradient norms, draws served, seconds."""
    return {"loss": [float(v) for v in rec.get("loss", [])],
            "syn_lr_before": [float(v) for v in rec.get("before_syn_lr", [])],
            "grad_syn_lr": [float(v) for v in rec.get("grad_syn_lr", [])],
            **{f"{k}_norm": [float(v.double().norm()) for v in rec[k]] for k in ("grad_images", "grad_labels")
               if k in rec},
            "served": rec.get("served"), "start_bounds": rec.get("start_bounds"), "seconds": rec.get("seconds")}


def _read(p: Path) -> Dict[str, Any]:
    return json.loads(p.read_text()) if p.is_file() else {}




class DSADraws:
    """The same augmentation draws on both sides. The official side's DiffAugment draws (torch.rand/torch.randint
    called from its utils file, `origin`) come from a generator of ours seeded `seed` (the official code reseeds
    torch from the clock at every iteration, so two of its runs would not draw alike) and are recorded in call
    order; ddkit's one-op-per-call sampler (augment.base.OneOf) then takes the op the official call chose and
    builds that op's parameters from the official raw draws through its own sample(), shapes aside. A ddkit op that
    asks for a different draw than the official one made (count, range) raises, so a misalignment cannot pass."""

    def __init__(self, origin: str, seed: int = 0) -> None:
        self.origin, self.seed = origin, seed
        self.draws: List[torch.Tensor] = []
        self.used = 0

    @contextlib.contextmanager
    def official(self) -> Iterator["DSADraws"]:
        rand, randint = torch.rand, torch.randint
        g = torch.Generator().manual_seed(self.seed)
        self.draws = []

        def wrap(fn: Any) -> Any:
            def drawn(*a: Any, **k: Any) -> torch.Tensor:
                if not sys._getframe(1).f_code.co_filename.endswith(self.origin):
                    return fn(*a, **k)
                out = fn(*a, **{**k, "generator": g})
                self.draws.append(out.detach().clone())
                return out
            return drawn

        torch.rand, torch.randint = wrap(rand), wrap(randint)
        try:
            yield self
        finally:
            torch.rand, torch.randint = rand, randint

    def _next(self, shape: Sequence[int], low: Optional[int] = None, high: Optional[int] = None) -> torch.Tensor:
        if self.used >= len(self.draws):
            raise ValueError("ddkit asked for more augmentation draws than the official run made")
        v = self.draws[self.used]
        self.used += 1
        n = 1
        for s in shape:
            n *= int(s)
        if v.numel() != n or (low is not None and not (int(v.min()) >= low and int(v.max()) < high)):
            raise ValueError(f"official draw {tuple(v.shape)} (range {float(v.min())}..{float(v.max())}) does not "
                             f"fit ddkit's request {tuple(shape)} [{low}, {high})")
        return v.reshape(tuple(shape)).clone()

    @contextlib.contextmanager
    def ddkit(self) -> Iterator["DSADraws"]:
        from ddkit.augment import base

        sample, draws = base.OneOf.sample, self
        self.used = 0

        def shape_of(a: Sequence[Any]) -> Sequence[int]:
            return tuple(a[0]) if len(a) == 1 and isinstance(a[0], (tuple, list, torch.Size)) else tuple(a)

        def replayed(self: Any, n: int, image_size: Any, *, generator: Any = None, device: Any = None) -> Any:
            out = sample(self, n, image_size, generator=generator, device=device)  # every op drawn, as ddkit does
            which = int(draws._next((1,), 0, len(self.ops))[0])
            rand, randint = torch.rand, torch.randint
            torch.rand = lambda *a, **k: draws._next(shape_of(a)).to(k.get("device") or "cpu")
            torch.randint = lambda low, high, size, **k: draws._next(size, low, high).to(k.get("device") or "cpu")
            try:
                chosen = self.ops[which].sample(n, image_size, generator=generator, device=device)
            finally:
                torch.rand, torch.randint = rand, randint
            out["which"] = torch.tensor([which])
            out.update({f"{which}.{k}": v for k, v in chosen.items()})
            return out

        base.OneOf.sample = replayed
        try:
            yield self
        finally:
            base.OneOf.sample = sample
