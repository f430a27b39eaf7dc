"""`-c FILE` for every subcommand: a run's saved config.yaml reproduces it; unknown keys fail with one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ddkit.cli import main

DIGITS = ["--dataset", "digits", "--device", "cpu", "--no-progress"]


def _run(argv):
    try:
        return main(argv)
    except SystemExit as e:  # argparse's own exit (one line, see cli._Parser)
        return e.code


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ddkit: error:"), err
    assert "Traceback" not in err[0]
    return err[0]


def test_distill_config_round_trips(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["distill", *DIGITS, "--method", "random", "--ipc", "2", "--seed", "3", "--output", str(a)]) == 0
    saved = yaml.safe_load((a / "config.yaml").read_text())
    assert saved["command"] == "distill" and saved["args"]["ipc"] == 2 and "overwrite" not in saved["args"]
    assert main(["distill", "-c", str(a / "config.yaml"), "--output", str(b)]) == 0
    assert (a / "images.safetensors").read_bytes() == (b / "images.safetensors").read_bytes()
    assert (a / "labels.safetensors").read_bytes() == (b / "labels.safetensors").read_bytes()


def test_distill_config_picks_the_method_options(tmp_path):
    """A file's `method:` decides which options exist (el2n-easy's own options are accepted)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset: digits\ndevice: cpu\nno-progress: true\nmethod: el2n-easy\nipc: 1\n"
                   "proxy_epochs: 1\nproxy-width: 8\n")
    assert main(["distill", "-c", str(cfg), "--output", str(tmp_path / "h")]) == 0
    meta = json.loads((tmp_path / "h" / "meta.json").read_text())
    assert meta["method"] == "el2n-easy" and meta["config"]["proxy"]["epochs"] == 1


def test_evaluate_config_round_trips(tmp_path):
    s, e1, e2 = tmp_path / "s", tmp_path / "e1", tmp_path / "e2"
    assert main(["distill", *DIGITS, "--ipc", "2", "--output", str(s)]) == 0
    assert main(["evaluate", str(s), *DIGITS, "--regime", "hl", "--epochs", "2", "--seeds", "1",
                 "--output", str(e1)]) == 0
    assert (e1 / "runs" / "distilled" / "convnet-d3").is_dir()  # the resolved student, not "None"

    def no_nan(c):
        raise AssertionError(f"bare {c} in summary.json")
    summary = json.loads((e1 / "summary.json").read_text(), parse_constant=no_nan)
    assert summary["results"][0]["std_ddof1"] is None and "ddof-1 std" in summary["nulls"]
    saved = yaml.safe_load((e1 / "config.yaml").read_text())
    assert saved["command"] == "evaluate" and saved["args"]["distilled"] == str(s)
    assert "recipe" in saved and "plan" in saved  # the evaluator's resolved facts stay in the file
    assert main(["evaluate", "-c", str(e1 / "config.yaml"), "--output", str(e2)]) == 0
    r1 = json.loads((e1 / "summary.json").read_text())["results"]
    r2 = json.loads((e2 / "summary.json").read_text())["results"]
    assert [r["accs"] for r in r1] == [r["accs"] for r in r2]


def test_study_config_round_trips(tmp_path, capsys):
    out, out2 = tmp_path / "st", tmp_path / "st2"
    assert main(["study", "hard-truths", *DIGITS, "--methods", "random", "--ipcs", "1", "--budgets", "0.05",
                 "--regimes", "hl", "--seeds", "1", "--student", "convnet-d1", "--student-width", "8",
                 "--eval-opt", "num_evals=1", "--output-dir", str(out)]) == 0
    saved = out / "config.yaml"
    assert yaml.safe_load(saved.read_text())["args"]["ipcs"] == [1]
    capsys.readouterr()
    assert main(["study", "hard-truths", "-c", str(saved)]) == 0  # same folder: everything is already done
    assert "0 cells evaluated, 1 already done" in capsys.readouterr().out
    assert main(["study", "hard-truths", "-c", str(saved), "--output-dir", str(out2)]) == 0
    rows = [(out / "results.csv").read_text().splitlines(), (out2 / "results.csv").read_text().splitlines()]
    col = rows[0][0].split(",").index("accs")
    assert [r.split(",")[col] for r in rows[0][1:]] == [r.split(",")[col] for r in rows[1][1:]]


