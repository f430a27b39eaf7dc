"""Reading an expert buffer for distillation (MTT/DATM): the checks that refuse a buffer that does not fit,
and trajectories read one file at a time. The folder layout is described in ddkit.teachers.experts."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from ddkit.augment.zca import ZCA, Space
from ddkit.data.base import ImageDataset
from ddkit.data.facts import working_stats
from ddkit.loaders import check_safetensors, read_json_keys, read_safetensors, safetensors_metadata
from ddkit.models import resolve_model_name
from ddkit.utils import DDKitError

FORMAT = "ddkit-expert-buffer"


class ExpertBuffer:
    """The finished experts of a buffer folder; trajectories are read one file at a time (cached)."""

    def __init__(self, path: Path, header: Dict[str, Any], files: List[Path], space: Space) -> None:
        self.path, self.header, self.files, self.space = path, header, files, space
        self._cache: Tuple[int, Optional[torch.Tensor]] = (-1, None)

    @property
    def num_experts(self) -> int:
        return len(self.files)

    @property
    def epochs(self) -> int:
        return int(self.header["config"]["epochs"])

    @property
    def lr(self) -> float:
        return float(self.header["config"]["lr"])

    def trajectory(self, i: int) -> torch.Tensor:
        """(epochs+1)×P float32 parameters of expert `i` (index into the finished files)."""
        if self._cache[0] != i:
            t = read_safetensors(self.files[i], "expert file").get("trajectory")
            shape = (self.epochs + 1, int(self.header["num_params"]))
            if t is None or tuple(t.shape) != shape or not t.is_floating_point():
                found = "no 'trajectory'" if t is None else f"{t.dtype} {tuple(t.shape)}"
                raise DDKitError(f"expert file {self.files[i]} holds {found}, expected float "
                                 f"{shape[0]}×{shape[1]}; delete it and rerun `ddkit experts train` (it resumes)")
            if not bool(torch.isfinite(t).all()):
                raise DDKitError(f"expert file {self.files[i]} holds NaN or Inf parameters; delete it and rerun "
                                 f"`ddkit experts train` (it resumes)")
            self._cache = (i, t)
        return self._cache[1]  # type: ignore[return-value]

    def record(self, i: int) -> Dict[str, Any]:
        meta = safetensors_metadata(self.files[i], "expert file")
        try:
            return json.loads(meta["record"])
        except (KeyError, ValueError):
            raise DDKitError(f"expert file {self.files[i]} lacks a readable 'record' header; delete it and rerun "
                             f"`ddkit experts train` (it resumes)") from None


def load_buffer(path: str | Path, dataset: ImageDataset, *, arch: str, zca: bool, need_epochs: int,
                norm: str = "official") -> ExpertBuffer:
    """Open an expert buffer for distillation on `dataset`, refusing one that does not fit.

    Checks (each a one-line DDKitError): the folder holds a buffer with at least one finished expert; it
    was trained on the same dataset (name, classes, image size), architecture and normalisation (ZCA, or
    mean/std equal to the `norm` statistics, data.facts.working_stats(dataset, "mtt", norm)); each expert
    has at least `need_epochs` epochs (max_start_epoch + expert_epochs).
    """
    ws = working_stats(dataset, "mtt", norm)
    p = Path(path)
    hpath = p / "buffer.json"
    hint = f"build one with `ddkit experts train --dataset {dataset.name} --output {p}`"
    if not hpath.is_file():
        raise DDKitError(f"no expert buffer at {p} (no buffer.json): {hint}")
    # Every key read below, checked first: a hand-edited or foreign header is one line, not a KeyError.
    h = read_json_keys(hpath, "expert buffer header", keys=("format", "dataset", "classes", "image_size", "channels",
                                                            "arch", "normalisation", "num_params", "config"),
                       types={"classes": list, "image_size": int, "channels": int, "num_params": int,
                              "normalisation": dict, "config": dict})
    if h.get("format") != FORMAT:
        raise DDKitError(f"{hpath} is not a ddkit expert buffer (format {h.get('format')!r})")
    if h["dataset"] != dataset.name or h["classes"] != list(dataset.classes):
        raise DDKitError(f"expert buffer {p} was trained on {h['dataset']!r} ({len(h['classes'])} classes), not on "
                         f"{dataset.name!r} ({dataset.num_classes} classes): {hint}")
    if (h["image_size"], h["channels"]) != (dataset.image_size, dataset.channels):
        raise DDKitError(f"expert buffer {p} holds {h['channels']}×{h['image_size']}² px experts, the dataset is "
                         f"{dataset.channels}×{dataset.image_size}² px")
    want = resolve_model_name(arch)
    if h["arch"] != want:
        raise DDKitError(f"expert buffer {p} holds {h['arch']} experts but the distillation uses {want}: "
                         f"pass --model {h['arch']} or train experts for {want}")
    norm = h["normalisation"]
    if (not all(k in norm for k in ("kind", "mean", "std")) or not isinstance(norm["mean"], list)
            or not isinstance(norm["std"], list)):
        raise DDKitError(f"expert buffer header {hpath}: 'normalisation' must hold kind, mean and std lists; "
                         f"{hint}")
    if not isinstance(h["config"].get("epochs"), int) or not isinstance(h["config"].get("lr"), (int, float)):
        raise DDKitError(f"expert buffer header {hpath}: 'config' must hold whole 'epochs' and a number 'lr'; {hint}")
    kind = "zca" if zca else "meanstd"
    if norm["kind"] != kind:
        raise DDKitError(f"expert buffer {p} was trained with {norm['kind']} inputs but the distillation asks for "
                         f"{kind}: pass --zca {'true' if norm['kind'] == 'zca' else 'false'} or retrain the experts")
    ours = list(ws.mean) + list(ws.std)
    # With ZCA the networks never see mean/std (MTT loads [0,1] pixels), so only a mean/std buffer must agree.
    if kind == "meanstd" and [round(v, 6) for v in norm["mean"] + norm["std"]] != [round(v, 6) for v in ours]:
        other = "true" if ws.kind == "official" else "official"
        raise DDKitError(f"expert buffer {p} was trained with mean/std {norm['mean']}/{norm['std']}, the distillation "
                         f"uses the {ws.kind} statistics {list(ws.mean)}/{list(ws.std)}: pass --norm {other} or "
                         f"retrain the experts with --norm {ws.kind}")
    epochs = int(h["config"]["epochs"])
    if epochs < need_epochs:
        raise DDKitError(f"expert buffer {p} has {epochs} epochs per expert, fewer than max_start_epoch + "
                         f"expert_epochs = {need_epochs}: lower them or train longer experts")
    files = sorted(p.glob("expert_*.safetensors"))
    if not files:
        raise DDKitError(f"expert buffer {p} has no finished expert yet: finish it with `ddkit experts train` "
                         "(it resumes)")
    for f in files:  # before any work: a truncated or disguised expert is refused from its header
        check_safetensors(f, "expert file")
        safetensors_metadata(f, "expert file")
    space = Space(ws.mean, ws.std)
    if zca:
        space = Space(ws.mean, ws.std, read_zca(p / "zca.safetensors"))
    return ExpertBuffer(p, h, files, space)


def read_zca(path: Path) -> ZCA:
    """The buffer's fitted ZCA transform, read through the loader layer."""
    state = read_safetensors(path, "ZCA file of the expert buffer")
    try:
        return ZCA.from_state(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise DDKitError(f"ZCA file {path} is not a ZCA state ({' '.join(str(e).split())[:80]}); delete it and "
                         f"rerun `ddkit experts train`") from None
