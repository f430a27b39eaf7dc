"""`ddkit study efficiency` (issue #29): the probe's peak memory grows with the batch; the study end to end."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import make_toy
from ddkit.cli import main
from ddkit.models import create_model
from ddkit.study_efficiency import bn_twin, observer_setup, probe, run_efficiency
from ddkit.utils import DDKitError

pytestmark = pytest.mark.usefixtures("one_thread")


def _train_step(batch: int):
    net = create_model("convnet-d2", num_classes=10, image_size=32)

    def step():
        loss = net(torch.randn(batch, 3, 32, 32)).logsumexp(1).mean()
        loss.backward()
        return batch
    return step


def test_probe_peak_memory_grows_with_the_batch():
    # activations of a width-128 ConvNet at 32 px: ~0.5 MiB per image forward, more with the backward
    small = probe(_train_step(4))
    large = probe(_train_step(256))
    assert small["result"] == 4 and large["result"] == 256
    assert large["peak_increase_mb"] > small["peak_increase_mb"] + 50
    assert large["peak_rss_mb"] >= large["rss_before_mb"]
    assert small["wall_s"] > 0 and small["cpu_s"] >= 0


def test_observer_setup_per_family():
    train = make_toy(4, 4, 8)
    assert observer_setup("rded", "convnet-d1", train, {}) == ("convnet-d1", "convnet-d1", {})
    assert observer_setup("sre2l", "convnet-d1", train, {})[1] == "convnet-d1-bn"  # needs BN: the twin
    assert observer_setup("dm", "convnet-d1", train, {}) == ("convnet-d1", None, {"model": "convnet-d1"})
    assert observer_setup("random", "convnet-d1", train, {}) == ("-", None, {})
    with pytest.raises(DDKitError, match="expert buffer"):
        observer_setup("mtt", "convnet-d1", train, {})
    assert bn_twin("convnet-d1-bn", train) == "convnet-d1-bn"
    with pytest.raises(DDKitError, match="BatchNorm"):
        bn_twin("mlp", train)


def test_efficiency_rows_interleaved_and_resumed(tmp_path):
    train = make_toy(10, 4, 8)
    kw = dict(methods=("random", "rded", "dm"), observers=("convnet-d1",), images=8, repeats=2,
              output_dir=str(tmp_path / "e"), progress=False, device="cpu",
              method_overrides={"dm": {"iterations": 1}, "rded": {"pool_size": 5}})
    rows = run_efficiency(train, **kw)
    assert [(r["method"], r["observer"], r["rep"]) for r in rows] == [
        (m, o, rep) for rep in (1, 2) for m, o in (("random", "-"), ("rded", "convnet-d1"), ("dm", "convnet-d1"))]
    assert all(r["images"] == 8 and r["ipc"] == 2 and r["images_per_s"] > 0 for r in rows)
    assert {r["iterations"] for r in rows if r["method"] == "dm"} == {1}
    assert rows[2]["default_iterations"] == "preset"  # DM's default: its preset's official count
    assert rows[1]["iterations"] is None and rows[1]["default_iterations"] == ""  # rded has no iterations
    assert "peak rise MiB" in (tmp_path / "e" / "report.md").read_text()
    n = len((tmp_path / "e" / "results.csv").read_text().splitlines())
    run_efficiency(train, **kw)
    assert len((tmp_path / "e" / "results.csv").read_text().splitlines()) == n


def test_cli_efficiency_end_to_end(tmp_path):
    args = ["study", "efficiency", "--dataset", "digits", "--device", "cpu", "--no-progress", "--methods",
            "random,sre2l", "--observers", "convnet-d1", "--images", "20", "--repeats", "1", "--method-opt",
            "sre2l.iterations=1", "--output-dir", str(tmp_path / "e")]
    assert main(args) == 0
    text = (tmp_path / "e" / "report.md").read_text()
    assert "sre2l" in text and "convnet-d1" in text and (tmp_path / "e" / "report.html").is_file()


def test_a_failing_cell_is_a_failed_row_and_the_next_cell_still_runs(tmp_path):
    """MTT on convnet-d1 with a buffer that is not there fails when it runs; on convnet-d2 it has no buffer at all
    (fails at setup). Both become failed rows with their one-line reason, random still runs at every rep, the
    report shows the failures, and a rerun measures the failed cells again (only them)."""
    from ddkit.study_cells import CellTable
    from ddkit.study_efficiency import COLUMNS, KEY

    train = make_toy(10, 4, 8)
    kw = dict(methods=("mtt", "random"), observers=("convnet-d1", "convnet-d2"), images=8, repeats=2,
              output_dir=str(tmp_path / "e"), progress=False, device="cpu",
              buffers={"convnet-d1": str(tmp_path / "no-such-buffer")}, method_overrides={"mtt": {"preset": "cpu"}})
    rows = run_efficiency(train, **kw)
    assert [(r["method"], r["observer"], r["rep"], r["status"]) for r in rows] == [
        (m, o, rep, s) for rep in (1, 2) for m, o, s in (("mtt", "convnet-d1", "failed"), ("mtt", "convnet-d2", "failed"),
                                                         ("random", "-", "ok"))]
    fail = {r["observer"]: r["error"] for r in rows if r["method"] == "mtt"}
    assert "no-such-buffer" in fail["convnet-d1"] and "\n" not in fail["convnet-d1"]
    assert "needs an expert buffer" in fail["convnet-d2"]
    assert all(r["images"] == 8 and r["wall_s_per_100"] > 0 for r in rows if r["method"] == "random")
    assert all(r["images"] is None for r in rows if r["method"] == "mtt")  # no numbers for a failed cell
    md = (tmp_path / "e" / "report.md").read_text()
    assert "| random | - |" in md and "| ok |" in md and "## Failed cells" in md
    assert "mtt / convnet-d2: failed: mtt on observer 'convnet-d2' needs an expert buffer" in md
    assert "Failed cells: mtt / convnet-d1: failed:" in (tmp_path / "e" / "report.html").read_text()
    n = len((tmp_path / "e" / "results.csv").read_text().splitlines())
    run_efficiency(train, **kw)  # the failed cells (2 × 2 reps) are tried again, the measured ones are kept
    assert len((tmp_path / "e" / "results.csv").read_text().splitlines()) == n + 4
    assert len(CellTable(tmp_path / "e" / "results.csv", COLUMNS, KEY).rows()) == 6


def test_a_table_of_an_older_ddkit_gains_the_new_columns(tmp_path):
    """results.csv written before status/error existed: the next append rewrites the header once, old rows
    keep their values (new columns empty), and the new row lines up."""
    from ddkit.study_cells import CellTable

    path = tmp_path / "results.csv"
    path.write_text("method,observer,rep,wall_s\nlic,convnet-d3,1,2.5\n")
    table = CellTable(path, ("method", "observer", "rep", "wall_s", "status", "error"), ("method", "observer", "rep"))
    table.append({"method": "dm", "observer": "convnet-d3", "rep": 1, "status": "failed", "error": "boom"})
    assert path.read_text().splitlines() == ["method,observer,rep,wall_s,status,error", "lic,convnet-d3,1,2.5,,",
                                             "dm,convnet-d3,1,,failed,boom"]
    rows = table.rows()
    assert rows[0]["wall_s"] == 2.5 and rows[1]["status"] == "failed"


def test_results_doc_shows_a_failed_efficiency_cell_as_failed():
    """docs/results.md's efficiency table (bench/results_doc_studies.py): a cell with only failed rows is one line
    saying 'failed: <reason>', never a NaN median; the measured cells keep their numbers."""
    import sys

    from tests.conftest import load_bench_script

    load_bench_script("results_doc.py")  # puts bench/ on the path and loads results_doc_studies
    studies = sys.modules["results_doc_studies"]
    ok = {"method": "random", "observer": "-", "observer_net": "", "options": "", "iterations": "", "status": "ok",
          "wall_s_per_100": 0.5, "cpu_s_per_100": 0.4, "images_per_s": 200.0, "peak_rss_mb": 600.0,
          "peak_increase_mb": 2.0}
    bad = {"method": "mtt", "observer": "resnet18_modified", "status": "failed", "error": "needs an expert buffer"}
    data = {"rows": [ok, bad], "runs": [{"command": "ddkit study efficiency", "git_revision": "abcdef0"}],
            "machine": {"model": "Xeon", "flags": "", "nproc": "2"}}

    class Src:
        def json(self, rel):
            return data

    text = "\n".join(studies.efficiency_section(Src()))
    assert "failed: needs an expert buffer" in text and "nan" not in text.lower()
    assert "0.5 (0.5–0.5)" in text
