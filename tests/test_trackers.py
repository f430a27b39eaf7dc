"""Feedback: one log line per epoch, the teacher's metrics.jsonl, and --log csv|tensorboard|wandb writing the
same scalars as metrics.jsonl (wandb offline, imported only when asked)."""
from __future__ import annotations

import csv
import json
import sys
import types

import pytest

from ddkit import trackers
from ddkit.cli import main
from ddkit.evaluate import EvalConfig, evaluate
from ddkit.methods import create_method
from ddkit.teachers import TeacherConfig, train_teacher

from tests.conftest import make_toy

DIGITS = ["--dataset", "digits", "--device", "cpu"]


def _jsonl(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def _csv_by_run(path):
    out = {}
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            out.setdefault(r["run"], {}).setdefault(int(r["step"]), {})[r["name"]] = float(r["value"])
    return out


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """Two student seeds on a toy set with csv + tensorboard active and the epoch log in a file."""
    root = tmp_path_factory.mktemp("trk")
    train, test = make_toy(10, 3, 8), make_toy(5, 3, 8, seed=1, split="test")
    ds = create_method("random", ipc=2, seed=0)(train, device="cpu", progress=False)
    cfg = EvalConfig(recipe="dc", regime="hl", epochs=4, seeds=2, student="convnet-d1", student_width=8)
    with trackers.epoch_log(False, root / "epochs.log"), trackers.tracking(["csv", "tensorboard"], root / "logs"):
        evaluate(ds, test, cfg, device="cpu", progress=False, output=root / "eval", set_name="toy")
    return root


def test_csv_holds_the_same_scalars_as_metrics_jsonl(toy_run):
    rows = _csv_by_run(toy_run / "logs" / "scalars.csv")
    assert set(rows) == {"toy/convnet-d1/seed0", "toy/convnet-d1/seed1"}
    for seed in (0, 1):
        recs = _jsonl(toy_run / "eval" / f"seed{seed}" / "metrics.jsonl")
        got = rows[f"toy/convnet-d1/seed{seed}"]
        assert sorted(got) == [r["epoch"] for r in recs] == [1, 2, 3, 4]
        for r in recs:
            want = {k: v for k, v in r.items() if k not in ("epoch", "iteration")}
            assert got[r["epoch"]] == pytest.approx(want, rel=0, abs=0)  # repr() round-trips floats exactly


def test_tensorboard_holds_the_same_scalars(toy_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(toy_run / "logs" / "tensorboard" / "toy_convnet-d1_seed1"))
    acc.Reload()
    recs = _jsonl(toy_run / "eval" / "seed1" / "metrics.jsonl")
    assert {"loss", "lr", "test_acc"} <= set(acc.Tags()["scalars"])
    loss = [(e.step, e.value) for e in acc.Scalars("loss")]
    assert [s for s, _ in loss] == [r["epoch"] for r in recs]
    assert [v for _, v in loss] == pytest.approx([r["loss"] for r in recs], rel=1e-6)  # stored as float32


def test_one_log_line_per_epoch_and_run(toy_run):
    lines = (toy_run / "epochs.log").read_text().splitlines()
    assert len(lines) == 2 * 4
    assert "toy/convnet-d1/seed1 epoch 4/4: loss " in lines[-1] and " test " in lines[-1]


def test_teacher_writes_metrics_jsonl_and_an_epoch_line_each(tmp_path):
    train, test = make_toy(10, 3, 8), make_toy(5, 3, 8, seed=1, split="test")
    cfg = TeacherConfig(arch="convnet-d1", arch_kw={"width": 8}, epochs=3, batch_size=10, eval_every=2)
    with trackers.epoch_log(False, tmp_path / "e.log"), trackers.tracking(["csv"], tmp_path / "logs"):
        _, m = train_teacher(train, test, cfg, "cpu", progress=False, log_path=tmp_path / "t" / "metrics.jsonl")
    recs = _jsonl(tmp_path / "t" / "metrics.jsonl")
    assert [r["epoch"] for r in recs] == [1, 2, 3]
    assert {"loss", "lr", "seconds", "images_per_s"} <= set(recs[0]) and "test_acc" not in recs[0]
    assert recs[1]["test_acc"] == m["history"][0]["test_acc"] and recs[2]["test_acc"] == m["test_acc"]
    assert len((tmp_path / "e.log").read_text().splitlines()) == 3
    assert sorted(_csv_by_run(tmp_path / "logs" / "scalars.csv")["teacher convnet-d1"]) == [1, 2, 3]


def test_cli_evaluate_prints_an_epoch_line_per_epoch_and_logs_csv(tmp_path, capsys):
    s = tmp_path / "set"
    assert main(["distill", *DIGITS, "--no-progress", "--method", "random", "--ipc", "1", "--output", str(s)]) == 0
    ev = tmp_path / "eval"
    assert main(["evaluate", str(s), *DIGITS, "--regime", "hl", "--epochs", "3", "--seeds", "2", "--student",
                 "convnet-d1", "--student-width", "8", "--log", "csv", "--no-random", "--output", str(ev)]) == 0
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if " epoch " in x and "img/s" in x]
    assert len(lines) == 2 * 3, lines
    rows = _csv_by_run(tmp_path / "eval.logs" / "scalars.csv")
    assert sorted(rows["distilled/convnet-d1/seed1"]) == [1, 2, 3]
    assert (ev / "report.html").is_file()


