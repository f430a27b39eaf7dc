"""Save and load teachers in ddkit's format and in every peer's checkpoint layout.

Layouts understood by `load_teacher` (peers.md §1.2, §3.1, §4.4, §8.5):
  1. ddkit: `<path>.safetensors` (state dict) + `<path>.json` (arch, classes, mean/std, recipe …);
  2. CIM/RDED/GIFT: `{dataset}_{model}.pth` with the state dict under "model" (their conv nets use BN);
  3. SRe2L: the state dict under "state_dict" and/or keys prefixed "module." (DataParallel);
  4. DD-Ranking: `<dir>/<dataset>/<ModelName>/ckpt_best.pt`, a plain state dict;
  5. `torchvision:<name>`: torchvision's ImageNet IMAGENET1K_V1 weights, only when cached offline; ddkit
     reads the cached file itself (sha-256 checked against the hash torchvision's URL records, then
     torch.load with weights_only=True) instead of torch.hub's loader, which unpickles with weights_only=False.
Pickles are never executed: torch.load always runs with weights_only=True; safetensors files are checked
for truncation and for a pickle in disguise (ddkit.validate.read_safetensors).
"""
from __future__ import annotations

import json
import pickle
import re
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from ddkit.data.base import ImageDataset
from ddkit.models import create_model, resolve_model_name
from ddkit.registry import UnknownNameError
from ddkit.teachers.core import Teacher
from ddkit.utils import DDKitError, atomic_write_bytes, git_revision, machine_info
from ddkit.validate import read_json, read_safetensors

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_OVERRIDE = "pass --teacher-arch NAME (load_teacher(arch=...)) to override"


def _stem(path: Union[str, Path]) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".safetensors", ".json") else p


