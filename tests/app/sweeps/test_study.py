"""app/sweeps/study.py: the value the pruner judges for an evaluation."""

from __future__ import annotations

import pytest

from app.sweeps.study import TIE_BREAK, pruning_value


def test_ties_on_the_metric_go_by_eval_loss() -> None:
    learnt = pruning_value("accuracy", "maximize", {"accuracy": 0.675, "eval_loss": 0.60})
    stuck = pruning_value("accuracy", "maximize", {"accuracy": 0.675, "eval_loss": 0.69})
    assert learnt is not None and stuck is not None
    assert stuck < learnt
    assert learnt == pytest.approx(0.675, abs=TIE_BREAK)


def test_a_difference_on_the_metric_always_decides() -> None:
    # one row of 100 000 apart, the best loss against the worst
    ahead = pruning_value("accuracy", "maximize", {"accuracy": 0.50001, "eval_loss": 1e9})
    behind = pruning_value("accuracy", "maximize", {"accuracy": 0.5, "eval_loss": 0.0})
    assert ahead is not None and behind is not None and ahead > behind


def test_a_minimized_metric_is_moved_up_by_its_loss() -> None:
    worse = pruning_value("perplexity", "minimize", {"perplexity": 3.0, "eval_loss": 2.0})
    better = pruning_value("perplexity", "minimize", {"perplexity": 3.0, "eval_loss": 1.0})
    assert worse is not None and better is not None and worse > better > 3.0


def test_eval_loss_itself_and_missing_values_are_left_alone() -> None:
    assert pruning_value("eval_loss", "minimize", {"eval_loss": 0.3}) == 0.3
    assert pruning_value("accuracy", "maximize", {"accuracy": 0.7}) == 0.7
    assert pruning_value("accuracy", "maximize", {"accuracy": 0.7, "eval_loss": "nan"}) == 0.7
    assert pruning_value("accuracy", "maximize", {"eval_loss": 0.3}) is None
    assert pruning_value("accuracy", "maximize", {"accuracy": True}) is None
