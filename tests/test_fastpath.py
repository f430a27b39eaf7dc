"""The evaluator's compute path (evaluate/fastpath.py): the machine's fast default, --exact, explicit flags.

The capability probes are faked, so every test decides the same way on an AVX-512/AMX Xeon and on an AVX2-only
EPYC. torch.compile is replaced by a spy where a test needs the compile branch: nothing here compiles.
"""
from __future__ import annotations

import dataclasses
import os
import json

import pytest
import torch

import ddkit.evaluate.evaluator as evaluator_mod
import ddkit.utils as utils
from ddkit.evaluate import EvalConfig, evaluate, fastpath
from ddkit.evaluate.runner import run_evaluation

pytestmark = pytest.mark.usefixtures("one_thread")
LONG, SHORT = 10 * fastpath.COMPILE_MIN_IMAGES, fastpath.COMPILE_MIN_IMAGES // 10
CPU = torch.device("cpu")


def xeon(_dev):  # an AVX-512 / AMX CPU with native bf16
    return "amx_bf16"


def epyc(_dev):  # an AVX2-only CPU: no native bf16
    return None


def gxx():
    return "inductor + g++", ""


def no_cxx():
    return None, "no C++ compiler on PATH (inductor's CPU kernels need one)"


def pick(cfg: EvalConfig, images: int, bf16=xeon, comp=gxx, device: torch.device = CPU) -> fastpath.ComputePath:
    return fastpath.choose(cfg, device, images, bf16_probe=bf16, compiler_probe=comp)


@pytest.fixture
def auto(monkeypatch):
    """The automatic choice as a user gets it (the suite's DDKIT_EXACT=1 lifted)."""
    monkeypatch.delenv(fastpath.EXACT_ENV, raising=False)


def test_default_follows_the_machine(auto) -> None:
    cfg = EvalConfig()
    p = pick(cfg, LONG)
    assert (p.bf16, p.compile, p.exact) == (True, True, False)
    assert p.why.startswith("fast path: bf16 autocast (amx_bf16) + compile (inductor + g++")
    assert p.why.endswith("; --exact for fp32 eager")
    short = pick(cfg, SHORT)  # a test or demo student: not worth the first compile
    assert (short.bf16, short.compile) == (True, False) and "too few to pay the first compile" in short.why
    avx2 = pick(cfg, LONG, bf16=epyc)  # AVX2-only: fp32, compiled (no emulated bf16)
    assert (avx2.bf16, avx2.compile) == (False, True) and "fp32 (no native bf16" in avx2.why
    plain = pick(cfg, SHORT, bf16=epyc)
    assert (plain.bf16, plain.compile) == (False, False) and not plain.why.startswith("fast path")
    stacked = fastpath.choose(cfg, CPU, LONG, stacked=True, bf16_probe=xeon, compiler_probe=gxx)
    assert (stacked.bf16, stacked.compile) == (True, False) and "--stack" in stacked.why
    nocc = pick(cfg, LONG, comp=no_cxx)
    assert (nocc.bf16, nocc.compile) == (True, False) and "no C++ compiler" in nocc.why


def test_the_thresholds_are_the_lines(auto) -> None:
    n, s = fastpath.COMPILE_MIN_IMAGES, fastpath.BF16_MIN_SIZE
    assert not pick(EvalConfig(), n - 1).compile and pick(EvalConfig(), n).compile
    tiny = fastpath.choose(EvalConfig(), CPU, LONG, s - 1, bf16_probe=xeon, compiler_probe=gxx)
    assert not tiny.bf16 and f"{s - 1}-px images" in tiny.why
    assert fastpath.choose(EvalConfig(), CPU, LONG, s, bf16_probe=xeon, compiler_probe=gxx).bf16
    assert fastpath.choose(EvalConfig(cpu_amp=True), CPU, LONG, s - 1, bf16_probe=xeon, compiler_probe=gxx).bf16


def test_explicit_flags_win_and_exact_wins_over_all(auto) -> None:
    assert pick(EvalConfig(cpu_amp=False), LONG).bf16 is False
    assert pick(EvalConfig(compile=False), LONG).compile is False
    forced = pick(EvalConfig(compile=True), SHORT)
    assert forced.compile and "--compile true" in forced.why
    assert pick(EvalConfig(cpu_amp=True), SHORT, bf16=epyc).bf16 is False  # asked, but never emulated
    ex = pick(EvalConfig(exact=True, cpu_amp=True, compile=True), LONG)
    assert (ex.bf16, ex.compile, ex.exact) == (False, False, True)
    assert ex.why == "exact: fp32 eager (--exact, overriding --cpu-amp true and --compile true)"


