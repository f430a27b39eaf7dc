"""report.html: legible grids, a self-contained page, and a real headless-Chromium render of the demo's page.

The browser test needs the Debian `chromium` package (`make test` installs it when missing, via .ci/browser); without it the
test fails with that instruction rather than skipping, so CI can never pass without rendering.
"""
from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from typing import Tuple

import numpy as np
import pytest
import torch
from PIL import Image

from ddkit.demo import DemoConfig, run_demo
from ddkit.distilled import DistilledSet
from ddkit.grids import MIN_CELL, OUTLINE, grid_caption, set_grid, upscale_factor
from ddkit.html_report import HtmlReport, signed
from ddkit.teachers import TeacherConfig
from tests.browser import image_widths, screenshot


def _png(w: int, h: int, colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------
# grids
# ---------------------------------------------------------------------------------------------------------

def test_upscale_factor_reaches_the_cell_floor():
    assert upscale_factor(8) == 6 and upscale_factor(32) == 2 and upscale_factor(224) == 1
    assert upscale_factor(32, factor=2) == 3  # a 16 px mosaic cell becomes 48 px
    for size, f in [(8, 1), (28, 1), (32, 2), (64, 4), (7, 1)]:
        assert (size // f) * upscale_factor(size, f) >= MIN_CELL


def test_grid_is_legible_named_and_outlines_mosaic_cells():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 8, 8, generator=g) * 0.2  # dark images: any amber pixel is an outline
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    plain = set_grid(images, labels, ["cat", "dog"])
    mosaic = set_grid(images, labels, ["cat", "dog"], factor=2)
    # 3 columns of ≥ 48 px images (plus a name column) and 2 rows
    assert plain.size[0] > 3 * 48 and plain.size[1] >= 2 * 48
    assert mosaic.size[1] >= 2 * (4 * upscale_factor(8, 2))
    a, b = np.asarray(plain), np.asarray(mosaic)
    amber = lambda x: np.all(x == np.array(OUTLINE, dtype=np.uint8), axis=-1).sum()  # noqa: E731
    assert amber(a) == 0 and amber(b) > 6 * 2 * 40  # two lines through each of the 6 images
    # the class names are drawn in the left column (dark text on white)
    name_col = a[:, :20].astype(int).sum(-1)
    assert (name_col < 300).sum() > 10


def test_grid_caption_says_zoom_mosaic_and_clamping():
    ds = DistilledSet(images=torch.linspace(-0.5, 1.5, 2 * 3 * 32 * 32).view(2, 3, 32, 32),
                      labels=torch.tensor([0, 1]), classes=["a", "b"], mean=[0.5] * 3, std=[0.25] * 3,
                      meta={"factor": 2})
    cap = grid_caption(ds)
    assert "×3" in cap and "2×2 mosaic" in cap and "clamped" in cap


# ---------------------------------------------------------------------------------------------------------
# the page
# ---------------------------------------------------------------------------------------------------------

def test_page_is_self_contained_and_escaped(tmp_path):
    rep = HtmlReport("a <b> & c")
    rep.table(["method", "IOR"], [["x<y", signed(-1.5)], ["z", signed(2.0)]])
    rep.image(_png(10, 10), "cap")
    path = rep.write(tmp_path / "report.html")
    text = path.read_text()
    assert "a &lt;b&gt; &amp; c" in text and "x&lt;y" in text
    assert 'class="neg">-1.50' in text and 'class="pos">+2.00' in text
    srcs = re.findall(r'src="([^"]*)"', text)
    assert len(srcs) == 1 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in text and "https://" not in text and "<script" not in text


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cfg = DemoConfig(teacher=TeacherConfig(arch="convnet-d2", arch_kw={"width": 8}, epochs=1, batch_size=128),
                     epochs=2, seeds=1, methods=("random", "herding"))
    run_demo(out, device="cpu", progress=False, cfg=cfg)
    return out


def test_demo_writes_report_html_with_gaps_plots_and_grids(demo_dir):
    text = (demo_dir / "report.html").read_text()
    assert "IOR HL" in text and "HLR" in text
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    # 1 accuracy plot + 1 per-class plot (a panel per regime) + 3 curve plots (one per regime) + 2 grids
    assert len(imgs) == 7
    assert "Distilled vs random, per class" in text
    sizes = [Image.open(io.BytesIO(base64.b64decode(s))).size for s in imgs]
    grid_w, grid_h = sizes[-1]
    assert grid_h >= 10 * 48  # digits: 10 class rows of 8 px images shown ≥ 48 px
    assert (demo_dir / "sets" / "random" / "preview.png").is_file()
    assert "preview.png" in (demo_dir / "report.md").read_text()


def test_demo_report_renders_in_headless_chromium(demo_dir):
    page = demo_dir / "report.html"
    widths = image_widths(page)
    assert len(widths) == 7 and all(w > 0 for w in widths), widths
    shot = screenshot(page)
    # not blank: plenty of non-white pixels and more than a couple of distinct colours
    non_white = (shot.min(axis=-1) < 240).mean()
    assert non_white > 0.05, non_white
    assert len(np.unique(shot.reshape(-1, 3)[::97], axis=0)) > 50


def test_browser_check_catches_a_broken_image(tmp_path):
    rep = HtmlReport("broken")
    rep.image(_png(12, 12), "fine")
    rep.parts.append('<img alt="broken" src="data:image/png;base64,AAAA">')
    widths = image_widths(rep.write(tmp_path / "report.html"))
    assert widths[0] == 12 and widths[1] == 0


# ---------------------------------------------------------------------------------------------------------
# evaluate and study write the page too
# ---------------------------------------------------------------------------------------------------------

DIGITS = ["--dataset", "digits", "--device", "cpu", "--no-progress"]


def _capture_acc_titles(monkeypatch) -> list:
    """The titles of the accuracy panel(s) as the report draws them (they are inside a PNG, not the HTML)."""
    from ddkit import plots

    titles: list = []
    real = plots.acc_vs_ipc

    def spy(*a, **kw):
        fig = real(*a, **kw)
        titles.extend(ax.get_title() for ax in fig.axes)
        return fig
    monkeypatch.setattr(plots, "acc_vs_ipc", spy)
    return titles


def test_evaluate_cli_writes_report_html_with_ior_and_hlr(tmp_path, monkeypatch):
    """No flag: the random subset of the set's IPC is evaluated beside it (the IOR), and the accuracy panel is
    titled with the set's IPC (it once said 'IPC 0')."""
    from ddkit.cli import main

    s = tmp_path / "set"
    assert main(["distill", *DIGITS, "--method", "random", "--seed", "3", "--ipc", "10", "--output", str(s)]) == 0
    ev = tmp_path / "eval"
    titles = _capture_acc_titles(monkeypatch)
    assert main(["evaluate", str(s), *DIGITS, "--regime", "hl", "--recipe", "dc", "--epochs", "2", "--seeds", "1",
                 "--student", "convnet-d1", "--student-width", "8", "--full-acc", "0.9", "--output", str(ev)]) == 0
    assert titles == ["HL, IPC 10"]
    text = (ev / "report.html").read_text()
    summary = json.loads((ev / "summary.json").read_text())
    assert [r["set"] for r in summary["results"]] == ["distilled", "random"] and summary["ipc"] == 10
    assert summary["random_subset"]["ipc"] == 10 and summary["random_subset"]["seed"] == 0
    assert "<td>random</td>" in text and 'alt="accuracy per set at IPC 10"' in text and "No random baseline" not in text
    ior = 100 * summary["ior"]["convnet-d1"]["ior"]
    hlr = 100 * summary["hlr"]["convnet-d1"]["hlr"]
    assert f">{ior:+.2f}</td>" in text and f">{hlr:+.2f}</td>" in text
    # accuracy bars, distilled vs random per class, training curves, the set's grid
    assert text.count("data:image/png;base64,") == 4 and "Accuracy per class" in text
    for r in summary["results"]:  # per-class accuracies weighted by class size give the headline exactly
        assert r["classes"] == [str(i) for i in range(10)] and len(r["class_accs"]) == 1
    assert all(w > 0 for w in image_widths(ev / "report.html"))


def _eval_folder(root: Path, acc_epochs: list, summary_ipc=None, meta_ipc=None) -> Tuple[Path, Path]:
    """A finished evaluate folder written by hand (no training): a 2-per-class set whose meta states `meta_ipc`
    (or no IPC), summary.json, one run's metrics.jsonl with 4 epochs of loss and test accuracy at `acc_epochs`."""
    from ddkit.methods import create_method
    from tests.conftest import make_toy

    ds = create_method("random", ipc=2, seed=0)(make_toy(6, 3, 8), progress=False)
    ds.save(root / "set", pngs=False)
    meta = json.loads((root / "set" / "meta.json").read_text())  # save() records the label count; override it
    meta.pop("ipc")
    (root / "set" / "meta.json").write_text(json.dumps({**meta, **({"ipc": meta_ipc} if meta_ipc else {})}))
    ev = root / "ev"
    run = ev / "runs" / "distilled" / "convnet-d1" / "seed0"
    run.mkdir(parents=True)
    recs = [{"epoch": e, "loss": 2.0 / e, **({"test_acc": 0.1 * e} if e in acc_epochs else {})} for e in range(1, 5)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    row = {"student": "convnet-d1", "set": "distilled", "mean": 0.4, "std": 0.0, "n": 1, "accs": [0.4],
           "iterations": 4, "batch_size": 6}
    summary = {"regime": "hl", "recipe": "dc", "results": [row, {**row, "set": "random", "mean": 0.3, "accs": [0.3]}],
               "ior": {"convnet-d1": {"ior": 0.1, "per_seed": [0.1], "distilled": 0.4, "random": 0.3}},
               **({"ipc": summary_ipc} if summary_ipc is not None else {})}
    (ev / "summary.json").write_text(json.dumps(summary))
    return ev, root / "set"


@pytest.mark.parametrize("summary_ipc, meta_ipc, want", [(10, None, 10), (None, 10, 10), (None, None, 2)])
def test_eval_report_titles_the_accuracy_panel_with_the_sets_ipc(tmp_path, monkeypatch, summary_ipc, meta_ipc, want):
    """summary.json's IPC, else the set's meta["ipc"] (a folder from before summary.json said it), else the
    images per class counted from the labels: never 'IPC 0'."""
    from ddkit.html_report import write_eval_html

    ev, s = _eval_folder(tmp_path, [4], summary_ipc, meta_ipc)
    titles = _capture_acc_titles(monkeypatch)
    text = write_eval_html(ev, s).read_text()
    assert titles == [f"HL, IPC {want}"] and f'alt="accuracy per set at IPC {want}"' in text


def test_eval_report_draws_the_test_accuracy_curve_only_from_three_points(tmp_path):
    from ddkit.html_report import load_curves, write_eval_html
    from ddkit.plots import training_curves

    ev, s = _eval_folder(tmp_path / "one", [4])
    text = write_eval_html(ev, s).read_text()
    assert 'alt="training curves: loss"' in text and "loss and test accuracy" not in text
    assert "Test accuracy was measured at 1 epoch (epoch 4), too few for a curve: see the table." in text
    assert len(training_curves(load_curves(ev / "runs")).axes) == 1
    ev, s = _eval_folder(tmp_path / "three", [2, 3, 4])
    text = write_eval_html(ev, s).read_text()
    assert 'alt="training curves: loss and test accuracy"' in text and "too few for a curve" not in text
    assert len(training_curves(load_curves(ev / "runs")).axes) == 2
    assert all(w > 0 for w in image_widths(ev / "report.html"))


def test_study_writes_report_html_pngs_and_curves(tmp_path):
    from ddkit.cli import main

    out = tmp_path / "study"
    assert main(["study", "hard-truths", *DIGITS, "--methods", "random", "--ipcs", "1", "--budgets",
                 "0.05,0.1", "--regimes", "hl", "--seeds", "1", "--student", "convnet-d1", "--student-width", "8",
                 "--output-dir", str(out)]) == 0
    text = (out / "report.html").read_text()
    assert "IOR" in text and "HLR" in text and "Accuracy vs compute budget" in text and "Training curves" in text
    sets = sorted(p.name for p in (out / "sets").iterdir())
    assert sets == ["random-ipc1-seed0"]
    for name in sets:  # study sets get PNGs too: the per-image view and the legible grid
        assert (out / "sets" / name / "preview.png").is_file() and (out / "sets" / name / "images").is_dir()
    assert (out / "runs" / "random-ipc1-K0.1-hl" / "seed0" / "metrics.jsonl").is_file()
    rec = json.loads((out / "runs" / "random-ipc1-K0.1-hl" / "class_accs.json").read_text())
    assert rec["classes"] == [str(i) for i in range(10)] and len(rec["class_accs"]) == 1 and rec["budget"] == "0.1"
    # 2 plots (budget, IPC) + per class (random alone: its accuracies) + curves + the grid
    assert text.count("data:image/png;base64,") == 5 and "Accuracy per class vs random" in text
    # each cell records the protocol its students ran; both reports name it
    ran = json.loads((out / "runs" / "random-ipc1-K0.1-hl" / "protocol.json").read_text())
    assert (ran["protocol"], ran["recipe"], ran["inputs"]) == ("hard-truths", "hardtruths-hl", "meanstd")
    assert "<h2>Protocol per cell</h2>" in text and "2: random-ipc1-K0.05-hl, random-ipc1-K0.1-hl" in text
    assert "protocol **hard-truths**: recipe `hardtruths-hl`" in (out / "report.md").read_text()


def _study_cell(runs: Path, method: str, ipc: int, budget: str, regime: str, per_seed: list) -> None:
    cell = runs / f"{method}-ipc{ipc}-K{budget}-{regime}"
    cell.mkdir(parents=True)
    (cell / "class_accs.json").write_text(json.dumps({"method": method, "ipc": ipc, "budget": budget, "regime": regime,
                                                      "classes": ["cat", "dog", "ship"], "class_accs": per_seed}))


def test_study_report_plots_each_method_against_random_per_class(tmp_path):
    from ddkit.html_report import study_per_class_panels, write_study_html

    runs = tmp_path / "runs"
    rows = [{"method": m, "ipc": 10, "budget": b, "regime": g, "mean": 0.5, "std": 0.0, "n": 2}
            for m in ("random", "lic", "rded") for b in (1.0, 2.0) for g in ("hl", "slkd")]
    for g in ("hl", "slkd"):
        _study_cell(runs, "random", 10, "2", g, [[0.5, 0.4, 0.9], [0.7, 0.4, 0.7]])
        _study_cell(runs, "lic", 10, "2", g, [[0.9, 0.1, 0.8], [0.9, 0.3, 0.8]])
        _study_cell(runs, "rded", 10, "1", g, [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # not the largest budget
    classes, panels = study_per_class_panels(runs, rows)
    assert classes == ["cat", "dog", "ship"] and list(panels) == ["HL, IPC 10, 2 ep", "SL+KD, IPC 10, 2 ep"]
    assert panels["HL, IPC 10, 2 ep"] == {"lic": pytest.approx([0.9, 0.2, 0.8]),
                                          "random": pytest.approx([0.6, 0.4, 0.8])}
    page = write_study_html(tmp_path, rows, {"ipcs": [10]})
    text = page.read_text()
    assert "Accuracy per class vs random" in text and 'alt="per-class accuracy vs random"' in text
    pngs = re.findall(r'alt="per-class accuracy vs random" src="data:image/png;base64,([^"]+)"', text)
    plot = np.asarray(Image.open(io.BytesIO(base64.b64decode(pngs[0]))).convert("RGB"))
    assert plot.shape[0] > 300 and len(np.unique(plot.reshape(-1, 3), axis=0)) > 50  # two panels, drawn
    widths = image_widths(page)  # every image of the page decodes in the browser
    assert len(widths) == text.count("data:image/png;base64,") and all(w > 0 for w in widths), widths


def test_per_class_accuracy_matches_the_headline():
    from ddkit.evaluate import EvalConfig, evaluate
    from ddkit.methods import create_method
    from tests.conftest import make_toy

    train, test = make_toy(10, 3, 8), make_toy(7, 3, 8, seed=1, split="test")
    test = test.subset(torch.arange(len(test))[:-2])  # unequal class sizes: 7, 7, 5
    ds = create_method("random", ipc=2, seed=0)(train, device="cpu", progress=False)
    res = evaluate(ds, test, EvalConfig(recipe="dc", regime="hl", epochs=3, seeds=2, student="convnet-d1",
                                        student_width=8), device="cpu", progress=False)
    sizes = torch.bincount(test.labels, minlength=3).tolist()
    for run in res.runs:
        assert len(run.class_accs) == 3
        assert sum(a * n for a, n in zip(run.class_accs, sizes)) / sum(sizes) == pytest.approx(run.final_acc, abs=1e-12)


@pytest.mark.parametrize("n_regimes", [1, 2, 3])
def test_one_ipc_panels_list_methods_top_down_whatever_the_panel_count(n_regimes):
    """The dot panels share their y axis; each panel once inverted the shared axis, so with an even number
    of panels the first method ended at the bottom."""
    from ddkit.plots import acc_vs_ipc

    rows = [dict(method=m, ipc=10, regime=g, mean=0.1 * (i + 1), std=0.0)
            for g in ("hl", "sl", "slkd")[:n_regimes] for i, m in enumerate(("random", "a", "b"))]
    fig = acc_vs_ipc(rows)
    fig.canvas.draw()
    ticks = dict(zip(fig.axes[0].get_yticks(), (t.get_text() for t in fig.axes[0].get_yticklabels())))
    assert ticks[0] == "random"  # y = 0 is the first method …
    for ax in fig.axes:
        bottom, top = ax.get_ylim()
        assert bottom > top  # … drawn at the top of every panel


def test_plot_study_cells_script_draws_one_ipc_and_refuses_ambiguous_budgets(tmp_path):
    from tests.conftest import load_bench_script

    mod = load_bench_script("plot_study_cells.py")
    head = "method,ipc,budget,regime,recipe,student,mean,std,n,accs,seeds,seconds\n"
    lines = [f"{m},10,{b},{g},r,s,{acc},0.0,1,{acc},0,1.0" for b in (0.6, 2) for g in ("hl", "sl")
             for m, acc in (("random", 0.3), ("x", 0.4))]
    csv = tmp_path / "results.csv"
    csv.write_text(head + "\n".join(lines) + "\n")
    with pytest.raises(SystemExit, match="choose one with --budget"):
        mod.main([str(csv), "--ipc", "10", "--output", str(tmp_path / "a.png")])
    with pytest.raises(SystemExit, match="no such file"):
        mod.main([str(tmp_path / "missing.csv"), "--ipc", "10", "--output", str(tmp_path / "a.png")])
    with pytest.raises(SystemExit, match="no rows with IPC 50"):
        mod.main([str(csv), "--ipc", "50", "--output", str(tmp_path / "a.png")])
    assert mod.main([str(csv), "--ipc", "10", "--budget", "2", "--output", str(tmp_path / "a.png")]) == 0
    assert Image.open(tmp_path / "a.png").size[0] > 100
