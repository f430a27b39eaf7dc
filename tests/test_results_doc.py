"""bench/results_doc.py: docs/results.md is exactly what the generator renders from the committed data (the page
cannot drift from the files), check mode notices an edited page, and the one tie rule reads as the page states it:
|gap| <= 2 * max(std_a, std_b)."""
from __future__ import annotations

from pathlib import Path

from tests.conftest import load_bench_script

doc = load_bench_script("results_doc.py")


def test_committed_page_matches_generator():
    assert doc.main(["--check"]) == 0, "docs/results.md differs from `python bench/results_doc.py`: rerun it"


def test_check_mode_fails_on_an_edited_page(tmp_path: Path):
    (tmp_path / "bench").symlink_to(doc.ROOT / "bench")  # the same committed inputs
    (tmp_path / "docs").mkdir()
    for f in (doc.ROOT / "docs").iterdir():  # the plots the page links, parity.md if any
        if f.name != "results.md":
            (tmp_path / "docs" / f.name).symlink_to(f)
    page = (doc.ROOT / "docs" / "results.md").read_text()
    (tmp_path / "docs" / "results.md").write_text(page.replace("| random |", "| random (edited) |", 1))
    assert doc.main(["--check", "--root", str(tmp_path)]) == 1


def test_tie_rule():
    assert doc.is_tie(0.5, 0.3, 0.3)  # 0.5 <= 2 * 0.3
    assert not doc.is_tie(1.0, 0.2, 0.2)  # 1.0 > 2 * 0.2
    assert doc.is_tie(-0.5, 0.1, 0.3)  # the larger std counts, and the sign does not
    assert doc.is_tie(0.6, 0.3, 0.0)  # exactly at the threshold is a tie


def test_compare_cells():
    ref = doc.Cell(40.0, 0.2, (39.8, 40.2), (0, 1))
    assert doc.compare(doc.Cell(40.5, 0.3, (40.2, 40.8), (0, 1)), ref) == "tie"
    assert doc.compare(doc.Cell(41.0, 0.2, (40.8, 41.2), (0, 1)), ref) == "above"
    assert doc.compare(doc.Cell(39.0, 0.2, (38.8, 39.2), (0, 1)), ref) == "below"
    assert doc.compare(doc.Cell(45.0, 0.0, (45.0,), (0,)), ref) == "unjudged"  # one seed: no std to judge with
    assert doc.fmt_gap(doc.Cell(40.5, 0.3, (40.2, 40.8), (0, 1)), ref) == "tie (+0.50)"