def test_env_makes_the_default_exact_but_not_explicit_flags(monkeypatch) -> None:
    monkeypatch.setenv(fastpath.EXACT_ENV, "1")
    p = pick(EvalConfig(), LONG)
    assert (p.bf16, p.compile, p.exact) == (False, False, True) and "DDKIT_EXACT=1" in p.why
    q = pick(EvalConfig(cpu_amp=True), LONG)
    assert q.bf16 and not q.compile and not q.exact


def test_cuda_keeps_bf16_amp_and_leaves_compile_opt_in(auto) -> None:
    cuda = torch.device("cuda")
    p = pick(EvalConfig(), LONG, bf16=lambda d: "cuda bf16", device=cuda)
    assert (p.bf16, p.compile) == (True, False) and "opt-in on cuda" in p.why
    assert pick(EvalConfig(exact=True), LONG, bf16=lambda d: "cuda bf16", device=cuda).bf16 is False
    assert pick(EvalConfig(amp=False), LONG, bf16=lambda d: "cuda bf16", device=cuda).bf16 is False


def _bf16_machine(monkeypatch) -> list:
    """Fake a native-bf16 CPU for the evaluator (autocast really runs bf16: it works, emulated, on any CPU);
    returns the list the student's first conv appends its output dtype to."""
    monkeypatch.delenv(fastpath.EXACT_ENV, raising=False)
    monkeypatch.setattr(fastpath, "bf16_unit", lambda dev: "avx512_bf16" if dev.type == "cpu" else None)
    monkeypatch.setattr(utils, "_CPU_BF16", True)
    monkeypatch.setattr(fastpath, "BF16_MIN_SIZE", 8)  # the toy sets are 8 px
    dtypes: list = []
    real = evaluator_mod.create_model

    def create(*a, **kw):
        m = real(*a, **kw)
        conv = next(x for x in m.modules() if isinstance(x, torch.nn.Conv2d))
        conv.register_forward_hook(lambda mod, inp, out: dtypes.append(out.dtype))
        return m

    monkeypatch.setattr(evaluator_mod, "create_model", create)
    return dtypes


def cfg(**kw) -> EvalConfig:
    base = dict(recipe="cim", regime="hl", student="convnet-d1", student_width=16, seeds=1, epochs=8, num_evals=1)
    return EvalConfig(**{**base, **kw})


def test_evaluator_runs_and_records_the_chosen_path(toy_eval, monkeypatch) -> None:
    _, test, dset, _ = toy_eval
    dtypes = _bf16_machine(monkeypatch)
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: compiled.append(m) or m)
    res = evaluate(dset, test, cfg(), progress=False)  # short: bf16, eager
    path = res.to_dict()["compute_path"]
    assert (path["bf16"], path["compile"], path["exact"]) == (True, False, False)
    assert path["why"].startswith("fast path: bf16 autocast (avx512_bf16)") and not compiled
    assert torch.bfloat16 in dtypes
    monkeypatch.setattr(fastpath, "COMPILE_MIN_IMAGES", 1)  # now "long enough": the student goes to compile
    monkeypatch.setattr(fastpath, "compiler", gxx)
    res = evaluate(dset, test, cfg(), progress=False)
    assert res.to_dict()["compute_path"]["compile"] and len(compiled) == 1
    dtypes.clear()
    exact = evaluate(dset, test, cfg(exact=True), progress=False)
    assert exact.to_dict()["compute_path"]["exact"] and len(compiled) == 1
    assert dtypes and set(dtypes) == {torch.float32}