def test_flags_beat_the_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset: digits\ndevice: cpu\nno_progress: true\nipc: 3\n")
    assert main(["distill", "-c", str(cfg), "--ipc", "1", "--output", str(tmp_path / "o")]) == 0
    assert json.loads((tmp_path / "o" / "meta.json").read_text())["num_images"] == 10


@pytest.mark.parametrize("text, needle", [
    ("ipcc: 5\n", "unknown key(s) ipcc for `ddkit distill`; valid keys:"),
    ("teacher-archh: x\n", "unknown key(s) teacher-archh"),
    ("ipc: abc\n", "ipc: 'abc' is not a whole number"),
    ("ipc: 2.5\n", "ipc: 2.5 is not a whole number"),
    ("ipc: [1, 2]\n", "is not a single value"),
    ("overwrite: yes-please\n", "overwrite: 'yes-please' is not true or false"),
    ("ipc: 5\n  bad: [\n", "is not valid YAML at line"),
    ("- ipc\n- 5\n", "must hold a mapping"),
    ("command: evaluate\nargs: {}\n", "records a `ddkit evaluate` run"),
])
def test_bad_config_file_is_one_line_exit_2(tmp_path, capsys, text, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    out = tmp_path / "o"
    assert _run(["distill", *DIGITS, "-c", str(cfg), "--output", str(out)]) == 2
    assert needle in _one_line(capsys)
    assert not out.exists()


def test_unknown_key_lists_valid_keys_for_every_subcommand(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("bogus: 1\n")
    for argv in (["evaluate", "x"], ["study", "hard-truths"], ["teacher", "train"], ["inspect", "x"],
                 ["merge", "x"], ["dcs"], ["demo"], ["experts", "train"], ["relabel", "x"], ["import", "x"],
                 ["export", "x"], ["distill"]):
        assert _run([*argv, "-c", str(cfg)]) == 2
        line = _one_line(capsys)
        assert "unknown key(s) bogus" in line and "valid keys:" in line, line


def test_help_still_shows_defaults_with_reasons(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines wherever the terminal width says
    assert "(default: native)" in out and "named evaluation preset" in out  # issue #26: the protocol decides


# --- the commands whose records came last: merge, experts, relabel, dcs, import, export, demo, teacher ---------

def _same_files(a, b, pattern):
    fa, fb = sorted(a.rglob(pattern)), sorted(b.rglob(pattern))
    assert fa and [f.relative_to(a) for f in fa] == [f.relative_to(b) for f in fb]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(fa, fb))


def test_sharded_distill_then_merge_saves_the_one_process_record(tmp_path, capsys):
    out, again = tmp_path / "sharded", tmp_path / "again"
    for i in range(2):
        assert main(["distill", *DIGITS, "--ipc", "2", "--seed", "4", "--shard", f"{i}/2", "--no-merge",
                     "--output", str(out)]) == 0
    parts = yaml.safe_load((tmp_path / "sharded.parts" / "config.yaml").read_text())
    assert parts["command"] == "distill" and not {"shard", "no_merge", "resume"} & set(parts["args"])
    assert main(["merge", str(out)]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["args"] == parts["args"] and saved["merged_by"]["command"] == "merge"
    assert main(["distill", "-c", str(out / "config.yaml"), "--output", str(again)]) == 0  # one process, same set
    _same_files(out, again, "*.safetensors")
    capsys.readouterr()
    assert _run(["merge", "-c", str(out / "config.yaml")]) == 2
    assert "records a `ddkit distill` run; use it with `ddkit distill -c" in _one_line(capsys)


def test_a_shard_that_merges_records_no_shard(tmp_path):
    out = tmp_path / "s"
    for i in range(2):  # the second shard completes the set and merges it
        assert main(["distill", *DIGITS, "--ipc", "1", "--shard", f"{i}/2", "--output", str(out)]) == 0
    assert "shard" not in yaml.safe_load((out / "config.yaml").read_text())["args"]


def test_experts_config_round_trips(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    opts = ["--arch", "mlp", "--num-experts", "1", "--epochs", "1", "--subset-per-class", "5", "--test-limit", "10"]
    assert main(["experts", "train", *DIGITS, *opts, "--shard", "0/1", "--output", str(a)]) == 0
    saved = yaml.safe_load((a / "config.yaml").read_text())
    assert saved["command"] == "experts train" and saved["args"]["num_experts"] == 1 and "shard" not in saved["args"]
    assert main(["experts", "train", "-c", str(a / "config.yaml"), "--output", str(b)]) == 0
    _same_files(a, b, "expert_*.safetensors")


def test_teacher_and_relabel_configs_round_trip(tmp_path):
    t, t2, s = tmp_path / "t", tmp_path / "t2", tmp_path / "set"
    train = ["--model", "convnet-d1", "--epochs", "1", "--batch-size", "64", "--lr", "0.05"]
    assert main(["teacher", "train", *DIGITS, *train, "--output", str(t)]) == 0
    assert main(["teacher", "train", "-c", f"{t}.json", "--output", str(t2)]) == 0  # the json is the record
    assert Path(f"{t}.safetensors").read_bytes() == Path(f"{t2}.safetensors").read_bytes()
    assert main(["distill", *DIGITS, "--ipc", "1", "--output", str(s)]) == 0
    assert main(["relabel", str(s), "--teacher", str(t), "--epochs", "1", "--no-progress", "--device", "cpu"]) == 0
    saved = s / "fkd" / "config.yaml"
    assert yaml.safe_load(saved.read_text())["args"]["epochs"] == 1
    assert main(["relabel", "-c", str(saved), "--store", str(tmp_path / "fkd2")]) == 0
    _same_files(s / "fkd", tmp_path / "fkd2", "*.npy")


def test_dcs_config_round_trips_and_never_overwrites_its_input(tmp_path, capsys):
    a, b = tmp_path / "a" / "dcs.md", tmp_path / "b" / "dcs.md"
    assert main(["dcs", *DIGITS, "--loss", "dm", "--ipcs", "1", "--subsets", "2", "--budget-epochs", "0.02",
                 "--output", str(a)]) == 0
    rec = a.with_name("dcs.config.yaml")
    saved = yaml.safe_load(rec.read_text())
    assert saved["args"]["subsets"] == 2 and saved["student_protocol"]["recipe"] == "hardtruths-hl"
    assert main(["dcs", "-c", str(rec), "--output", str(b)]) == 0
    assert a.read_text() == b.read_text()
    before = rec.read_bytes()
    capsys.readouterr()
    assert _run(["dcs", "-c", str(rec), "--subsets", "3"]) == 2  # the same --output would rewrite the record read
    assert "is the input" in _one_line(capsys) and rec.read_bytes() == before


def test_import_and_export_configs_round_trip(tmp_path):
    s, e1, e2, i1, i2 = (tmp_path / n for n in ("s", "e1", "e2", "i1", "i2"))
    assert main(["distill", *DIGITS, "--ipc", "1", "--output", str(s)]) == 0
    assert main(["export", str(s), "--format", "ddranking", "--output", str(e1)]) == 0
    assert yaml.safe_load((e1 / "config.yaml").read_text())["args"]["format"] == "ddranking"
    assert main(["export", "-c", str(e1 / "config.yaml"), "--output", str(e2)]) == 0
    _same_files(e1, e2, "*.pt")
    assert main(["import", str(e1), *DIGITS, "--method", "mine", "--output", str(i1)]) == 0
    assert yaml.safe_load((i1 / "config.yaml").read_text())["args"]["method"] == "mine"
    assert main(["import", "-c", str(i1 / "config.yaml"), "--output", str(i2)]) == 0
    _same_files(i1, i2, "*.safetensors")


def test_demo_config_round_trips(tmp_path, monkeypatch):
    import ddkit.demo

    calls = []

    def fake_demo(output, device, progress, cfg):  # the demo itself takes minutes; its flags are what counts
        calls.append((Path(output).name, device, progress, cfg))
        Path(output).mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(ddkit.demo, "run_demo", fake_demo)
    a = tmp_path / "a"
    assert main(["demo", "--device", "cpu", "--no-progress", "--output", str(a)]) == 0
    saved = yaml.safe_load((a / "config.yaml").read_text())
    assert saved["command"] == "demo" and saved["demo"]["ipc"] == ddkit.demo.DemoConfig().ipc
    assert main(["demo", "-c", str(a / "config.yaml"), "--output", str(tmp_path / "b")]) == 0
    assert calls[1] == ("b", *calls[0][1:]) and calls[0][1:3] == ("cpu", False)
