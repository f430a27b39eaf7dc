"""Smoke test of bench/topk_labels.py on a generated folder dataset: every variant is trained and written,
top-k with k = all classes reproduces the full store exactly, and reruns resume instead of retraining."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from ddkit.distilled import DistilledSet
from ddkit.labels import label_store_nbytes
from ddkit.teachers import TeacherConfig, save_teacher, train_teacher
from ddkit.utils import DDKitError
from tests.conftest import load_bench_script, make_toy

K, S = 4, 8


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory, one_thread):
    """A folder dataset (train/ and test/), a 2-per-class set of its train images, and a tiny saved teacher."""
    root = tmp_path_factory.mktemp("topk")
    data = root / "data"
    for split, seed in (("train", 0), ("test", 1)):
        ds = make_toy(n_per_class=6, num_classes=K, size=S, seed=seed, split=split)
        for i, (img, y) in enumerate(zip(ds.images, ds.labels)):
            d = data / split / ds.classes[int(y)]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(d / f"{i}.png")
    toy = make_toy(n_per_class=6, num_classes=K, size=S, seed=0)
    idx = torch.cat([torch.nonzero(toy.labels == c)[:2, 0] for c in range(K)])
    DistilledSet(toy.images[idx].float() / 255, toy.labels[idx], toy.classes, toy.mean, toy.std).save(
        root / "set", pngs=False)
    cfg = TeacherConfig(arch="convnet-d2", arch_kw={"width": 8}, epochs=6, batch_size=8, lr=0.05, seed=0)
    teacher, _ = train_teacher(toy, None, cfg, "cpu", progress=False)  # must pass the bench's sanity check
    save_teacher(teacher, root / "teacher")
    return root


def _argv(root: Path, *extra: str) -> list:
    return ["--dataset", f"folder:{root / 'data'}", "--cache-dir", str(root / "cache"), "--teacher",
            str(root / "teacher"), "--set", str(root / "set"), "--output", str(root / "out.json"),
            "--store-dir", str(root / "stores"), "--device", "cpu", "--no-progress", "--epochs", "2",
            "--batch-size", "4", "--seeds", "2", "--ks", f"1,{K}", "--fills", "uniform,neg_inf", *extra]


def test_topk_bench_end_to_end(files):
    bench = load_bench_script("topk_labels.py")
    assert bench.main(_argv(files)) == 0
    res = json.loads((files / "out.json").read_text())
    assert {"command", "git_revision", "machine", "protocol", "data", "teacher"} <= set(res)
    got = res["sets"]["set"]["variants"]
    names = {"online", "full_fp16"} | {f"top{k}_{f}" for k in (1, K) for f in ("uniform", "neg_inf")}
    assert set(got) == names
    for name, v in got.items():
        assert v["seeds"] == [0, 1] and len(v["accs"]) == 2 and 0 <= v["mean"] <= 1 and v["std"] >= 0
        k = v["topk"]
        assert v["store_bytes"] == (0 if v["online"] else label_store_nbytes(2, 2 * K, K, k))
        if not v["online"]:
            assert v["projected_imagenet1k_ipc10_300ep_bytes"] == label_store_nbytes(300, 10_000, 1000, k)
            assert v["target_tv"] >= 0
    assert got["full_fp16"]["projected_imagenet1k_ipc10_300ep_bytes"] == 6_000_000_000
    # top-K keeps every logit: the same targets, hence bit-identical students
    for fill in ("uniform", "neg_inf"):
        assert got[f"top{K}_{fill}"]["accs"] == got["full_fp16"]["accs"]
        assert got[f"top{K}_{fill}"]["final_losses"] == got["full_fp16"]["final_losses"]
        assert got[f"top{K}_{fill}"]["target_tv"] == pytest.approx(got["full_fp16"]["target_tv"], abs=1e-9)
    assert got["top1_uniform"]["teacher_mass_outside_topk"] > got[f"top{K}_uniform"]["teacher_mass_outside_topk"]

    table = bench.markdown_table(res)
    assert all(f"| {n} |" in table for n in names) and "6 GB" in table

    # a rerun resumes (nothing retrained); another protocol is refused rather than mixed into the file
    assert bench.main(_argv(files)) == 0
    again = json.loads((files / "out.json").read_text())["sets"]["set"]["variants"]
    assert all(again[n]["seconds"] == got[n]["seconds"] for n in names)
    with pytest.raises(DDKitError, match="another protocol"):
        bench.main(_argv(files, "--temperature", "2"))
