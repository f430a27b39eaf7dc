"""A fast path for the matching family's real-batch embeddings (issue #30): compiled on CPU when the run is long.

DM spends nearly all its time embedding the real batch (256 images per class per iteration) through a fresh random
ConvNet, without gradient. In eager mode on CPU a third of that time is not the convolutions but the memory passes
between them (instance norm, ReLU and above all NCHW average pooling: 24 % of a DM iteration on the 2-core Xeon,
bench/results/dm_fast_embed_cpu.json). torch.compile fuses those passes. The network is new every iteration, so the
embedding is compiled once as a function of (parameters, images) of one template network
(`torch.func.functional_call`) and every fresh network's parameters go through the same compiled graph.

The path is chosen like the evaluator's students (evaluate/fastpath.py; the shared rules live in ddkit.utils, since
a method never reads evaluation code):
  * `exact` (or DDKIT_EXACT=1 for the automatic choice) is fp32 eager, the code as it was: bit-identity checks and
    the golden tests;
  * otherwise an eager CPU run feeds the real batch channels-last (NHWC), which oneDNN convolves without layout
    reorders (EmbedPath.channels_last);
  * compile by default on CPU where inductor works and the run embeds at least `COMPILE_MIN_IMAGES` real images in
    this process (the first compile must pay for itself); networks with BatchNorm stay eager (their running
    statistics are module state the functional form would have to thread through);
  * bf16 autocast only when asked (`cpu_amp` true) and the CPU computes bf16 natively: its effect on a distilled
    set is not measured enough to be a default.
The synthetic side (ipc images, with gradient) always runs eager: it is a few percent of the work.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn

from ddkit.models.features import penultimate
from ddkit.utils import EXACT_ENV, auto_compile, bf16_unit, compiled, compiler, exact_requested  # noqa: F401
#: compile only when this process embeds at least this many real images. The cold compile of the ConvNet-3
#: embedding cost 10-18 s on the 2-core Xeon, and a compiled DM iteration (2,560 real images) took 2.95 CPU s against
#: 3.75 eager (bench/results/matching_speed_dm_compile_cpu.json): ~0.3 ms saved per 32-px image, so it pays after
#: ~35,000-60,000 images; 100,000 leaves about a 2x margin. DM's paper setting (20,001 iterations x 256 images per
#: class) compiles; its CPU preset (101 x 32) and the tests do not.
COMPILE_MIN_IMAGES = 100_000


@dataclass(frozen=True)
class EmbedPath:
    """How the real batches are embedded: compiled or eager, bf16 or fp32, and why (one line for meta)."""

    compile: bool
    bf16: bool
    why: str
    #: eager only: the real batch goes in channels-last (NHWC). oneDNN's convolutions and the pooling between them
    #: take NHWC without the layout reorders NCHW costs: ~1.25x on a no-grad ConvNet-3 embedding of 256 images on
    #: the Xeon, natively and with AVX2 kernels forced (a one-off check, docs/performance.md); a whole DM iteration
    #: at 64 real images per class ~8 % (bench/results/matching_speed_dm_b64_nhwc_cpu.json). Equal up to fp32
    #: rounding (the sums run in another order), so not on the exact path. A compiled graph picks its own layout.
    channels_last: bool = False


#: fp32 eager, the code as it was: what a caller that chose nothing gets
EXACT_EMBED = EmbedPath(False, False, "exact: fp32 eager")


def choose(exact: bool, compile_opt: Optional[bool], cpu_amp: Optional[bool], device: torch.device, images: int,
           has_bn: bool, *, bf16_probe: Optional[Callable[[torch.device], Optional[str]]] = None,
           compiler_probe: Optional[Callable[[], Tuple[Optional[str], str]]] = None) -> EmbedPath:
    """The path for a run that embeds `images` real images on `device` (probes default to this machine's)."""
    bf16_probe = bf16_probe or bf16_unit
    compiler_probe = compiler_probe or compiler
    if exact:
        return EmbedPath(False, False, "exact: fp32 eager (--exact)")
    auto_off = exact_requested()
    unit = bf16_probe(device) if device.type == "cpu" else None
    bf16 = bool(cpu_amp) and unit is not None
    amp_why = (f"bf16 autocast ({unit}, --cpu-amp true)" if bf16 else
               "fp32 (--cpu-amp true, but no native bf16 here)" if cpu_amp else "fp32")
    if compile_opt is not None:
        comp = bool(compile_opt) and not has_bn
        why = ("compile (--compile true)" if comp else "eager (--compile false)" if not compile_opt else
               "eager (a BatchNorm network: --compile is not used)")
    elif auto_off:
        comp, why = False, f"eager ({EXACT_ENV}=1)"
    elif has_bn and device.type == "cpu":
        comp, why = False, "eager (a BatchNorm network: running statistics stay module state)"
    else:
        comp, why = auto_compile(device, images, COMPILE_MIN_IMAGES, "real images", compiler_probe)
    # channels-last input for an eager CPU run the user did not pin to the exact path (DDKIT_EXACT=1 pins it too)
    nhwc = not comp and device.type == "cpu" and not auto_off
    fast = comp or bf16 or nhwc
    return EmbedPath(comp, bf16, ("fast path: " if fast else "") + f"{amp_why} + {why}" +
                     (" + channels-last input" if nhwc else "") + ("; --exact for fp32 eager" if fast else ""),
                     channels_last=nhwc)


class _Embedding(nn.Module):
    """`penultimate(net, x)` as a module, so that functional_call can swap in another network's parameters."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return penultimate(self.net, x)


class RealEmbedder:
    """No-grad embeddings of real batches through fresh networks of one architecture, on the chosen path."""

    def __init__(self, path: EmbedPath) -> None:
        self.path = path
        self._template: Optional[_Embedding] = None
        self._fn: Optional[Callable[[Dict[str, torch.Tensor], torch.Tensor], torch.Tensor]] = None

    def _compiled(self, net: nn.Module) -> Callable[[Dict[str, torch.Tensor], torch.Tensor], torch.Tensor]:
        if self._fn is None:
            # a copy of the first network is the template: its structure is compiled, its own tensors are never
            # used (were they the first call's tensors, dynamo would guard on that identity and compile twice)
            self._template = _Embedding(copy.deepcopy(net))
            template = self._template
            self._fn = compiled(lambda state, x: torch.func.functional_call(template, state, (x,)), dynamic=False)
        return self._fn

    def __call__(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """fp32 features of `x` (no gradient)."""
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.path.bf16):
            if not self.path.compile:
                if self.path.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                return penultimate(net, x).float()
            state: Dict[str, Any] = {f"net.{k}": v for k, v in net.named_parameters()}
            state.update({f"net.{k}": v for k, v in net.named_buffers()})
            return self._compiled(net)(state, x).float()
