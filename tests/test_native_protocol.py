"""Issue #26: sets that say how they must be trained (ZCA, learned lr, learned labels, native protocol) and
`--protocol native | hard-truths`, with the random baseline following the set's protocol."""
from __future__ import annotations

import json
import re

import pytest
import torch

from ddkit.augment.zca import ZCA
from ddkit.cli import main
from ddkit.distilled import DistilledSet
from ddkit.evaluate import EvalConfig, evaluate, run_evaluation
from ddkit.evaluate.native import follow, resolve_protocol
from ddkit.methods import create_method, method_spec
from ddkit.teachers import Teacher, predict_logits
from ddkit.teachers.experts import ExpertConfig, train_experts
from ddkit.utils import DDKitError
from tests.conftest import MeanOracle, make_toy

K = 4
pytestmark = pytest.mark.usefixtures("one_thread")
FAST = dict(student="convnet-d1", student_width=16, seeds=1, epochs=40, dsa="none", num_evals=1)


def real_set(ds, per_class: int = 5, **meta) -> DistilledSet:
    idx = torch.cat([ds.class_indices(c)[:per_class] for c in range(ds.num_classes)])
    return DistilledSet(ds.images[idx].float() / 255, ds.labels[idx], list(ds.classes), ds.mean, ds.std,
                        meta={"method": "test", **meta})


def negation(d: int) -> ZCA:
    """A hand-made 'whitening' z = −x: a student trained on it is wrong on un-whitened inputs."""
    eye = torch.eye(d)
    return ZCA(torch.zeros(d), -eye, -eye, 0.1)


# --- the set format ------------------------------------------------------------------------------------------

def test_set_round_trips_what_its_student_needs(tmp_path):
    ds = make_toy(6, K, 8)
    s = real_set(ds, native="datm", learned_lr=0.0123, learned_labels="learned")
    s.soft["learned"] = torch.randn(len(s), K)
    s.zca = negation(3 * 8 * 8)
    s.save(tmp_path / "s")
    back = DistilledSet.load(tmp_path / "s")
    assert (back.native, back.learned_lr, back.learned_labels) == ("datm", 0.0123, "learned")
    assert torch.equal(back.zca.matrix, s.zca.matrix) and back.zca.eps == pytest.approx(0.1)
    assert "learned lr 0.0123" in back.summary() and "ZCA" in back.summary()
    # a meta that names labels the set does not hold, or a ZCA of the wrong size, is refused in one line
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    (tmp_path / "s" / "meta.json").write_text(json.dumps({**meta, "learned_labels": "nope"}))
    with pytest.raises(DDKitError, match="learned_labels names 'nope'"):
        DistilledSet.load(tmp_path / "s")
    s2 = real_set(ds)
    s2.save(tmp_path / "t")
    from safetensors.torch import save_file
    save_file(negation(5).state(), str(tmp_path / "t" / "zca.safetensors"))
    with pytest.raises(DDKitError, match="zca.safetensors"):
        DistilledSet.load(tmp_path / "t")


def test_methods_declare_their_native_protocol_and_the_driver_writes_it():
    assert {n: method_spec(n).native for n in ("dc", "dsa", "dm", "mtt", "datm", "sre2l", "cda", "dwa", "rded",
                                               "lic", "random")} == {
        "dc": "dc-noaug", "dsa": "dsa", "dm": "dsa", "mtt": "mtt", "datm": "datm", "sre2l": "sre2l",
        "cda": "sre2l", "dwa": "sre2l", "rded": "rded", "lic": "cim", "random": ""}
    ds = make_toy(6, 3, 8)
    out = create_method("dm", ipc=2, model="mlp", iterations=1, batch_real=4)(ds, None, device="cpu", progress=False)
    assert out.native == "dsa"
    rnd = create_method("random", ipc=2)(ds, None, device="cpu", progress=False)
    assert rnd.native is None


# --- resolution ----------------------------------------------------------------------------------------------

