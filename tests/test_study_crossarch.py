"""`ddkit study cross-arch` (issue #29): the verifier check, the matrix, resume and refusals, on generated data."""
from __future__ import annotations

import csv

import pytest
import torch

from tests.conftest import MeanOracle, make_toy
from ddkit.cli import main
from ddkit.models import create_model
from ddkit.study_cells import check_verifier
from ddkit.study_crossarch import run_crossarch
from ddkit.teachers import Teacher, save_teacher
from ddkit.utils import DDKitError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    train, test = make_toy(12, 4, 8, seed=0), make_toy(6, 4, 8, seed=1, split="test")
    oracle = Teacher(MeanOracle(), "oracle", train.classes, train.mean, train.std, image_size=8)
    torch.manual_seed(0)
    bn = Teacher(create_model("convnet-d1-bn", 4, 8), "convnet-d1-bn", train.classes, train.mean, train.std, 8)
    return train, test, oracle, bn


def test_check_verifier_refuses_a_net_that_cannot_take_the_resolution_in_one_line():
    check_verifier("convnet-d3", 3, 8, 4)  # 8 → 4 → 2 → 1 px: takes it
    with pytest.raises(DDKitError) as e:
        check_verifier("convnet-d4", 3, 8, 4)  # a fourth halving leaves nothing
    msg = str(e.value)
    assert "convnet-d4" in msg and "3×8×8" in msg and "\n" not in msg


def test_crossarch_refuses_a_bad_verifier_before_anything_is_written(data, tmp_path):
    train, test, oracle, _ = data
    out = tmp_path / "ca"
    with pytest.raises(DDKitError, match="cannot take"):
        run_crossarch(train, test, {"o": oracle}, methods=("random",), verifiers=("convnet-d1", "convnet-d4"),
                      ipc=2, epochs=1, seeds=1, output_dir=str(out), progress=False, device="cpu")
    assert not out.exists()


def test_crossarch_matrix_random_beside_resume_and_top_up(data, tmp_path):
    train, test, oracle, bn = data
    kw = dict(methods=("rded", "sre2l"), verifiers=("convnet-d1", "mlp"), ipc=2, regime="hl", epochs=2,
              output_dir=str(tmp_path / "ca"), progress=False, device="cpu",
              method_overrides={"sre2l": {"iterations": 2}})
    rows = run_crossarch(train, test, {"o": oracle}, bn_teachers={"o": bn}, seeds=3, **kw)
    got = {(r["method"], r["observer"], r["verifier"]): r for r in rows}
    # random is added; under hl an observer-free set is one row "-"
    assert set(got) == {(m, o, v) for m, o in (("rded", "o"), ("sre2l", "o"), ("random", "-"))
                        for v in ("convnet-d1", "mlp")}
    assert all(r["n"] == 3 and len(r["accs"]) == 3 for r in rows)
    with open(tmp_path / "ca" / "matrix.csv") as fh:
        matrix = list(csv.DictReader(fh))
    assert {(r["method"], r["observer"]) for r in matrix} == {("rded", "o"), ("sre2l", "o"), ("random", "-")}
    assert float(matrix[0]["mlp_mean"]) == pytest.approx(got[(matrix[0]["method"], matrix[0]["observer"],
                                                              "mlp")]["mean"], abs=1e-6)
    html = (tmp_path / "ca" / "report.html").read_text()
    assert "data:image/png;base64" in html  # the heatmap
    # the protocol the students ran, once per distinct protocol, with the cells that ran it (report.md and .html)
    md = (tmp_path / "ca" / "report.md").read_text()
    line = next(x for x in md.splitlines() if "protocol **hard-truths**" in x)
    assert "recipe `cim`, regime hl" in line and "6 cells" in line and "sre2l-o-mlp" in line
    assert "Protocol per cell" in html and "6: random---convnet-d1" in html and "**" not in html
    sets = sorted(p.name for p in (tmp_path / "ca" / "sets").iterdir())
    assert len(sets) == 3 and any(s.startswith("sre2l-convnet-d1-bn-") for s in sets)
    n_lines = len((tmp_path / "ca" / "results.csv").read_text().splitlines())
    run_crossarch(train, test, {"o": oracle}, bn_teachers={"o": bn}, seeds=3, **kw)  # resume: nothing to do
    assert len((tmp_path / "ca" / "results.csv").read_text().splitlines()) == n_lines
    rows = run_crossarch(train, test, {"o": oracle}, bn_teachers={"o": bn}, seeds=4, **kw)  # top-up: seed 3
    assert all(r["seeds"] == [0, 1, 2, 3] for r in rows)
    with pytest.raises(DDKitError, match="another protocol"):
        run_crossarch(train, test, {"o": oracle}, bn_teachers={"o": bn}, seeds=4, **{**kw, "epochs": 3})


def test_crossarch_needs_a_bn_teacher_for_bn_matching_methods(data, tmp_path):
    train, test, oracle, _ = data
    with pytest.raises(DDKitError, match="BatchNorm"):
        run_crossarch(train, test, {"o": oracle}, methods=("sre2l",), verifiers=("mlp",), ipc=1, epochs=1,
                      seeds=1, output_dir=str(tmp_path / "x"), progress=False, device="cpu")


def test_crossarch_labels_each_observer_free_set_with_every_observer_under_slkd(data, tmp_path):
    train, test, oracle, _ = data
    rows = run_crossarch(train, test, {"a": oracle, "b": oracle}, methods=("random",), verifiers=("mlp",), ipc=1,
                         epochs=1, seeds=1, regime="slkd", output_dir=str(tmp_path / "ca"), progress=False,
                         device="cpu")
    assert sorted(r["observer"] for r in rows) == ["a", "b"]
    assert len(list((tmp_path / "ca" / "sets").iterdir())) == 1  # one random set, labelled by each observer


def test_cli_cross_arch_end_to_end_and_bad_verifier(tmp_path, capsys):
    from ddkit.data import create_dataset

    train = create_dataset("digits", split="train")
    torch.manual_seed(0)
    save_teacher(Teacher(create_model("convnet-d2", 10, 8, 1), "convnet-d2", train.classes, train.mean, train.std,
                         8, 1), tmp_path / "t")
    args = ["study", "cross-arch", "--dataset", "digits", "--device", "cpu", "--no-progress", "--observers",
            f"c2={tmp_path / 't'}", "--methods", "rded", "--ipc", "1", "--epochs", "1", "--seeds", "3",
            "--test-per-class", "5", "--output-dir", str(tmp_path / "ca")]
    assert main([*args, "--verifiers", "convnet-d1,mlp"]) == 0
    assert (tmp_path / "ca" / "matrix.csv").is_file() and (tmp_path / "ca" / "report.md").is_file()
    capsys.readouterr()
    assert main([*args, "--verifiers", "convnet-d4", "--output-dir", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ddkit: error: verifier 'convnet-d4' cannot take") and "\n" not in err
