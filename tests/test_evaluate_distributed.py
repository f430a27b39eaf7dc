"""`evaluate` under torchrun, simulated with 2 CPU processes (gloo): seeds spread over ranks equal one process
bit for bit; one DDP run keeps the global batch, ends with identical weights on both ranks and scores the
sharded test set like accuracy() on the whole set; a batch that W does not divide is refused."""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from ddkit.evaluate import EvalConfig, evaluate, make_plan, resolve_recipe, run_evaluation
from ddkit.evaluate.parallel import EvalDist, setup, unwrap
from ddkit.evaluate.student import StudentTrainer
from ddkit.methods import create_method
from ddkit.models import create_model
from ddkit.teachers import Teacher, accuracy
from ddkit.utils import DDKitError, make_generator
from tests.conftest import MeanOracle, make_toy

K, WORLD = 4, 2
SEEDS = dict(recipe="cim", regime="hl", student="convnet-d1", student_width=8, seeds=3, epochs=8, num_evals=2)
# SL+KD so the teacher runs on every rank; BatchNorm so rank 0's running statistics must reach every rank.
DDP = dict(recipe="cim", regime="slkd", student="convnet-d1-bn", student_width=8, seeds=1, epochs=8, num_evals=2,
           batch_size=8, ddp=True)


def make_data():
    train = make_toy(20, K, 8, seed=0)
    test = make_toy(9, K, 8, seed=1, split="test")  # 36 images: shards of 18, and 12 with W = 3
    dset = create_method("random", ipc=4, seed=0)(train, progress=False)
    return test, dset, Teacher(MeanOracle(), "oracle", train.classes, train.mean, train.std, image_size=8)


def _worker(rank: int, tmp: Path, port: int) -> None:
    """One rank, set up as torchrun would (env://); the process group is joined first, as the CLI does."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import ddkit.evaluate.evaluator as core
    from ddkit.ranks import cleanup_distributed, init_distributed

    init_distributed()  # the entry point's job (ddkit.cli joins it once per command)

    test, dset, teacher = make_data()
    out: dict = {}
    res = evaluate(dset, test, EvalConfig(**SEEDS), device="cpu", progress=False, output=tmp / f"runs{rank}")
    out["seeds"] = {"accs": res.accs, "seeds": res.seeds, "losses": [r.final_loss for r in res.runs],
                    "hist": [r.test_history for r in res.runs], "info": res.info["distributed"]}
    out["summary"] = run_evaluation(str(tmp / "set"), EvalConfig(**SEEDS), test=test, output=str(tmp / "out"),
                                    device="cpu", progress=False)
    states, train_run = [], core.train_run

    def spy(trainer, *args, **kw):  # keep the trained student (evaluate returns numbers only)
        r = train_run(trainer, *args, **kw)
        states.append({k: v.clone() for k, v in unwrap(trainer.model).state_dict().items()})
        return r

    core.train_run = spy
    try:
        res = evaluate(dset, test, EvalConfig(**DDP), teacher, device="cpu", progress=False)
    finally:
        core.train_run = train_run
    out["ddp"] = {"accs": res.accs, "loss": res.runs[0].final_loss, "state": states[0],
                  "iterations": res.plan.iterations, "info": res.info["distributed"]}
    try:
        evaluate(dset, test, EvalConfig(**{**DDP, "batch_size": 7}), teacher, device="cpu", progress=False)
    except DDKitError as e:
        out["error"] = str(e)
    torch.save(out, tmp / f"rank{rank}.pt")
    cleanup_distributed()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Run `_worker` on 2 spawned ranks once; returns (tmp, [rank 0's results, rank 1's])."""
    tmp = tmp_path_factory.mktemp("ddp")
    make_data()[1].save(tmp / "set", pngs=False)
    with pytest.MonkeyPatch.context() as mpatch:
        mpatch.setenv("CUDA_VISIBLE_DEVICES", "")  # gloo on CPU even on a GPU machine
        ctx = mp.start_processes(_worker, args=(tmp, _free_port()), nprocs=WORLD, join=False, start_method="spawn")
        deadline = time.monotonic() + 180
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:  # a hung collective must fail the test, not the whole run
                for p in ctx.processes:
                    p.kill()
                pytest.fail("the 2-rank evaluation did not finish within 180 s")
    return tmp, [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The same protocol in this one process (1 thread, like the ranks)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        test, dset, teacher = make_data()
        with pytest.MonkeyPatch.context() as mpatch:
            mpatch.delenv("RANK", raising=False)
            ref_dir = tmp_path_factory.mktemp("ref")
            res = evaluate(dset, test, EvalConfig(**SEEDS), device="cpu", progress=False, output=ref_dir)
            ddp_plain = evaluate(dset, test, EvalConfig(**DDP), teacher, device="cpu", progress=False)
    finally:
        torch.set_num_threads(n)
    return res, ddp_plain, ref_dir


def _log(path: Path) -> list:
    """metrics.jsonl without the timing fields."""
    return [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "images_per_s")}
            for line in path.read_text().splitlines()]


