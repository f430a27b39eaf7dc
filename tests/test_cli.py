"""CLI end to end on digits (offline) and every bad-input case: one line, exit code != 0, nothing overwritten."""
from __future__ import annotations

import json

import pytest
import torch

from ddkit.cli import main

DIGITS = ["--dataset", "digits", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("t") / "digits_conv2"
    rc = main(["teacher", "train", *DIGITS, "--model", "convnet-d2", "--epochs", "3", "--lr", "0.05",
               "--batch-size", "128", "--output", str(out)])
    assert rc == 0
    assert not (out.parent / (out.name + ".ckpt")).exists()  # the resume checkpoint goes once the teacher is saved
    return out


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ddkit: error:"), err
    return err[0]


def test_listing_commands(capsys):
    for cmd in ("datasets", "models", "methods", "recipes"):
        assert main([cmd]) == 0
    out = capsys.readouterr().out
    assert "digits" in out and "ConvNet" in out.replace("convnet", "ConvNet") and "random" in out and "cim" in out


def test_teacher_json_and_distill_evaluate_inspect(teacher_path, tmp_path, capsys):
    meta = json.loads((teacher_path.parent / (teacher_path.name + ".json")).read_text())
    assert meta["classes"] == [str(i) for i in range(10)] and meta["accuracy"] > 0.5
    out = tmp_path / "set"
    assert main(["distill", *DIGITS, "--method", "random", "--ipc", "2", "--output", str(out)]) == 0
    assert (out / "meta.json").is_file() and (out / "grid.png").is_file()
    ev = tmp_path / "eval"
    rc = main(["evaluate", str(out), *DIGITS, "--teacher", str(teacher_path), "--regime", "slkd", "--epochs", "3",
               "--seeds", "1", "--output", str(ev)])
    assert rc == 0
    summary = json.loads((ev / "summary.json").read_text())
    assert "config.yaml" in {p.name for p in ev.iterdir()} and summary
    assert main(["inspect", str(out)]) == 0
    assert "method      random" in capsys.readouterr().out


def test_lic_via_cli_with_method_flags(teacher_path, tmp_path):
    out = tmp_path / "lic"
    rc = main(["distill", *DIGITS, "--method", "cim", "--teacher", str(teacher_path), "--ipc", "1",
               "--iterations", "2", "--output", str(out)])
    assert rc == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["method"] == "lic" and meta["config"]["iterations"] == 2


def test_unknown_names(capsys, tmp_path):
    assert main(["distill", "--dataset", "nope", "--output", str(tmp_path / "x")]) == 2
    assert "Known:" in _err(capsys)
    assert main(["distill", *DIGITS, "--method", "nope", "--output", str(tmp_path / "x")]) == 2
    assert "random" in _err(capsys)


def test_ipc_too_large(capsys, tmp_path):
    assert main(["distill", *DIGITS, "--ipc", "100000", "--output", str(tmp_path / "x")]) == 2
    assert "has only" in _err(capsys)
    assert not (tmp_path / "x").exists()


def test_existing_output_untouched(capsys, tmp_path):
    out = tmp_path / "set"
    assert main(["distill", *DIGITS, "--ipc", "1", "--output", str(out)]) == 0
    before = (out / "images.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["distill", *DIGITS, "--ipc", "2", "--output", str(out)]) == 2
    assert "--overwrite" in _err(capsys)
    assert (out / "images.safetensors").read_bytes() == before


def test_teacher_checkpoint_class_mismatch(teacher_path, tmp_path, capsys):
    # A checkpoint for 10 classes used on a 4-class folder set must be refused.
    from PIL import Image

    root = tmp_path / "folder"
    for split in ("train", "test"):
        for c in range(4):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(3):
                Image.new("L", (8, 8), color=c * 60).save(d / f"{i}.png")
    rc = main(["distill", "--dataset", f"folder:{root}", "--device", "cpu", "--no-progress", "--method", "lic",
               "--teacher", str(teacher_path), "--ipc", "1", "--output", str(tmp_path / "o"),
               "--cache-dir", str(tmp_path / "cache")])
    assert rc == 2
    assert "10 outputs but" in _err(capsys)


def test_slkd_without_teacher_and_unknown_recipe(tmp_path, capsys):
    out = tmp_path / "set"
    assert main(["distill", *DIGITS, "--ipc", "1", "--output", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), *DIGITS, "--regime", "slkd", "--output", str(tmp_path / "e")]) == 2
    assert "teacher" in _err(capsys)
    assert main(["evaluate", str(out), *DIGITS, "--recipe", "nope", "--regime", "hl",
                 "--output", str(tmp_path / "e")]) == 2
    assert "cim" in _err(capsys)
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("method", __import__("ddkit.methods", fromlist=["list_methods"]).list_methods())
def test_distill_help_for_every_method(method, capsys):
    with pytest.raises(SystemExit) as e:
        main(["distill", "--method", method, "--help"])
    assert e.value.code == 0
    assert "--ipc" in capsys.readouterr().out


def test_study_cli_runs_and_resumes(tmp_path, capsys):
    args = ["study", "hard-truths", *DIGITS, "--methods", "random", "--ipcs", "1", "--budgets", "0.05",
            "--regimes", "hl", "--seeds", "1", "--student", "convnet-d1", "--student-width", "8",
            "--output-dir", str(tmp_path / "study")]
    assert main(args) == 0
    assert "1 cells evaluated, 0 already done" in capsys.readouterr().out
    assert (tmp_path / "study" / "results.csv").is_file() and (tmp_path / "study" / "report.md").is_file()
    assert main(args) == 0
    assert "0 cells evaluated, 1 already done" in capsys.readouterr().out


def test_study_cli_method_and_eval_options(tmp_path, capsys):
    out = tmp_path / "study"
    args = ["study", "hard-truths", *DIGITS, "--methods", "el2n-easy", "--ipcs", "1", "--budgets", "0.05",
            "--regimes", "hl", "--seeds", "1", "--student", "convnet-d1", "--student-width", "8",
            "--method-opt", "el2n-easy.proxy_epochs=1", "--method-opt", "el2n-easy.proxy-width=8",
            "--eval-opt", "num_evals=1", "--output-dir", str(out)]
    assert main(args) == 0
    sets = [p.name for p in (out / "sets").iterdir()]
    assert len(sets) == 1 and sets[0].startswith("el2n-easy-ipc1-seed0-")  # options are part of the cache key
    import json
    assert json.loads((out / "study.json").read_text())["protocol"]["eval_overrides"] == {"num_evals": 1}
    assert main([*args[:-2], "--eval-opt", "num_evals=2", "--output-dir", str(out)]) == 2  # another protocol
    assert "another protocol" in capsys.readouterr().err
    assert main([*args, "--method-opt", "nodot=1"]) == 2
    assert "NAME.KEY=VALUE" in capsys.readouterr().err
    for bad, msg in ((["--eval-opt", "bogus=1"], "unknown evaluator option(s) bogus"),
                     (["--method-opt", "el2n-easy.bogus=1"], "unknown option(s) bogus for method el2n-easy")):
        fresh = tmp_path / "fresh"
        assert main([*args[:-2], *bad, "--output-dir", str(fresh)]) == 2
        assert msg in capsys.readouterr().err and not fresh.exists()  # nothing written


def test_dcs_cli(tmp_path, capsys):
    out = tmp_path / "dcs.md"
    assert main(["dcs", *DIGITS, "--loss", "dm", "--ipcs", "1", "--subsets", "3", "--budget-epochs", "0.05",
                 "--output", str(out)]) == 0
    assert out.is_file() and "DCS" in out.read_text().upper()


def test_sharded_distill_then_merge_equals_single_run(tmp_path, capsys):
    single = tmp_path / "single"
    assert main(["distill", *DIGITS, "--ipc", "2", "--output", str(single)]) == 0
    out = tmp_path / "sharded"
    for i in range(2):
        assert main(["distill", *DIGITS, "--ipc", "2", "--shard", f"{i}/2", "--no-merge", "--output", str(out)]) == 0
    assert not out.exists()
    assert main(["merge", str(out)]) == 0
    from ddkit.distilled import load_distilled

    a, b = load_distilled(single), load_distilled(out)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    # a resumed run with everything finished recomputes nothing and still merges
    assert main(["distill", *DIGITS, "--ipc", "2", "--resume", "--overwrite", "--output", str(out)]) == 0


def test_config_file_sets_defaults_and_flags_win(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("ipc: 3\nseed: 7\n")
    out = tmp_path / "set"
    assert main(["distill", *DIGITS, "-c", str(cfg), "--seed", "1", "--output", str(out)]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["ipc"] == 3 and meta["seed"] == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("- not a mapping\n")
    assert main(["distill", *DIGITS, "-c", str(bad), "--output", str(tmp_path / "x")]) == 2


def test_evaluate_random_by_default_no_random_skips_it_and_an_undrawable_one_is_a_note(tmp_path, capsys):
    """Random beside the set is the default; --no-random leaves it out; a random subset that cannot be drawn
    (a class smaller than the IPC) is one line of output, and an error only when --with-random asked for it."""
    s = tmp_path / "set"
    assert main(["distill", *DIGITS, "--ipc", "2", "--output", str(s)]) == 0
    tiny = ["--regime", "hl", "--recipe", "dc", "--epochs", "1", "--seeds", "1", "--student", "convnet-d1",
            "--student-width", "8"]
    assert main(["evaluate", str(s), *DIGITS, *tiny, "--no-random", "--output", str(tmp_path / "a")]) == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert [r["set"] for r in summary["results"]] == ["distilled"] and "skipped_baselines" not in summary
    assert not (tmp_path / "a" / "runs" / "random").exists()
    page = (tmp_path / "a" / "report.html").read_text()
    assert "<td>random</td>" not in page and "No random baseline in this run" in page
    capsys.readouterr()
    # one image per class in the train split: a random subset of IPC 2 cannot be drawn
    assert main(["evaluate", str(s), *DIGITS, *tiny, "--max-per-class", "1", "--output", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    notes = [x for x in out.splitlines() if "random" in x and "not evaluated" in x]
    assert notes == ["random baseline not evaluated: ipc needs 2 images per class but class 0 ('0') has only 1"], out
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert [r["set"] for r in summary["results"]] == ["distilled"]
    assert summary["skipped_baselines"]["random"].startswith("ipc needs 2")
    assert "Random baseline not evaluated: ipc needs 2" in (tmp_path / "b" / "report.html").read_text()
    assert main(["evaluate", str(s), *DIGITS, *tiny, "--max-per-class", "1", "--with-random",
                 "--output", str(tmp_path / "c")]) == 2
    assert "ipc needs 2 images per class" in _err(capsys) and not (tmp_path / "c").exists()


def test_evaluate_help_says_random_is_the_default(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--no-random skip the random baseline: by default a random real subset" in text
    assert "--with-random deprecated, the random baseline is now the default" in text
