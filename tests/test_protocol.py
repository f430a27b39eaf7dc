"""Issue #16's protocol fixes: the crop follows the set, one SL label per image, the hard-truths SL+KD
recipe, best-of-test beside the headline, and the `small-scale` study preset."""
from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch

import ddkit.study as study
from ddkit.config import add_dataclass_args, from_args
from ddkit.evaluate import EvalConfig, evaluate, get_recipe, resolve_recipe
from ddkit.study import PRESETS, StudyConfig, preset_config, read_results, run_study
from ddkit.utils import DDKitError
from tests.conftest import make_toy

K = 4
pytestmark = pytest.mark.usefixtures("one_thread")


def small(**kw) -> EvalConfig:
    base = dict(regime="hl", student="convnet-d1", student_width=8, seeds=1, epochs=2, num_evals=1)
    return EvalConfig(**{**base, **kw})


# --- 1. the cim crop follows the set's own factor ---------------------------------------------------------

def test_cim_crop_factor_follows_the_set():
    kw = dict(n_images=100, num_classes=10, ipc=10, image_size=32)
    plain = resolve_recipe(EvalConfig(recipe="cim"), set_factor=1, **kw)
    assert plain.crop == "none"  # random / RDED f=1 / coresets: no quadrant crop (it was f=2 for every set)
    assert (lambda r: (r.crop, r.factor))(resolve_recipe(EvalConfig(recipe="cim"), set_factor=2, **kw)) == ("factor", 2)
    assert resolve_recipe(EvalConfig(recipe="cim"), set_factor=3, **kw).factor == 3
    forced = resolve_recipe(EvalConfig(recipe="cim", factor=2), set_factor=1, **kw)
    assert (forced.crop, forced.factor) == ("factor", 2)
    old = resolve_recipe(EvalConfig(recipe="cim", crop_factor_from_set=False), set_factor=1, **kw)
    assert (old.crop, old.factor) == ("factor", 2)


def test_summary_says_which_crop_ran(toy_eval, capsys):
    _, test, dset, _ = toy_eval
    res = evaluate(dset, test, small(recipe="cim"), progress=True)
    assert res.recipe.crop == "none" and res.info["crop"] == "none (set factor 1)"
    assert "crop none (set factor 1)" in capsys.readouterr().out
    mosaic = dataclasses.replace(dset, meta={**dset.meta, "factor": 2})
    res = evaluate(mosaic, test, small(recipe="cim"), progress=False)
    assert res.info["crop"].startswith("factor f=2") and "set's factor" in res.info["crop"]
    assert res.to_dict()["crop"] == res.info["crop"]


# --- 5. SL: one fixed soft label per image unless asked ---------------------------------------------------

def test_sl_one_label_per_image_by_default_region_and_named_keys_on_request(toy_eval, monkeypatch):
    _, test, dset, _ = toy_eval
    n = len(dset)
    soft = torch.randn(n, K)
    lic = dataclasses.replace(dset, meta={**dset.meta, "factor": 2},
                              soft={"soft": soft, "region_soft": torch.randn(n, 4, K), "learned": -soft})
    import ddkit.evaluate.evaluator as core

    seen = []
    real = core.Targets

    def spy(*a, **kw):
        seen.append(kw)
        return real(*a, **kw)

    monkeypatch.setattr(core, "Targets", spy)
    res = evaluate(lic, test, small(recipe="hardtruths-sl", regime="sl"), progress=False)
    assert res.soft_label_source == "stored" and seen[-1]["region"] is None  # was "stored+region": 5 labels
    res = evaluate(lic, test, small(recipe="hardtruths-sl", regime="sl", sl_labels="region"), progress=False)
    assert res.soft_label_source == "stored+region" and seen[-1]["region"].shape == (n, 4, K)
    res = evaluate(lic, test, small(recipe="hardtruths-sl", regime="sl", sl_labels="learned"), progress=False)
    assert res.soft_label_source == "stored:learned" and torch.equal(seen[-1]["soft"], -soft)
    assert get_recipe("cim").sl_labels == "region" and get_recipe("hardtruths-sl").sl_labels == "image"
    with pytest.raises(DDKitError, match="stores soft labels"):
        evaluate(lic, test, small(recipe="hardtruths-sl", regime="sl", sl_labels="nope"), progress=False)


# --- 6. SL+KD as the paper: CutMix views relabelled online, KL --------------------------------------------