def test_exact_and_an_avx2_default_are_the_fp32_bytes(toy_eval, monkeypatch) -> None:
    """On an AVX2-only CPU the short run's default is fp32 eager: the same bits as --exact and DDKIT_EXACT."""
    _, test, dset, _ = toy_eval
    env = evaluate(dset, test, cfg(seeds=2), progress=False)  # the suite's DDKIT_EXACT=1
    monkeypatch.delenv(fastpath.EXACT_ENV)
    monkeypatch.setattr(fastpath, "bf16_unit", lambda dev: None)
    avx2 = evaluate(dset, test, cfg(seeds=2), progress=False)
    flag = evaluate(dset, test, cfg(seeds=2, exact=True), progress=False)
    assert env.accs == avx2.accs == flag.accs
    assert [r.final_loss for r in env.runs] == [r.final_loss for r in avx2.runs] == [r.final_loss for r in flag.runs]
    assert env.to_dict()["compute_path"]["why"] == "exact: fp32 eager (DDKIT_EXACT=1)"
    assert avx2.to_dict()["compute_path"]["why"].startswith("fp32 (no native bf16")


def test_summary_and_results_md_say_which_path_ran(toy_eval, tmp_path, monkeypatch) -> None:
    train, test, dset, _ = toy_eval
    _bf16_machine(monkeypatch)
    d = tmp_path / "set"
    dset.save(d, pngs=False)
    run_evaluation(str(d), cfg(), test=test, train=train, output=str(tmp_path / "fast"), progress=False)
    summary = json.loads((tmp_path / "fast" / "summary.json").read_text())
    assert summary["compute_path"]["why"].startswith("fast path: bf16 autocast (avx512_bf16)")
    assert "Compute: fast path: bf16 autocast (avx512_bf16)" in (tmp_path / "fast" / "results.md").read_text()
    run_evaluation(str(d), cfg(exact=True), test=test, train=train, output=str(tmp_path / "exact"), progress=False)
    assert "Compute: exact: fp32 eager (--exact)." in (tmp_path / "exact" / "results.md").read_text()


def test_cli_flags_are_tristate_and_exact_reaches_studies() -> None:
    from ddkit.cli import build_parser
    from ddkit.config import from_args

    p = build_parser(["evaluate"])
    base = ["evaluate", "SET", "--output", "o"]
    assert from_args(EvalConfig, p.parse_args(base)).cpu_amp is None
    got = from_args(EvalConfig, p.parse_args(base + ["--cpu-amp", "false", "--compile", "true", "--exact"]))
    assert (got.cpu_amp, got.compile, got.exact) == (False, True, True)
    for argv in (["study", "hard-truths", "--exact"], ["demo", "--exact"], ["dcs", "--exact"],
                 ["study", "cross-arch", "--exact"]):
        assert build_parser(argv).parse_args(argv).exact is True


def test_study_cells_made_fp32_resume_under_exact() -> None:
    """A cell made when cpu_amp/compile defaulted to false reads as made by --exact (study_keys.eval_options)."""
    from ddkit.study_keys import differences, eval_options

    old = {k: v for k, v in eval_options(cfg(cpu_amp=False, compile=False)).items() if k != "exact"}
    assert differences(old, eval_options(cfg(exact=True))) == []
    assert differences(old, eval_options(cfg())) != []  # the automatic path is not what those cells ran
    assert dataclasses.replace(cfg(), exact=True).cpu_amp is None


def test_inductor_cache_is_kept_per_cpu_kind(monkeypatch):
    """Kernels compiled for one CPU kind are never loaded on another (inductor's cache does not key on it)."""
    from ddkit.utils import inductor_cache_dir

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    native = inductor_cache_dir()
    assert torch.backends.cpu.get_cpu_capability() in os.path.basename(native)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == native  # what inductor reads
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert inductor_cache_dir() != native
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/mine")
    assert inductor_cache_dir() == "/somewhere/mine"  # the user's choice is kept
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what importing torch._dynamo writes
    assert inductor_cache_dir() == os.path.join(default_cache_dir(), os.path.basename(inductor_cache_dir()))
    assert os.path.basename(inductor_cache_dir()).startswith("ddkit-") and "-AVX2-" in inductor_cache_dir()


def test_onednn_isa_cap_below_bf16_means_no_native_bf16(monkeypatch):
    """An AVX2 emulation run (ONEDNN_MAX_CPU_ISA=AVX2) must not take the bf16 default even on a bf16 CPU."""
    monkeypatch.setattr(utils, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16", "avx512_bf16"}))
    monkeypatch.setattr(utils, "_CPU_BF16", None)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert utils.cpu_bf16_native() is False
    monkeypatch.setattr(utils, "_CPU_BF16", None)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert utils.cpu_bf16_native() is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
