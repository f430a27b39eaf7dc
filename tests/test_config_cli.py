"""`-c FILE` for every subcommand: a run's saved config.yaml reproduces it; unknown keys fail with one line."""
from __future__ import annotations

import json

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
                 ["merge", "x"], ["dcs"], ["demo"]):
        assert _run([*argv, "-c", str(cfg)]) == 2
        line = _one_line(capsys)
        assert "unknown key(s) bogus" in line and "valid keys:" in line, line


def test_help_still_shows_defaults_with_reasons(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    out = capsys.readouterr().out
    assert "(default: cim)" in out and "named evaluation preset" in out
