"""`ddkit relabel` + `evaluate --labels stored`: students replay exactly the stored views, any batch size."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from ddkit.cli import main
from ddkit.distilled import DistilledSet
from ddkit.evaluate import EvalConfig
from ddkit.evaluate.losses import LOSSES, make_criterion
from ddkit.evaluate.stored import RelabelConfig, open_stored, relabel, set_recipe
from ddkit.evaluate.student import Targets, Views, make_plan
from ddkit.labels import LabelStore
from ddkit.models import create_model
from ddkit.teachers import Teacher
from ddkit.utils import DDKitError

N, K, S = 12, 4, 8


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(N, 3, S, S, generator=g)
    labels = torch.arange(K).repeat_interleave(N // K)
    classes = [f"c{i}" for i in range(K)]
    root = tmp_path_factory.mktemp("set") / "s"
    DistilledSet(images, labels, classes, (0.5,) * 3, (0.25,) * 3, meta={"method": "toy"}).save(root, pngs=False)
    torch.manual_seed(0)
    teacher = Teacher(create_model("convnet-d2", K, S, width=8), "convnet-d2", classes, (0.5,) * 3, (0.25,) * 3, S)
    store = relabel(root, teacher, RelabelConfig(recipe="sre2l", epochs=3, seed=5, batch_size=7), device="cpu",
                    progress=False)
    return root, teacher, store


def _trainer(root, cfg, batch_size, seed=0):
    d = DistilledSet.load(root)
    recipe = dataclasses.replace(set_recipe(cfg, d), batch_size=batch_size)
    stored = open_stored(cfg, d, recipe, torch.device("cpu"))
    plan = make_plan(recipe, len(d))
    spec = LOSSES.get(recipe.slkd_loss)
    views = stored.views(Views(recipe, S, d.mean, d.std))
    targets = stored.targets(Targets("slkd", K, spec, recipe.temperature))
    net = create_model("convnet-d1", K, S, width=4)
    crit = make_criterion(spec.name, temperature=recipe.temperature)
    return stored.make_trainer(seed, net, d.images, d.labels, recipe, plan, views, targets, crit, amp=False,
                               channels_last=False), stored


@pytest.mark.parametrize("batch_size", [9, 4, 36])  # 9 and 36 straddle permutations
def test_stored_training_replays_exactly_the_labelled_views(built, batch_size):
    root, teacher, store = built
    cfg = EvalConfig(recipe="sre2l", regime="slkd", labels="stored", label_store=str(store.path), mix="none")
    tr, stored = _trainer(root, cfg, batch_size)
    tr.seen = []
    fresh = LabelStore.open(store.path, images=DistilledSet.load(root).images, aug=stored.store.aug)
    for _ in range(3 * N // batch_size):  # three permutations of the set
        idx, x = tr.batch()
        # the student's view is the stored view, and the target is the teacher's logit OF THAT VIEW
        with torch.no_grad():
            t = teacher.model(teacher.normalize(x))
        assert torch.allclose(tr.targets.current, t, atol=2e-3, rtol=2e-3)
    # every permutation p is store epoch p % E and covers every image exactly once
    by_epoch = {}
    for e, sub in tr.seen:
        by_epoch.setdefault(e, []).extend(sub.tolist())
    assert sorted(by_epoch) == [0, 1, 2]
    assert all(sorted(v) == list(range(N)) for v in by_epoch.values())
    xe, le = fresh.views(1, torch.arange(N))
    assert not torch.equal(xe, fresh.views(0, torch.arange(N))[0])  # epochs hold different views


def test_views_do_not_depend_on_batch_size(built):
    root, _, store = built
    cfg = EvalConfig(recipe="sre2l", regime="slkd", labels="stored", label_store=str(store.path), mix="none")
    got = {}
    for bs in (5, 6):
        tr, _ = _trainer(root, cfg, bs)
        tr.seen = []
        views = {}
        while sum(len(s) for _, s in tr.seen) < 2 * N:
            idx, x = tr.batch()
            for i, row in zip(idx.tolist(), x):
                views.setdefault(i, []).append(row)
        got[bs] = {i: v[0] for i, v in views.items()}  # each image's first view (store epoch 0)
    for i in range(N):
        assert torch.equal(got[5][i], got[6][i])


def test_stored_needs_slkd_matching_views_and_a_store(built, tmp_path):
    root, _, store = built
    d = DistilledSet.load(root)
    bad = [EvalConfig(recipe="sre2l", regime="hl", labels="stored", label_store=str(store.path)),
           EvalConfig(recipe="rded", regime="slkd", labels="stored", label_store=str(store.path)),
           EvalConfig(recipe="sre2l", regime="slkd", labels="stored", label_store=str(tmp_path / "none")),
           EvalConfig(recipe="sre2l", regime="slkd", labels="bogus", label_store=str(store.path))]
    for cfg in bad:
        with pytest.raises(DDKitError) as e:
            open_stored(cfg, d, set_recipe(cfg, d) if cfg.regime == "slkd" else set_recipe(
                EvalConfig(recipe="sre2l", regime="slkd"), d), torch.device("cpu"))
        assert "\n" not in str(e.value)


DIGITS = ["--dataset", "digits", "--device", "cpu", "--no-progress"]


def test_cli_relabel_then_evaluate_stored(tmp_path, capsys):
    torch.manual_seed(0)
    t = tmp_path / "t"
    assert main(["teacher", "train", *DIGITS, "--model", "convnet-d2", "--epochs", "2", "--lr", "0.05",
                 "--batch-size", "128", "--output", str(t)]) == 0
    s = tmp_path / "set"
    assert main(["distill", *DIGITS, "--method", "random", "--ipc", "2", "--output", str(s)]) == 0
    assert main(["relabel", str(s), "--teacher", str(t), "--epochs", "2", "--no-progress", "--device", "cpu"]) == 0
    assert (s / "fkd" / "meta.json").is_file()
    ev = tmp_path / "ev"
    assert main(["evaluate", str(s), *DIGITS, "--labels", "stored", "--regime", "slkd", "--recipe", "sre2l",
                 "--epochs", "3", "--batch-size", "7", "--seeds", "1", "--output", str(ev)]) == 0
    res = json.loads((ev / "summary.json").read_text())["results"][0]
    assert res["soft_labels"].startswith("stored") and res["label_store"]["epochs"] == 2
    assert res["label_store"]["cycled"] is True and res["label_store"]["nbytes"] == 2 * 20 * 10 * 2
    capsys.readouterr()
    # the store was built with the sre2l views: another recipe's views are refused in one line
    assert main(["evaluate", str(s), *DIGITS, "--labels", "stored", "--regime", "slkd", "--recipe", "rded",
                 "--epochs", "1", "--seeds", "1", "--output", str(tmp_path / "ev2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "differs from the store" in err[0]
