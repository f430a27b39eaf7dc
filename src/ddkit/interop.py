"""Sets made elsewhere in, ddkit sets out: ImageFolder (PNG/JPEG), DD-Ranking tensor files, safetensors.

Import (`ddkit import SRC --dataset NAME --output SET`) turns a peer's set into a ddkit folder that
`ddkit evaluate` reads; export (`ddkit export SET --format F --output DIR`) writes one for peers.

| format        | layout                                                     | written / read by                    |
|---------------|------------------------------------------------------------|--------------------------------------|
| `imagefolder` | `<dir>/<class>/<image>.png|jpg` (uint8)                   | RDED `00000/`, SRe2L/CDA `new000/`, CIM, D4M, torchvision ImageFolder |
| `ddranking`   | `<dir>/images.pt` (N×C×H×W float) + `labels.pt` (N hard or N×K soft logits) | MTT/DATM, DD-Ranking demos; DC-Bench's `{"data": [[images, labels]]}` |
| `safetensors` | one file: `images`, `labels` (+ `soft`, …) and the class list, mean/std in its header | ddkit |

Class order: a folder of class *names* is mapped by name; a folder of class *indices* (`00003`,
`new003`, `3`) is the index into the dataset's class list (the ImageFolder convention RDED and
SRe2L use: sorted folder order = label order); ddkit's own `003_cat` is checked against the name.
Every mapping is recorded in meta.json (`import.class_map`), and a folder that fits none is an error.
Pixel space: MTT/DC-lineage tensors are *normalised* (the default for `ddranking`, undone with the
dataset's mean/std, exact to float32 rounding); ddkit's are [0,1] pixels (`safetensors`, exact).
PNG export is exact only for sets whose pixels are k/255 in [0,1]; optimised sets are clamped and
quantised, and the export's README says so — their exact floats travel in the tensor formats.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ddkit.data.base import to_uint8
from ddkit.distilled import DistilledSet
from ddkit.loaders import check_finite, check_labels, missing_classes, read_pt, read_safetensors, safetensors_metadata
from ddkit.utils import DDKitError, atomic_dir
from ddkit.validate import check_set

FORMATS = ("imagefolder", "ddranking", "safetensors")
PIXEL_SPACES = ("unit", "normalized")
DEFAULT_PIXEL_SPACE = {"imagefolder": "unit", "ddranking": "normalized", "safetensors": "unit"}
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


# -- class order ----------------------------------------------------------------------------------
def map_class_folders(folders: Sequence[str], classes: Sequence[str]) -> Dict[str, int]:
    """{folder name: label index into `classes`}: by name, `<k>_<name>` (checked), or an index `\\D*<k>`."""
    pos = {c: i for i, c in enumerate(classes)}
    safe = [_SAFE.sub("_", c) for c in classes]
    out: Dict[str, int] = {}
    for f in folders:
        m_named, m_index = re.fullmatch(r"(\d+)_(.+)", f), re.fullmatch(r"\D*?(\d+)", f)
        if f in pos:
            k = pos[f]
        elif m_named and int(m_named.group(1)) < len(classes) and safe[int(m_named.group(1))] == m_named.group(2):
            k = int(m_named.group(1))
        elif m_named and m_named.group(2) in pos:
            raise DDKitError(f"folder {f!r}: index {int(m_named.group(1))} but class {m_named.group(2)!r} is "
                             f"label {pos[m_named.group(2)]} of the dataset: the set's class order differs")
        elif m_index:
            k = int(m_index.group(1))
            if k >= len(classes):
                raise DDKitError(f"folder {f!r} is class index {k} but the dataset has {len(classes)} classes")
        else:
            raise DDKitError(f"folder {f!r} is neither a class of the dataset ({', '.join(list(classes)[:5])}, …) "
                             f"nor a class index like 00003")
        if k in out.values():
            other = next(n for n, v in out.items() if v == k)
            raise DDKitError(f"folders {other!r} and {f!r} both map to class {k} ({classes[k]!r})")
        out[f] = k
    return out


def reorder_classes(ds: DistilledSet, classes: Sequence[str]) -> DistilledSet:
    """The same set labelled in `classes`' order (its names must be a permutation of them); soft columns follow."""
    if list(ds.classes) == list(classes):
        return ds
    if sorted(ds.classes) != sorted(classes):
        raise DDKitError(f"the set's classes {list(ds.classes)[:4]}… are not the dataset's {list(classes)[:4]}…")
    new_of_old = torch.tensor([list(classes).index(c) for c in ds.classes])
    old_of_new = torch.argsort(new_of_old)
    soft = {k: v[..., old_of_new] if v.shape[-1] == len(classes) else v for k, v in ds.soft.items()}
    return DistilledSet(ds.images, new_of_old[ds.labels], list(classes), ds.mean, ds.std, soft, dict(ds.meta))