def test_native_on_a_dm_set_picks_the_dc_recipe_and_hl():
    s = real_set(make_toy(6, K, 8), native="dsa")
    p = resolve_protocol(EvalConfig(), s)
    assert (p.protocol, p.native, p.cfg.recipe, p.cfg.regime, p.zca) == ("native", "dsa", "dc", "hl", None)
    ht = resolve_protocol(EvalConfig(protocol="hard-truths"), s)
    assert (ht.cfg.recipe, ht.cfg.regime) == ("hardtruths-hl", "hl")
    assert resolve_protocol(EvalConfig(protocol="hard-truths", regime="sl"), s).cfg.recipe == "hardtruths-sl"
    # explicit flags override the protocol's choice
    assert resolve_protocol(EvalConfig(recipe="cim", regime="slkd"), s).cfg.recipe == "cim"
    # the other natives, and a set that declares none
    table = {"dc-noaug": ("dc-noaug", "hl"), "mtt": ("dc", "hl"), "sre2l": ("sre2l-cifar", "slkd"),
             "rded": ("rded", "slkd"), "cim": ("cim", "slkd")}
    for name, want in table.items():
        got = resolve_protocol(EvalConfig(), real_set(make_toy(6, K, 8), native=name)).cfg
        assert (got.recipe, got.regime) == want, name
    undeclared = resolve_protocol(EvalConfig(), real_set(make_toy(6, K, 8)))
    assert (undeclared.cfg.recipe, undeclared.cfg.regime) == ("hardtruths-hl", "hl") and undeclared.notes
    with pytest.raises(DDKitError, match="native protocol 'paper-x'"):
        resolve_protocol(EvalConfig(), real_set(make_toy(6, K, 8), native="paper-x"))


