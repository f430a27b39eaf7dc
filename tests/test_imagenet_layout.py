"""Acceptance of issue #31: every command on a generated ImageNet-layout folder (`--dataset imagenette`).

The folder (three wnid classes, small JPEGs) is read file-backed, as ImageNet is: no command may reach for the
whole split in memory. Teacher train, experts, distill with every registered method, relabel, evaluate under
HL / SL / SL+KD (and from the label store), study and export all run through `ddkit.cli.main` and must exit 0;
a method may instead refuse in one line that says why and what to do, but only with the refusal listed in
REFUSALS (a new failure is a test failure). Settings are tiny (16-px images, IPC 1, a few iterations): this
checks that each path runs on a file-backed split, not what it reaches.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import pytest

from ddkit.cli import main
from ddkit.methods import list_methods, method_spec
from tests.conftest import make_imagenet_layout

pytestmark = pytest.mark.usefixtures("one_thread")

#: one small recording shared by every dynamics coreset (same proxy config, same cache folder)
PROXY = ["--proxy-epochs", "2", "--proxy-width", "8", "--proxy-batch-size", "8", "--proxy-runs", "1"]
#: what makes each method small; methods not named here run with their registered quick options only
OPTIONS: Dict[str, List[str]] = {
    "dyn-unc": PROXY + ["--span", "2"],  # two record points: one window of Dyn-Unc's std
    "ca2d": ["--budget-epochs", "2", "--points-per-epoch", "3", "--proxy-width", "8", "--proxy-batch-size", "8",
             "--pool-size", "4"],
    "cad-prune": ["--budget-epochs", "2", "--points-per-epoch", "3", "--proxy-width", "8", "--proxy-batch-size", "8"],
    "el2n-best": ["--val-per-class", "3", "--search-epochs", "2", "--proxy-epochs", "2", "--proxy-width", "8",
                  "--proxy-batch-size", "8"],
    "lic": ["--iterations", "2", "--pool-size", "4"],
    "rded": ["--pool-size", "4"],
    "dc": ["--iterations", "1"],
    "dsa": ["--iterations", "1"],
    "dm": ["--iterations", "2"],
    "mtt": ["--iterations", "2", "--syn-steps", "2", "--expert-epochs", "1", "--max-start-epoch", "1"],
    "datm": ["--iterations", "2", "--syn-steps", "2", "--expert-epochs", "1", "--max-start-epoch", "1",
             "--min-start-epoch", "0", "--current-max-start-epoch", "1"],
    "sre2l": ["--iterations", "2"],
    "cda": ["--iterations", "2"],
    "dwa": ["--iterations", "2", "--steps", "1"],
}
#: methods that refuse this data, with the one line they refuse with (why, and what to do instead)
REFUSALS: Dict[str, str] = {
    # generators whose weights never ship with ddkit (needs=diffusion-weights)
    "d4m": "needs local Stable Diffusion v1.5 weights: pass the folder",
    "minimax": "needs local DiT-XL/2 weights: pass the folder"}


def _quick_flags(name: str) -> List[str]:
    out: List[str] = []
    for key, value in method_spec(name).quick:
        flag = "--" + key.replace("_", "-")
        out += [flag, ",".join(str(v) for v in value) if isinstance(value, (tuple, list)) else str(value)]
    return out


def _ok(argv: List[str], capsys) -> str:
    rc = main(argv)
    out = capsys.readouterr()
    assert rc == 0, f"ddkit {' '.join(argv[:3])}… exited {rc}: {out.err.strip()[-600:]}"
    return out.out


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The folder, the data flags, a BatchNorm teacher and a small expert buffer (made through the CLI)."""
    tmp = tmp_path_factory.mktemp("inet")
    root = make_imagenet_layout(tmp / "imagenette2", train=8, val=4, side=24)
    data = ["--dataset", "imagenette", "--data-root", str(root), "--image-size", "16", "--cache-dir",
            str(tmp / "cache"), "--device", "cpu", "--no-progress"]
    teacher = tmp / "teacher"
    rc = main(["teacher", "train", *data, "--model", "convnet-d1-bn", "--epochs", "2", "--batch-size", "8", "--lr", "0.003",
               "--output", str(teacher)])
    assert rc == 0
    buf = tmp / "buffer"
    rc = main(["experts", "train", *data, "--preset", "cpu", "--num-experts", "1", "--epochs", "2",
               "--batch-size", "8", "--output", str(buf)])
    assert rc == 0
    return {"tmp": tmp, "data": data, "teacher": str(teacher), "buffer": str(buf)}


@pytest.mark.parametrize("name", list_methods())
def test_distill_every_method_or_refuse_in_one_line(site, name, capsys):
    spec = method_spec(name)
    out = site["tmp"] / "sets" / name
    argv = ["distill", *site["data"], "--method", name, "--ipc", "1", "--output", str(out), *_quick_flags(name),
            *OPTIONS.get(name, PROXY if "--proxy-epochs" in _help(name) else []),
            "--teacher", site["teacher"], "--skip-teacher-check"]
    if "expert-buffer" in spec.needs:
        argv += ["--buffer", site["buffer"]]
    if "--dynamics-cache" in _help(name):
        argv += ["--dynamics-cache", str(site["tmp"] / "dynamics")]
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    if name in REFUSALS:
        assert rc != 0 and err.count("\n") == 0, f"{name}: expected a one-line refusal, got rc {rc}: {err}"
        assert REFUSALS[name] in err, f"{name}: refused with another reason: {err}"
        return
    assert rc == 0, f"{name} failed on a file-backed split: {err[-800:]}"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["ipc"] == 1 and meta["classes"] == ["n01440764", "n02102040", "n02979186"]


def _help(name: str) -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        main(["distill", "--method", name, "--help"])
    return buf.getvalue()


def test_relabel_evaluate_study_export(site, capsys):
    tmp, data, teacher = site["tmp"], site["data"], site["teacher"]
    s = tmp / "random"
    _ok(["distill", *data, "--method", "random", "--ipc", "2", "--output", str(s), "--teacher", teacher], capsys)
    _ok(["relabel", str(s), "--teacher", teacher, "--epochs", "2", "--device", "cpu", "--no-progress"], capsys)
    accs = {}
    for regime, extra in (("hl", []), ("sl", []), ("slkd", []),
                          ("stored", ["--recipe", "sre2l", "--labels", "stored"])):
        out = tmp / f"eval-{regime}"
        _ok(["evaluate", str(s), *data, "--teacher", teacher, "--regime", "slkd" if regime == "stored" else regime,
             "--epochs", "2", "--seeds", "1", "--output", str(out), *extra], capsys)
        summary = json.loads((out / "summary.json").read_text())
        accs[regime] = summary
    assert set(accs) == {"hl", "sl", "slkd", "stored"}
    study = tmp / "study"
    _ok(["study", "hard-truths", *data, "--teacher", teacher, "--ipcs", "1", "--budgets", "2", "--regimes",
         "hl,sl,slkd", "--methods", "random,el2n-easy", "--method-opt", "el2n-easy.proxy_epochs=1",
         "--method-opt", "el2n-easy.proxy_width=8", "--seeds", "1", "--output-dir", str(study)], capsys)
    rows = (study / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2 * 3  # header + (random, el2n-easy) × three regimes
    _ok(["export", str(s), "--format", "imagefolder", "--output", str(tmp / "exported")], capsys)
    assert len(list((tmp / "exported").glob("*/*.png"))) == 6