# -- readers -----------------------------------------------------------------------------------
def _decode(path: Path, channels: int) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    return torch.from_numpy(arr.copy()).reshape(arr.shape[0], arr.shape[1], -1).permute(2, 0, 1)


def read_imagefolder(root: Path, classes: Sequence[str], channels: int) -> Tuple[torch.Tensor, torch.Tensor, dict]:
    """uint8 images, labels and the folder→class map of `<root>/<class>/*.png|jpg` (files in sorted order)."""
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise DDKitError(f"{root} has no class folders (<class>/<image>.png|jpg)")
    cmap = map_class_folders(folders, classes)
    images, labels = [], []
    for f in folders:
        files = sorted(p for p in (root / f).iterdir() if p.suffix.lower() in IMAGE_EXTS)
        images += [_decode(p, channels) for p in files]
        labels += [cmap[f]] * len(files)
    if not images:
        raise DDKitError(f"{root}: no {'/'.join(IMAGE_EXTS)} files in its class folders")
    shapes = {tuple(x.shape) for x in images}
    if len(shapes) > 1:
        raise DDKitError(f"{root}: images of different sizes {sorted(shapes)[:3]}; resize them to one size first")
    return torch.stack(images), torch.tensor(labels, dtype=torch.long), {folder: classes[k] for folder, k in cmap.items()}


def _torch_load(path: Path) -> Any:
    return read_pt(path, "tensor file")  # tensors only (weights_only=True): no code runs


def read_tensor_files(src: Path) -> Tuple[torch.Tensor, torch.Tensor, dict]:
    """(images float, labels N or N×K, sidecar facts) from images.pt + labels.pt or a DC-Bench `data` dict."""
    folder = src if src.is_dir() else src.parent
    img_file = src if src.is_file() else folder / "images.pt"
    if not img_file.is_file():
        raise DDKitError(f"{folder} has no images.pt (DD-Ranking / MTT layout: images.pt + labels.pt)")
    obj = _torch_load(img_file)
    if isinstance(obj, dict) and "data" in obj:  # DC/DSA/DM/DC-Bench: {"data": [[images, labels]], ...}
        images, labels = obj["data"][0][0], obj["data"][0][1]
    elif isinstance(obj, dict) and "images" in obj:
        images, labels = obj["images"], obj.get("labels")
    else:
        images, labels = obj, None
    if labels is None:
        lab_file = folder / (img_file.name.replace("images", "labels") if "images" in img_file.name else "labels.pt")
        if not lab_file.is_file():
            raise DDKitError(f"{img_file} holds images only and {lab_file} is missing")
        labels = _torch_load(lab_file)
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = f" of shape {tuple(images.shape)}" if isinstance(images, torch.Tensor) else ""
        raise DDKitError(f"{img_file}: expected an N×C×H×W tensor, got {type(images).__name__}{shape}")
    if not isinstance(labels, torch.Tensor):
        try:  # a list of per-image labels; ragged soft rows cannot become one tensor
            labels = torch.as_tensor(labels)
        except (ValueError, TypeError, RuntimeError) as e:
            raise DDKitError(f"{img_file.parent}: labels are not one tensor ({str(e).splitlines()[0][:80]}); "
                             f"save N hard labels or an N×K soft-label tensor") from None
    side = folder / "ddkit_meta.json"
    if side.is_file():
        from ddkit.loaders import read_json

        return images, labels, read_json(side, "sidecar")
    return images, labels, {}


