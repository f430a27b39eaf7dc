"""Nested sub-configs (issue #11): a coreset's proxy run is one `proxy: DynamicsConfig` field, flattened to the
`--proxy-*` flags it always had; flat keys, a nested mapping and an instance all build the same config, and
a saved run record feeds back through `-c`."""
from __future__ import annotations

import dataclasses

import pytest
import yaml

from ddkit.cli import _method_from_argv, build_parser
from ddkit.config import build, config_hash, flat_dict, from_args, option_names
from ddkit.config_file import parse_with_config, run_record
from ddkit.methods import create_method, method_spec
from ddkit.methods.cad import CADConfig, dynamics_config
from ddkit.methods.coresets import El2nEasyConfig, ForgettingEasyConfig
from ddkit.methods.dynamics import DynamicsConfig
from ddkit.utils import DDKitError


def _parse(argv):
    return parse_with_config(build_parser, argv, _method_from_argv)


def test_flags_are_the_prefixed_sub_fields_and_only_those_listed():
    ns = _parse(["distill", "--dataset", "digits", "--method", "forgetting", "--output", "x", "--proxy-epochs", "3",
                 "--proxy-width", "8", "--proxy-amp", "false"])
    cfg = from_args(method_spec("forgetting").config, ns)
    assert (cfg.proxy.epochs, cfg.proxy.width, cfg.proxy.amp) == (3, 8, False)
    assert cfg.proxy.lr == DynamicsConfig().lr  # untouched sub-fields keep the nested default
    names = option_names(ForgettingEasyConfig)
    assert "proxy_epochs" in names and "proxy_temperature" not in names and "proxy_schedule_epochs" not in names
    cad = option_names(CADConfig)
    assert "proxy_lr" in cad and "proxy_epochs" not in cad  # CAD's run length follows the budget, not a flag
    with pytest.raises(SystemExit):
        _parse(["distill", "--dataset", "digits", "--method", "cad-prune", "--output", "x", "--proxy-epochs", "3"])


def test_flat_keys_mapping_and_instance_build_the_same_config():
    flat = build(El2nEasyConfig, {"ipc": 2, "proxy_epochs": 1, "proxy_runs": 2})
    nested = build(El2nEasyConfig, {"ipc": 2, "proxy": {"epochs": 1, "runs": 2, "early_epochs": 20.0}})
    inst = El2nEasyConfig(ipc=2, proxy=dataclasses.replace(El2nEasyConfig().proxy, epochs=1, runs=2))
    assert flat == nested == inst
    assert flat.proxy.early_epochs == 20.0  # the subclass's nested default (Paul et al.), not DynamicsConfig's
    assert flat_dict(flat)["proxy_epochs"] == 1 and "proxy" not in flat_dict(flat)
    with pytest.raises(ValueError, match="proxy_bogus"):
        build(El2nEasyConfig, {"proxy_bogus": 1})
    with pytest.raises(DDKitError, match="no option"):
        create_method("forgetting", proxy_temperature=2.0)
    assert create_method("forgetting", proxy_epochs=1).config.proxy.epochs == 1


def test_the_proxy_run_is_the_config_the_mirrored_fields_described():
    """Same DynamicsConfig (so the same cache key and bytes) as the hand-mirrored proxy_* fields gave."""
    assert El2nEasyConfig().proxy == DynamicsConfig(epochs=20, runs=10, early_epochs=20.0)
    assert config_hash(ForgettingEasyConfig().proxy) == config_hash(DynamicsConfig())
    d = dynamics_config(build(CADConfig, {"budget_epochs": 2, "proxy_width": 8, "seed": 4}), 2.0, 80)
    assert (d.arch, d.width, d.batch_size, d.runs, d.seed, d.temperature) == ("convnet-d3", 8, 256, 1, 4, 0.0)


@pytest.mark.parametrize("style", ["flat", "nested"])
def test_yaml_accepts_flat_and_nested_keys_and_the_record_round_trips(tmp_path, style):
    body = "proxy_epochs: 2\nproxy-width: 8\n" if style == "flat" else "proxy:\n  epochs: 2\n  width: 8\n"
    path = tmp_path / "c.yaml"
    path.write_text("dataset: digits\nmethod: forgetting\noutput: x\nipc: 1\n" + body)
    ns = _parse(["distill", "-c", str(path)])
    cfg = from_args(method_spec("forgetting").config, ns)
    assert (cfg.proxy.epochs, cfg.proxy.width, cfg.ipc) == (2, 8, 1)
    saved = tmp_path / "saved.yaml"
    saved.write_text(yaml.safe_dump(run_record(ns, cfg), sort_keys=False))
    assert yaml.safe_load(saved.read_text())["args"]["proxy_epochs"] == 2
    again = from_args(method_spec("forgetting").config, _parse(["distill", "-c", str(saved)]))
    assert again == cfg
    path.write_text("dataset: digits\nmethod: forgetting\noutput: x\nproxy:\n  bogus: 1\n")
    with pytest.raises(DDKitError, match="proxy_bogus"):
        _parse(["distill", "-c", str(path)])
