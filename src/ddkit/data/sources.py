"""Named dataset sources, one registered loader per row of the facts table.

Each loader takes a `Request` and returns an ImageDataset. Array sources (digits, IDX files,
torchvision's CIFAR/SVHN) produce uint8 arrays that go through the cache like decoded images;
Tiny-ImageNet and `folder:`/`tar:` live in folders.py, the ImageNet family in filebacked.py.
"""
from __future__ import annotations

import gzip
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..registry import Registry
from ..utils import DDKitError
from .base import DatasetInfo, ImageDataset
from .cache import cached_arrays, default_data_root, file_fingerprint, select_classes
from .facts import ALIASES, CLASS_NAMES, FACTS, split_dir_candidates
from .filebacked import load_file_backed
from .folders import load_image_files, load_tiny_imagenet

# Where Debian's `dataset-fashion-mnist` package puts the IDX files (a constant so tests can move it).
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class Request:
    """What create_dataset was asked for, after validation (name is canonical, split normalised)."""

    name: str
    root: Optional[Path]
    split: str  # "train" | "test" | "val"
    classes: Optional[Tuple[str, ...]]
    image_size: Optional[int]
    cache_dir: Optional[Path]
    download: bool
    progress: bool

    @property
    def info(self) -> DatasetInfo:
        return FACTS[self.name]

    @property
    def data_root(self) -> Path:
        return Path(self.root).expanduser() if self.root is not None else default_data_root()

    @property
    def train(self) -> bool:
        return self.split == "train"


Loader = Callable[[Request], ImageDataset]
DATASETS: Registry[Loader] = Registry("dataset")


def _register(name: str) -> Callable[[Loader], Loader]:
    return DATASETS.register(name, aliases=ALIASES.get(name, ()))  # type: ignore[return-value]


def resize_square(images: torch.Tensor, size: int, chunk: int = 2048) -> torch.Tensor:
    """uint8 N×C×H×W -> N×C×size×size: short side to `size` (bilinear, antialiased), then center crop."""
    if images.shape[-2:] == (size, size):
        return images
    from torchvision.transforms.v2 import functional as F

    out = []
    for i in range(0, len(images), chunk):
        x = F.resize(images[i:i + chunk], [size], antialias=True)
        out.append(F.center_crop(x, [size, size]))
    return torch.cat(out) if out else images.new_empty((0, images.shape[1], size, size))


def _from_arrays(req: Request, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]) -> ImageDataset:
    """Select classes, wrap with the facts-table normalisation."""
    images, labels, names = select_classes(images, labels, classes, req.classes, req.info.name)
    return ImageDataset(images, labels, names, req.info.mean, req.info.std, req.info.name, req.split)


def _cached_array_source(req: Request, fingerprint: Dict[str, Any],
                         build_raw: Callable[[], Tuple[np.ndarray, np.ndarray, List[str]]]) -> ImageDataset:
    """Cache (images resized to image_size, labels, classes) built by `build_raw`, then select classes."""
    split = "train" if req.train else "test"

    def build():
        images, labels, classes = build_raw()
        if req.image_size:
            images = resize_square(torch.from_numpy(np.ascontiguousarray(images)), req.image_size).numpy()
        return images, labels, {"classes": list(classes), "source": fingerprint.get("path", str(req.data_root))}

    images, labels, meta = cached_arrays(req.cache_dir, req.name, split,
                                         {"source": fingerprint, "image_size": req.image_size}, build)
    return _from_arrays(req, images, labels, meta["classes"])