def test_seeds_over_ranks_equal_one_process(ranks, single):
    tmp, outs = ranks
    res, _, ref_dir = single
    assert len(set(res.accs)) > 1  # the seeds really differ, so a mix-up would show
    for o in outs:  # every rank holds every seed's result, in seed order, bit for bit
        assert o["seeds"]["seeds"] == [0, 1, 2]
        assert o["seeds"]["accs"] == res.accs
        assert o["seeds"]["losses"] == [r.final_loss for r in res.runs]
        assert o["seeds"]["hist"] == [r.test_history for r in res.runs]
        assert o["seeds"]["info"] == {"mode": "seeds", "world_size": 2, "sync_bn": False}
    # rank 0's folder holds the log of seed 1, which rank 1 trained
    assert _log(tmp / "runs0" / "seed1" / "metrics.jsonl") == _log(ref_dir / "seed1" / "metrics.jsonl")


def test_run_evaluation_only_rank0_writes(ranks, single):
    tmp, outs = ranks
    res = single[0]
    for o in outs:
        assert o["summary"]["results"][0]["accs"] == res.accs
    out = tmp / "out"
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "results.md", "runs", "summary.json"]
    assert json.loads((out / "summary.json").read_text())["results"][0]["accs"] == res.accs
    for seed in range(3):
        assert (out / "runs" / "distilled" / "convnet-d1" / f"seed{seed}" / "metrics.jsonl").stat().st_size > 0
    assert not [p.name for p in tmp.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_ddp_run_same_weights_and_sharded_accuracy(ranks, single):
    _, outs = ranks
    ddp_plain = single[1]
    a, b = outs[0]["ddp"], outs[1]["ddp"]
    assert a["info"] == {"mode": "ddp", "world_size": 2, "sync_bn": False}
    assert a["iterations"] == ddp_plain.plan.iterations and ddp_plain.plan.batch_size == 8  # same protocol
    assert a["accs"] == b["accs"] and a["loss"] == b["loss"]
    assert a["state"].keys() == b["state"].keys() and any("running_mean" in k for k in a["state"])
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k
    test, dset, _ = make_data()
    model = create_model("convnet-d1-bn", num_classes=K, image_size=8, channels=3, width=8)
    model.load_state_dict(a["state"])
    assert accuracy(model, test, dset.mean, dset.std, device="cpu") == a["accs"][0]  # sharded count = whole set
    assert a["accs"][0] > 1.0 / K  # the run really learned
    assert "divisible by 2" in outs[0]["error"] and outs[0]["error"] == outs[1]["error"]


# -- in one process: the pieces of the DDP path --------------------------------------------------------------
def test_sharded_trainer_splits_the_global_batch():
    _, dset, _ = make_data()
    cfg = EvalConfig(**{**DDP, "ddp": False})
    recipe = resolve_recipe(cfg, n_images=len(dset), num_classes=K, ipc=4, image_size=8)
    plan = make_plan(recipe, len(dset))
    model = create_model("convnet-d1", num_classes=K, image_size=8, channels=3, width=8)
    args = (dset.images, dset.labels, recipe, plan, None, None, None)
    whole = StudentTrainer(model, *args, device=torch.device("cpu"), order_gen=make_generator(0, "order"),
                           aug_gen=make_generator(0, "aug"))
    parts = [EvalDist(r, WORLD, mode="ddp").make_trainer(0, model, *args) for r in range(WORLD)]
    for _ in range(3):
        idx = whole.batch()[0]
        slices = [p.batch()[0] for p in parts]
        assert [len(s) for s in slices] == [4, 4]
        assert torch.equal(torch.cat(slices), idx)
    # augmentation differs per rank (and from the single process); the batch order does not
    assert not torch.equal(torch.rand(4, generator=parts[0].aug_gen), torch.rand(4, generator=parts[1].aug_gen))


def test_topology_and_errors(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert setup(EvalConfig(ddp=True)).mode == "single"  # --ddp without torchrun is the ordinary run
    spread = [EvalDist(r, 3, mode="seeds").run_indices(7) for r in range(3)]
    assert spread == [[0, 3, 6], [1, 4], [2, 5]]
    assert EvalDist(1, 3, mode="ddp").run_indices(2) == [0, 1]
    test = make_toy(9, K, 8, seed=1, split="test")
    shards = [EvalDist(r, 3, mode="ddp").shard(test) for r in range(3)]
    assert sum(len(s) for s in shards) == len(test) and torch.equal(shards[1].images, test.images[1::3])
    plan = make_plan(resolve_recipe(EvalConfig(recipe="cim", batch_size=7), n_images=16, num_classes=K, ipc=4, image_size=8), 16)
    with pytest.raises(DDKitError, match="divisible by 2"):
        EvalDist(0, 2, mode="ddp").check_plan(plan)
    EvalDist(0, 2, mode="seeds").check_plan(plan)  # seeds over ranks keep the whole batch
    with pytest.raises(DDKitError, match="sync-bn needs CUDA"):
        EvalDist(0, 2, mode="ddp", sync_bn=True).prepare(create_model("convnet-d1-bn", num_classes=K, image_size=8))
