"""Interop: peers' sets in (RDED/SRe2L ImageFolder, DD-Ranking/DC-Bench tensors, safetensors), ddkit sets out.

Round trips are exact where the format can be (tensor formats, PNG of k/255 pixels); a peer-style set
evaluates under ddkit with its own class order checked: mapping the folders right beats a shifted map.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ddkit.cli import main
from ddkit.data import create_dataset
from ddkit.distilled import DistilledSet, load_distilled
from ddkit.interop import export_set, import_set, map_class_folders
from ddkit.utils import DDKitError

DIGITS = ["--dataset", "digits", "--device", "cpu", "--no-progress"]
EVAL = ["--regime", "hl", "--recipe", "dc", "--dsa", "none", "--student", "convnet-d2", "--epochs", "2", "--seeds", "1"]


@pytest.fixture(scope="module")
def real_set():
    """10 real digits per class, uint8 (what RDED/SRe2L folders hold) and their classes."""
    train = create_dataset("digits", split="train", progress=False)
    g = torch.Generator().manual_seed(0)
    idx = torch.cat([train.class_indices(c)[torch.randperm(len(train.class_indices(c)), generator=g)[:10]]
                     for c in range(10)])
    return train.images[idx], train.labels[idx], train


def _write_folder(root, images, labels, name_of):
    for i, (x, y) in enumerate(zip(images, labels)):
        d = root / name_of(int(y))
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[0].numpy()).save(d / f"class{int(y):05d}_id{i:05d}.png")


def _acc(set_dir, out, epochs: int = 15) -> float:
    """HL test accuracy of a short DC-protocol run (no DSA, 15 epochs: seconds on digits)."""
    from ddkit.evaluate import EvalConfig, run_evaluation

    cfg = EvalConfig(recipe="dc", regime="hl", student="convnet-d2", epochs=epochs, seeds=1, dsa="none")
    test = create_dataset("digits", split="test", progress=False)
    run_evaluation(str(set_dir), cfg, test=test, output=str(out), device="cpu", progress=False)
    return json.loads((out / "summary.json").read_text())["results"][0]["mean"]


def test_class_folder_mapping_rules():
    classes = ["cat", "dog", "owl"]
    assert map_class_folders(["owl", "cat"], classes) == {"owl": 2, "cat": 0}            # by name
    assert map_class_folders(["00000", "00002"], classes) == {"00000": 0, "00002": 2}    # RDED indices
    assert map_class_folders(["new001", "new002"], classes) == {"new001": 1, "new002": 2}  # SRe2L
    assert map_class_folders(["001_dog"], classes) == {"001_dog": 1}                     # ddkit, checked
    for bad in (["002_dog"], ["00007"], ["zebra"], ["1", "001"]):
        with pytest.raises(DDKitError):
            map_class_folders(bad, classes)


def test_rded_style_folder_evaluates_with_its_class_order(real_set, tmp_path):
    images, labels, _ = real_set
    rded, shifted = tmp_path / "rded" / "syn_data", tmp_path / "shifted"
    _write_folder(rded, images, labels, lambda c: f"{c:05d}")
    _write_folder(shifted, images, labels, lambda c: f"{(c + 1) % 10:05d}")  # a wrong label sequence
    for src, name in ((rded, "set"), (shifted, "bad")):
        assert main(["import", str(src), *DIGITS, "--method", "rded", "--output", str(tmp_path / name)]) == 0
    s = load_distilled(tmp_path / "set")
    assert s.meta["imported"]["class_map"]["00003"] == "3" and s.meta["method"] == "rded"
    order = torch.argsort(labels, stable=True)
    assert torch.equal(s.images, images[order].float() / 255) and torch.equal(s.labels, labels[order])
    bad = load_distilled(tmp_path / "bad")  # the same files under a shifted label sequence
    assert torch.equal(bad.images, s.images[torch.argsort((s.labels + 1) % 10, stable=True)])
    assert _acc(tmp_path / "set", tmp_path / "ev_set") > 0.5  # real digits, right labels: far above chance


def test_ddranking_tensor_file_imports_and_evaluates(real_set, tmp_path):
    images, labels, train = real_set
    x = images.float() / 255
    m, s = torch.tensor(train.mean).view(1, -1, 1, 1), torch.tensor(train.std).view(1, -1, 1, 1)
    src = tmp_path / "datm" / "CIFAR10" / "ipc10"
    src.mkdir(parents=True)
    torch.save((x - m) / s, src / "images.pt")  # MTT/DATM store normalised images
    torch.save(labels.clone(), src / "labels.pt")
    assert main(["import", str(src), *DIGITS, "--output", str(tmp_path / "set")]) == 0
    got = load_distilled(tmp_path / "set")
    assert torch.allclose(got.images, x, atol=1e-6) and torch.equal(got.labels, labels)
    assert got.meta["imported"]["pixel_space"] == "normalized"
    _acc(tmp_path / "set", tmp_path / "ev", epochs=2)  # check_classes passes: the set's order is the dataset's
    # DC-Bench / DC's own save: {"data": [[images, labels]]}, soft labels as N×K logits -> hard = argmax.
    dc = tmp_path / "dc"
    dc.mkdir()
    torch.save({"data": [[x, torch.nn.functional.one_hot(labels, 10).float() * 5]]}, dc / "images.pt")
    d = import_set(dc, dataset=create_dataset("digits", split="test", progress=False), pixel_space="unit")
    assert torch.equal(d.images, x) and torch.equal(d.labels, labels) and d.soft["soft"].shape == (100, 10)


def test_tensor_file_with_code_is_refused(tmp_path):
    (tmp_path / "x").mkdir()
    torch.save({"data": [[argparse.Namespace(a=1), None]]}, tmp_path / "x" / "images.pt")
    with pytest.raises(DDKitError, match="weights_only"):
        import_set(tmp_path / "x", dataset=create_dataset("digits", split="test", progress=False))


def _optimised_set() -> DistilledSet:
    g = torch.Generator().manual_seed(1)
    imgs = torch.rand(6, 1, 8, 8, generator=g) * 1.6 - 0.3  # LIC-like: leaves [0,1], not k/255
    return DistilledSet(imgs, torch.tensor([0, 0, 1, 1, 2, 2]), ["a", "b", "c"], [0.3], [0.37],
                        soft={"soft": torch.randn(6, 3, generator=g)}, meta={"method": "lic", "dataset": "toy"})


@pytest.mark.parametrize("fmt,space", [("safetensors", None), ("ddranking", "unit"), ("ddranking", "normalized")])
def test_export_import_round_trip_of_exact_floats(tmp_path, fmt, space):
    ds = _optimised_set()
    export_set(ds, tmp_path / "out", fmt, pixel_space=space)
    back = import_set(tmp_path / "out")  # the export carries classes and mean/std itself
    assert back.classes == ds.classes and torch.equal(back.labels, ds.labels)
    assert torch.equal(back.soft["soft"], ds.soft["soft"])
    if space == "normalized":  # (x-m)/s then x·s+m: float32 rounding only
        assert torch.allclose(back.images, ds.images, atol=1e-6, rtol=0)
    else:
        assert torch.equal(back.images, ds.images)
    assert "LOSSY" not in (tmp_path / "out" / "README.md").read_text()


def test_png_export_is_marked_lossy_for_optimised_sets(tmp_path):
    export_set(_optimised_set(), tmp_path / "png", "imagefolder")
    text = (tmp_path / "png" / "README.md").read_text()
    assert "LOSSY" in text and sorted(p.name for p in (tmp_path / "png").iterdir())[:3] == ["000_a", "001_b", "002_c"]


def test_import_evaluate_export_import_equals_original(real_set, tmp_path):
    images, labels, _ = real_set
    src = tmp_path / "src"
    _write_folder(src, images, labels, lambda c: f"new{c:03d}")  # SRe2L-style names
    assert main(["import", str(src), *DIGITS, "--output", str(tmp_path / "a")]) == 0
    assert main(["evaluate", str(tmp_path / "a"), *DIGITS, *EVAL, "--output", str(tmp_path / "ev")]) == 0
    a = load_distilled(tmp_path / "a")
    for fmt in ("imagefolder", "ddranking", "safetensors"):
        assert main(["export", str(tmp_path / "a"), "--format", fmt, "--output", str(tmp_path / fmt)]) == 0
        assert main(["import", str(tmp_path / fmt), *DIGITS, "--output", str(tmp_path / f"b_{fmt}")]) == 0
        b = load_distilled(tmp_path / f"b_{fmt}")
        tol = 1e-6 if fmt == "ddranking" else 0.0  # ddranking's default is normalised tensors
        assert torch.allclose(b.images, a.images, atol=tol, rtol=0) and torch.equal(b.labels, a.labels), fmt
        assert b.classes == a.classes
    assert "Exact" in (tmp_path / "imagefolder" / "README.md").read_text()
    orig = np.stack([np.asarray(Image.open(p)) for d in sorted(src.iterdir()) for p in sorted(d.iterdir())])
    assert np.array_equal((a.images[:, 0] * 255).round().byte().numpy(), orig)


def test_import_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "f" / "zebra").mkdir(parents=True)
    assert main(["import", str(tmp_path / "f"), *DIGITS, "--output", str(tmp_path / "o")]) == 2
    assert "zebra" in capsys.readouterr().err
    assert main(["import", str(tmp_path / "f"), "--device", "cpu", "--output", str(tmp_path / "o")]) == 2
    assert "--dataset" in capsys.readouterr().err


def test_uint8_safetensors_import_is_unit_pixels_and_comma_classes_parse(tmp_path):
    """#25 (4, 8): uint8 pixels are 0..255 by their dtype; a comma-separated `classes` header is a list."""
    from safetensors.torch import save_file

    u8 = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    save_file({"images": u8, "labels": torch.tensor([0, 0, 1, 1, 2, 2])}, str(tmp_path / "s.safetensors"),
              metadata={"classes": "a, b,c", "mean": "[0.5]", "std": "[0.25]"})
    ds = import_set(tmp_path / "s.safetensors")
    assert ds.classes == ["a", "b", "c"]
    assert torch.equal(ds.images, u8.float() / 255) and float(ds.images.max()) <= 1.0
    assert ds.meta["imported"]["pixel_scale"] == 255.0


