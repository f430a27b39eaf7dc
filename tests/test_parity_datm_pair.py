"""bench/parity/datm_pair.py (issue #27, the DATM accuracy pair): the settings come from DATM's own YAML with only
the named reductions, ddkit's command line resolves to exactly the official config both sides are built from,
and the official judge is handed each set's learned labels and lr in the ZCA space it was distilled in."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import load_bench_script

dp = load_bench_script("parity/datm_pair.py")
dr = load_bench_script("parity/datm_row.py")

YAML = """dataset: CIFAR10
ipc: 10
syn_steps: 80
expert_epochs: 2
lr_img: 100
lr_teacher: 0.01
Iteration: 10000
batch_syn: 100
lr_y: 2.0
Momentum_y: 0.9
threshold: 1.
pix_init: samples_predicted_correctly
min_start_epoch: 0
current_max_start_epoch: 10
max_start_epoch: 20
expansion_end_epoch: 1000
lr_lr: 0.00001
zca: True
"""


def _args(tmp: Path, **kw) -> argparse.Namespace:
    base = dict(ipc=10, iterations=6, syn_steps=None, batch_syn=10, current_max_start_epoch=5, max_start_epoch=10,
                expansion_end_epoch=0, seeds=3, eval_epochs=60, buffer=str(tmp / "buf"), runs=str(tmp / "runs"))
    return argparse.Namespace(**{**base, **kw})


def test_settings_take_the_yaml_and_name_every_reduction(tmp_path: Path):
    (tmp_path / "c.yaml").write_text(YAML)
    a = _args(tmp_path)
    reduced = dp.settings(a, tmp_path / "c.yaml")
    assert (a.syn_steps, a.expert_epochs, a.lr_img, a.lr_lr, a.lr_y, a.threshold) == (80, 2, 100, 1e-5, 2.0, 1.0)
    assert a.expansion_end_epoch == 6  # 0: the bound grows over the run's own iterations
    assert reduced == {"Iteration": {"yaml": 10000, "run": 6}, "batch_syn": {"yaml": 100, "run": 10},
                       "current_max_start_epoch": {"yaml": 10, "run": 5}, "max_start_epoch": {"yaml": 20, "run": 10},
                       "expansion_end_epoch": {"yaml": 1000, "run": 6}}
    b = _args(tmp_path, iterations=None, batch_syn=None, current_max_start_epoch=None, max_start_epoch=None,
              expansion_end_epoch=1000)
    assert dp.settings(b, tmp_path / "c.yaml") == {} and (b.iterations, b.batch_syn) == (10000, 100)


def test_settings_refuse_a_yaml_the_fixed_values_contradict(tmp_path: Path):
    (tmp_path / "c.yaml").write_text(YAML.replace("pix_init: samples_predicted_correctly", "pix_init: real"))
    with pytest.raises(SystemExit, match="pix_init"):
        dp.settings(_args(tmp_path), tmp_path / "c.yaml")


def test_ddkit_command_resolves_to_the_official_config(tmp_path: Path):
    from ddkit.config import add_dataclass_args, from_args
    from ddkit.methods import mtt

    # values unlike ddkit's CIFAR-10 IPC-10 row, so a flag ddkit_argv forgot would show as the row's value
    other = {"lr_img: 100": "lr_img: 200", "lr_y: 2.0": "lr_y: 3.0", "threshold: 1.": "threshold: 1.5",
             "lr_lr: 0.00001": "lr_lr: 0.00002", "expert_epochs: 2": "expert_epochs: 3"}
    text = YAML
    for k, v in other.items():
        text = text.replace(k, v)
    (tmp_path / "c.yaml").write_text(text)
    a = _args(tmp_path, syn_steps=30, batch_syn=20)
    dp.settings(a, tmp_path / "c.yaml")
    off = dp.official_cfg(a)
    p = argparse.ArgumentParser(allow_abbrev=False)
    add_dataclass_args(p, mtt.DATMConfig)
    ns, _ = p.parse_known_args(dp.ddkit_argv(a))
    cfg = from_args(mtt.DATMConfig, ns)
    got = mtt.settings(cfg, "cifar10")  # the paper row under the explicit flags, as `ddkit distill` resolves it
    pairs = {"Iteration": "iterations", "syn_steps": "syn_steps", "expert_epochs": "expert_epochs",
             "max_start_epoch": "max_start_epoch", "current_max_start_epoch": "current_max_start_epoch",
             "expansion_end_epoch": "expansion_end_epoch", "min_start_epoch": "min_start_epoch",
             "Sequential_Generation": "sequential_generation", "batch_syn": "batch_syn", "zca": "zca",
             "lr_img": "lr_img", "lr_lr": "lr_lr", "lr_y": "lr_y", "threshold": "threshold"}
    for k, d in pairs.items():
        assert got[d] == pytest.approx(off[k]), k
    assert (cfg.lr_teacher, cfg.momentum_y, cfg.dsa_strategy) == (off["lr_teacher"], off["Momentum_y"],
                                                                   off["dsa_strategy"])
    assert got["init"] == "correct" and off["pix_init"] == "samples_predicted_correctly"
    assert off["no_aug"] is False and off["num_eval"] == 0 and cfg.ipc == off["ipc"] == 10
    assert got["syn_steps"] == 30 and got["iterations"] == 6  # the reductions reach ddkit, not the row's 80 / 10000


def test_official_inputs_hand_over_learned_labels_in_the_sets_zca_space(tmp_path: Path):
    from ddkit.augment.zca import fit_zca
    from ddkit.distilled import DistilledSet

    g = torch.Generator().manual_seed(0)
    zca = fit_zca(torch.rand(64, 3, 4, 4, generator=g))
    z = torch.randn(4, 3, 4, 4, generator=g)
    logits = torch.randn(4, 2, generator=g)
    meta = {"native": "datm", "learned_lr": 0.0123, "learned_labels": "learned"}
    DistilledSet(zca.invert(z), torch.tensor([0, 0, 1, 1]), ["a", "b"], [0.5] * 3, [0.25] * 3, {"learned": logits},
                 meta, zca=zca).save(tmp_path / "ddkit_set", pngs=False)
    images, labels, lr = dp.official_inputs(tmp_path, "ddkit")
    assert torch.allclose(images, z, atol=1e-4) and torch.equal(labels, logits)  # logits, not the hard labels
    assert float(lr) == pytest.approx(0.0123)
    facts = dr.learned_label_facts(tmp_path, "ddkit")
    assert facts["argmax_is_class"] == pytest.approx(float((logits.argmax(1) == torch.tensor([0, 0, 1, 1])).float()
                                                           .mean()), abs=1e-4)
    DistilledSet(zca.invert(z), torch.tensor([0, 0, 1, 1]), ["a", "b"], [0.5] * 3, [0.25] * 3, {},
                 {"native": "mtt", "learned_lr": 0.01}, zca=zca).save(tmp_path / "plain_set", pngs=False)
    with pytest.raises(SystemExit, match="not a DATM set"):
        dp.official_inputs(tmp_path, "plain")


def test_both_running_counts_only_the_iterations_inside_the_shared_window():
    # official: stamps at iteration starts and the finish; ddkit: at iteration ends (its first after set-up)
    off = [[0, 100.0], [1, 110.0], [2, 130.0], [3, 150.0], [4, 155.0]]  # its last iteration ran alone: 5 s
    dd = [[0, 95.0], [1, 112.0], [2, 132.0], [3, 152.0]]
    got = dr.both_running(off, dd)
    assert got["window_s"] == 52.0  # [100, 152]: the later first stamp, the earlier last one
    assert got["official"] == {"s_per_iteration": round(50 / 3, 3), "iterations": 3}  # 150-155 ran alone
    assert got["ddkit"] == {"s_per_iteration": 20.0, "iterations": 2}  # 95-112 began before the window
    plain = (off[-1][1] - off[1][1]) / 3  # per_it's average counts the alone iteration
    assert plain < got["official"]["s_per_iteration"]
    assert dr.both_running([[0, 0.0], [1, 10.0]], [[0, 20.0], [1, 30.0]]) is None  # never both running


def _draw_args(tmp: Path, **kw) -> argparse.Namespace:
    (tmp / "c.yaml").write_text(YAML)
    a = _args(tmp, syn_steps=80, lock=str(tmp / "mem.lock"), draws=3, draw=0, **kw)
    dp.settings(a, tmp / "c.yaml")
    return a


def test_each_draw_names_its_sets_and_seeds_both_sides(tmp_path: Path, monkeypatch):
    import sys

    a = _draw_args(tmp_path)
    argv = dp.ddkit_argv(a)
    assert argv[argv.index("--seed") + 1] == "0" and argv[argv.index("--output") + 1].endswith("/ddkit_set")
    a.draw = 2
    argv = dp.ddkit_argv(a)
    assert argv[argv.index("--seed") + 1] == "2" and argv[argv.index("--output") + 1].endswith("/ddkit_seed2_set")
    got = {}
    import mtt_pair  # noqa: F401  (datm_pair's official_distill imports run_official from it)

    monkeypatch.setattr(sys.modules["mtt_pair"], "run_official",
                        lambda out, script, argv, peer, keep, seed=0, reseed=False: got.update(
                            out=out, argv=argv, seed=seed, reseed=reseed))
    dp.official_distill(a)
    assert got["out"] == dp.workdir(a) / "official_seed2_run"  # not a *_set: never counted as a draw
    assert (got["seed"], got["reseed"]) == (2, True) and (got["out"] / "cfg.yaml").is_file()
    a.draw = 0
    dp.official_distill(a)
    assert got["out"] == dp.workdir(a) / "official" and got["seed"] == 0  # the row's own run folder


def _summary(path: Path, acc: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"results": [{"set": "distilled", "accs": [acc / 100]}]}))


class FakeSteps:
    """subprocess.run for the pair's steps: records each step, whether the lock was held while it ran, and leaves
    the file the real step would (accuracies from `accs`, by set name)."""

    def __init__(self, a: argparse.Namespace, accs: dict):
        import subprocess

        self.a, self.accs, self.calls, self.real = a, accs, [], subprocess.run

    def locked(self) -> bool:
        import fcntl

        with open(self.a.lock, "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
            return False

    def __call__(self, argv, check=False, **kw):
        if argv[0] == "git":  # the revision a row is written at
            return self.real(argv, check=check, **kw)
        w = dp.workdir(self.a)
        tail = argv[2:] if argv[0] != "flock" else argv  # [PY, script, *opts, step, ...]
        step = next(x for x in tail if not x.startswith("--"))
        k = int(next((x.split("=")[1] for x in tail if x.startswith("--draw=")), 0))
        name = tail[tail.index(step) + 1] if step == "judge-ddkit" else None  # judged: the set, by name
        self.calls.append((step, name or k, self.locked(), argv[0]))
        if step == "official-distill":
            (dp.official_run_dir(w, k)).mkdir(parents=True, exist_ok=True)
            (dp.official_run_dir(w, k) / "timing.json").write_text("{}")
        elif step == "to-ddkit":
            (w / f"{dp.draw_set('official', k)}_set").mkdir(parents=True, exist_ok=True)
            (w / f"{dp.draw_set('official', k)}_set" / "meta.json").write_text("{}")
        elif step == "ddkit-distill":
            (w / f"{dp.draw_set('ddkit', k)}_set").mkdir(parents=True, exist_ok=True)
            (w / f"{dp.draw_set('ddkit', k)}_timing.json").write_text("{}")
        elif step == "judge-ddkit":
            _summary(w / f"eval_ddkit_{name}" / "seed0" / "summary.json", self.accs[name])


def test_draws_step_runs_what_is_missing_under_the_lock_and_writes_the_existing_row_only(tmp_path: Path,
                                                                                         monkeypatch):
    import subprocess

    a = _draw_args(tmp_path)
    w = dp.workdir(a)
    _summary(w / "eval_ddkit_ddkit" / "seed0" / "summary.json", 36.0)  # the row's own sets: draw 0
    _summary(w / "eval_ddkit_official" / "seed0" / "summary.json", 35.0)
    (w / "official_seed1_run").mkdir()
    (w / "official_seed1_run" / "timing.json").write_text("{}")  # finished before an interruption: kept
    results = tmp_path / "results"
    results.mkdir()
    row = {"command": "python bench/parity/datm_pair.py all", "judges": {"ddkit": {"x": 1}}, "ddkit_revision": "abc"}
    (results / "parity_datm.json").write_text(json.dumps({"official": {"repo": "r", "edits": "old"},
                                                          "rows": {"ipc10": row, "ipc1": {"y": 2}}}))
    monkeypatch.setattr(dp, "RESULTS", results)
    fake = FakeSteps(a, {"official_seed1": 34.0, "ddkit_seed1": 35.0, "official_seed2": 33.0, "ddkit_seed2": 34.0})
    monkeypatch.setattr(subprocess, "run", fake)
    dp.run_draws(a)
    assert [(s, k, lk) for s, k, lk, _ in fake.calls] == [
        ("to-ddkit", 1, False), ("ddkit-distill", 1, True), ("judge-ddkit", "official_seed1", False),
        ("judge-ddkit", "ddkit_seed1", False), ("official-distill", 2, True), ("to-ddkit", 2, False),
        ("ddkit-distill", 2, True), ("judge-ddkit", "official_seed2", False), ("judge-ddkit", "ddkit_seed2", False)]
    # distillations alone under the lock; draw 0 is the row's, never rerun
    doc = json.loads((results / "parity_datm.json").read_text())
    got = doc["rows"]["ipc10"]
    assert {k: got[k] for k in row} == row and doc["rows"]["ipc1"] == {"y": 2}  # the rest untouched
    d = got["diagnostics"]["draws"]
    assert d["ddkit"]["per_draw"] == [36.0, 35.0, 34.0] and d["official"]["per_draw"] == [35.0, 34.0, 33.0]
    assert d["verdict"] == {"delta": 1.0, "tolerance": 1.64, "pass": True} and "diagnostics_revision" in got
    assert "manual_seed(K)" in doc["official"]["edits"] and doc["official"]["repo"] == "r"
    fake.calls.clear()
    dp.run_draws(a)  # everything finished: a rerun runs nothing
    assert fake.calls == []


def test_run_all_takes_the_lock_through_common_exclusive(tmp_path: Path, monkeypatch):
    import subprocess

    a = _draw_args(tmp_path, workers=1)
    (dp.official_buffer(a)).mkdir(parents=True)
    (dp.official_buffer(a) / "convert.json").write_text("{}")
    fake = FakeSteps(a, {})
    monkeypatch.setattr(subprocess, "run", fake)
    monkeypatch.setattr(dp, "run_pool", lambda *x: None)
    monkeypatch.setattr(dp, "write_row", lambda a: None)
    dp.run_all(a)
    assert [(s, k, lk, p) for s, k, lk, p in fake.calls] == [
        ("official-distill", 0, True, dp.PY), ("ddkit-distill", 0, True, dp.PY), ("to-ddkit", 0, False, dp.PY)]


def test_wandb_stub_reseeds_with_the_scripts_own_manual_seed():
    import numpy as np

    from mtt_pair import wandb_stub

    script = ("import numpy as np\n"
              "def manual_seed(seed=0):\n    seen.append(seed)\n    np.random.seed(seed)\n"
              "def main():\n    manual_seed()\n    wandb.init(config=cfg)\n    return np.random.rand()\n")
    for reseed, want in ((None, [0]), (5, [0, 5])):
        record: dict = {}
        ns = {"wandb": wandb_stub(record, reseed=reseed), "seen": [], "cfg": argparse.Namespace(ipc=10)}
        exec(script, ns)
        x = ns["main"]()
        assert ns["seen"] == want and ns["wandb"].config._items == {"ipc": 10}
        assert x == np.random.RandomState(reseed or 0).rand()  # the run draws as if main had seeded `reseed`
        assert record.get("reseeded") == reseed
    ns = {"wandb": wandb_stub({}, reseed=1), "cfg": argparse.Namespace()}
    exec("def main():\n    wandb.init(config=cfg)\n", ns)
    with pytest.raises(SystemExit, match="manual_seed"):
        ns["main"]()
