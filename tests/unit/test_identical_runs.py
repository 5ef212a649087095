"""``bench/identical_runs.py --compare``: what it calls a difference, exactly and within a
relative tolerance (the rule a speed change is held to: every loss of a 30-step fp32 run within
1e-5 relative)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "identical_runs", ROOT / "bench" / "identical_runs.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def record(losses, weights=None, miou=0.25):
    return {
        "losses": [
            {"step": i + 1, "loss": loss, "lr": 0.001 * (i + 1)} for i, loss in enumerate(losses)
        ],
        "weights": weights or {"w": "aa"},
        "val_mean_iou": miou,
    }


def test_identical_records_have_no_difference(bench):
    a = record([2.0, 1.5])
    assert bench.differences(a, record([2.0, 1.5])) == []
    assert bench.largest_relative_difference(a, record([2.0, 1.5])) == 0.0


def test_exact_comparison_names_the_step_the_weights_and_the_score(bench):
    a, b = record([2.0, 1.5]), record([2.0, 1.5000001], {"w": "bb"}, 0.3)
    found = bench.differences(a, b)
    assert found == [
        "step 2: loss 1.5 vs 1.5000001",
        "1 weights differ: w",
        "val mIoU 0.25 vs 0.3",
    ]


def test_tolerance_accepts_rounding_and_reports_a_larger_difference(bench):
    a = record([2.0, 1.5, 1.0])
    within = record([2.0, 1.5 * (1 + 0.9e-5), 1.0], {"w": "bb"})  # weights differ: expected
    beyond = record([2.0, 1.5, 1.0 * (1 + 2e-5)])
    assert bench.differences(a, within, rtol=1e-5) == []
    assert bench.differences(a, beyond, rtol=1e-5) == [f"step 3: loss 1.0 vs {1.0 * (1 + 2e-5)!r}"]
    # |1.5 - 1.5 (1 + 0.9e-5)| / (1.5 (1 + 0.9e-5))
    assert bench.largest_relative_difference(a, within) == pytest.approx(0.9e-5 / (1 + 0.9e-5))


def test_a_missing_step_is_a_difference_at_any_tolerance(bench):
    found = bench.differences(record([2.0, 1.5]), record([2.0]), rtol=1e-3)
    assert found == ["2 vs 1 logged steps"]
