"""`ddkit demo`: what each method declares decides what it is given; skipped and failed methods are rows of the
report, and a failed one makes the command exit non-zero (so CI's demo run turns red when a method breaks).

The demo itself runs at tiny sizes here (1-epoch teacher, 2-epoch students, one seed, HL only); `make demo` and
CI run the real default.
"""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from ddkit import plugins
from ddkit.cli import main
from ddkit.demo import PROVIDES, REPRESENTATIVE, DemoConfig, run_demo
from ddkit.methods import METHODS, ClassResult, create_method, list_methods, method_spec, register_method
from ddkit.methods.base import NEEDS
from ddkit.teachers import TeacherConfig
from ddkit.utils import DDKitError

TINY = dict(teacher=TeacherConfig(arch="convnet-d2", arch_kw={"width": 8}, epochs=1, batch_size=128),
            bn_teacher=TeacherConfig(arch="convnet-d2-bn", arch_kw={"width": 16}, epochs=5, lr=0.05, batch_size=128),
            epochs=2, seeds=1, regimes=("hl",))
SEEN: dict = {}

PLUGIN = '''
import torch
from ddkit.methods import ClassResult
from ddkit.plugins import register_method

@register_method("demo-broken")
def broken(dataset, teacher, cfg, classes, *, device, progress=True):
    """A method that breaks: the demo must fail with its name."""
    raise RuntimeError("deliberately broken")
    yield
'''


@pytest.fixture
def test_methods():
    """Methods registered for one test (an unknown need, a BN-teacher need); removed afterwards."""

    @register_method("demo-needs-gpu-cluster", needs=("gpu-cluster",))
    def needs_cluster(dataset, teacher, cfg, classes, *, device, progress=True):
        """Needs something the demo cannot make."""
        raise AssertionError("a method with an unmet need must not run")
        yield

    @register_method("demo-needs-bn", needs_teacher=True, needs=("bn-teacher",))
    def needs_bn(dataset, teacher, cfg, classes, *, device, progress=True):
        """Records the teacher it was given, yields the first ipc images of each class."""
        SEEN["bn"] = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in teacher.model.modules())
        for c in classes:
            idx = (dataset.labels == c).nonzero().flatten()[:cfg.ipc]
            yield ClassResult(c, dataset.images[idx].float() / 255)

    yield
    for name in ("demo-needs-gpu-cluster", "demo-needs-bn"):
        METHODS.unregister(name)


def test_every_registered_method_declares_known_needs_and_valid_quick_options():
    for name in list_methods():
        spec = method_spec(name)
        assert set(spec.needs) <= set(NEEDS), (name, spec.needs)
        create_method(name, **dict(spec.quick))  # the quick options build a valid config
    assert set(REPRESENTATIVE) <= set(list_methods())
    covered = {n for m in REPRESENTATIVE for n in method_spec(m).needs}
    assert covered == set(PROVIDES) and set(PROVIDES) <= set(NEEDS)  # the default demo exercises every need it
    # knows how to provide; the rest (local diffusion weights) are reported as "skipped: needs …"


def test_quick_options_are_checked_at_registration():
    with pytest.raises(DDKitError, match="not fields"):
        register_method("demo-typo", quick={"iterashuns": 3})


def test_demo_provides_a_bn_teacher_and_skips_an_unmet_need(tmp_path, test_methods):
    cfg = DemoConfig(methods=("random", "demo-needs-bn", "demo-needs-gpu-cluster"), **TINY)
    results = run_demo(tmp_path, device="cpu", progress=False, cfg=cfg)
    assert SEEN["bn"] is True and set(results) == {"random", "demo-needs-bn"}
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["status"]["demo-needs-gpu-cluster"] == "skipped: needs gpu-cluster"
    assert doc["machine"]["cpu_model"] and doc["wall_seconds"] > 0
    html = (tmp_path / "report.html").read_text()
    assert "skipped: needs gpu-cluster" in html and "Measured: the whole demo took" in html


def test_demo_cli_exits_non_zero_naming_a_broken_method_and_still_writes_the_report(tmp_path, capsys):
    plugin = tmp_path / "broken_plugin.py"
    plugin.write_text(PLUGIN)
    out = tmp_path / "demo"
    import ddkit.demo

    try:
        with pytest.MonkeyPatch.context() as mp:  # tiny sizes: the demo's fixed config, shrunk
            mp.setattr(ddkit.demo, "DemoConfig", lambda methods: DemoConfig(methods=methods, **TINY))
            code = main(["--plugin", str(plugin), "demo", "--methods", "random,demo-broken", "--device", "cpu",
                         "--no-progress", "--output", str(out)])
    finally:
        if "demo-broken" in METHODS:
            METHODS.unregister("demo-broken")
        plugins.forget_loaded()
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "demo-broken" in err[-1] and "deliberately broken" in err[-1] and "1 of 2 methods failed" in err[-1]
    doc = json.loads((out / "results.json").read_text())
    assert doc["status"]["demo-broken"].startswith("failed: RuntimeError") and "random" in doc["results"]
    assert (out / "report.html").is_file() and (out / "config.yaml").is_file()


def test_demo_all_and_methods_exclude_each_other(tmp_path, capsys):
    assert main(["demo", "--all", "--methods", "random", "--output", str(tmp_path / "d")]) == 2
    assert "exclude each other" in capsys.readouterr().err


def test_demo_defaults_are_the_representative_set():
    assert DemoConfig().methods == REPRESENTATIVE and dataclasses.replace(DemoConfig(), methods=()).methods == ()


def test_demo_builds_an_expert_buffer_for_datm(tmp_path):
    """DATM's config leaves `model` to the per-dataset row (None); the demo's expert provider must still build a
    buffer (ConvNet-3, the CPU preset's model) and the method must finish — CI's `make demo` failed here once."""
    cfg = DemoConfig(methods=("datm",), **TINY)
    results = run_demo(tmp_path, device="cpu", progress=False, cfg=cfg)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["status"]["datm"] == "ok" and "datm" in results
    assert list(tmp_path.glob("experts-convnet-d3*"))
