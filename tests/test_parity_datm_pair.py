"""bench/parity/datm_pair.py (issue #27, the DATM accuracy pair): the settings come from DATM's own YAML with only
the named reductions, ddkit's command line resolves to exactly the official config both sides are built from,
and the official judge is handed each set's learned labels and lr in the ZCA space it was distilled in."""
from __future__ import annotations

import argparse
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
