"""Which compute path the students of an evaluation train on: the machine's fast default, or `--exact`.

The default follows what the machine has (issue #30):
  * bf16 autocast where the hardware computes bf16 natively: on CPU the AVX512-BF16 or AMX-BF16 flags (and
    oneDNN's bf16 kernels), on CUDA the GPU's bf16 support. Its accuracy equals fp32's on the hard-truths
    protocol (docs/performance.md, bench/results/bf16_accuracy_hardtruths_cpu.json). Without native bf16,
    bf16 would be emulated and slower than fp32, so fp32 runs. Nor below `BF16_MIN_SIZE` px: on tiny images
    (the demo's 8-px digits) the casts cost more than the convolutions save (measured 0.86× the fp32 step);
  * torch.compile on CPU where inductor works (a C++ compiler on PATH, a Python dynamo supports) and the run
    is long enough to pay the first compile: `COMPILE_MIN_IMAGES` student images in this process (measured:
    bench/results/profile_student_*.json, docs/performance.md). On CUDA compile stays opt-in: neither its
    compile time nor its gain has been measured on a GPU.
`--exact` (EvalConfig.exact) is fp32 eager whatever else is set: the path of bit-identity checks and of the
golden tests. An explicit `--cpu-amp` / `--compile` true|false wins over the automatic choice; the environment
variable DDKIT_EXACT=1 turns the automatic choice (not an explicit flag) into the exact path, which the test
suite sets so its numbers do not depend on the CPU it runs on.

Bytes already differ between CPU kinds in fp32 (oneDNN picks other kernels), so a capability-dependent
default breaks no promise that held before; what it changes is recorded in every summary ("compute_path").
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from ddkit.utils import EXACT_ENV, auto_compile, bf16_unit, compiler, exact_requested  # noqa: F401 (re-exported)
#: compile on CPU only when the students of one evaluation see at least this many images in this process.
#: A cold first compile of the ConvNet-3 student (HL) cost 31 s of CPU, g++ included, on the 2-core Xeon, and
#: the compiled bf16 step saves 1.9 ms of CPU per image there, so it pays after ~16,000 images
#: (bench/results/profile_step_xeon_amx.json); 50,000 leaves a 3x margin (SL+KD also compiles its teacher).
#: A full-length IPC-10 evaluation (300 epochs x 100 images x 3 seeds = 90,000) compiles; IPC 1, the demo and the
#: tests do not.
COMPILE_MIN_IMAGES = 50_000
#: bf16 autocast on CPU only for images at least this many px wide. bf16 / fp32 step rate on the 2-core Xeon (AMX):
#: ConvNet-2 width 32 at 8 px 0.86x, at 16 px 1.03x; ConvNet-3 width 128 at 16 px 1.55x, at 32 px 1.81x
#: (bench/results/bf16_small_cpu.json, bench/results/profile_step_xeon_amx.json)
BF16_MIN_SIZE = 16


@dataclass(frozen=True)
class ComputePath:
    """What one evaluation's students run: bf16 autocast or not, compiled or not, and why."""

    bf16: bool          # CPU: cpu_amp (native bf16 autocast); CUDA: amp (bf16 autocast)
    compile: bool
    exact: bool         # the fp32-eager path asked for (--exact or DDKIT_EXACT)
    device: str
    why: str            # one line: which path and why

    @property
    def summary(self) -> str:
        """The line results.md and the console print."""
        return self.why

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def choose(cfg: Any, device: torch.device, images: int, image_size: int = 32, stacked: bool = False, *,
           bf16_probe: Optional[Callable[[torch.device], Optional[str]]] = None,
           compiler_probe: Optional[Callable[[], Tuple[Optional[str], str]]] = None) -> ComputePath:
    """The path for `cfg` (an EvalConfig: exact, cpu_amp, compile, amp) on `device`, for students that see
    `images` images of `image_size` px in this process (`stacked`: trained as one vmapped model, --stack, which is
    never compiled). Probes default to this machine's (tests pass fakes)."""
    bf16_probe = bf16_probe or bf16_unit
    compiler_probe = compiler_probe or compiler
    dev = device.type
    if cfg.exact:
        asked = [f"--{n} true" for n in ("cpu_amp", "compile") if getattr(cfg, n) is True]
        over = f", overriding {' and '.join(a.replace('_', '-') for a in asked)}" if asked else ""
        return ComputePath(False, False, True, dev, f"exact: fp32 eager (--exact{over})")
    auto_off = exact_requested()
    if auto_off and dev == "cpu" and cfg.cpu_amp is None and cfg.compile is None:
        return ComputePath(False, False, True, dev, f"exact: fp32 eager ({EXACT_ENV}=1)")
    why = []
    # bf16 -------------------------------------------------------------------------------------------------
    if dev == "cuda":
        bf16 = bool(cfg.amp) and bf16_probe(device) is not None
        why.append("bf16 autocast (cuda)" if bf16 else "fp32 (--amp false)" if not cfg.amp else
                   "fp32 (this GPU has no bf16)")
    elif cfg.cpu_amp is not None:
        unit = bf16_probe(device) if dev == "cpu" else None
        bf16 = bool(cfg.cpu_amp) and unit is not None
        why.append(f"bf16 autocast ({unit}, --cpu-amp true)" if bf16 else
                   "fp32 (--cpu-amp false)" if not cfg.cpu_amp else "fp32 (--cpu-amp true, but no native bf16 here)")
    elif auto_off:
        bf16 = False
        why.append(f"fp32 ({EXACT_ENV}=1)")
    else:
        unit = bf16_probe(device) if dev == "cpu" else None
        bf16 = unit is not None and image_size >= BF16_MIN_SIZE
        cap = torch.backends.cpu.get_cpu_capability() if dev == "cpu" else dev
        why.append(f"bf16 autocast ({unit})" if bf16 else f"fp32 (no native bf16: {cap})" if unit is None else
                   f"fp32 ({image_size}-px images < {BF16_MIN_SIZE}: bf16's casts cost more than they save)")
    # compile ----------------------------------------------------------------------------------------------
    if cfg.compile is not None:
        comp = bool(cfg.compile)
        why.append(f"{'' if comp else 'no '}compile (--compile {str(comp).lower()})")
    elif auto_off:
        comp = False
        why.append("eager")
    elif stacked:
        comp = False
        why.append("eager (--stack: the vmapped students are not compiled)")
    else:
        comp, reason = auto_compile(device, images, COMPILE_MIN_IMAGES, "student images", compiler_probe)
        why.append(reason)
    fast = bf16 or comp
    line = ("fast path: " if fast else "") + " + ".join(why) + ("; --exact for fp32 eager" if fast else "")
    return ComputePath(bf16, comp, False, dev, line)