def _json_or_str(v: str) -> Any:
    try:
        return json.loads(v)
    except ValueError:  # another tool's free-text header value
        return v


def read_safetensors_file(src: Path) -> Tuple[Dict[str, torch.Tensor], dict]:
    """All tensors of a safetensors file and its header facts (classes, mean, std, …) as JSON values."""
    if src.is_dir():
        files = sorted(src.glob("*.safetensors"))
        if len(files) != 1:
            raise DDKitError(f"{src}: expected one .safetensors file, found {len(files)}")
        src = files[0]
    # The sniffing reader: a truncated file, a lying header or a pickle/zip in disguise is one line.
    tensors = read_safetensors(src, "safetensors set")
    header = {k: _json_or_str(v) for k, v in safetensors_metadata(src, "safetensors set").items()}
    if "images" not in tensors or "labels" not in tensors:
        raise DDKitError(f"{src}: needs tensors 'images' and 'labels', has {sorted(tensors)}")
    return tensors, header


# -- import ------------------------------------------------------------------------------------
def detect_format(src: Path) -> str:
    """'imagefolder' | 'ddranking' | 'safetensors' from what `src` holds."""
    if src.suffix == ".safetensors" or (src.is_dir() and len(list(src.glob("*.safetensors"))) == 1
                                        and not (src / "meta.json").is_file()):
        return "safetensors"
    if src.suffix == ".pt" or (src.is_dir() and (src / "images.pt").is_file()):
        return "ddranking"
    if src.is_dir():
        return "imagefolder"
    raise DDKitError(f"cannot tell the format of {src}; pass --format {'|'.join(FORMATS)}")