def test_hardtruths_slkd_recipe_is_the_study_default(toy_eval):
    r = get_recipe("hardtruths-slkd")
    assert (r.mix, r.mix_alpha, r.slkd_loss, r.temperature, r.t2_scale) == ("cutmix", 1.0, "kl", 20.0, False)
    assert (r.optimizer, r.lr, r.schedule, r.epochs, r.batch_size) == ("adamw", 1e-3, "cosine", 300, 256)
    assert StudyConfig().recipe_for("slkd") == "hardtruths-slkd"
    _, test, dset, teacher = toy_eval
    res = evaluate(dset, test, small(recipe="hardtruths-slkd", regime="slkd", epochs=3), teacher, progress=False)
    assert res.soft_label_source == "online teacher" and res.recipe.mix == "cutmix"


# --- 7. best-of-test recorded, never the headline --------------------------------------------------------

def test_best_of_test_is_recorded_beside_the_last_epoch_headline(toy_eval):
    _, test, dset, _ = toy_eval
    res = evaluate(dset, test, small(recipe="hardtruths-hl", epochs=6, num_evals=3, seeds=2), progress=False)
    d = res.to_dict()
    best = d["best_of_test"]
    assert best["evaluations"] == 3 and len(best["accs"]) == 2
    assert d["accs"] == [r.test_history[-1][1] for r in res.runs]  # the headline stays the last epoch
    assert all(b >= a for a, b in zip(d["accs"], best["accs"])) and best["mean"] >= d["mean"]
    assert best["accs"] == [max(a for _, a in r.test_history) for r in res.runs]


# --- the small-scale preset ------------------------------------------------------------------------------

def test_small_scale_preset_is_table_4(tmp_path):
    cfg = preset_config("small-scale")
    assert (cfg.epochs, cfg.ipcs, cfg.regimes, cfg.student, cfg.seeds) == (300, (10, 50), ("hl", "sl"), "convnet-d3", 3)
    assert {"random", "kcenter", "herding", "forgetting", "el2n-easy", "el2n-best", "ccs", "dyn-unc", "cad-prune",
            "rded", "ca2d", "lic"} == set(cfg.methods)
    hl, sl = get_recipe(cfg.hl_recipe), get_recipe(cfg.sl_recipe)
    assert (hl.optimizer, hl.lr, hl.schedule, hl.epochs, hl.batch_size, hl.dsa != "none") == (
        "sgd", 0.01, "multistep", 300, 256, True)
    assert (sl.optimizer, sl.lr, sl.schedule, sl.sl_loss, sl.temperature) == ("adamw", 1e-3, "cosine", "kl", 20.0)
    # K per IPC: 300·ipc·C/|D| (CIFAR-10 IPC 10 -> 0.6, IPC 50 -> 3 full-data epochs)
    assert cfg.budgets_for(10, 10, 50000) == (0.6,) and cfg.budgets_for(50, 10, 50000) == (3.0,)
    with pytest.raises(DDKitError, match="known: small-scale"):
        study.preset_fields("large")


def test_preset_through_the_cli_keeps_explicit_flags(tmp_path, monkeypatch):
    from ddkit import cli, cli_commands

    got = {}
    monkeypatch.setattr(study, "run_study", lambda *a, **kw: got.update(cfg=a[3], kw=kw) or
                        study.StudyResult([], tmp_path / "r.csv", tmp_path / "r.md", 0, 0))
    monkeypatch.setattr(cli_commands, "_dataset", lambda args, split: make_toy(4, K, 8))  # the commands' helpers
    monkeypatch.setattr(cli_commands, "_teacher", lambda *a: None)
    assert cli.main(["study", "hard-truths", "--dataset", "toy", "--preset", "small-scale", "--seeds", "1",
                     "--methods", "random", "--device", "cpu"]) == 0
    cfg = got["cfg"]
    assert (cfg.preset, cfg.epochs, cfg.seeds, cfg.methods, cfg.ipcs) == ("small-scale", 300, 1, ("random",), (10, 50))


def test_study_epochs_mode_runs_each_ipc_at_its_own_k(tmp_path, monkeypatch, toy_pair):
    train, test = toy_pair
    calls = []
    real = study.evaluate
    monkeypatch.setattr(study, "evaluate", lambda *a, **kw: calls.append(a[2]) or real(*a, **kw))
    out = tmp_path / "ss"
    run_study(train, test, None, preset_config("small-scale", methods=("random",), ipcs=(1, 2), regimes=("hl",),
                                               student="convnet-d1", student_width=8, seeds=1, epochs=4,
                                               output_dir=str(out)), device="cpu", progress=False)
    assert [(c.epochs, c.budget_epochs, c.num_evals) for c in calls] == [(4, None, PRESETS["small-scale"]["eval"]
                                                                          ["num_evals"])] * 2
    rows = read_results(out / "results.csv")
    assert [(r["ipc"], r["budget"]) for r in rows] == [(1, 4 * 1 * K / 80), (2, 4 * 2 * K / 80)]
    assert all(r["best_of_test"] >= r["mean"] and r["crop"].startswith("none") for r in rows)