# -- digits (embedded in scikit-learn) ---------------------------------------------------------------
@_register("digits")
def load_digits_split(req: Request) -> ImageDataset:
    """sklearn's 1,797 8×8 digits, split 80/20 stratified (random_state=0); no cache needed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = np.round(d.images * 255.0 / 16.0).astype(np.uint8)[:, None]  # 0..16 -> 0..255
    train_idx, test_idx = train_test_split(np.arange(len(d.target)), test_size=0.2, random_state=0, stratify=d.target)
    idx = np.sort(train_idx if req.train else test_idx)  # keep sklearn's original order within a split
    x = torch.from_numpy(images[idx])
    if req.image_size:
        x = resize_square(x, req.image_size)
    return _from_arrays(req, x, torch.from_numpy(d.target[idx].astype(np.int64)), CLASS_NAMES["digits"])


# -- MNIST / Fashion-MNIST: IDX files read directly ---------------------------------------------------
def read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX file (optionally gzipped) as a numpy array of its declared shape."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DDKitError(f"{path} is not an IDX file (bad magic number)")
    dtype_code, ndim = data[2], data[3]
    if dtype_code != 0x08:
        raise DDKitError(f"{path}: IDX element type 0x{dtype_code:02x} not supported (expected unsigned byte)")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise DDKitError(f"{path} is truncated: header says {dims}, found {len(data) - offset} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _find_idx(dirs: Sequence[Path], prefix: str) -> Optional[Tuple[Path, Path]]:
    """First dir holding both <prefix>-images-idx3-ubyte[.gz] and <prefix>-labels-idx1-ubyte[.gz]."""
    for d in dirs:
        found = []
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            cands = [d / f"{prefix}-{kind}{ext}" for ext in (".gz", "")]
            found.append(next((p for p in cands if p.is_file()), None))
        if all(found):
            return found[0], found[1]  # type: ignore[return-value]
    return None


def _idx_source(req: Request, tv_folder: str, extra_dirs: Sequence[Path], missing_hint: str) -> ImageDataset:
    root = req.data_root
    dirs = [root, root / tv_folder / "raw", *extra_dirs]
    prefix = "train" if req.train else "t10k"
    files = _find_idx(dirs, prefix)
    if files is None and req.download:
        import torchvision.datasets as tvd

        getattr(tvd, tv_folder)(str(root), train=req.train, download=True)  # fetches into root/<folder>/raw
        files = _find_idx(dirs, prefix)
    if files is None:
        where = ", ".join(str(d) for d in dirs)
        raise DDKitError(f"{req.info.name} {prefix}-*-idx*-ubyte[.gz] not found in {where}; {missing_hint}")
    img_path, lab_path = files

    def build_raw():
        images, labels = read_idx(img_path), read_idx(lab_path)
        if images.ndim != 3 or len(images) != len(labels):
            raise DDKitError(f"{img_path} / {lab_path} do not match (shapes {images.shape}, {labels.shape})")
        return images[:, None], labels.astype(np.int64), CLASS_NAMES[req.name]

    fp = {"images": file_fingerprint(img_path), "labels": file_fingerprint(lab_path), "path": str(img_path.parent)}
    return _cached_array_source(req, fp, build_raw)


@_register("mnist")
def load_mnist(req: Request) -> ImageDataset:
    """MNIST from IDX files in root or root/MNIST/raw (torchvision's layout); --download fetches them."""
    return _idx_source(req, "MNIST", (), "pass --download (needs internet) or give --data-root <folder with the IDX files>")


@_register("fashion-mnist")
def load_fashion_mnist(req: Request) -> ImageDataset:
    """Fashion-MNIST from root, root/FashionMNIST/raw, then the Debian package's folder."""
    return _idx_source(req, "FashionMNIST", (FASHION_MNIST_SYSTEM_DIR,),
                       "run `apt-get install -y dataset-fashion-mnist` (offline copy), pass --download "
                       "(needs internet) or give --data-root <folder with the IDX files>")


# -- torchvision sets: CIFAR-10/100, SVHN ----------------------------------------------------------------
def _folder_layout(root: Path) -> Optional[str]:
    """'tar' / 'folder' when root is an archive or an ImageFolder tree rather than torchvision's files."""
    if root.is_file() and tarfile.is_tarfile(root):
        return "tar"
    if root.is_dir() and any((root / d).is_dir() for s in ("train", "test") for d in split_dir_candidates(s)):
        return "folder"
    return None


def _torchvision_source(req: Request, cls_name: str, marker: str, allow_folder: bool) -> ImageDataset:
    """A torchvision dataset class whose files (or folder) `marker` sit under the data root."""
    import torchvision.datasets as tvd

    root = req.data_root
    if allow_folder and (kind := _folder_layout(root)) is not None:
        return load_image_files(kind, root, req.split, name=req.name, classes=req.classes, image_size=req.image_size,
                                channels=req.info.channels, cache_dir=req.cache_dir, progress=req.progress,
                                stats=(req.info.mean, req.info.std))
    split = "train" if req.train else "test"
    marker_path = root / marker.format(split=split)
    construct = lambda download: (getattr(tvd, cls_name)(str(root), split=split, download=download)  # noqa: E731
                                  if cls_name == "SVHN" else
                                  getattr(tvd, cls_name)(str(root), train=req.train, download=download))
    if not marker_path.exists():
        if not req.download:
            raise DDKitError(f"{req.info.name} not found under {root}; pass --download (needs internet) "
                             f"or point --data-root at it")
        construct(True)
    if marker_path.is_dir():
        fp = {"path": str(marker_path.resolve()),
              "files": [file_fingerprint(p) for p in sorted(marker_path.iterdir()) if p.is_file()]}
    else:
        fp = file_fingerprint(marker_path)

    def build_raw():
        try:
            ds = construct(False)
        except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
            raise DDKitError(f"{req.info.name} under {root} is incomplete or corrupt ({e}); "
                             f"pass --download to fetch it again") from None
        data = np.asarray(ds.data)
        images = data if cls_name == "SVHN" else data.transpose(0, 3, 1, 2)  # SVHN is already N×C×H×W
        labels = np.asarray(ds.labels if cls_name == "SVHN" else ds.targets, dtype=np.int64)
        classes = CLASS_NAMES.get(req.name) or list(ds.classes)
        return images, labels, classes

    return _cached_array_source(req, fp, build_raw)


@_register("cifar10")
def load_cifar10(req: Request) -> ImageDataset:
    """CIFAR-10 via torchvision, or an ImageFolder tree / .tar.gz of one at --data-root."""
    return _torchvision_source(req, "CIFAR10", "cifar-10-batches-py", allow_folder=True)


@_register("cifar100")
def load_cifar100(req: Request) -> ImageDataset:
    """CIFAR-100 via torchvision (fine labels), or an ImageFolder tree / tar at --data-root."""
    return _torchvision_source(req, "CIFAR100", "cifar-100-python", allow_folder=True)


@_register("svhn")
def load_svhn(req: Request) -> ImageDataset:
    """SVHN (cropped digits) via torchvision's train/test_32x32.mat."""
    return _torchvision_source(req, "SVHN", "{split}_32x32.mat", allow_folder=False)


# -- Tiny-ImageNet (decoded, cached) and the ImageNet family (file-backed) ----------------------------------
@_register("tiny-imagenet")
def load_tiny(req: Request) -> ImageDataset:
    """Tiny-ImageNet-200 from its official layout; 'test' reads val/ (the official test/ is unlabelled)."""
    root = req.root if req.root is not None else default_data_root() / "tiny-imagenet-200"
    return load_tiny_imagenet(Path(root), req.split, classes=req.classes, image_size=req.image_size,
                              cache_dir=req.cache_dir, progress=req.progress, stats=(req.info.mean, req.info.std))


def _file_backed(req: Request) -> ImageDataset:
    return load_file_backed(req.root, req.split, info=req.info, classes=req.classes, image_size=req.image_size,
                            cache_dir=req.cache_dir)


for _name in ("imagenet", "imagenette", "imagewoof"):
    _register(_name)(_file_backed)