def import_set(src: str | Path, fmt: str = "auto", *, dataset: Any = None, pixel_space: Optional[str] = None,
               method: Optional[str] = None, pixel_scale: Optional[float] = None) -> DistilledSet:
    """A peer's set as a DistilledSet in `dataset`'s class order (dataset: an ImageDataset, usually its test split).

    `dataset` gives the class list, normalisation, channels and size; it may be None only when the
    source carries them itself (a ddkit export). `pixel_space` overrides the format's default;
    `pixel_scale` says unit-space pixels run 0..scale (uint8 tensors are 0..255 by their dtype).
    The result passes the checks of a set ddkit wrote (ddkit.validate.check_set) and its pixels lie
    near [0, 1]; classes without any image are listed in `meta["imported"]["missing_classes"]`.
    """
    src = Path(src).expanduser()
    if not src.exists():
        raise DDKitError(f"{src} not found")
    fmt = detect_format(src) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise DDKitError(f"unknown format {fmt!r}; use one of: {', '.join(FORMATS)}")
    space = pixel_space or DEFAULT_PIXEL_SPACE[fmt]
    if space not in PIXEL_SPACES:
        raise DDKitError(f"unknown pixel space {space!r}; use unit ([0,1] pixels) or normalized ((x-mean)/std)")
    if pixel_scale is not None and not (pixel_scale > 0 and pixel_scale < float("inf")):
        raise DDKitError(f"--pixel-scale must be a finite number > 0, got {pixel_scale}")
    facts: Dict[str, Any] = {}
    soft: Dict[str, torch.Tensor] = {}
    info: Dict[str, Any] = {"source": str(src), "format": fmt}
    if fmt == "imagefolder":
        if dataset is None:
            raise DDKitError("an image folder has no class list or normalisation: pass --dataset NAME")
        u8, labels, info["class_map"] = read_imagefolder(src, dataset.classes, dataset.channels)
        images, space = u8.float() / 255.0, "unit"  # decoded pixels are already [0,1] after /255
    elif fmt == "ddranking":
        images, lab, facts = read_tensor_files(src)
        space = pixel_space or facts.get("pixel_space", space)
        hard_file = (src if src.is_dir() else src.parent) / "hard_labels.pt"
        if lab.ndim == 2:  # soft labels (DATM/DD-Ranking: logits); the hard label is stored beside or argmax
            _check_soft("labels.pt", lab, src)
            soft["soft"] = lab.float()
            labels = _torch_load(hard_file) if hard_file.is_file() else lab.argmax(1)
            if not isinstance(labels, torch.Tensor):
                raise DDKitError(f"{hard_file}: expected a tensor of N hard labels, got {type(labels).__name__}")
            info["hard_labels"] = "hard_labels.pt" if hard_file.is_file() else "argmax of labels.pt"
        else:
            labels = lab
    else:
        tensors, facts = read_safetensors_file(src)
        images, labels = tensors.pop("images"), tensors.pop("labels")
        for k, v in tensors.items():
            _check_soft(k, v, src)
        soft = {k: v.float() for k, v in tensors.items()}
        space = pixel_space or facts.get("pixel_space", space)
    images = _unit_scale(images, src, space, pixel_scale, info)
    classes = _names(facts.get("classes"), src) or (list(dataset.classes) if dataset is not None else None)
    mean = _numbers(facts.get("mean"), "mean", src) or (dataset.mean if dataset is not None else None)
    std = _numbers(facts.get("std"), "std", src) or (dataset.std if dataset is not None else None)
    if classes is None or mean is None or std is None:
        raise DDKitError(f"{src} does not name its classes and normalisation: pass --dataset NAME")
    fix = "fix the source or re-export it"
    where = f"imported {src}"
    labels = check_labels(labels, len(classes), where, fix)  # before anything counts per class
    check_finite(images, where, fix)
    if space == "normalized":  # back to [0,1] pixels; float64 so the only error is the final float32 rounding
        m, s = (torch.tensor(v, dtype=torch.float64).view(1, -1, 1, 1) for v in (mean, std))
        images = (images.double() * s + m).float()
    _check_range(images, src, space)
    info.update(pixel_space=space, source_classes=list(classes))
    meta = dict(facts.get("meta") or {})
    meta.update(method=method or meta.get("method") or f"imported-{fmt}", imported=info)
    check_set(images, labels, list(classes), soft, meta, where=where, fix=fix)
    out = DistilledSet(images.contiguous(), labels, list(classes), mean, std, soft, meta)
    if dataset is not None:
        if list(mean) != list(dataset.mean) or list(std) != list(dataset.std):
            info["source_mean_std"] = [list(mean), list(std)]  # kept for the record; the dataset's is used
        out = reorder_classes(out, dataset.classes)
        out.mean, out.std = dataset.mean, dataset.std
        out.meta["dataset"] = dataset.name
        if tuple(images.shape[1:]) != (dataset.channels, dataset.image_size, dataset.image_size):
            raise DDKitError(f"{src}: images are {tuple(images.shape[1:])} but {dataset.name} is "
                             f"{dataset.channels}×{dataset.image_size}×{dataset.image_size}")
    gone = missing_classes(out.labels, out.classes)
    if gone:  # the CLI prints it as a warning; evaluate would silently score classes it never saw
        info["missing_classes"] = gone
    return out


#: how far an imported set's [0,1] pixels may stray before it is a scale mistake, not an optimised set
#: (LIC/MTT sets drift a little outside [0,1]; 0–255 or (x-mean)/std pixels read as unit go far beyond)
PIXEL_SLACK = (-1.0, 2.0)


