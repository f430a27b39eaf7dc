"""The hard-truths study: grid, budget-matched CAD sets, results.csv/report.md, resume skips finished cells."""
from __future__ import annotations

import csv
import json

import pytest

import ddkit.methods.cad  # noqa: F401  (registers cad-prune until the lead adds it to the built-ins)
import ddkit.study as study
from ddkit.config import add_dataclass_args, from_args
from ddkit.distilled import DistilledSet
from ddkit.study import StudyConfig, rank_table, read_results, run_study
from ddkit.utils import DDKitError

from tests.conftest import make_toy

PROXY = {"cad-prune": dict(proxy_arch="convnet-d1", proxy_width=8, proxy_batch_size=8)}
GRID = dict(ipcs=(2,), budgets=(0.5,), regimes=("hl",), methods=("random", "cad-prune"), student="convnet-d1",
            student_width=8, seeds=1)


@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = study.evaluate

    def wrapper(*a, **kw):
        calls.append(a[2])  # the EvalConfig
        return real(*a, **kw)

    monkeypatch.setattr(study, "evaluate", wrapper)
    return calls


def test_study_writes_results_and_skips_finished_cells(tmp_path, counted):
    train, test = make_toy(20, 4, 8), make_toy(10, 4, 8, seed=1, split="test")
    out = tmp_path / "ht"
    r = run_study(train, test, None, output_dir=str(out), device="cpu", progress=False, method_overrides=PROXY, **GRID)
    assert (r.evaluated, r.skipped) == (2, 0) and len(counted) == 2
    assert all(c.budget_epochs == 0.5 and c.recipe == "hardtruths-hl" and c.regime == "hl" for c in counted)
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(x["method"], x["ipc"], x["budget"], x["regime"]) for x in rows] == [
        ("random", "2", "0.5", "hl"), ("cad-prune", "2", "0.5", "hl")]
    assert all(0 <= float(x["mean"]) <= 1 and x["seeds"] == "0" and int(x["samples_seen"]) == 40 for x in rows)
    report = (out / "report.md").read_text()
    assert "Regime hl" in report and "cad-prune" in report and "Mean rank" in report
    one_seed = f"| random | {100 * float(rows[0]['mean']):.2f} |"  # one seed: the accuracy alone, no "± 0.00"
    assert one_seed in report and "± 0.00" not in report
    assert (out / "acc_vs_budget.png").stat().st_size > 0
    # cad-prune got the cell's budget as K; its set and scoring run are cached
    sets = sorted(p.name for p in (out / "sets").iterdir())
    assert sets[0].startswith("cad-prune-ipc2-seed0-K0.5") and sets[1] == "random-ipc2-seed0"
    assert DistilledSet.load(out / "sets" / sets[0]).meta["cad_K"] == 0.5
    assert any((out / "dynamics").iterdir())

    counted.clear()
    r = run_study(train, test, None, output_dir=str(out), device="cpu", progress=False, method_overrides=PROXY, **GRID)
    assert (r.evaluated, r.skipped) == (0, 2) and counted == []
    assert len(read_results(out / "results.csv")) == 2

    # growing the grid only runs the new cell
    r = run_study(train, test, None, output_dir=str(out), device="cpu", progress=False, method_overrides=PROXY,
                  **{**GRID, "budgets": (0.5, 1.0), "methods": ("random",)})
    assert r.evaluated == 1 and len(counted) == 1 and counted[0].budget_epochs == 1.0
    assert json.loads((out / "study.json").read_text())["protocol"]["seeds"] == 1
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [(x["evaluated"], x["skipped"]) for x in runs] == [(2, 0), (0, 2), (1, 1)]
    assert all(x["git_revision"] and x["machine"]["cpu_count"] and x["device"] == "cpu" for x in runs)
    with pytest.raises(DDKitError, match="another protocol"):
        run_study(train, test, None, output_dir=str(out), device="cpu", progress=False,
                  **{**GRID, "student_width": 4})


