"""Evaluate a distilled set honestly: train fresh students under HL / SL / SL+KD with a named recipe.

    from ddkit.evaluate import EvalConfig, evaluate, run_evaluation, list_recipes
    res = evaluate(distilled, test, EvalConfig(seeds=3), teacher)   # the set's native protocol (native.py)
    res = evaluate(distilled, test, EvalConfig(protocol="hard-truths", regime="sl", seeds=3), teacher)
    print(res.mean, res.std, res.accs, res.seeds)      # last-epoch test accuracy (fractions)

Regimes: `hl` (cross-entropy on hard or mixed one-hot labels), `sl` (one fixed soft label per stored
image: stored logits, else computed once by the teacher on the un-augmented image; region logits
for FactorCrop cells when the set stores them), `slkd` (the teacher labels every augmented view
online). Recipes (`cim`, `rded`, `sre2l`, `sre2l-cifar`, `hardtruths-*`, `dc`, `dc-noaug`, `datm`) are data; every
field is overridable through EvalConfig. `budget_epochs` fixes compute in full-dataset epochs.
"""
from ddkit.evaluate.protocol import REGIMES, EvalConfig, Regime, resolve_regime
from ddkit.evaluate.evaluator import EvalResult, check_classes, evaluate, teacher_soft_labels
from ddkit.evaluate.losses import (LOSSES, cross_entropy, gift, kl_div, list_losses, make_criterion, mse_ce,
                                   mse_logits, soft_cross_entropy)
from ddkit.evaluate.native import NATIVE, SetProtocol, follow, list_protocols, resolve_protocol
from ddkit.evaluate.metrics import ars, hlr, ior, lrs, lrs_from_gaps, mean_std, normalize_score, summarize
from ddkit.evaluate.recipes import (RECIPES, Recipe, auto_factor, cim_batch_size, get_recipe, list_recipes,
                                    rded_batch_size, resolve_recipe)
from ddkit.evaluate.runner import results_markdown, run_evaluation, split_val
from ddkit.evaluate.student import Plan, RunResult, budget_iterations, lr_factor, make_plan

__all__ = [
    "EvalConfig", "EvalResult", "NATIVE", "SetProtocol", "follow", "list_protocols", "resolve_protocol",
    "Plan", "REGIMES", "RECIPES", "LOSSES", "Recipe", "RunResult", "ars",
    "auto_factor", "budget_iterations", "check_classes", "cim_batch_size", "cross_entropy", "evaluate",
    "get_recipe", "gift", "hlr", "ior", "kl_div", "list_losses", "list_recipes", "lr_factor", "lrs",
    "lrs_from_gaps", "make_criterion", "make_plan", "mean_std", "mse_ce", "mse_logits", "normalize_score",
    "Regime", "rded_batch_size", "resolve_recipe", "resolve_regime", "results_markdown", "run_evaluation",
    "soft_cross_entropy", "split_val", "summarize", "teacher_soft_labels",
]