def _unit_scale(images: torch.Tensor, src: Path, space: str, scale: Optional[float], info: Dict[str, Any]) -> torch.Tensor:
    """Float pixels: uint8 by their dtype (0..255), other integers only with --pixel-scale."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise DDKitError(f"{src}: images must be an N×C×H×W tensor")
    if images.dtype == torch.bool or images.is_complex():
        raise DDKitError(f"{src}: images are {images.dtype}, not pixels")
    if images.dtype == torch.uint8 and scale is None:
        scale = 255.0
    elif not images.is_floating_point() and scale is None:
        raise DDKitError(f"{src}: images are {images.dtype} integers; pass --pixel-scale N when they run 0..N "
                         f"(e.g. 255)")
    if scale is not None:
        if space != "unit":
            raise DDKitError(f"{src}: --pixel-scale applies to unit pixels, not --pixel-space {space}")
        info["pixel_scale"] = float(scale)
        return (images.double() / float(scale)).float()
    return images.float()


def _check_range(images: torch.Tensor, src: Path, space: str) -> None:
    lo, hi = float(images.min()), float(images.max())
    if lo < PIXEL_SLACK[0] or hi > PIXEL_SLACK[1]:
        hint = ("pass --pixel-scale 255 if they are 0–255 pixels" if hi > 10 else
                "pass --pixel-space normalized if they are (x-mean)/std" if space == "unit" else
                "pass --pixel-space unit if they are [0,1] pixels")
        raise DDKitError(f"{src}: pixels span [{lo:.3g}, {hi:.3g}] after reading them as {space} pixels, far "
                         f"outside [0, 1]: {hint} (--pixel-scale N: pixels run 0..N)")


def _check_soft(name: str, t: Any, src: Path) -> None:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        what = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
        raise DDKitError(f"{src}: soft label {name!r} must be a float tensor, found {what}")
    check_finite(t, f"{src}: soft label {name!r}", "fix the source or re-export it")


def _names(v: Any, src: Path) -> Optional[List[str]]:
    """The header's class list: a JSON list of names, or a comma-separated string (another tool's habit)."""
    if v is None or v == []:
        return None
    if isinstance(v, str):
        v = [c.strip() for c in v.split(",")]
    if not isinstance(v, list) or not all(isinstance(c, (str, int)) and str(c).strip() for c in v):
        raise DDKitError(f"{src}: header 'classes' must be a JSON list of names (e.g. [\"cat\", \"dog\"]) or "
                         f"comma-separated names (cat,dog), found {str(v)[:60]!r}")
    names = [str(c).strip() for c in v]
    if len(set(names)) != len(names):
        raise DDKitError(f"{src}: header 'classes' names a class twice ({', '.join(names[:8])})")
    return names


def _numbers(v: Any, key: str, src: Path) -> Optional[List[float]]:
    if v is None or v == []:
        return None
    if isinstance(v, str):
        try:
            v = [float(x) for x in v.split(",")]
        except ValueError:
            v = None
    if (not isinstance(v, list) or not v or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                     for x in v)):
        raise DDKitError(f"{src}: header {key!r} must be a JSON list of numbers, e.g. [0.5, 0.5, 0.5]")
    if key == "std" and min(v) <= 0:
        raise DDKitError(f"{src}: header 'std' must be > 0, found {v}")
    return [float(x) for x in v]


# -- export ------------------------------------------------------------------------------------
def png_exact(images: torch.Tensor) -> bool:
    """True when every pixel is k/255 in [0,1], i.e. a PNG holds the set exactly."""
    x = images.detach().double() * 255.0
    return bool(images.min() >= 0 and images.max() <= 1 and ((x - x.round()).abs() < 1e-3).all())


def export_set(ds: DistilledSet, out: str | Path, fmt: str, *, pixel_space: Optional[str] = None,
               overwrite: bool = False) -> Path:
    """Write `ds` as `fmt` into the folder `out` (atomically) with a README.md saying what is exact."""
    if fmt not in FORMATS:
        raise DDKitError(f"unknown format {fmt!r}; use one of: {', '.join(FORMATS)}")
    space = pixel_space or DEFAULT_PIXEL_SPACE[fmt]
    if fmt != "ddranking" and space != "unit":
        raise DDKitError(f"--pixel-space {space} applies to the ddranking format only ({fmt} stores [0,1] pixels)")
    exact = png_exact(ds.images)
    lo, hi = float(ds.images.min()), float(ds.images.max())
    facts = {"classes": list(ds.classes), "mean": list(ds.mean), "std": list(ds.std), "pixel_space": space,
             "meta": {k: v for k, v in ds.meta.items() if k != "machine"}}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        if fmt == "imagefolder":
            from PIL import Image

            u8, counts = to_uint8(ds.images), [0] * ds.num_classes
            for i in range(len(ds)):
                c = int(ds.labels[i])
                d = tmp / f"{c:03d}_{_SAFE.sub('_', ds.classes[c])}"
                d.mkdir(exist_ok=True)
                arr = u8[i].permute(1, 2, 0).numpy()
                Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(d / f"{counts[c]:05d}.png")
                counts[c] += 1
            body = (f"One folder per class, `<label:03d>_<name>/`, in label order (torchvision ImageFolder and "
                    f"RDED/SRe2L-style evaluators read it). Soft labels do not travel in this format.\n\n"
                    + ("**Exact**: every pixel is k/255 in [0,1]." if exact else
                       f"**LOSSY**: the set's pixels span [{lo:.3f}, {hi:.3f}] and are not all k/255; these PNGs "
                       "are clamped to [0,1] and rounded to 8 bits, so they are *not* the set ddkit evaluated. "
                       "Export `--format safetensors` or `ddranking` for the exact floats."))
        elif fmt == "ddranking":
            x = ds.images.double()
            if space == "normalized":
                m, s = (torch.tensor(v, dtype=torch.float64).view(1, -1, 1, 1) for v in (ds.mean, ds.std))
                x = (x - m) / s
            torch.save(x.float().contiguous(), tmp / "images.pt")
            if "soft" in ds.soft:
                torch.save(ds.soft["soft"].float().contiguous(), tmp / "labels.pt")
                torch.save(ds.labels.clone(), tmp / "hard_labels.pt")
            else:
                torch.save(ds.labels.clone(), tmp / "labels.pt")
            (tmp / "ddkit_meta.json").write_text(json.dumps(facts, indent=1, default=str) + "\n")
            body = (f"`images.pt`: float32 N×C×H×W, **{space}** pixels"
                    + (" ((x − mean)/std with the mean/std below, as MTT/DATM/DC save them)" if space == "normalized"
                       else " in [0,1]") + "; `labels.pt`: "
                    + ("N×K soft-label logits, hard labels in `hard_labels.pt`" if "soft" in ds.soft else "N hard labels")
                    + ". Load with `torch.load(path, weights_only=True)`. Exact floats "
                    + ("(normalising costs at most float32 rounding)." if space == "normalized" else "(bit-exact)."))
        else:
            from safetensors.torch import save_file

            tensors = {"images": ds.images.float().contiguous(), "labels": ds.labels.long().contiguous()}
            tensors.update({k: v.float().contiguous() for k, v in ds.soft.items()})
            header = {k: json.dumps(v, default=str) for k, v in facts.items()}
            save_file(tensors, str(tmp / "set.safetensors"), metadata=header)
            body = ("`set.safetensors`: `images` float32 N×C×H×W in [0,1] pixel space (bit-exact, may leave [0,1] "
                    "for optimised sets), `labels` int64 N" + "".join(f", `{k}` {tuple(v.shape)}" for k, v in
                                                                    ds.soft.items())
                    + "; the header holds `classes`, `mean`, `std` and the set's meta as JSON strings.")
        (tmp / "README.md").write_text(_readme(ds, fmt, body))
    return Path(out)


def _readme(ds: DistilledSet, fmt: str, body: str) -> str:
    classes = ", ".join(f"{i} {c}" for i, c in enumerate(ds.classes[:20])) + (" …" if ds.num_classes > 20 else "")
    return (f"# {ds.meta.get('method', 'distilled')} set, exported by ddkit as `{fmt}`\n\n"
            f"{len(ds)} images {tuple(ds.images.shape[1:])}, {ds.num_classes} classes (IPC {ds.ipc}) from "
            f"{ds.meta.get('dataset', '?')}; normalisation mean {list(ds.mean)}, std {list(ds.std)}.\n\n{body}\n\n"
            f"Labels (class order): {classes}.\n\nRead it back with `ddkit import <this folder> --dataset "
            f"{ds.meta.get('dataset', 'NAME')} --output SET`.\n")
