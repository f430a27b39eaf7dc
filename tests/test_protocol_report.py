"""What ran, in every report (#26): the evaluate report and the study report name the protocol, recipe, regime,
inputs (ZCA or mean/std), lr, labels and notes of each set; best-of-test stands beside the last-epoch headline,
labelled, never as it."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from ddkit.evaluate.native import protocol_fields, protocol_line
from ddkit.html_report import write_eval_html
from ddkit.study_report import write_report
from ddkit.study_rows import COLUMNS
from tests.test_html_report import _eval_folder

MTT = {"protocol": "native", "native": "mtt", "recipe": "dc", "regime": "hl", "inputs": "zca", "lr": 0.0125,
       "sl_labels": None, "notes": ["lr: the set's learned lr 0.0125", "inputs: ZCA-whitened with the set's transform"]}
FOLLOW = {**MTT, "notes": ["follows the evaluated set's native protocol"]}


def _rows(html: str) -> list:
    """The cell texts of every table row of `html`."""
    return [[re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", html, re.S)]


def _cells(html: str, row_start: str) -> list:
    """The cell texts of the first table row of `html` whose first cell is `row_start`."""
    for cells in _rows(html):
        if cells and cells[0] == row_start:
            return cells
    raise AssertionError(f"no row starting with {row_start!r}")


def test_protocol_words():
    f = protocol_fields(MTT)
    assert (f["protocol"], f["recipe"], f["inputs"], f["lr"]) == ("native (mtt)", "dc", "ZCA-whitened (the set's "
                                                                                         "transform)", "0.0125")
    assert protocol_fields({**MTT, "inputs": "meanstd", "lr": None})["lr"] == "the recipe's"
    assert protocol_line({**MTT, "native": None}).startswith("protocol **native**: recipe `dc`, regime hl")


def test_eval_report_shows_each_sets_protocol_and_best_of_test_beside_the_headline(tmp_path):
    ev, s = _eval_folder(tmp_path, [2, 3, 4], summary_ipc=2)
    summary = json.loads((ev / "summary.json").read_text())
    summary["protocol"] = MTT
    best = {"accs": [0.45], "epochs": [3], "mean": 0.45, "std": 0.0, "evaluations": 3, "note": "chosen on test"}
    summary["results"][0].update(protocol=MTT, best_of_test=best)
    summary["results"][1].update(protocol=FOLLOW)
    (ev / "summary.json").write_text(json.dumps(summary))
    html = write_eval_html(ev, s).read_text()
    head = _cells(html, "student")
    assert head[2] == "acc % (headline: last epoch)" and head[5] == "best-of-test % (not the headline)"
    row = _cells(html, "convnet-d1")
    assert row[1] == "distilled" and row[2] == "40.00" and row[5] == "45.00"  # the headline stays the last epoch
    rnd = [r for r in _rows(html) if r[:2] == ["convnet-d1", "random"]][0]
    assert rnd[2] == "30.00" and rnd[5] == "–"  # not recorded for it: a dash, never a copy of the headline
    assert "<h2>Protocol</h2>" in html
    d = _cells(html, "distilled")
    assert d[1:7] == ["native (mtt)", "dc", "hl", "ZCA-whitened (the set&#x27;s transform)", "0.0125", "the recipe&#x27;s"]
    assert "learned lr 0.0125" in d[7]
    assert "follows the evaluated set" in _cells(html, "random")[7]


def _study_folder(out: Path) -> None:
    """A finished two-cell study written by hand: results.csv and each cell's protocol.json."""
    out.mkdir(parents=True)
    rows = [{"method": m, "ipc": 10, "budget": "1", "regime": "hl", "recipe": "hardtruths-hl", "student": "c",
             "mean": mean, "std": 0.01, "n": 2, "accs": f"{mean:.6f};{mean:.6f}", "seeds": "0;1",
             "best_of_test": best} for m, mean, best in (("random", 0.30, 0.33), ("mtt", 0.40, 0.47))]
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in COLUMNS})
    hard = {"protocol": "hard-truths", "native": None, "recipe": "hardtruths-hl", "regime": "hl",
            "inputs": "meanstd", "lr": None, "sl_labels": None, "notes": []}
    for m, d in (("random", hard), ("mtt", {**hard, "notes": ["hard-truths: the set's ZCA, learned lr not used "
                                                              "(one protocol for every set)"]})):
        (out / "runs" / f"{m}-ipc10-K1-hl").mkdir(parents=True)
        (out / "runs" / f"{m}-ipc10-K1-hl" / "protocol.json").write_text(json.dumps(d))


def test_study_report_names_the_protocol_of_every_cell_and_best_of_test_beside(tmp_path):
    out = tmp_path / "study"
    _study_folder(out)
    md = write_report(out).read_text()
    assert "protocol **hard-truths**: recipe `hardtruths-hl`, regime hl, inputs mean/std-normalised, lr the " \
           "recipe's" in md
    assert "set's ZCA, learned lr not used" in md and "1 cell: mtt-ipc10-K1-hl" in md and "1 cell: random-ipc10-K1-hl" in md
    assert "40.00 ± 1.00 [47.00]" in md  # best-of-test in brackets beside the headline
    html = (out / "report.html").read_text()
    assert "<h2>Protocol per cell</h2>" in html
    head = _cells(html, "regime")
    assert head[4] == "acc % (headline: last epoch)" and head[6] == "best-of-test % (not the headline)"
    row = [c for c in re.findall(r"<tr>(.*?)</tr>", html, re.S) if ">mtt<" in c][0]
    assert "40.00 ± 1.00" in row and "47.00" in row
    prot = _cells(html, "hard-truths")
    assert prot[1:5] == ["hardtruths-hl", "hl", "mean/std-normalised", "the recipe&#x27;s"]