def test_study_more_seeds_tops_up_finished_cells(tmp_path, counted):
    train, test = make_toy(20, 4, 8), make_toy(10, 4, 8, seed=1, split="test")
    out = tmp_path / "ht"
    grid = {**GRID, "methods": ("random",), "budgets": (0.5, 1.0)}
    run_study(train, test, None, output_dir=str(out), device="cpu", progress=False, **grid)
    one = {r["budget"]: r for r in read_results(out / "results.csv")}
    counted.clear()
    r = run_study(train, test, None, output_dir=str(out), device="cpu", progress=False, **{**grid, "seeds": 3})
    # only the two missing students per cell, seeded after the first
    assert r.evaluated == 2 and [(c.seed, c.seeds) for c in counted] == [(1, 2), (1, 2)]
    rows = read_results(out / "results.csv")
    assert len(rows) == 2 and all(x["seeds"] == [0, 1, 2] and x["n"] == 3 and len(x["accs"]) == 3 for x in rows)
    for x in rows:
        assert x["accs"][0] == pytest.approx(one[x["budget"]]["accs"][0], abs=1e-6)  # the first seed is kept
        assert x["mean"] == pytest.approx(sum(x["accs"]) / 3, abs=1e-6)
    assert json.loads((out / "study.json").read_text())["protocol"]["seeds"] == 3
    with open(out / "results.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 4  # append-only: the one-seed rows stay, superseded
    for x in rows:  # per-class accuracies: one list per seed, the first seed's kept in front
        got = json.loads((out / "runs" / f"random-ipc2-K{x['budget']:g}-hl" / "class_accs.json").read_text())
        assert len(got["class_accs"]) == 3
    # the same three seeds from scratch give the same cell (a top-up is not a different protocol)
    counted.clear()
    fresh = run_study(train, test, None, output_dir=str(tmp_path / "fresh"), device="cpu", progress=False,
                      **{**grid, "seeds": 3})
    assert [c.seeds for c in counted] == [3, 3]
    for a, b in zip(sorted(rows, key=lambda x: x["budget"]), sorted(fresh.rows, key=lambda x: x["budget"])):
        assert a["accs"] == pytest.approx(b["accs"], abs=1e-6)
    counted.clear()
    r = run_study(train, test, None, output_dir=str(out), device="cpu", progress=False, **{**grid, "seeds": 2})
    assert (r.evaluated, r.skipped) == (0, 2) and counted == []


def test_study_skips_cells_another_process_finished(tmp_path, monkeypatch):
    train, test = make_toy(20, 4, 8), make_toy(10, 4, 8, seed=1, split="test")
    out = tmp_path / "ht"
    real, seen = study.evaluate, []

    def other_process_finishes_the_next_cell(*a, **kw):
        res = real(*a, **kw)
        seen.append(a[2].budget_epochs)
        if len(seen) == 1:  # meanwhile "another process" appends the 1.0-budget cell
            study._append(out / "results.csv", {"method": "random", "ipc": 2, "budget": "1", "regime": "hl",
                                                "mean": 0.5, "std": 0.0, "n": 1, "accs": "0.5", "seeds": "0"})
        return res

    monkeypatch.setattr(study, "evaluate", other_process_finishes_the_next_cell)
    r = run_study(train, test, None, output_dir=str(out), device="cpu", progress=False,
                  **{**GRID, "methods": ("random",), "budgets": (0.5, 1.0)})
    assert seen == [0.5] and (r.evaluated, r.skipped) == (1, 1)
    assert len(read_results(out / "results.csv")) == 2


def test_study_refuses_teacherless_grid_before_compute(tmp_path):
    train = make_toy(4, 2, 8)
    with pytest.raises(DDKitError, match="slkd need a teacher"):
        run_study(train, train, None, output_dir=str(tmp_path), device="cpu", progress=False,
                  **{**GRID, "methods": ("random",), "regimes": ("hl", "slkd")})
    with pytest.raises(Exception, match="nope"):
        run_study(train, train, None, output_dir=str(tmp_path), device="cpu", progress=False,
                  **{**GRID, "methods": ("nope",)})
    assert not (tmp_path / "results.csv").exists()


def test_rank_table_averages_ranks_with_ties():
    rows = [dict(method=m, regime="hl", ipc=10, budget=b, mean=v) for m, b, v in
            [("a", 2, 0.5), ("b", 2, 0.4), ("c", 2, 0.4), ("a", 5, 0.1), ("b", 5, 0.3), ("c", 5, 0.2)]]
    assert rank_table(rows) == {"hl": {"a": 2.0, "b": 1.75, "c": 2.25}}


def test_study_config_cli_round_trip():
    import argparse

    p = argparse.ArgumentParser()
    add_dataclass_args(p, StudyConfig)
    cfg = from_args(StudyConfig, p.parse_args(["--ipcs", "10,50", "--budgets", "2,5", "--regimes", "hl,slkd",
                                               "--methods", "random,cad-prune"]))
    assert cfg.ipcs == (10, 50) and cfg.budgets == (2.0, 5.0) and cfg.regimes == ("hl", "slkd")
    assert cfg.recipe_for("sl+kd") == "hardtruths-slkd" and StudyConfig().recipe_for("hl") == "hardtruths-hl"


def _bytes(folder, *names):
    return {n: (folder / n).read_bytes() for n in names}


def test_study_refuses_a_resume_with_other_method_or_eval_options(tmp_path, counted):
    """Issue #24: cells are pinned to their fully resolved options; only more seeds of the same ones resume."""
    train, test = make_toy(20, 4, 8), make_toy(10, 4, 8, seed=1, split="test")
    out = tmp_path / "ht"
    grid = {**GRID, "methods": ("cad-prune",)}
    run_study(train, test, None, output_dir=str(out), device="cpu", progress=False, method_overrides=PROXY, **grid)
    rec = json.loads((out / "runs" / "cad-prune-ipc2-K0.5-hl" / "options.json").read_text())
    assert rec["method_options"]["proxy_width"] == 8 and rec["eval_options"]["budget_epochs"] == 0.5
    assert "dynamics_cache" not in rec["method_options"] and "seed" not in rec["eval_options"]
    kept = _bytes(out, "results.csv", "study.json", "runs/cad-prune-ipc2-K0.5-hl/options.json")
    counted.clear()
    other = {"cad-prune": {**PROXY["cad-prune"], "proxy_width": 4}}
    for budgets in ((0.5,), (1.0,)):  # the finished cell itself, or a new cell of the same method
        with pytest.raises(DDKitError) as e:
            run_study(train, test, None, output_dir=str(out), device="cpu", progress=False, method_overrides=other,
                      **{**grid, "budgets": budgets})
        assert str(e.value) == (f"{out / 'runs' / 'cad-prune-ipc2-K0.5-hl'} (a finished cell) was made with "
                                f"cad-prune.proxy_width=8; this run has 4: use another --output-dir")
    with pytest.raises(DDKitError, match=r"another protocol or data: it was made with eval_overrides.num_evals=\(unset\); "
                                         r"this run has 1: use another --output-dir$"):
        run_study(train, test, None, output_dir=str(out), device="cpu", progress=False, method_overrides=PROXY,
                  eval_overrides={"num_evals": 1}, **grid)
    assert counted == [] and _bytes(out, *kept) == kept
    assert len(list((out / "sets").iterdir())) == 1  # no set was built for the refused options
    # the same options with more seeds is still a top-up of the pinned cell
    r = run_study(train, test, None, output_dir=str(out), device="cpu", progress=False, method_overrides=PROXY,
                  **{**grid, "seeds": 2})
    assert r.evaluated == 1 and [(c.seed, c.seeds) for c in counted] == [(1, 1)]
    assert read_results(out / "results.csv")[0]["seeds"] == [0, 1]


def test_study_resumes_cells_without_recorded_options(tmp_path, counted):
    """A cell finished before options.json existed is unknown: accepted (and pinned when it is topped up)."""
    train, test = make_toy(20, 4, 8), make_toy(10, 4, 8, seed=1, split="test")
    out = tmp_path / "ht"
    grid = {**GRID, "methods": ("cad-prune",)}
    run_study(train, test, None, output_dir=str(out), device="cpu", progress=False, method_overrides=PROXY, **grid)
    opts = out / "runs" / "cad-prune-ipc2-K0.5-hl" / "options.json"
    opts.unlink()
    pinned = json.loads((out / "study.json").read_text())
    del pinned["data"]  # a study.json from before the data was pinned
    (out / "study.json").write_text(json.dumps(pinned))
    counted.clear()
    other = {"cad-prune": {**PROXY["cad-prune"], "proxy_width": 4}}
    r = run_study(train, test, None, output_dir=str(out), device="cpu", progress=False, method_overrides=other, **grid)
    assert (r.evaluated, r.skipped) == (0, 1) and not opts.exists()
    assert "data" in json.loads((out / "study.json").read_text())  # pinned from now on
    r = run_study(train, test, None, output_dir=str(out), device="cpu", progress=False, method_overrides=other,
                  **{**grid, "seeds": 2})
    assert r.evaluated == 1 and json.loads(opts.read_text())["method_options"]["proxy_width"] == 4
    with pytest.raises(DDKitError, match="proxy_width=4; this run has 8"):
        run_study(train, test, None, output_dir=str(out), device="cpu", progress=False, method_overrides=PROXY,
                  **{**grid, "seeds": 3})


def test_study_refuses_a_resume_on_other_data(tmp_path, counted):
    """Issue #25: another draw of the same size, or other classes, is other data; nothing is rewritten."""
    train, test = make_toy(20, 4, 8), make_toy(10, 4, 8, seed=1, split="test")
    out = tmp_path / "ht"
    grid = {**GRID, "methods": ("random",)}
    run_study(train, test, None, output_dir=str(out), device="cpu", progress=False, **grid)
    kept = _bytes(out, "results.csv", "study.json")
    counted.clear()
    with pytest.raises(DDKitError, match=r"^\S+ holds a study run with another protocol or data: it was made with "
                                         r"data.train.content=\w+; this run has \w+: use another --output-dir$"):
        run_study(make_toy(20, 4, 8, seed=5), test, None, output_dir=str(out), device="cpu", progress=False, **grid)
    fewer = make_toy(10, 4, 8, seed=1, split="test")
    fewer.classes = ["a", "b", "c", "d"]
    with pytest.raises(DDKitError, match=r'data.test.classes=\["class0", "class1", "class2", "class3"\]; this run '
                                         r'has \["a", "b", "c", "d"\]'):
        run_study(train, fewer, None, output_dir=str(out), device="cpu", progress=False, **grid)
    assert counted == [] and _bytes(out, *kept) == kept
    r = run_study(train, test, None, output_dir=str(out), device="cpu", progress=False, **grid)
    assert (r.evaluated, r.skipped) == (0, 1)


def test_study_cli_refuses_other_classes_and_subset(tmp_path, capsys):
    """`--classes 2,3` on a folder made with 0,1 exits 2 naming the classes; data_subset.json is untouched."""
    from ddkit.cli import main

    out = tmp_path / "study"
    args = ["study", "hard-truths", "--dataset", "digits", "--device", "cpu", "--no-progress", "--methods", "random",
            "--ipcs", "1", "--budgets", "0.05", "--regimes", "hl", "--seeds", "1", "--student", "convnet-d1",
            "--student-width", "8", "--output-dir", str(out)]
    assert main([*args, "--classes", "0,1"]) == 0
    capsys.readouterr()
    kept = _bytes(out, "results.csv", "study.json", "data_subset.json")
    assert main([*args, "--classes", "2,3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'data.train.classes=["0", "1"]' in err[0] and '["2", "3"]' in err[0]
    assert main([*args, "--classes", "0,1", "--max-per-class", "5"]) == 2
    assert "data.train.per_class" in capsys.readouterr().err
    assert _bytes(out, *kept) == kept
    # an older folder (study.json without "data"): its data_subset.json still names the classes it was made on
    pinned = json.loads((out / "study.json").read_text())
    del pinned["data"]
    (out / "study.json").write_text(json.dumps(pinned))
    kept = _bytes(out, "results.csv", "study.json", "data_subset.json")
    assert main([*args, "--classes", "2,3"]) == 2
    assert 'data_subset.classes=["0", "1"]; this run has ["2", "3"]' in capsys.readouterr().err
    assert _bytes(out, *kept) == kept
    assert main([*args, "--classes", "0,1"]) == 0
    assert "0 cells evaluated, 1 already done" in capsys.readouterr().out


def test_study_keys_teacher_weights_and_what_counts_as_a_difference():
    import types

    import torch

    from ddkit import study_keys as sk

    teacher = types.SimpleNamespace(model=torch.nn.Linear(2, 2))
    before = sk.teacher_weights(teacher)
    with torch.no_grad():
        teacher.model.weight[0, 0] += 1  # the same path may hold another checkpoint
    assert sk.teacher_weights(teacher) != before and sk.teacher_weights(None) is None
    assert sk.differences({"a": 1}, {"a": 1, "b": 2}) == []  # a key an older ddkit did not record: unknown
    assert sk.differences({"eval_overrides": {}}, {"eval_overrides": {"lr": 0.1}}) == [
        ("eval_overrides.lr", sk.UNSET, 0.1)]  # but an option the user added is a difference
    assert sk.describe("runs/x", [("el2n-easy.proxy_epochs", 1, 2)]) == (
        "runs/x was made with el2n-easy.proxy_epochs=1; this run has 2: use another --output-dir")


def test_study_runs_a_loss_variant_as_its_own_regime(tmp_path, counted):
    """`slkd:gift`: SL+KD trained with GIFT's loss, a column beside plain slkd (issue #28)."""
    import torch

    from ddkit.models import create_model
    from ddkit.teachers import Teacher

    train, test = make_toy(20, 4, 8), make_toy(10, 4, 8, seed=1, split="test")
    torch.manual_seed(0)
    teacher = Teacher(create_model("convnet-d1", 4, 8, width=8), "convnet-d1", train.classes, train.mean, train.std, 8)
    grid = dict(ipcs=(2,), budgets=(0.5,), regimes=("slkd", "SL+KD:GIFT"), methods=("random",), student="convnet-d1",
                student_width=8, seeds=1)
    out = tmp_path / "ht"
    r = run_study(train, test, teacher, output_dir=str(out), device="cpu", progress=False, **grid)
    assert r.evaluated == 2
    assert [(c.regime, c.loss) for c in counted] == [("slkd", None), ("slkd", "gift")]
    assert sorted(x["regime"] for x in read_results(out / "results.csv")) == ["slkd", "slkd:gift"]
    assert (out / "runs" / "random-ipc2-K0.5-slkd-gift").is_dir()
    assert "Regime slkd:gift" in (out / "report.md").read_text()
    counted.clear()
    r = run_study(train, test, teacher, output_dir=str(out), device="cpu", progress=False, **grid)
    assert r.skipped == 2 and counted == []
    from ddkit.registry import UnknownNameError

    with pytest.raises(UnknownNameError, match="unknown loss 'hinge'"):
        run_study(train, test, teacher, output_dir=str(tmp_path / "x"), device="cpu", progress=False,
                  **{**grid, "regimes": ("slkd:hinge",)})
