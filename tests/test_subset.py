"""`--max-per-class` / `--classes`: a seeded class-balanced subset of the train split, recorded in outputs."""
from __future__ import annotations

import json

import pytest
import torch

from ddkit.cli import main
from ddkit.data import class_balanced_subset
from ddkit.utils import DDKitError
from tests.conftest import make_toy

DIGITS = ["--dataset", "digits", "--device", "cpu", "--no-progress"]


def test_subset_is_balanced_seeded_and_per_class_independent():
    ds = make_toy(n_per_class=20, num_classes=4)
    a, b = class_balanced_subset(ds, 5), class_balanced_subset(ds, 5)
    assert a.class_counts() == [5] * 4 and torch.equal(a.images, b.images)
    assert not torch.equal(class_balanced_subset(ds, 5, seed=1).images, a.images)
    # Class 0's draw does not depend on what the other classes hold.
    small = ds.subset(torch.nonzero(ds.labels <= 1).squeeze(1))
    assert torch.equal(class_balanced_subset(small, 5).images[:5], a.images[:5])
    assert class_balanced_subset(ds, 100).class_counts() == [20] * 4  # fewer than N: all of them
    with pytest.raises(DDKitError):
        class_balanced_subset(ds, 0)


def test_distill_records_subset_and_class_order(tmp_path):
    out = tmp_path / "set"
    rc = main(["distill", *DIGITS, "--classes", "7,1,3", "--max-per-class", "6", "--ipc", "2",
               "--output", str(out)])
    assert rc == 0
    meta = json.loads((out / "meta.json").read_text())
    sub = meta["data_subset"]
    assert sub["max_per_class"] == 6 and sub["classes"] == ["7", "1", "3"] and sub["per_class"] == [6, 6, 6]
    assert sub["images"] == 18 and sub["seed"] == 0
    from ddkit.distilled import load_distilled

    assert list(load_distilled(out).classes) == ["7", "1", "3"]


def test_full_run_records_no_subset(tmp_path):
    out = tmp_path / "set"
    assert main(["distill", *DIGITS, "--ipc", "1", "--output", str(out)]) == 0
    assert json.loads((out / "meta.json").read_text())["data_subset"] is None


def test_unknown_class_is_one_line(tmp_path, capsys):
    assert main(["distill", *DIGITS, "--classes", "1,nope", "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]


def test_teacher_and_evaluate_record_subset(tmp_path):
    t = tmp_path / "teacher"
    assert main(["teacher", "train", *DIGITS, "--max-per-class", "10", "--model", "convnet-d1", "--epochs", "1",
                 "--output", str(t)]) == 0
    assert "max 10/class" in json.loads((tmp_path / "teacher.json").read_text())["dataset"]
    s, ev = tmp_path / "set", tmp_path / "eval"
    assert main(["distill", *DIGITS, "--max-per-class", "10", "--ipc", "1", "--output", str(s)]) == 0
    assert main(["evaluate", str(s), *DIGITS, "--max-per-class", "10", "--regime", "hl", "--epochs", "1",
                 "--seeds", "1", "--output", str(ev)]) == 0
    rec = json.loads((ev / "data_subset.json").read_text())
    assert rec["per_class"] == [10] * 10 and rec["split"] == "train"


def test_teacher_at_chance_after_a_smoke_schedule_is_saved_with_a_warning(tmp_path):
    # 1 epoch of 100 images is a single optimizer step: at chance by design, so it is saved, with a warning.
    t = tmp_path / "teacher"
    with pytest.warns(UserWarning, match="too short to judge"):
        assert main(["teacher", "train", *DIGITS, "--max-per-class", "10", "--model", "convnet-d1", "--epochs", "1",
                     "--lr", "1e-6", "--output", str(t)]) == 0
    assert (tmp_path / "teacher.json").exists()


def test_teacher_at_chance_after_a_real_schedule_is_refused(tmp_path, capsys):
    # 60 steps at a vanishing lr leaves the network at chance: that is a failed training, refused with its lr.
    t = tmp_path / "teacher"
    assert main(["teacher", "train", *DIGITS, "--max-per-class", "30", "--model", "convnet-d1", "--epochs", "60",
                 "--batch-size", "256", "--lr", "1e-7", "--output", str(t)]) == 2
    err = capsys.readouterr().err
    assert "did not converge" in err and "nothing was saved" in err
    assert not (tmp_path / "teacher.json").exists()
