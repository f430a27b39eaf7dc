"""No unpickling anywhere: a tampered torch.hub checkpoint and a code-running pickle under every teacher,
set and label path are refused, and the pickle's payload never runs (its marker file never appears)."""
from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ddkit.cli import main
from ddkit.distilled import DistilledSet, load_distilled
from ddkit.teachers import io as tio
from ddkit.teachers import load_teacher
from ddkit.utils import DDKitError

CPU = ["--dataset", "digits", "--device", "cpu", "--no-progress"]


class _Payload:
    """Unpickling this creates MARKER: the proof that code from a file ran."""

    marker: Path = Path("MARKER")

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def evil(tmp_path, monkeypatch) -> bytes:
    monkeypatch.chdir(tmp_path)
    _Payload.marker = tmp_path / "MARKER"
    blob = pickle.dumps({"state_dict": _Payload()}, protocol=2)
    return blob


def _never_ran(tmp_path: Path) -> None:
    assert not (tmp_path / "MARKER").exists(), "a pickle's code ran"


def _hub(tmp_path: Path, monkeypatch) -> Path:
    """An empty torch.hub cache in tmp_path; torch.hub's own loader is made to fail if anything calls it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    ckpt = Path(torch.hub.get_dir()) / "checkpoints"
    ckpt.mkdir(parents=True)

    def forbidden(*a, **k):
        raise AssertionError("torch.hub.load_state_dict_from_url must not be used (it unpickles freely)")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", forbidden)
    import torchvision.models._api as api
    monkeypatch.setattr(api, "load_state_dict_from_url", forbidden)
    return ckpt


def test_tampered_hub_checkpoint_is_refused_by_hash_and_never_runs(evil, tmp_path, monkeypatch, capsys):
    ckpt = _hub(tmp_path, monkeypatch)
    (ckpt / "resnet18-f37072fd.pth").write_bytes(evil)
    rc = main(["distill", *CPU, "--method", "herding", "--teacher", "torchvision:resnet18", "--output",
               str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "does not match torchvision's record" in err[0], err
    _never_ran(tmp_path)
    assert not (tmp_path / "out").exists()


def test_hub_file_with_matching_hash_is_still_loaded_weights_only(evil, tmp_path, monkeypatch):
    """Even a file whose hash matched (a poisoned mirror) is read with weights_only=True."""
    p = tmp_path / "x-00000000.pth"
    p.write_bytes(evil)
    with pytest.raises(DDKitError, match="refuses to unpickle"):
        tio.read_hub_weights(p, hashlib.sha256(evil).hexdigest()[:8])
    _never_ran(tmp_path)


def test_hub_weights_are_loaded_by_ddkit_not_torch_hub(tmp_path, monkeypatch):
    import torchvision

    ckpt = _hub(tmp_path, monkeypatch)
    state = torchvision.models.get_model("resnet18", weights=None).state_dict()
    path = ckpt / "resnet18-f37072fd.pth"
    torch.save(state, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    monkeypatch.setattr(tio, "hub_hash_prefix", lambda url: digest)  # our file stands in for the real download
    t = load_teacher("torchvision:resnet18")
    assert torch.equal(t.model.state_dict()["fc.weight"], state["fc.weight"])
    assert "get_state_dict" not in vars(torchvision.models.ResNet18_Weights)  # the temporary hook is gone


@pytest.mark.parametrize("layout", ["ddkit-safetensors", "cim-pth", "sre2l-pth-tar", "ddranking-dir", "plain-pt"])
def test_pickle_under_every_teacher_path_never_runs(layout, evil, tmp_path):
    if layout == "ddkit-safetensors":
        (tmp_path / "t.safetensors").write_bytes(evil)
        (tmp_path / "t.json").write_text(json.dumps({"arch": "convnet-d1"}))
        path, match = tmp_path / "t", "Python pickle, not safetensors"
    elif layout == "ddranking-dir":
        d = tmp_path / "digits" / "ConvNet-1"
        d.mkdir(parents=True)
        (d / "ckpt_best.pt").write_bytes(evil)
        path, match = d, "refuses to unpickle"
    else:
        name = {"cim-pth": "digits_conv1.pth", "sre2l-pth-tar": "model.pth.tar", "plain-pt": "w.pt"}[layout]
        path, match = tmp_path / name, "refuses to unpickle"
        path.write_bytes(evil)
    with pytest.raises(DDKitError, match=match):
        load_teacher(path, arch="convnet-d1", num_classes=10, mean=[0.5], std=[0.25])
    _never_ran(tmp_path)


@pytest.mark.parametrize("name", ["images.safetensors", "labels.safetensors"])
def test_pickle_under_every_set_path_never_runs(name, evil, tmp_path):
    DistilledSet(torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 0, 1]), ["a", "b"], [0.5], [0.25]).save(
        tmp_path / "set", pngs=False)
    (tmp_path / "set" / name).write_bytes(evil)
    with pytest.raises(DDKitError, match="Python pickle, not safetensors"):
        load_distilled(tmp_path / "set")
    _never_ran(tmp_path)


def test_pickle_in_label_store_and_dataset_cache_never_runs(evil, tmp_path):
    """The .npy stores (soft-label records, decoded-image cache) load with allow_pickle=False."""
    from ddkit.data.cache import load_entry

    obj = np.empty(1, dtype=object)
    obj[0] = _Payload()
    entry = tmp_path / "entry"
    entry.mkdir()
    np.save(entry / "images.npy", obj, allow_pickle=True)
    np.save(entry / "labels.npy", obj, allow_pickle=True)
    (entry / "meta.json").write_text(json.dumps({"count": 1}))
    assert load_entry(entry) is None  # unreadable → treated as a cache miss, never unpickled
    from ddkit.labels import LabelStore

    store = tmp_path / "store"
    store.mkdir()
    np.save(store / "logits.npy", obj, allow_pickle=True)
    s = LabelStore.__new__(LabelStore)
    s.path, s._arrays = store, {}
    with pytest.raises(DDKitError, match="holds Python objects"):  # the loader layer's line — never unpickled
        s._array("logits")
    _never_ran(tmp_path)
    shutil.rmtree(store)
