"""`ddkit study` and `ddkit relabel` under torchrun (2 CPU processes, gloo) equal one process: the study shares
its cells over the ranks and rank 0 writes every row once, in grid order; relabel shares its epochs and the store's
bytes are the one-process bytes. Plus `ranks.together`: a rank that fails never leaves the others waiting."""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
import torch

from ddkit.cli import main

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ["--dataset", "digits", "--device", "cpu", "--no-progress"]
TIMING = ("seconds", "set_seconds")  # wall-clock columns: the only ones a rerun may change


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(argv: List[str], tmp: Path, world: int = 2, timeout: float = 240) -> List[str]:
    """argv (a python command) on `world` processes with the environment torchrun gives them; their logs."""
    port, procs = _free_port(), []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
        log = open(tmp / f"rank{rank}.log", "w")  # a file, not a pipe: a full pipe could stall a rank
        procs.append((subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp), log))
    logs = []
    for rank, (p, log) in enumerate(procs):
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q, _ in procs:
                q.kill()
            pytest.fail(f"rank {rank} did not finish within {timeout} s")
        log.close()
        logs.append((tmp / f"rank{rank}.log").read_text())
        assert p.returncode is not None
    return [f"rc={p.returncode}\n{text}" for (p, _), text in zip(procs, logs)]