def test_teacher_cli_writes_metrics_jsonl_beside_the_checkpoint(tmp_path):
    out = tmp_path / "t"
    assert main(["teacher", "train", *DIGITS, "--no-progress", "--model", "convnet-d1", "--epochs", "2",
                 "--batch-size", "256", "--output", str(out)]) == 0
    assert [r["epoch"] for r in _jsonl(tmp_path / "t.metrics.jsonl")] == [1, 2]


def test_unknown_tracker_and_missing_wandb_fail_in_one_line(tmp_path, capsys, monkeypatch):
    with pytest.raises(ValueError, match="unknown --log tracker"):
        trackers.parse_kinds("csv,mlflow")
    rc = main(["teacher", "train", *DIGITS, "--no-progress", "--epochs", "1", "--log", "mlflow",
               "--output", str(tmp_path / "t")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "unknown --log tracker" in err[0]
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    rc = main(["teacher", "train", *DIGITS, "--no-progress", "--epochs", "1", "--log", "wandb",
               "--output", str(tmp_path / "t")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "pip install wandb" in err[0]
    assert not (tmp_path / "t.safetensors").exists()  # failed before any training


def test_wandb_runs_offline_with_per_run_epoch_axes(tmp_path, monkeypatch):
    calls = {"init": None, "define": [], "log": [], "finished": False}

    class Run:
        def log(self, d):
            calls["log"].append(d)

        def finish(self):
            calls["finished"] = True

    def init(**kw):
        calls["init"] = kw
        return Run()

    fake = types.SimpleNamespace(init=init, define_metric=lambda *a, **k: calls["define"].append((a, k)))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with trackers.tracking(["wandb"], tmp_path / "w", config={"x": 1}):
        trackers.record("teacher a", {"epoch": 1, "loss": 2.0, "lr": 0.1})
        trackers.record("teacher a", {"epoch": 2, "loss": 1.0, "lr": 0.05, "test_acc": 0.5})
    assert calls["init"]["mode"] == "offline" and calls["init"]["config"] == {"x": 1}
    assert calls["log"][1] == {"teacher a/epoch": 2, "teacher a/loss": 1.0, "teacher a/lr": 0.05,
                               "teacher a/test_acc": 0.5}
    assert (("teacher a/*",), {"step_metric": "teacher a/epoch"}) in calls["define"] and calls["finished"]
