"""The evaluator: recipes, budget arithmetic, schedules, training above chance, reproducibility, errors, outputs."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from ddkit.data.base import ImageDataset
from ddkit.distilled import DistilledSet
from ddkit.evaluate import (EvalConfig, budget_iterations, cim_batch_size, evaluate, get_recipe, list_recipes,
                            lr_factor, make_plan, rded_batch_size, resolve_recipe, run_evaluation)
from ddkit.evaluate.losses import LOSSES
from ddkit.evaluate.student import Targets
from ddkit.methods import create_method
from ddkit.teachers import Teacher
from ddkit.utils import DDKitError
from tests.conftest import MeanOracle, make_toy

K = 4
pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(**kw) -> EvalConfig:
    base = dict(recipe="cim", regime="hl", student="convnet-d1", student_width=16, seeds=1, epochs=60, num_evals=1)
    base.update(kw)
    return EvalConfig(**base)


# --- recipes -------------------------------------------------------------------------------------------

def test_recipe_registry_and_overrides():
    assert {"cim", "rded", "sre2l", "hardtruths-hl", "hardtruths-sl", "dc"} <= set(list_recipes())
    assert get_recipe("LIC").name == "cim"
    with pytest.raises(DDKitError, match="Known: .*cim"):
        get_recipe("nope")
    r = resolve_recipe(EvalConfig(recipe="cim", regime="slkd", lr=2e-3, mix="cutmix"), n_images=100, num_classes=10, ipc=10,
                       image_size=32)
    assert (r.lr, r.mix, r.batch_size, r.weight_decay, r.slkd_loss) == (2e-3, "cutmix", 50, 1e-4, "mse")
    r = resolve_recipe(EvalConfig(recipe="rded", loss="mse", regime="sl+kd"), n_images=10000, num_classes=1000,
                       ipc=10, image_size=224)
    assert (r.slkd_loss, r.factor, r.batch_size, r.schedule) == ("mse", 2, 100, "quarter_cosine")
    assert resolve_recipe(EvalConfig(recipe="cim", regime="slkd"), n_images=10000, num_classes=1000, ipc=10,
                          image_size=224).epochs == 300
    assert resolve_recipe(EvalConfig(recipe="rded", regime="slkd"), n_images=100, num_classes=10, ipc=10, image_size=32).factor == 1
    # sre2l's batch 1024 is capped at the set size
    assert resolve_recipe(EvalConfig(recipe="sre2l", regime="slkd"), n_images=100, num_classes=10, ipc=10, image_size=32).batch_size == 100
    with pytest.raises(DDKitError, match="hl"):
        resolve_recipe(EvalConfig(recipe="cim", regime="hl", loss="mse"), n_images=10, num_classes=10, ipc=1, image_size=32)
    with pytest.raises(DDKitError, match="regime"):
        resolve_recipe(EvalConfig(regime="soft-ish"), n_images=10, num_classes=10, ipc=1, image_size=32)


def test_batch_rules():
    assert [cim_batch_size(n) for n in (10, 100, 500, 1000, 20000, 50000)] == [10, 50, 50, 100, 100, 200]
    assert rded_batch_size(1, 10) == 10 and rded_batch_size(10, 10) == 50 and rded_batch_size(50, 10) == 100
    assert rded_batch_size(10, 100) == 100 and rded_batch_size(50, 1000) == 200 and rded_batch_size(50, 200) == 100


def test_budget_and_plan():
    assert budget_iterations(2, 50000, 100) == 1000
    assert budget_iterations(0.5, 1001, 100) == 6  # ceil(5.005)
    r = dataclasses.replace(get_recipe("cim"), batch_size=50, num_evals=4, epochs=1000)
    p = make_plan(r, 100, budget_epochs=1.0, full_train_size=1000)  # 1000 samples whatever the IPC
    assert (p.iterations, p.epochs, p.samples, p.eval_epochs) == (20, 10.0, 1000, (2, 5, 8, 10))
    p = make_plan(r, 100)
    assert (p.iterations, p.total_epochs, p.eval_epochs) == (2000, 1000, (250, 500, 750, 1000))
    p = make_plan(dataclasses.replace(r, batch_size=30, epochs=3), 100, eval_every=1)
    assert p.iterations == 10 and p.total_epochs == 3 and p.eval_epochs == (1, 2, 3)
    with pytest.raises(DDKitError, match="train"):
        make_plan(r, 100, budget_epochs=1.0)
    # IPC 1 of 10 classes under a 300-epoch CIFAR budget: 1.5 M one-iteration epochs, logged coarsely
    p = make_plan(dataclasses.replace(r, batch_size=10), 10, budget_epochs=300, full_train_size=50000)
    assert p.iterations == 1_500_000 and p.log_every == 750


def test_schedules():
    cim = get_recipe("cim")
    assert [lr_factor(cim, e, 1000) for e in (0, 665, 666, 832, 833)] == pytest.approx([1, 1, 0.2, 0.2, 0.04])
    ht = get_recipe("hardtruths-hl")
    assert lr_factor(ht, 150, 300) == 1.0 and lr_factor(ht, 151, 300) == pytest.approx(0.1)
    assert lr_factor(get_recipe("dc"), 500, 1000) == pytest.approx(0.1)
    assert lr_factor(get_recipe("rded"), 300, 300) == pytest.approx(0.5)
    assert lr_factor(get_recipe("sre2l"), 150, 300) == pytest.approx(0.5)


# --- training -------------------------------------------------------------------------------------------

def test_hl_trains_above_chance_and_reproduces(toy_eval):
    _, test, dset, _ = toy_eval
    c = cfg(seeds=2)
    a = evaluate(dset, test, c, progress=False)
    b = evaluate(dset, test, c, progress=False)
    assert a.mean > 0.5  # chance is 0.25
    assert a.accs == b.accs and [r.final_loss for r in a.runs] == [r.final_loss for r in b.runs]
    assert a.seeds == [0, 1] and a.runs[0].final_loss != a.runs[1].final_loss
    assert a.to_dict()["n"] == 2 and a.to_dict()["std"] == pytest.approx(abs(a.accs[0] - a.accs[1]) / 2)


def test_slkd_with_teacher_trains_above_chance(toy_eval):
    _, test, dset, teacher = toy_eval
    res = evaluate(dset, test, cfg(regime="slkd", epochs=150), teacher, progress=False)
    assert res.soft_label_source == "online teacher"
    assert res.mean > 0.5
    res = evaluate(dset, test, cfg(recipe="rded", regime="slkd", epochs=60, lr=3e-3), teacher, progress=False)
    assert res.mean > 0.5


def test_sl_uses_stored_soft_labels(toy_eval):
    _, test, dset, _ = toy_eval
    # Stored labels point every image to the NEXT class: a student trained on them predicts y+1.
    wrong = torch.nn.functional.one_hot((dset.labels + 1) % K, K).float() * 6.0
    shifted_set = dataclasses.replace(dset, soft={"soft": wrong})
    shifted_test = ImageDataset(test.images, (test.labels + 1) % K, test.classes, test.mean, test.std)
    res = evaluate(shifted_set, shifted_test, cfg(regime="sl", epochs=80), progress=False)
    assert res.soft_label_source == "stored" and res.mean > 0.5


def test_mosaic_sets_are_decoded_when_the_recipe_has_no_crop(toy_eval):
    _, test, dset, _ = toy_eval
    mosaic = dataclasses.replace(dset, meta={**dset.meta, "factor": 2})  # e.g. a LIC set: 2×2 mosaics
    res = evaluate(mosaic, test, cfg(recipe="hardtruths-hl", epochs=2), progress=False)
    assert (res.recipe.crop, res.recipe.factor, res.info["decoded_mosaic_factor"]) == ("factor", 2, 2)
    raw = evaluate(mosaic, test, cfg(recipe="hardtruths-hl", epochs=2, decode_mosaic=False), progress=False)
    assert (raw.recipe.crop, raw.info["decoded_mosaic_factor"]) == ("none", None)
    assert evaluate(dset, test, cfg(recipe="hardtruths-hl", epochs=2), progress=False).recipe.crop == "none"
    own = evaluate(mosaic, test, cfg(recipe="rded", epochs=2), progress=False)  # the recipe's own crop wins
    assert own.recipe.crop == "rded" and own.info["decoded_mosaic_factor"] is None


def test_region_soft_labels_pick_the_cell():
    soft = torch.zeros(3, 2)
    region = torch.arange(3 * 4 * 2, dtype=torch.float32).view(3, 4, 2)
    t = Targets("sl", 2, LOSSES.get("mse"), 1.0, soft=soft, region=region)
    idx = torch.tensor([0, 2, 1])
    out, _ = t(torch.zeros(3, 1, 2, 2), idx, torch.tensor([0, 1, 0]), torch.tensor([3, -1, 1]), None, None)
    assert torch.equal(out, torch.stack([region[0, 3], soft[2], region[1, 1]]))


def test_errors(toy_eval):
    _, test, dset, teacher = toy_eval
    with pytest.raises(DDKitError, match="teacher"):
        evaluate(dset, test, cfg(regime="slkd"), None, progress=False)
    with pytest.raises(DDKitError, match="soft labels"):
        evaluate(dset, test, cfg(regime="sl"), None, progress=False)
    other = Teacher(MeanOracle(), "oracle", ["a", "b", "c", "d"], test.mean, test.std, image_size=8)
    with pytest.raises(DDKitError, match="classes"):
        evaluate(dset, test, cfg(regime="slkd"), other, progress=False)
    bad_test = make_toy(5, K + 1, 8, seed=3, split="test")
    with pytest.raises(DDKitError, match="classes"):
        evaluate(dset, bad_test, cfg(), progress=False)
    with pytest.raises(DDKitError, match="not both"):
        evaluate(dset, test, cfg(budget_epochs=1.0), progress=False, full_train_size=80)
    with pytest.raises(DDKitError, match="recipe"):
        evaluate(dset, test, cfg(recipe="bogus"), progress=False)


def test_run_evaluation_outputs(toy_eval, tmp_path):
    train, test, dset, teacher = toy_eval
    d = tmp_path / "set"
    dset.save(d, pngs=False)
    out = tmp_path / "eval"
    c = cfg(regime="sl", seeds=2, epochs=30, num_evals=2)
    random = create_method("random", ipc=dset.ipc, seed=0)
    summary = run_evaluation(str(d), c, test=test, train=train, teacher=teacher, output=str(out),
                             baselines={"random": lambda pool: random(pool, progress=False)}, progress=False)
    for f in ("config.yaml", "summary.json", "results.md", "soft_labels.safetensors"):
        assert (out / f).is_file(), f
    lines = (out / "runs" / "distilled" / "convnet-d1" / "seed1" / "metrics.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert [r["epoch"] for r in recs] == list(range(1, 31))
    assert {"loss", "lr", "seconds", "images_per_s"} <= set(recs[0]) and "test_acc" in recs[14] and "test_acc" in recs[-1]
    rows = {r["set"]: r for r in summary["results"]}
    assert set(rows) == {"distilled", "random"} and rows["distilled"]["seeds"] == [0, 1]
    assert "best_test_acc (selected on test, not a headline)" in rows["distilled"]
    assert summary["ior"]["convnet-d1"]["ior"] == pytest.approx(rows["distilled"]["mean"] - rows["random"]["mean"])
    assert json.loads((out / "summary.json").read_text())["recipe"] == "cim"
    assert "| convnet-d1 | random |" in (out / "results.md").read_text()
    with pytest.raises(FileExistsError):
        run_evaluation(str(d), c, test=test, train=train, teacher=teacher, output=str(out), progress=False)


def test_run_evaluation_leaves_out_an_optional_baseline_it_cannot_draw(toy_eval, tmp_path, capsys):
    """The CLI's default random subset is optional: a class smaller than the IPC or no train split is a one-line
    note (and summary.json's skipped_baselines), not a failure; a required baseline still fails in one line."""
    train, test, dset, _ = toy_eval
    d = tmp_path / "set"
    dset.save(d, pngs=False)
    too_big = create_method("random", ipc=30, seed=0)  # the toy pool has 20 images per class
    base = {"random": lambda pool: too_big(pool, progress=False)}
    c = cfg(epochs=1)
    summary = run_evaluation(str(d), c, test=test, train=train, output=str(tmp_path / "a"), baselines=base,
                             optional=("random",), progress=False)
    note = [x for x in capsys.readouterr().out.splitlines() if "baseline not evaluated" in x]
    assert note == ["random baseline not evaluated: ipc needs 30 images per class but class 0 ('class0') has only 20"]
    assert [r["set"] for r in summary["results"]] == ["distilled"] and "ior" not in summary
    assert summary["skipped_baselines"]["random"].startswith("ipc needs 30") and summary["ipc"] == 2
    assert "random baseline not evaluated: ipc needs 30" in (tmp_path / "a" / "results.md").read_text()
    summary = run_evaluation(str(d), c, test=test, train=None, output=str(tmp_path / "b"), baselines=base,
                             optional=("random",), progress=False)
    assert "no train split" in summary["skipped_baselines"]["random"]
    with pytest.raises(DDKitError, match="needs 30 images per class"):
        run_evaluation(str(d), c, test=test, train=train, output=str(tmp_path / "c"), baselines=base, progress=False)
    with pytest.raises(DDKitError, match="drawn from the train split"):
        run_evaluation(str(d), c, test=test, train=None, output=str(tmp_path / "c"), baselines=base, progress=False)
    assert not (tmp_path / "c").exists()