def test_unknown_protocol_is_one_line(tmp_path, capsys):
    with pytest.raises(DDKitError, match="unknown protocol 'nope'"):
        EvalConfig(protocol="nope")
    s = real_set(make_toy(6, K, 8))
    s.save(tmp_path / "s")
    rc = main(["evaluate", str(tmp_path / "s"), "--dataset", "digits", "--protocol", "nope",
               "--output", str(tmp_path / "e")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "unknown protocol 'nope'" in err[0]
    assert EvalConfig(protocol="hardtruths").protocol == "hard-truths"


# --- training with what the set carries ---------------------------------------------------------------------

def test_a_zca_set_trains_on_whitened_views_and_whitened_test_images():
    train, test = make_toy(20, K, 8, seed=0), make_toy(10, K, 8, seed=1, split="test")
    s = real_set(train, 10, native="mtt", learned_lr=0.01)
    s.zca = negation(3 * 8 * 8)
    models = []
    res = evaluate(s, test, EvalConfig(**FAST), device="cpu", progress=False,
                   on_student=lambda seed, m: models.append(m))
    assert res.info["protocol"]["inputs"] == "zca" and res.recipe.name == "dc" and res.recipe.lr == 0.01
    x01 = test.images.float() / 255
    whitened = predict_logits(models[0], -x01, [0.0] * 3, [1.0] * 3, device="cpu").argmax(1)
    plain = predict_logits(models[0], x01, test.mean, test.std, device="cpu").argmax(1)
    assert res.accs[0] == pytest.approx((whitened == test.labels).float().mean().item())
    assert res.accs[0] >= 0.6  # trained on whitened views, scored on the whitened test split (chance 0.25)
    assert (plain == test.labels).float().mean().item() <= 0.3  # the same student on un-whitened images
    # hard-truths ignores the set's transform (and says so)
    ht = resolve_protocol(EvalConfig(protocol="hard-truths"), s)
    assert ht.zca is None and any("ZCA" in n for n in ht.notes)
    with pytest.raises(DDKitError, match="zca"):  # the online teacher never sees whitened views
        evaluate(s, test, EvalConfig(**FAST, regime="slkd", recipe="cim"), device="cpu", progress=False,
                 teacher=Teacher(MeanOracle(K), "oracle", list(test.classes), test.mean, test.std, image_size=8))


def test_a_datm_like_set_trains_with_its_learned_labels_and_lr(tmp_path):
    train, test = make_toy(20, K, 8, seed=0), make_toy(10, K, 8, seed=1, split="test")
    s = real_set(train, 10, native="datm", learned_lr=0.05, learned_labels="learned")
    shifted = (s.labels + 1) % K  # learned labels that name the NEXT class: a student that uses them is wrong
    s.soft["learned"] = torch.nn.functional.one_hot(shifted, K).float() * 8.0
    res = evaluate(s, test, EvalConfig(**FAST), device="cpu", progress=False, output=tmp_path / "runs")
    assert (res.regime, res.recipe.name, res.recipe.sl_loss, res.recipe.temperature) == ("sl", "datm", "softce", 1.0)
    assert res.soft_label_source == "stored:learned" and res.recipe.batch_size == min(128, len(s))
    first = json.loads((tmp_path / "runs" / "seed0" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["lr"] == pytest.approx(0.05)
    assert res.accs[0] <= 0.3  # it learned the shifted labels
    hard = evaluate(s, test, EvalConfig(**FAST, protocol="hard-truths"), device="cpu", progress=False)
    assert hard.regime == "hl" and hard.recipe.lr == 0.01 and hard.accs[0] >= 0.7


def test_the_random_baseline_follows_the_sets_protocol(tmp_path):
    train, test = make_toy(20, K, 8, seed=0), make_toy(10, K, 8, seed=1, split="test")
    s = real_set(train, 5, native="datm", learned_lr=0.05, learned_labels="learned")
    s.soft["learned"] = torch.randn(len(s), K)
    s.zca = negation(3 * 8 * 8)
    s.save(tmp_path / "s")
    rnd = create_method("random", ipc=5, seed=3)
    summary = run_evaluation(str(tmp_path / "s"), EvalConfig(**{**FAST, "epochs": 2}), test=test, train=train,
                             output=str(tmp_path / "e"), baselines={"random": lambda pool: rnd(pool, progress=False)},
                             device="cpu", progress=False)
    assert summary["protocol"]["protocol"] == "native" and summary["protocol"]["native"] == "datm"
    by = {r["set"]: r for r in summary["results"]}
    assert by["distilled"]["protocol"]["inputs"] == by["random"]["protocol"]["inputs"] == "zca"
    assert by["distilled"]["recipe"] == by["random"]["recipe"] == "datm"
    assert by["random"]["protocol"]["lr"] == 0.05 and by["random"]["regime"] == "hl"  # no learned labels: hard
    md = (tmp_path / "e" / "results.md").read_text()
    assert "ior" in summary and "protocol **native** (datm)" in md
    # what ran, in words: inputs and lr of the set, and the baseline's own line (it follows, on hard labels)
    assert "recipe `datm`, regime sl, inputs ZCA-whitened (the set's transform), lr 0.05" in md
    assert re.search(r"random: protocol \*\*native\*\* \(datm\): recipe `datm`, regime hl, .*follows the evaluated", md)
    assert "| best-of-test % (not the headline) |" in md
    p = follow(resolve_protocol(EvalConfig(protocol="hard-truths"), s), real_set(train))
    assert p.cfg.recipe == "hardtruths-hl" and p.zca is None


def test_mtt_and_datm_hand_over_zca_lr_and_labels(tmp_path):
    train = make_toy(n_per_class=6, num_classes=3, size=8)
    buf = tmp_path / "experts"
    train_experts(train, None, ExpertConfig(arch="mlp", num_experts=2, epochs=4, batch_size=9, subset_per_class=0,
                                            test_limit=0, zca=True), buf, device=torch.device("cpu"), progress=False)
    common = dict(ipc=2, model="mlp", buffer=str(buf), preset="cpu", iterations=2, syn_steps=3, max_start_epoch=2,
                  zca=True)
    out = create_method("datm", **common, threshold=10.0, init="real")(train, None, device="cpu", progress=False)
    assert out.native == "datm" and out.learned_lr == out.meta["syn_lr"] and out.learned_labels == "learned"
    assert out.zca is not None and out.zca.mean.numel() == 3 * 8 * 8
    # the driver's parts path (one process, resumable) carries the transform to the saved set too
    from ddkit.distributed import distill_sharded
    distill_sharded(create_method("mtt", **common), train, None, tmp_path / "mtt", device="cpu", progress=False)
    back = DistilledSet.load(tmp_path / "mtt")
    assert back.native == "mtt" and back.learned_labels is None and back.learned_lr > 0
    assert torch.equal(back.zca.matrix, out.zca.matrix)
