"""Smoke test of bench/el2n_search_fastpath.py's child run: two candidates trained back to back per variant, each
timed and scored on held-out images that are not among the candidate's."""
from __future__ import annotations

import json

from tests.conftest import load_bench_script


def test_child_run_times_two_candidates_and_scores_them(tmp_path, capsys):
    mod = load_bench_script("el2n_search_fastpath.py")
    assert set(mod.VARIANTS) == {"fp32", "bf16", "bf16_compile"}
    assert mod.VARIANTS["bf16_compile"] == {"search_cpu_amp": True, "search_compile": True}
    for variant in ("fp32", "bf16"):
        assert mod.main(["--one", variant, "--dataset", "digits", "--cache-dir", str(tmp_path), "--ipc", "2",
                         "--epochs", "1"]) == 0
        got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert len(got["seconds"]) == 2 and all(s > 0 for s in got["seconds"])
        assert len(got["heldout_acc"]) == 2 and all(0.0 <= a <= 1.0 for a in got["heldout_acc"])
        assert got["steady_samples_per_s"] == round(1 * 2 * 10 / got["seconds"][1], 1)  # epochs × ipc × 10 classes
