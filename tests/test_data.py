"""Data stage tests on tiny generated fixtures (never /work/shared)."""
from __future__ import annotations

import gzip
import io
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ddkit.data as D
import ddkit.data.decode as dec
import ddkit.data.folders as folders
import ddkit.data.sources as sources
from ddkit.registry import UnknownNameError
from ddkit.utils import DDKitError

# torchvision warns on every decode call since 0.29; ddkit silences it once per process, pytest resets that.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

CLASSES = ["zebra", "ant", "moose"]  # deliberately not sorted


def _png(path: Path, value: int, size=(6, 6)) -> None:
    """A solid-colour PNG whose red channel encodes `value` (lossless, so pixels can be asserted)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, 7)).save(path)


def _value(label_name: str, k: int, split: str) -> int:
    return 10 * CLASSES.index(label_name) + k + (100 if split != "train" else 0)


def make_folder(root: Path, test_dir: str = "test", n=(3, 2)) -> Path:
    for split, count in (("train", n[0]), (test_dir, n[1])):
        for c in CLASSES:
            for k in range(count):
                _png(root / split / c / f"{k:03d}.png", _value(c, k, split))
    return root


def red(ds, i) -> int:
    return int(ds.images[i, 0, 0, 0])


@pytest.fixture()
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


def test_digits_shapes_splits_and_labels():
    tr, te = D.create_dataset("digits"), D.create_dataset("digits", split="val")
    assert tr.images.shape == (1437, 1, 8, 8) and te.images.shape == (360, 1, 8, 8)
    assert tr.images.dtype == torch.uint8 and tr.labels.dtype == torch.int64
    assert int(tr.labels.min()) == 0 and int(tr.labels.max()) == 9
    assert tr.classes == [str(i) for i in range(10)]
    assert int(tr.images.max()) == 255 and int(tr.images.min()) == 0
    assert all(35 <= c <= 37 for c in te.class_counts())  # stratified 20%
    assert D.compute_mean_std(tr.images) == (tr.mean, tr.std) == ((0.3054,), (0.376,))
    assert D.create_dataset("digits", image_size=16).images.shape[-2:] == (16, 16)


def test_folder_sorted_classes_labels_and_stats(tmp_path, cache):
    root = make_folder(tmp_path / "imgs")
    tr = D.create_dataset(f"folder:{root}", cache_dir=cache, progress=False)
    assert tr.classes == sorted(CLASSES) and len(tr) == 9 and tr.images.shape[1:] == (3, 6, 6)
    for i in range(len(tr)):
        name = tr.classes[int(tr.labels[i])]
        assert red(tr, i) == _value(name, i % 3, "train")  # ordered by class then file name
    reds = np.array([_value(c, k, "train") for c in CLASSES for k in range(3)]) / 255.0
    assert tr.mean[0] == pytest.approx(reds.mean(), abs=1e-4) and tr.std[0] == pytest.approx(reds.std(), abs=1e-4)
    assert tr.mean[2] == pytest.approx(7 / 255, abs=1e-4)
    te = D.create_dataset(f"folder:{root}", split="val", cache_dir=cache, progress=False)  # val -> test/
    assert len(te) == 6 and te.mean == tr.mean and te.classes == tr.classes
    assert [red(te, i) for i in range(len(te))] == [_value(c, k, "test") for c in sorted(CLASSES) for k in range(2)]


def test_folder_val_dir_serves_test_split(tmp_path, cache):
    root = make_folder(tmp_path / "imgs", test_dir="val")
    te = D.create_dataset(f"folder:{root}", split="test", cache_dir=cache, progress=False)
    assert len(te) == 6 and red(te, 0) == _value("ant", 0, "val")


def test_explicit_class_order_and_missing_class(tmp_path, cache):
    root = make_folder(tmp_path / "imgs")
    ds = D.create_dataset(f"folder:{root}", classes=["zebra", "ant"], cache_dir=cache, progress=False)
    assert ds.classes == ["zebra", "ant"] and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert red(ds, 0) == _value("zebra", 0, "train") and red(ds, 3) == _value("ant", 0, "train")
    with pytest.raises(DDKitError, match="'yak'"):
        D.create_dataset(f"folder:{root}", classes=["ant", "yak"], cache_dir=cache, progress=False)


def test_tar_with_top_folder_equals_folder(tmp_path, cache):
    root = make_folder(tmp_path / "set" / "mytop")
    tar_path = tmp_path / "set.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tf:
        tf.add(root, arcname="mytop")
    for split in ("train", "test"):
        a = D.create_dataset(f"folder:{root}", split=split, cache_dir=cache, progress=False)
        b = D.create_dataset(f"tar:{tar_path}", split=split, cache_dir=cache, progress=False)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
        assert (a.classes, a.mean, a.std) == (b.classes, b.mean, b.std)
    assert len(list(folders._fast_tar_files(tar_path))) == 15  # plain ustar: the hand-parsed fast path


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_tar_long_names_fast_reader_matches_tarfile(tmp_path, cache, fmt):
    long_class = "c" * 120  # > 100 chars: pax 'path' record or GNU 'L' long-name header
    for k in range(2):
        _png(tmp_path / "src" / "train" / long_class / f"{k}.png", 40 + k)
        _png(tmp_path / "src" / "train" / "b" / f"{k}.png", 80 + k)
    tar_path = tmp_path / "long.tar.gz"
    with tarfile.open(tar_path, "w:gz", format=fmt) as tf:
        tf.add(tmp_path / "src" / "train", arcname="train")
    with tarfile.open(tar_path) as tf:
        want = [(m.name, tf.extractfile(m).read()) for m in tf if m.isfile()]
    assert list(folders._fast_tar_files(tar_path)) == want
    ds = D.create_dataset(f"tar:{tar_path}", cache_dir=cache, progress=False)
    assert ds.classes == ["b", long_class] and [red(ds, i) for i in range(4)] == [80, 81, 40, 41]


def test_tar_reader_falls_back_for_hard_links(tmp_path):
    _png(tmp_path / "a.png", 5)
    tar_path = tmp_path / "links.tar"
    with tarfile.open(tar_path, "w") as tf:
        tf.add(tmp_path / "a.png", arcname="train/x/a.png")
        info = tarfile.TarInfo("train/x/b.png")
        info.type, info.linkname = tarfile.LNKTYPE, "train/x/a.png"
        tf.addfile(info)
    with pytest.raises(folders._NeedTarfile):
        list(folders._fast_tar_files(tar_path))
    got = list(folders.iter_tar_files(tar_path))  # tarfile resumes after the member already yielded
    assert [n for n, _ in got] == ["train/x/a.png", "train/x/b.png"] and got[0][1] == got[1][1]


def _write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)


def test_fashion_mnist_idx_from_root(tmp_path, cache):
    rng = np.random.default_rng(0)
    x_tr, y_tr = rng.integers(0, 256, (12, 28, 28)), rng.integers(0, 10, 12)
    x_te, y_te = rng.integers(0, 256, (5, 28, 28)), rng.integers(0, 10, 5)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", x_tr)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", y_tr)
    raw = tmp_path / "FashionMNIST" / "raw"  # torchvision's layout, uncompressed
    _write_idx(raw / "t10k-images-idx3-ubyte", x_te, gz=False)
    _write_idx(raw / "t10k-labels-idx1-ubyte", y_te, gz=False)
    tr = D.create_dataset("fashion_mnist", root=tmp_path, cache_dir=cache, progress=False)
    te = D.create_dataset("FMNIST", root=tmp_path, split="test", cache_dir=cache, progress=False)
    assert tr.images.shape == (12, 1, 28, 28) and np.array_equal(tr.images[:, 0].numpy(), x_tr)
    assert tr.labels.tolist() == y_tr.tolist() and te.labels.tolist() == y_te.tolist()
    assert np.array_equal(te.images[:, 0].numpy(), x_te)
    assert tr.classes[0] == "T-shirt/top" and tr.classes[9] == "Ankle boot" and tr.mean == (0.2860,)


def test_missing_fashion_mnist_mentions_apt(tmp_path, monkeypatch, cache):
    monkeypatch.setattr(sources, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "absent")
    with pytest.raises(DDKitError, match="apt-get install -y dataset-fashion-mnist"):
        D.create_dataset("fashion-mnist", root=tmp_path / "bogus", cache_dir=cache)


def test_missing_cifar10_says_download(tmp_path, cache):
    with pytest.raises(DDKitError, match="--download"):
        D.create_dataset("cifar10", root=tmp_path / "nothing", cache_dir=cache)


def _jpeg(path: Path, rgb, size=(64, 64)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path, "JPEG", quality=95)


def test_tiny_imagenet_val_annotations(tmp_path, cache):
    wnids = ["n02", "n01", "n03"]
    colours = {"n01": (250, 0, 0), "n02": (0, 250, 0), "n03": (0, 0, 250)}
    root = tmp_path / "tiny-imagenet-200"
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for w in wnids:
        _jpeg(root / "train" / w / "images" / f"{w}_0.JPEG", colours[w])
    lines = []
    for i, w in enumerate(["n03", "n01", "n02", "n03"]):
        _jpeg(root / "val" / "images" / f"val_{i}.JPEG", colours[w])
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    te = D.create_dataset("tiny-imagenet", root=tmp_path, split="val", cache_dir=cache, progress=False)
    assert te.classes == ["n01", "n02", "n03"] and te.images.shape == (4, 3, 64, 64)
    for i in range(len(te)):
        dominant = int(te.images[i, :, 32, 32].float().argmax())  # colour channel = class of n01/n02/n03
        assert dominant == int(te.labels[i])
    assert sorted(te.labels.tolist()) == [0, 1, 2, 2]
    tr = D.create_dataset("tiny", root=root, cache_dir=cache, progress=False)
    assert tr.labels.tolist() == [0, 1, 2] and tr.mean == (0.485, 0.456, 0.406)


def make_imagenet(root: Path) -> Path:
    for split in ("train", "val"):
        for c, rgb in (("n001", (200, 10, 10)), ("n002", (10, 200, 10))):
            for k in range(3):
                _jpeg(root / split / c / f"{c}_{k}.JPEG", rgb, size=(40 + 4 * k, 30))
    (root / "train" / "n002" / "n002_1.JPEG").write_bytes(b"\xff\xd8 not really a jpeg")
    return root


def test_file_backed_decodes_only_requested(tmp_path, monkeypatch, cache):
    root = make_imagenet(tmp_path / "imagenette2")
    ds = D.create_dataset("imagenette", root=root, image_size=16, cache_dir=cache)
    assert isinstance(ds, D.FileImageDataset) and len(ds) == 6 and ds.classes == ["n001", "n002"]
    assert ds.image_size == 16 and ds.resize_to == round(16 * 256 / 224)
    with pytest.raises(DDKitError, match="file-backed"):
        _ = ds.images
    calls = []
    real = dec.decode_image
    monkeypatch.setattr(dec, "decode_image", lambda p, *a, **k: calls.append(p) or real(p, *a, **k))
    x, idx = ds.class_images(0, 2, torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.uint8 and len(calls) == 2
    assert all("n001" in str(p) for p in calls) and int(x[:, 0].min()) > 150  # red class only
    assert torch.equal(ds.get(idx), x) and ds.get(int(idx[0])).shape == (3, 16, 16)
    with pytest.raises(DDKitError, match="n002_1.JPEG"):
        ds.class_images(1)  # the corrupt file lives in class 1 and is only touched here
    assert list(cache.glob("imagenette-train-index-*.json"))  # the path index is cached
    val = D.create_dataset("imagenette", root=root, split="test", image_size=16, cache_dir=cache)
    assert val.split == "test" and val.materialize(progress=False).images.shape == (6, 3, 16, 16)


def test_second_load_hits_cache(tmp_path, monkeypatch, cache):
    root = make_folder(tmp_path / "imgs")
    first = D.create_dataset(f"folder:{root}", cache_dir=cache, progress=False)

    def boom(*a, **k):
        raise AssertionError("decoder called on a cache hit")

    monkeypatch.setattr(dec, "decode_image", boom)
    again = D.create_dataset(f"folder:{root}", cache_dir=cache, progress=False)
    assert torch.equal(first.images, again.images) and again.mean == first.mean
    _png(root / "train" / "ant" / "999.png", 1)  # a changed source must not be served from the cache
    with pytest.raises(AssertionError, match="cache hit"):
        D.create_dataset(f"folder:{root}", cache_dir=cache, progress=False)


def test_corrupt_image_names_file_and_tar_member(tmp_path, cache):
    root = make_folder(tmp_path / "imgs")
    (root / "train" / "moose" / "bad.png").write_bytes(b"garbage, not an image")
    with pytest.raises(DDKitError, match=r"moose/bad\.png"):
        D.create_dataset(f"folder:{root}", cache_dir=cache, progress=False)
    tar_path = tmp_path / "imgs.tar"
    with tarfile.open(tar_path, "w") as tf:
        tf.add(root, arcname="top")
    with pytest.raises(DDKitError, match=r"imgs\.tar:top/train/moose/bad\.png"):
        D.create_dataset(f"tar:{tar_path}", cache_dir=cache, progress=False)


def test_unknown_name_lists_known():
    with pytest.raises(UnknownNameError) as e:
        D.create_dataset("cifar11")
    assert "cifar10" in str(e.value) and "digits" in str(e.value) and "folder:" in str(e.value)
    assert "fashion-mnist" in D.list_datasets() and D.dataset_info("CIFAR-10").image_size == 32
    with pytest.raises(DDKitError, match="split"):
        D.create_dataset("digits", split="dev")


def test_decode_pool_keeps_order():
    def png_bytes(v: int) -> bytes:
        b = io.BytesIO()
        Image.new("RGB", (4, 4), (v % 256, v // 256, 0)).save(b, "PNG")
        return b.getvalue()

    n = 2 * dec.CHUNK + 37  # several chunks: goes through the worker pool
    items = [(f"img{i}", png_bytes(i)) for i in range(n)]
    out = dec.decode_many(items, 4, "RGB", progress=False, workers=2)
    got = out[:, 0, 0, 0].astype(int) + 256 * out[:, 1, 0, 0].astype(int)
    assert out.shape == (n, 3, 4, 4) and got.tolist() == list(range(n))


def test_cifar10_from_image_folder_root_uses_known_stats(tmp_path, cache):
    root = make_folder(tmp_path / "cifar-folder")
    ds = D.create_dataset("cifar-10", root=root, split="test", classes=["moose", "ant"], cache_dir=cache,
                          progress=False)
    assert ds.name == "cifar10" and ds.classes == ["moose", "ant"] and len(ds) == 4
    assert ds.mean == (0.4914, 0.4822, 0.4465)  # the facts table, not the folder's own statistics


def test_truncated_archive_is_a_user_error(tmp_path, cache):
    root = make_folder(tmp_path / "imgs")
    tar_path = tmp_path / "imgs.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tf:
        tf.add(root, arcname="top")
    tar_path.write_bytes(tar_path.read_bytes()[:200])
    with pytest.raises(DDKitError, match="imgs.tar.gz"):
        D.create_dataset(f"tar:{tar_path}", cache_dir=cache, progress=False)