def save_teacher(teacher: Teacher, path: Union[str, Path],
                 record: Optional[Dict[str, Any]] = None) -> Tuple[Path, Path]:
    """Write `<path>.safetensors` and `<path>.json` atomically; returns both paths.

    `record` ({"command", "args"} of the CLI run) goes into the json, so `-c <path>.json` repeats the run.
    """
    from safetensors.torch import save

    stem = _stem(path)
    weights, meta_path = stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")
    # contiguous(): safetensors needs dense row-major tensors (channels_last weights are not).
    state = {k: v.detach().cpu().contiguous() for k, v in teacher.model.state_dict().items()}
    meta = {
        "format": "ddkit-teacher", "version": 1, "arch": teacher.arch, "arch_kw": teacher.arch_kw,
        "dataset": teacher.meta.get("dataset", ""), "classes": teacher.classes, "num_classes": teacher.num_classes,
        "mean": list(teacher.mean), "std": list(teacher.std), "image_size": teacher.image_size,
        "channels": teacher.channels, "accuracy": teacher.meta.get("accuracy"),
        "recipe": teacher.meta.get("recipe"), "ddkit_revision": git_revision(), "machine": machine_info(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **(record or {}),
    }
    atomic_write_bytes(weights, save(state))
    atomic_write_bytes(meta_path, json.dumps(meta, indent=1).encode())
    return weights, meta_path


def _read_state(path: Path) -> Tuple[Dict[str, torch.Tensor], str]:
    """The state dict inside a peer checkpoint and the layout name."""
    obj = _torch_load_weights(path)
    layout = "plain"
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj, layout = obj["model"], "cim"
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj, layout = obj["state_dict"], "sre2l"
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        keys = list(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
        raise DDKitError(f"{path}: no state dict found (top-level keys {keys}); expected a state dict, "
                         f"or one under 'model' or 'state_dict'")
    # DataParallel ("module.") and torch.compile ("_orig_mod.") wrap every key; strip both.
    state = {re.sub(r"^(module\.|_orig_mod\.)+", "", k): v for k, v in obj.items()}
    if layout == "plain" and any(k.startswith("module.") for k in obj):
        layout = "sre2l"
    return state, layout


def _torch_load_weights(path: Path) -> Any:
    """torch.load with weights_only=True; every failure (a pickle with code, a truncated zip) is one line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise DDKitError(f"{path} holds Python objects beyond tensors, which ddkit refuses to unpickle "
                         f"(weights_only=True): {str(e).splitlines()[0][:120]}; re-save its state_dict") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        msg = " ".join(str(e).split())[:120]
        raise DDKitError(f"{path} is not a readable torch checkpoint ({msg}); re-copy or re-save it") from None


def hub_hash_prefix(url: str) -> str:
    """The sha-256 prefix torchvision records in a weight file's name (`resnet18-f37072fd.pth`)."""
    m = re.search(r"-([a-f0-9]{6,})\.", Path(url).name)
    if m is None:
        raise DDKitError(f"{url}: no sha-256 prefix in the file name to check the download against")
    return m.group(1)


def read_hub_weights(path: Path, expected: str) -> Dict[str, torch.Tensor]:
    """A cached torchvision weight file, hash-checked, then loaded without running any pickled code."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if not h.hexdigest().startswith(expected):
        raise DDKitError(f"{path} does not match torchvision's record (sha-256 {h.hexdigest()[:len(expected)]}, "
                         f"expected {expected}…): tampered or damaged; delete it and download it again")
    state = _torch_load_weights(path)
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise DDKitError(f"{path} holds no plain state dict; delete it and download it again")
    return state


def _check_meta(meta: Dict[str, Any], where: Path) -> None:
    """A teacher json's facts have the types the loader relies on (else one line naming the file)."""
    for key in ("mean", "std"):
        v = meta.get(key)
        if v is not None and (not isinstance(v, list) or not v or
                              not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
            raise DDKitError(f"{where}: {key!r} must be a list of numbers, found {v!r}; fix or re-create the json")
    if meta.get("std") and any(x <= 0 for x in meta["std"]):
        raise DDKitError(f"{where}: 'std' must be > 0, found {meta['std']}; fix or re-create the json")
    c = meta.get("classes")
    if c is not None and (not isinstance(c, list) or not all(isinstance(x, str) for x in c)):
        raise DDKitError(f"{where}: 'classes' must be a list of names; fix or re-create the json")
    for key in ("image_size", "channels", "num_classes"):
        v = meta.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise DDKitError(f"{where}: {key!r} must be a whole number ≥ 1, found {v!r}")


def _arch_from_filename(path: Path, dataset: Optional[ImageDataset]) -> Tuple[Optional[str], str]:
    """(arch, how it was found) from DD-Ranking's folder name or CIM's `{dataset}_{model}` stem."""
    if path.name == "ckpt_best.pt":
        return path.parent.name, f"folder name {path.parent.name!r} (DD-Ranking layout)"
    stem = path.stem
    if dataset is not None and dataset.name and stem.lower().startswith(dataset.name.lower() + "_"):
        candidates = [stem[len(dataset.name) + 1:]]
    else:
        parts = stem.split("_")
        candidates = ["_".join(parts[i:]) for i in range(1, len(parts))] + [stem]
    for c in candidates:
        m = re.fullmatch(r"conv(\d)", c, flags=re.I)
        name = f"conv{m.group(1)}_bn" if m else c  # CIM/RDED ConvNets use BatchNorm (peers.md §1.3)
        try:
            resolve_model_name(name)
            return name, f"file name {path.name!r} (CIM/RDED layout)"
        except UnknownNameError:
            continue
    return None, ""


def _convnet_kw(state: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    """ConvNet width and norm read off the weights, so guessed names fit the checkpoint."""
    kw: Dict[str, Any] = {}
    # Three spellings of the same layers: ours, DC/DD-Ranking's flat Sequential, CIM/RDED's ModuleDict.
    first = next((state[k] for k in ("features.block1.0.weight", "features.0.weight", "layers.conv.0.weight")
                  if k in state), None)
    if first is not None and first.ndim == 4:
        kw["width"] = int(first.shape[0])
    if any(k.endswith("running_mean") for k in state):
        kw["norm"] = "batchnorm"
    elif any(k in state for k in ("features.block1.1.weight", "features.1.weight", "layers.norm.0.weight")):
        kw["norm"] = "instancenorm"
    else:
        kw["norm"] = "none"
    return kw


def _outputs(state: Dict[str, torch.Tensor]) -> Optional[int]:
    """Number of classes = rows of the last 2-D weight (the classifier) in state-dict order."""
    mats = [v for k, v in state.items() if k.endswith("weight") and v.ndim == 2]
    return int(mats[-1].shape[0]) if mats else None


def _convnet_size(canonical: str, state: Dict[str, torch.Tensor], kw: Dict[str, Any]) -> Optional[int]:
    """A ConvNet's input side from its classifier: in_features = width·(side/2^depth)²."""
    w = state.get("classifier.weight")
    if not canonical.startswith("convnet-d") or w is None or "width" not in kw:
        return None
    side = round((w.shape[1] / kw["width"]) ** 0.5)
    return side * 2 ** int(canonical[len("convnet-d")]) if side > 0 else None


def _first_conv_channels(state: Dict[str, torch.Tensor]) -> Optional[int]:
    convs = [v for v in state.values() if v.ndim == 4]
    return int(convs[0].shape[1]) if convs else None


def _torchvision_teacher(name: str, dataset: Optional[ImageDataset], device: Union[str, torch.device]) -> Teacher:
    import torchvision

    try:
        weights_enum = torchvision.models.get_model_weights(name)
    except ValueError:
        raise DDKitError(f"torchvision has no model {name!r}; see torchvision.models.list_models()") from None
    w = getattr(weights_enum, "IMAGENET1K_V1", None) or weights_enum.DEFAULT  # V1 is what CIM/RDED used
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(w.url).name
    if not cached.is_file():
        raise DDKitError(f"torchvision:{name} weights are not cached at {cached}; on a machine with internet run "
                         f"python -c \"import torchvision; torchvision.models.get_model('{name}', weights='{w}')\"")
    state = read_hub_weights(cached, hub_hash_prefix(w.url))
    # torchvision builds the net with these weights (its own key fixes, e.g. DenseNet's) but gets the dict we
    # verified instead of calling torch.hub.load_state_dict_from_url.
    setattr(type(w), "get_state_dict", lambda self, *a, **k: state)
    try:
        model = torchvision.models.get_model(name, weights=w)
    except RuntimeError as e:
        raise DDKitError(f"{cached} does not fit torchvision:{name}: {' '.join(str(e).split())[:200]}") from None
    finally:
        delattr(type(w), "get_state_dict")
    n = len(w.meta["categories"])
    if dataset is not None and dataset.num_classes != n:
        raise DDKitError(f"checkpoint has {n} outputs but {dataset.name or 'the dataset'} has "
                         f"{dataset.num_classes} classes")
    # Dataset class names (wnids) are kept when given: torchvision's index order is sorted wnids.
    classes = dataset.classes if dataset is not None else list(w.meta["categories"])
    return Teacher(model, f"torchvision:{name}", classes, IMAGENET_MEAN, IMAGENET_STD, 224, 3,
                   meta={"source": f"torchvision:{name}", "weights": str(w), "dataset": "imagenet-1k",
                         "accuracy": w.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")}).to(device)


def load_teacher(path: Union[str, Path], *, arch: Optional[str] = None, dataset: Optional[ImageDataset] = None,
                 num_classes: Optional[int] = None, classes: Optional[Sequence[str]] = None,
                 image_size: Optional[int] = None, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, device: Union[str, torch.device] = "cpu") -> Teacher:
    """Load a teacher from any supported layout (see module doc) and check it against `dataset`.

    Precedence for facts: explicit arguments, then the ddkit json, then `dataset`, then what the
    weights reveal (classifier rows, first-conv channels). Raises DDKitError (one line) on a
    classifier/dataset size mismatch, a class-list mismatch, an unknown arch or weights that do
    not fit the assumed arch (strict load).
    """
    if str(path).startswith("torchvision:"):
        return _torchvision_teacher(str(path).split(":", 1)[1], dataset, device)
    p = Path(path)
    if p.is_dir() and (p / "ckpt_best.pt").is_file():  # DD-Ranking's `<teacher_dir>/<dataset>/<model>/`
        p = p / "ckpt_best.pt"
    stem = _stem(p)
    meta: Dict[str, Any] = {}
    if stem.with_name(stem.name + ".safetensors").is_file():
        state, layout = read_safetensors(stem.with_name(stem.name + ".safetensors"), "teacher weights"), "ddkit"
        meta_file = stem.with_name(stem.name + ".json")
        if meta_file.is_file():
            meta = read_json(meta_file, "teacher metadata")
            _check_meta(meta, meta_file)
    elif p.is_file():
        state, layout = _read_state(p)
    else:
        raise FileNotFoundError(f"teacher checkpoint not found: {p} (nor {stem}.safetensors)")

    # -- architecture ------------------------------------------------------------------------
    arch_kw: Dict[str, Any] = dict(meta.get("arch_kw") or {})
    source = "--teacher-arch"
    if arch is None and meta.get("arch"):
        arch, source = meta["arch"], f"{stem.name}.json"
    if arch is None:
        arch, source = _arch_from_filename(p, dataset)
    if arch is None:
        raise DDKitError(f"cannot tell the architecture of {p} from its name; {_OVERRIDE}")
    try:
        canonical = resolve_model_name(arch)
    except UnknownNameError as e:
        raise DDKitError(f"{p}: {e}") from None
    if canonical.startswith("convnet-d") and "arch_kw" not in meta:
        guessed = _convnet_kw(state)
        if source == "--teacher-arch":
            guessed.pop("norm")  # an explicit name's norm suffix wins; a wrong one fails the strict load
        arch_kw = {**guessed, **arch_kw}

    # -- classes, normalisation, input size --------------------------------------------------
    ds_name = (dataset.name if dataset is not None else "") or "the dataset"
    n_out = _outputs(state)
    if dataset is not None and n_out is not None and n_out != dataset.num_classes:
        raise DDKitError(f"checkpoint has {n_out} outputs but {ds_name} has {dataset.num_classes} classes")
    if dataset is not None and meta.get("classes") and list(meta["classes"]) != list(dataset.classes):
        raise DDKitError(f"{stem.name}.json lists classes in another order (or other classes) than {ds_name}: "
                         f"{meta['classes'][:3]}… vs {dataset.classes[:3]}…; use a teacher trained on this dataset")
    cls: Optional[List[str]] = list(classes) if classes is not None else (
        meta.get("classes") or (dataset.classes if dataset is not None else None))
    n = num_classes or (len(cls) if cls else None) or n_out
    if n is None:
        raise DDKitError(f"cannot tell the number of classes of {p}; pass num_classes or dataset")
    if cls is None:
        cls = [str(i) for i in range(n)]
    if len(cls) != n:
        raise DDKitError(f"{len(cls)} class names given for a {n}-class teacher")
    if mean is None:
        mean = meta.get("mean") or (dataset.mean if dataset is not None else None)
    if std is None:
        std = meta.get("std") or (dataset.std if dataset is not None else None)
    if mean is None or std is None:
        raise DDKitError(f"unknown normalisation for {p}: pass dataset or mean/std (CIM uses the dataset's, "
                         f"RDED ImageNet's)")
    size = image_size or meta.get("image_size") or (dataset.image_size if dataset is not None else None) \
        or _convnet_size(canonical, state, arch_kw) or 32
    channels = meta.get("channels") or (dataset.channels if dataset is not None else None) \
        or _first_conv_channels(state) or 3

    # -- build and strict-load ----------------------------------------------------------------
    try:
        model = create_model(canonical, n, size, channels, **arch_kw)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, DDKitError, TypeError, ValueError) as e:
        msg = " ".join(str(e).split())[:300]
        raise DDKitError(f"{p} does not fit arch {arch!r} (assumed from {source}, {size} px): {msg}; "
                         f"{_OVERRIDE}") from None
    info = {"source": str(p), "layout": layout, "dataset": meta.get("dataset") or (dataset.name if dataset else ""),
            "accuracy": meta.get("accuracy"), "recipe": meta.get("recipe")}
    return Teacher(model, canonical, cls, mean, std, size, channels, meta=info, arch_kw=arch_kw).to(device)
