"""The parity pairs' draw-level verdicts (issue #27): bench/parity/common.draw_fold folds one accuracy per
distillation draw (the row's own set first, then every extra seed judged) per side and applies the pass rule to
those, so the set-level spread a single pair cannot see is inside the tolerance; RDED (rded_diag.py), MTT
(mtt_pair.py draws) and DATM (datm_pair.py draws: tests/test_parity_datm_pair.py) use it. Built on fake run folders:
no official code."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

PARITY = Path(__file__).resolve().parents[1] / "bench" / "parity"


@pytest.fixture()
def diag(monkeypatch):
    monkeypatch.syspath_prepend(str(PARITY))
    for name in ("rded_diag", "rded_pair", "selection_pair", "selection_common", "common"):
        sys.modules.pop(name, None)
    import rded_diag
    return rded_diag


def _judged(w: Path, side: str, acc: float, with_set: bool = True) -> None:
    out = w / f"eval_ddkit_{side}" / "seed0"
    out.mkdir(parents=True)
    (out / "summary.json").write_text(json.dumps({"results": [{"set": "distilled", "accs": [acc / 100]}]}))
    if with_set:
        (w / f"{side}_set").mkdir()


def test_draw_level_verdict_uses_every_judged_draw(diag, tmp_path):
    _judged(tmp_path, "ddkit", 44.0, with_set=False)  # the row's sets: student seed 0 of the pair's judge
    _judged(tmp_path, "official", 47.0, with_set=False)
    _judged(tmp_path, "ddkit_jpeg", 43.0)
    for k, acc in ((1, 45.0), (2, 46.0)):
        _judged(tmp_path, f"ddkit_seed{k}", acc)
    _judged(tmp_path, "official_seed3", 48.0)
    (tmp_path / "official_seed4_set").mkdir()  # built, not judged yet: left out, not counted as 0
    out = diag.diagnostics(tmp_path)
    d = out["draws"]
    assert d["ddkit"]["per_draw"] == [44.0, 45.0, 46.0] and d["official"]["per_draw"] == [47.0, 48.0]
    assert d["ddkit"]["mean"] == 45.0 and d["official"]["mean"] == 47.5 and d["official"]["std"] == 0.5
    # |45.0 - 47.5| = 2.5 > max(1, 2 x 0.82): fails; the jpeg check is a diagnostic, never a draw
    assert d["verdict"] == {"delta": -2.5, "tolerance": 1.64, "pass": False}
    assert out["ddkit_jpeg"]["ddkit_judge_student_seed0"] == 43.0 and "official_seed4" not in out


def test_no_verdict_from_one_draw_a_side(diag, tmp_path):
    _judged(tmp_path, "ddkit", 44.0, with_set=False)
    _judged(tmp_path, "official", 47.0, with_set=False)
    _judged(tmp_path, "ddkit_seed1", 45.0)
    assert "draws" not in diag.diagnostics(tmp_path)  # the official side has one draw: no spread to judge by


@pytest.fixture()
def mtt(monkeypatch):
    monkeypatch.syspath_prepend(str(PARITY))
    for name in ("mtt_pair", "mtt_setup", "common"):
        sys.modules.pop(name, None)
    import mtt_pair
    return mtt_pair


def _mtt_args(tmp_path):
    """The MTT lr_img-1000 pair's options (mtt_setup.opts), pointing at a scratch runs folder."""
    import argparse
    return argparse.Namespace(ipc=10, iterations=6, batch_syn=50, lr_img=1000.0, runs=str(tmp_path), buffer="b",
                              seeds=3, eval_epochs=60, experts=3, expert_epochs_trained=12, expert_batch=16,
                              max_start_epoch=10, together=False, draw=0)


def test_mtt_draws_name_their_sets_and_seeds(mtt, tmp_path):
    import mtt_setup
    a = _mtt_args(tmp_path)
    assert mtt_setup.draw_name(a, "ddkit") == "ddkit" and mtt_setup.official_dir(a).name == "official"
    argv = mtt_setup.ddkit_argv(a)
    assert argv[argv.index("--seed") + 1] == "0" and argv[argv.index("--output") + 1].endswith("/ddkit_set")
    a.draw = 3
    assert mtt_setup.draw_name(a, "official") == "official_seed3"
    assert mtt_setup.official_dir(a).name == "official_seed3_run"  # not a *_set: never counted as a draw
    argv = mtt_setup.ddkit_argv(a)
    assert argv[argv.index("--seed") + 1] == "3" and argv[argv.index("--output") + 1].endswith("/ddkit_seed3_set")