def ddkit_argv(*args: str) -> List[str]:
    return [sys.executable, "-m", "ddkit", *args]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A digits teacher and a random IPC-2 set, made once in this process."""
    tmp = tmp_path_factory.mktemp("ranks")
    torch.manual_seed(0)
    assert main(["teacher", "train", *DIGITS, "--model", "convnet-d2", "--epochs", "1",
                 "--batch-size", "128", "--output", str(tmp / "t")]) == 0
    assert main(["distill", *DIGITS, "--method", "random", "--ipc", "2", "--output", str(tmp / "set")]) == 0
    return tmp


def _rows(path: Path) -> List[dict]:
    with open(path, newline="") as fh:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(fh)]


def test_relabel_two_ranks_writes_the_one_process_store(made, tmp_path):
    common = ["relabel", str(made / "set"), "--teacher", str(made / "t"), "--epochs", "3", "--batch-size", "7",
              "--device", "cpu", "--no-progress"]
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks run one thread each: the same kernels, the same rounding
    try:
        assert main([*common, "--store", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(n)
    logs = run_ranks(ddkit_argv(*common, "--store", str(tmp_path / "two")), tmp_path)
    assert all(log.startswith("rc=0") for log in logs), logs
    for name in ("logits.npy", "meta.json"):  # 3 epochs over 2 ranks: a full round, then rank 0 alone
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    assert json.loads((tmp_path / "two" / "meta.json").read_text())["epochs_done"] == 3
    assert not torch.equal(*(torch.from_numpy(__import__("numpy").load(tmp_path / "one" / "logits.npy")[e])
                             for e in (0, 2)))  # the epochs are really different views
    assert (tmp_path / "two" / "config.yaml").is_file()


def test_study_two_ranks_share_cells_and_write_the_one_process_csv(made, tmp_path):
    common = ["study", "hard-truths", *DIGITS, "--teacher", str(made / "t"), "--methods", "random,herding",
              "--ipcs", "1", "--budgets", "0.02", "--regimes", "hl,sl,slkd", "--seeds", "1",
              "--student", "convnet-d1", "--student-width", "8"]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*common, "--output-dir", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(n)
    two = tmp_path / "two"
    logs = run_ranks(ddkit_argv(*common, "--output-dir", str(two)), tmp_path)
    assert all(log.startswith("rc=0") for log in logs), logs
    one_rows, two_rows = _rows(tmp_path / "one" / "results.csv"), _rows(two / "results.csv")
    # 6 cells in rounds of 2: (random hl, sl), (random slkd, herding hl): herding's set built by rank 1, (herding …)
    assert len(two_rows) == 6 and two_rows == one_rows  # every cell once, in grid order, the same numbers
    assert sorted(p.name for p in (two / "sets").iterdir()) == sorted(p.name for p in (tmp_path / "one" / "sets").iterdir())
    assert "cells evaluated" in logs[0] and "cells evaluated" not in logs[1]  # rank 0 alone reports
    runs = [json.loads(line) for line in (two / "runs.jsonl").read_text().splitlines()]
    assert len(runs) == 1 and runs[0]["ranks"] == 2 and (runs[0]["evaluated"], runs[0]["skipped"]) == (6, 0)
    # the cells were really shared: each rank trained some (a rank's evaluate prints nothing; its runs/ do)
    cells = sorted(p.name for p in (two / "runs").iterdir())
    assert len(cells) == 6 and cells == sorted(p.name for p in (tmp_path / "one" / "runs").iterdir())
    # a rerun under torchrun skips every cell and appends nothing
    logs = run_ranks(ddkit_argv(*common, "--output-dir", str(two)), tmp_path)
    assert all(log.startswith("rc=0") for log in logs), logs
    assert _rows(two / "results.csv") == one_rows
    assert json.loads((two / "runs.jsonl").read_text().splitlines()[-1])["skipped"] == 6


def test_together_a_failing_rank_fails_every_rank_at_once(tmp_path):
    code = ("import torch.distributed as dist; import ddkit.ranks as R; R.init_distributed();"
            "r = dist.get_rank();\n"
            "def work():\n"
            "    if r == 1: raise ValueError('boom on one rank')\n"
            "    return r\n"
            "try:\n"
            "    R.together(work)\n"
            "except R.RankFailed as e: print('OTHER', e)\n"
            "except ValueError as e: print('OWN', e)\n"
            "print('ok', R.together(lambda: r * 10)); R.cleanup_distributed()")
    logs = run_ranks([sys.executable, "-c", code], tmp_path, timeout=120)
    assert logs[0].startswith("rc=0") and "OTHER rank 1 failed: ValueError: boom on one rank" in logs[0], logs
    assert logs[1].startswith("rc=0") and "OWN boom on one rank" in logs[1], logs
    assert all("ok [0, 10]" in log for log in logs)


def test_ranks_leave_the_group_together(tmp_path):
    """A rank done early waits in `process_group` until the slowest one leaves too (rank 0 writing its record
    after the last collective): a peer that exits first closes its sockets under a live gloo group, which
    once aborted rank 0 in CI ('terminate called without an active exception')."""
    code = ("import time, torch.distributed as dist; import ddkit.ranks as R\n"
            "with R.process_group():\n"
            "    r = dist.get_rank(); R.together(lambda: None)\n"
            "    if r == 0:\n"
            "        time.sleep(1.5); print('WORKED', time.time(), flush=True)\n"
            "print('LEFT', time.time(), dist.is_initialized(), flush=True)")
    logs = run_ranks([sys.executable, "-c", code], tmp_path, timeout=120)
    assert all(log.startswith("rc=0") for log in logs), logs

    def stamp(log: str, key: str) -> float:
        return float(next(line.split()[1] for line in log.splitlines() if line.startswith(key)))

    assert all(" False" in log for log in logs)  # both left (destroyed) the group
    assert stamp(logs[1], "LEFT") >= stamp(logs[0], "WORKED"), logs  # rank 1 waited for rank 0's work


def test_together_and_broadcast_in_one_process():
    from ddkit.ranks import RankFailed, acting_world, broadcast, solo, together

    assert together(lambda x: x + 1, 1) == [2] and broadcast({"a": 1}) == {"a": 1}
    with pytest.raises(ValueError):  # alone, the error is the function's own
        together(lambda: int("x"))
    assert issubclass(RankFailed, Exception) and acting_world() == 1
    with solo():
        assert acting_world() == 1
