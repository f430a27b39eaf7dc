"""Small shared helpers: devices, seeds, autocast, environment facts, atomic outputs."""
from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch


#: why each device get_device gave was chosen ("cpu" -> "--device auto: …"), for the run's line and its records
_DEVICE_NOTES: Dict[str, str] = {}


def cuda_unusable() -> Optional[str]:
    """None when CUDA can be used; otherwise why not, in a few words (what `--device auto` tells the user)."""
    import warnings

    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return f"this torch build ({torch.__version__}) has no CUDA"
    with warnings.catch_warnings(record=True) as caught:  # an old driver warns and answers False
        warnings.simplefilter("always")
        ok = torch.cuda.is_available()
    if ok:
        return None
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in ("", "-1"):
        return f"CUDA_VISIBLE_DEVICES={hidden!r} hides every GPU"
    if caught:
        return "CUDA is unusable: " + " ".join(str(caught[0].message).split())[:200]
    return "no CUDA device was found"


def rank_cuda_device() -> torch.device:
    """This process's GPU: cuda:(LOCAL_RANK mod the visible GPUs). One GPU per local rank on a node, and cuda:0
    for every rank when the launcher shows each process only its own GPU (SLURM --gpus-per-task=1)."""
    local = int(os.environ.get("LOCAL_RANK", 0))
    return torch.device("cuda", local % max(1, torch.cuda.device_count()))


def get_device(name: Optional[str] = None) -> torch.device:
    """'auto'/None -> this rank's GPU if CUDA is usable, else the CPU (the reason kept for `device_note`);
    otherwise torch.device(name) with a clear error."""
    if name in (None, "", "auto"):
        reason = cuda_unusable()
        if reason is not None:
            dev = torch.device("cpu")
            _DEVICE_NOTES[str(dev)] = f"--device auto fell back to the CPU: {reason}"
            return dev
        dev = rank_cuda_device()
        _DEVICE_NOTES[str(dev)] = f"--device auto: {torch.cuda.get_device_name(dev)}"
        return dev
    dev = torch.device(name)
    if dev.type == "cuda":
        reason = cuda_unusable()
        if reason is not None:
            raise RuntimeError(f"device {name!r} requested but {reason}; use --device cpu")
    _DEVICE_NOTES.pop(str(dev), None)  # asked for by name: nothing to explain
    return dev


def device_note(device: Any) -> str:
    """One line: the device a run uses and why (an `auto` that fell back to the CPU says what CUDA lacked)."""
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    note = _DEVICE_NOTES.get(str(dev))
    return f"device {dev}" + (f" ({note})" if note else "")