def test_pixel_scale_flag_reads_0_255_floats(tmp_path, capsys):
    from safetensors.torch import save_file

    x = torch.randint(0, 256, (20, 1, 8, 8)).float()
    save_file({"images": x, "labels": torch.arange(10).repeat_interleave(2)}, str(tmp_path / "s.safetensors"))
    assert main(["import", str(tmp_path / "s.safetensors"), *DIGITS, "--output", str(tmp_path / "a")]) == 2
    assert "--pixel-scale 255" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert main(["import", str(tmp_path / "s.safetensors"), *DIGITS, "--pixel-scale", "255",
                 "--output", str(tmp_path / "a")]) == 0
    assert torch.allclose(load_distilled(tmp_path / "a").images, x / 255)


def test_imagefolder_missing_a_class_warns_by_name(real_set, tmp_path, capsys):
    """#25 (8): a set without class 7 imports (a choice the user may make) but never silently."""
    images, labels, _ = real_set
    keep = labels != 7
    _write_folder(tmp_path / "src", images[keep], labels[keep], lambda c: f"{c:05d}")
    assert main(["import", str(tmp_path / "src"), *DIGITS, "--output", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "warning: the imported set has no image of 1 class(es): 7" in err
    assert load_distilled(tmp_path / "a").meta["imported"]["missing_classes"] == ["7"]
