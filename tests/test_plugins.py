"""Plugins: a dataset, a model and a method defined in a user's file appear in the CLI lists and run;
an installed distribution's `ddkit.plugins` entry point appears in `ddkit methods` by itself."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ddkit import plugins
from ddkit.cli import main

PLUGIN = '''
"""A user's plugin: a generated dataset, a linear model and per-class k-means condensation."""
from dataclasses import dataclass

import torch
import torch.nn as nn

from ddkit.config import field
from ddkit.data.base import to_float
from ddkit.methods.base import ClassResult, MethodConfig, check_ipc
from ddkit.plugins import register_dataset, register_method, register_model
from ddkit.utils import make_generator


@register_dataset("plugin-blobs", num_classes=3, image_size=8, channels=1, description="three brightness classes")
def blobs(split, root):
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    labels = torch.arange(3).repeat_interleave(30 if split == "train" else 12)
    base = torch.tensor([40.0, 128.0, 215.0])[labels].view(-1, 1, 1, 1)
    images = (base + torch.randn(len(labels), 1, 8, 8, generator=g) * 20).clamp(0, 255).to(torch.uint8)
    return images, labels, ["dark", "mid", "bright"]


@register_model("plugin-linear")
def linear(num_classes, image_size, channels, **kw):
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * image_size * image_size, num_classes))


@dataclass(frozen=True)
class KMeansConfig(MethodConfig):
    iterations: int = field(10, "Lloyd iterations per class")


@register_method("plugin-kmeans", config=KMeansConfig)
def kmeans(dataset, teacher, cfg, classes, *, device, progress=True):
    """Per-class k-means in pixel space: each class's ipc centroids."""
    check_ipc(dataset, cfg.ipc)
    for c in classes:  # only the classes the driver gives (it shards, resumes and merges)
        x = to_float(dataset.class_images(c)[0]).flatten(1)
        g = make_generator(cfg.seed, "plugin-kmeans", c)
        centers = x[torch.randperm(len(x), generator=g)[:cfg.ipc]].clone()
        for _ in range(cfg.iterations):
            assign = torch.cdist(x, centers).argmin(1)
            for k in range(cfg.ipc):
                if (assign == k).any():
                    centers[k] = x[assign == k].mean(0)
        yield ClassResult(c, centers.view(cfg.ipc, *dataset.images.shape[1:]), meta={"inertia": float(
            torch.cdist(x, centers).min(1).values.pow(2).sum())})
'''

BLOBS = ["--dataset", "plugin-blobs", "--device", "cpu", "--no-progress"]


@pytest.fixture
def plugin_file(tmp_path):
    """The plugin as a file; its names leave the registries afterwards (other tests see the built-ins only)."""
    from ddkit.data import DATASETS
    from ddkit.methods import METHODS
    from ddkit.models import MODELS

    path = tmp_path / "my_plugin.py"
    path.write_text(PLUGIN)
    yield path
    for reg, name in ((DATASETS, "plugin-blobs"), (MODELS, "plugin-linear"), (METHODS, "plugin-kmeans")):
        if name in reg:
            reg.unregister(name)
    plugins.forget_loaded()


def test_plugin_names_appear_in_the_lists(plugin_file, capsys):
    for cmd in ("methods", "datasets", "models"):
        assert main(["--plugin", str(plugin_file), cmd]) == 0
    out = capsys.readouterr().out
    assert "plugin-kmeans" in out and "Per-class k-means in pixel space" in out
    assert "plugin-blobs" in out and "three brightness classes" in out and "plugin-linear" in out
    assert main(["methods"]) == 0  # the plugin stays loaded in this process: still listed
    assert "plugin-kmeans" in capsys.readouterr().out


def test_plugin_dataset_model_and_method_run(plugin_file, tmp_path, capsys):
    with pytest.raises(SystemExit):  # the method's own options show in --help (flag after the command)
        main(["distill", "--plugin", str(plugin_file), "--method", "plugin-kmeans", "--help"])
    assert "Lloyd iterations per class" in capsys.readouterr().out
    t, s, ev = tmp_path / "teacher", tmp_path / "set", tmp_path / "ev"
    assert main(["teacher", "train", "--plugin", str(plugin_file), *BLOBS, "--model", "plugin-linear",
                 "--epochs", "3", "--output", str(t)]) == 0
    assert json.loads((tmp_path / "teacher.json").read_text())["arch"] == "plugin-linear"
    assert main(["distill", "--plugin", str(plugin_file), *BLOBS, "--method", "plugin-kmeans", "--ipc", "2",
                 "--iterations", "3", "--output", str(s)]) == 0
    meta = json.loads((s / "meta.json").read_text())
    assert meta["method"] == "plugin-kmeans" and meta["classes"] == ["dark", "mid", "bright"]
    assert meta["num_images"] == 6 and meta["config"]["iterations"] == 3
    assert main(["evaluate", str(s), "--plugin", str(plugin_file), *BLOBS, "--regime", "hl", "--recipe", "dc",
                 "--dsa", "none", "--student", "plugin-linear", "--epochs", "60", "--seeds", "1",
                 "--output", str(ev)]) == 0
    acc = json.loads((ev / "summary.json").read_text())["results"][0]["mean"]
    assert acc > 0.6  # chance is 1/3: the centroids of three brightness levels teach them apart


def test_plugin_mean_std_measured_from_train_split(plugin_file):
    from ddkit.data import create_dataset

    plugins.load_plugin(str(plugin_file))
    train, test = create_dataset("plugin-blobs"), create_dataset("plugin-blobs", split="test")
    assert train.mean == test.mean and 0.3 < train.mean[0] < 0.7 and train.std[0] > 0.1
    sub = create_dataset("plugin-blobs", classes=["bright", "dark"])
    assert sub.classes == ["bright", "dark"] and len(sub) == 60


def test_bad_plugin_is_one_line(tmp_path, capsys):
    assert main(["--plugin", str(tmp_path / "missing.py"), "methods"]) == 2
    assert main(["--plugin", "no_such_module_xyz", "methods"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("ddkit: error: plugin") for e in err)


def test_entry_point_plugin_of_an_installed_distribution(tmp_path):
    """A pip-installed extension = a dist-info with entry_points.txt; `ddkit methods` lists its method."""
    site = tmp_path / "site"
    (site / "ddkit_fake_ext-0.1.dist-info").mkdir(parents=True)
    (site / "ddkit_fake_ext-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: ddkit-fake-ext\n"
                                                                     "Version: 0.1\n")
    (site / "ddkit_fake_ext-0.1.dist-info" / "entry_points.txt").write_text(
        "[ddkit.plugins]\nfake = ddkit_fake_ext\n")
    (site / "ddkit_fake_ext.py").write_text(PLUGIN.replace("plugin-kmeans", "fake-ext-kmeans")
                                            .replace("plugin-blobs", "fake-blobs").replace("plugin-linear", "fake-lin"))
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, str(site)]))
    r = subprocess.run([sys.executable, "-m", "ddkit", "methods"], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert "fake-ext-kmeans" in r.stdout and "random" in r.stdout
    r = subprocess.run([sys.executable, "-m", "ddkit", "--version"], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0 and r.stdout.startswith("ddkit ")  # --version loads no plugin