def test_mtt_draws_go_into_the_existing_row_only(mtt, tmp_path, monkeypatch):
    import common
    a = _mtt_args(tmp_path)
    w = mtt.workdir(a)
    w.mkdir(parents=True)
    (w / "official_seed1_run").mkdir()
    for side, acc in (("ddkit", 32.0), ("official", 34.0), ("ddkit_seed1", 34.0), ("official_seed1", 33.0)):
        _judged(w, side, acc, with_set=side.endswith("seed1"))
    results = tmp_path / "results"
    results.mkdir()
    row = {"command": "by hand", "speed": {"how": "a note written by hand"}, "ddkit_revision": "abc"}
    (results / "parity_mtt.json").write_text(json.dumps({"rows": {"ipc10-lrimg1000": row, "ipc1": {"x": 1}}}))
    monkeypatch.setattr(mtt, "RESULTS", results)
    mtt.add_draws(a)
    doc = json.loads((results / "parity_mtt.json").read_text())
    got = doc["rows"]["ipc10-lrimg1000"]
    assert {k: got[k] for k in row} == row and doc["rows"]["ipc1"] == {"x": 1}  # the rest untouched
    d = got["diagnostics"]["draws"]
    assert d["ddkit"]["per_draw"] == [32.0, 34.0] and d["official"]["per_draw"] == [34.0, 33.0]
    assert d["verdict"] == {"delta": -0.5, "tolerance": 2.0, "pass": True}
    assert common.draw_seeds(w, "official_seed") == [1]


def test_exclusive_lock_serialises_holders(tmp_path):
    sys.path.insert(0, str(PARITY))
    import fcntl
    import common
    lock = tmp_path / "mem.lock"
    with common.exclusive(str(lock)):
        with open(lock) as other:  # a second holder cannot take it while the block runs
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(lock) as other:  # released after the block
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with common.exclusive(None):  # no lock asked: a plain block
        pass


def test_mtt_experts_start_draws_fold_apart_from_the_row(mtt, tmp_path, monkeypatch):
    """--ddkit-start experts names ddkit's sets ddkit_xs[_seedK] (same --seed K), so they never count as the row's
    ddkit draws, and fold against the official draws into diagnostics.experts_start."""
    import mtt_setup
    a = _mtt_args(tmp_path)
    a.ddkit_start = "experts"
    assert mtt_setup.draw_name(a, "ddkit") == "ddkit_xs" and mtt_setup.draw_name(a, "official") == "official"
    a.draw = 2
    argv = mtt_setup.ddkit_argv(a)
    assert argv[argv.index("--seed") + 1] == "2" and argv[argv.index("--output") + 1].endswith("/ddkit_xs_seed2_set")
    a.draw, a.ddkit_start = 0, "all"
    w = mtt.workdir(a)
    w.mkdir(parents=True)
    for side, acc in (("ddkit", 32.0), ("official", 34.0), ("official_seed1", 33.0), ("ddkit_xs", 34.5),
                      ("ddkit_xs_seed1", 33.5)):
        _judged(w, side, acc, with_set=side.endswith("seed1"))
    results = tmp_path / "results"
    results.mkdir()
    (results / "parity_mtt.json").write_text(json.dumps({"rows": {"ipc10-lrimg1000": {"command": "x"}}}))
    monkeypatch.setattr(mtt, "RESULTS", results)
    mtt.add_draws(a)
    diag = json.loads((results / "parity_mtt.json").read_text())["rows"]["ipc10-lrimg1000"]["diagnostics"]
    assert "draws" not in diag  # the row's ddkit side has one draw: the xs sets are not its draws
    x = diag["experts_start"]
    assert x["ddkit"]["per_draw"] == [34.5, 33.5] and x["official"]["per_draw"] == [34.0, 33.0]
    assert x["verdict"] == {"delta": 0.5, "tolerance": 1.0, "pass": True}


@pytest.mark.parametrize("step", ["draws", "all", "official-distill"])
def test_mtt_ddkit_start_is_refused_outside_the_ddkit_distill_step(mtt, step, capsys, monkeypatch):
    """`draws --ddkit-start experts` would look for ddkit_xs sets its subprocesses never write: one line, exit 2,
    before anything runs (configure, the first thing a step does, is never reached)."""
    def reached(a):
        raise AssertionError(f"{step} went on with --ddkit-start experts")
    monkeypatch.setattr(mtt, "configure", reached)
    with pytest.raises(SystemExit) as e:
        mtt.main([step, "--ddkit-start", "experts"])
    assert e.value.code == 2 and "experts-start" in capsys.readouterr().err
