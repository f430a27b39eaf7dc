"""The instant CLI: `--help`, `--version` and the list commands never import torch, and the static
name index they read is exactly what the live registries hold (so it cannot drift).

Timing is measured in bench/cli_startup.py, not here (a timed test is flaky on a shared machine).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ddkit import names

SRC = str(Path(__file__).resolve().parents[1] / "src")

PROBE = """
import sys
from ddkit.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as e:  # argparse's --help / --version exit
    rc = e.code
heavy = sorted(m for m in ("torch", "torchvision", "numpy", "sklearn") if m in sys.modules)
print("HEAVY:" + ",".join(heavy))
raise SystemExit(rc)
"""


def _probe(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["methods"], ["models"], ["datasets"], ["recipes"], []])
def test_instant_commands_import_no_torch(argv):
    r = _probe(*argv)
    assert r.returncode == (2 if not argv else 0), r.stderr
    assert "HEAVY:\n" in r.stdout or r.stdout.rstrip().endswith("HEAVY:"), r.stdout[-300:]
    if argv == ["--version"]:
        assert r.stdout.startswith("ddkit ")
    if argv == ["methods"]:
        assert "lic " in r.stdout and "teacher" in r.stdout and "(aliases: cim)" in r.stdout


def test_command_help_still_shows_each_default_with_its_reason():
    r = _probe("distill", "--method", "lic", "--help")
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert "--iterations" in text and "(default:" in text and "torch" in r.stdout.split("HEAVY:")[-1]


def test_static_index_equals_live_registries():
    # A fresh interpreter: other tests register throwaway methods in this process's registries.
    code = "import json; from ddkit import names; print(json.dumps(names.live_index()))"
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    live = json.loads(r.stdout)
    static = names.static_index()
    for family in names.FAMILIES:
        assert static[family] == live[family], (
            f"src/ddkit/_names_index.py is stale for {family}: run `python -m ddkit.names`")
        assert names.format_list(family, static) == names.format_list(family, live)