def derive_seed(seed: int, *keys: Any) -> int:
    """A stable 63-bit seed from (seed, *keys): per-class seeds independent of batching and rank."""
    h = hashlib.sha256(repr((int(seed),) + tuple(keys)).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def make_generator(seed: int, *keys: Any, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator seeded with derive_seed(seed, *keys); explicit generators keep stages independent."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, *keys))
    return g


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (global RNGs), for code we do not control."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def stage(name: str) -> contextlib.AbstractContextManager:
    """A torch.profiler label while a profiler runs (bench/profile_steps.py); otherwise a bare
    nullcontext, so a hot loop pays ≈ 0.1 µs per label instead of record_function's ≈ 4 µs."""
    return torch.profiler.record_function(name) if torch.autograd._profiler_enabled() else contextlib.nullcontext()


_CPU_BF16: Optional[bool] = None
#: the /proc/cpuinfo flags that mean the CPU computes bf16 in hardware, the faster unit first
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags() -> frozenset:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is no such file)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


#: ONEDNN_MAX_CPU_ISA values below oneDNN's bf16 kernels (avx512_core_bf16 and up): with one of them set, bf16
#: would run emulated even on a CPU that has the flags
_ONEDNN_NO_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI")


def cpu_bf16_native() -> bool:
    """True when this CPU computes bf16 in hardware (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo), oneDNN has bf16
    kernels and ONEDNN_MAX_CPU_ISA does not cap oneDNN below them (as an AVX2 emulation run sets it). Without
    them bf16 is emulated and slower than fp32 (checked once, cached)."""
    global _CPU_BF16
    if _CPU_BF16 is None:
        mkldnn = bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
        capped = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper() in _ONEDNN_NO_BF16
        _CPU_BF16 = mkldnn and not capped and bool(cpu_flags() & set(BF16_FLAGS))
    return _CPU_BF16


def bf16_unit(device: torch.device) -> Optional[str]:
    """The hardware bf16 of `device` in words ('amx_bf16', 'avx512_bf16', 'cuda bf16'), or None without it."""
    if device.type == "cuda":
        return "cuda bf16" if torch.cuda.is_bf16_supported() else None
    if device.type != "cpu" or not cpu_bf16_native():
        return None
    return next((f for f in BF16_FLAGS if f in cpu_flags()), None)


def compiler() -> Tuple[Optional[str], str]:
    """('inductor + g++', '') where torch.compile can build CPU kernels here, else (None, why not)."""
    cxx = os.environ.get("CXX") or next((c for c in ("g++", "c++", "clang++") if shutil.which(c)), None)
    if cxx is None or shutil.which(cxx) is None:
        return None, "no C++ compiler on PATH (inductor's CPU kernels need one)"
    if sys.platform == "win32":
        return None, "torch.compile's CPU backend is not used on Windows"
    try:  # imported only here: dynamo costs seconds of startup that a short run never needs
        import torch._dynamo  # noqa: F401

        if not torch._dynamo.is_dynamo_supported():
            return None, f"torch.compile does not support Python {sys.version.split()[0]}"
    except Exception as e:  # an unusual build: no dynamo at all
        return None, f"torch.compile unavailable ({type(e).__name__})"
    return f"inductor + {os.path.basename(cxx)}", ""


#: environment variable that makes every automatic compute-path choice (the evaluator's students, DM's real batch)
#: the exact one: fp32 eager. tests/conftest.py sets it so the suite's numbers do not depend on the CPU.
EXACT_ENV = "DDKIT_EXACT"


def exact_requested() -> bool:
    """Whether DDKIT_EXACT asks the automatic compute-path choices for fp32 eager."""
    return os.environ.get(EXACT_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def auto_compile(device: torch.device, images: int, threshold: int, what: str,
                 probe: Optional[Callable[[], Tuple[Optional[str], str]]] = None) -> Tuple[bool, str]:
    """The automatic compile rule shared by the evaluator and the matching methods: on CPU only (unmeasured on a
    GPU), only when the run pushes at least `threshold` images (`what`: their name in the reason) through the
    compiled graph so that the first compile pays for itself, and only where inductor can build kernels
    (`probe`, default `compiler`). Returns (compile?, the reason in words)."""
    if device.type != "cpu":
        return False, f"eager (compile is opt-in on {device.type}: --compile true)"
    if images < threshold:
        return False, f"eager ({images:,} {what} < {threshold:,}: too few to pay the first compile)"
    name, reason = (probe or compiler)()
    return (True, f"compile ({name}, {images:,} {what})") if name is not None else (False, f"eager ({reason})")


def inductor_cache_dir() -> str:
    """Where torch.compile keeps its kernels for this CPU: `TORCHINDUCTOR_CACHE_DIR` when the user set it to a
    folder of their own, else inductor's default folder with one subfolder per CPU kind (ATen's capability,
    ONEDNN_MAX_CPU_ISA, a hash of the CPU flags), written into the environment, where inductor reads it at each
    compile. (Importing torch._dynamo writes inductor's default folder into the environment: that value is not
    taken for the user's choice.)

    Why: inductor's on-disk cache does not key its CPU kernels on ATen's capability. Measured on the AVX-512 Xeon
    (torch 2.14.1): a ConvNet-3 compiled once natively and then under ATEN_CPU_CAPABILITY=avx2 reused the AVX-512
    kernel and returned outputs off by 0.79 (NaN for a functional_call graph); the reverse order crashed the
    native process (`malloc(): unaligned tcache chunk detected`). A cache shared between unlike CPUs (a cluster's
    shared /tmp, an image moved to another VM) would do the same.
    """
    import getpass

    try:
        user = getpass.getuser()
    except Exception:  # no user name (some containers): inductor's own fallback is similar
        user = str(os.getuid()) if hasattr(os, "getuid") else "user"
    base = os.path.join(tempfile.gettempdir(), f"torchinductor_{user}")
    try:  # inductor's own default (importing torch._dynamo writes it into the environment)
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
        base = default_cache_dir()
    except Exception:
        pass
    set_dir = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if set_dir and os.path.abspath(set_dir) != os.path.abspath(base) and not _is_ours(set_dir, base):
        return set_dir  # the user's choice
    kind = [torch.backends.cpu.get_cpu_capability(), os.environ.get("ONEDNN_MAX_CPU_ISA", "")]
    kind.append(hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:8])
    path = os.path.join(base, "ddkit-" + "-".join(k for k in kind if k))
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    return path


def _is_ours(path: str, base: str) -> bool:
    """A folder `inductor_cache_dir` chose earlier in this process (recomputed, never trusted as the user's)."""
    return os.path.dirname(os.path.abspath(path)) == os.path.abspath(base) and os.path.basename(path).startswith("ddkit-")


def compiled(fn: Any, **kwargs: Any) -> Any:
    """torch.compile(fn, **kwargs) with the kernel cache kept per CPU kind (`inductor_cache_dir`): every compile
    in ddkit goes through here."""
    inductor_cache_dir()
    return torch.compile(fn, **kwargs)


def autocast(device: torch.device, enabled: bool = True, cpu: bool = False) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (no GradScaler needed). On CPU only when asked (`cpu=True`) and the CPU has
    native bf16 (`cpu_bf16_native`); otherwise a no-op, since emulated bf16 is slower than fp32."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if cpu and device.type == "cpu" and cpu_bf16_native():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory (MiB) on CUDA; peak resident set size of the process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except Exception:  # pragma: no cover - non-POSIX
        return float("nan")


def git_revision(path: Optional[Path] = None) -> str:
    """The git revision of the ddkit checkout (with '+dirty'), or 'unknown' outside a checkout."""
    root = Path(path) if path else Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev.stdout.strip() + ("+dirty" if dirty else "")
    except Exception:
        return "unknown"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo, else platform.processor()); speed claims name the CPU they ran on."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_info(device: Optional[torch.device] = None) -> Dict[str, Any]:
    """Facts to store beside every result: host, CPU model and kernel capability, CPU count, torch, CUDA device."""
    info: Dict[str, Any] = {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
        info["gpu"] = torch.cuda.get_device_name(device if device is not None and device.type == "cuda" else 0)
    if device is not None:  # which device ran, and why (`--device auto` on a host whose CUDA is unusable)
        info["device"] = device_note(device)
    return info


def _umask_modes(root: Path) -> None:
    """Give a finished output the user's umask modes: mkdtemp makes 0700 and safetensors writes 0600."""
    mask = os.umask(0)
    os.umask(mask)
    for dirpath, _, files in os.walk(root):
        os.chmod(dirpath, 0o777 & ~mask)
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o666 & ~mask)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (a process of another user counts as alive)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_orphans(out: str | Path) -> List[Path]:
    """Delete the temporaries a killed writer left beside `out` (`.<name>.tmp-<pid>-*`, `.<name>.old-<pid>`).

    Only those whose writer process is gone: a concurrent writer's folder is left alone. Returns what
    was removed.
    """
    out = Path(out)
    gone = []
    for p in list(out.parent.glob(f".{out.name}.tmp-*")) + list(out.parent.glob(f".{out.name}.old-*")):
        tail = p.name[len(out.name) + 2:].split("-")  # ["tmp" | "old", pid, ...]
        if len(tail) < 2 or not tail[1].isdigit() or pid_alive(int(tail[1])):
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        gone.append(p)
    return gone


@contextlib.contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Write a folder atomically: yield a temporary sibling, then rename it onto `out`.

    An existing `out` is refused unless overwrite=True; on error nothing is left behind and an
    existing output stays untouched.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"output {out} exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(out)  # a killed earlier run's temporary folder would otherwise stay forever
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        yield tmp
        _umask_modes(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        # An --overwrite onto a *file* (#25): rmtree ignores files, which left NAME.old-PID behind.
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() and not old.is_symlink() else old.unlink(missing_ok=True)
    else:
        os.replace(tmp, out)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file via a temporary name + rename so readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:  # a full disk (ENOSPC) or any other failure: no half-written temporary stays visible
        tmp.unlink(missing_ok=True)
        raise


class DDKitError(RuntimeError):
    """A user-facing error: the CLI prints its message as one line and exits non-zero."""
