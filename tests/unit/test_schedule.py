"""Learning-rate schedules (agen_hf/engine/schedule.py) against values worked by hand."""

import math

import pytest

from agen_hf.engine.schedule import lr_factor, step_decay


def test_paper_step_decay_divides_by_ten_every_ten_epochs():
    assert [step_decay(s, 100) for s in (0, 999, 1000, 1999, 2000)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01]
    )
    assert lr_factor("step", 1500, 3500, 100) == pytest.approx(0.1)


def test_warmup_then_poly_and_cosine():
    # 10 warm-up steps of 110: 0.1, 0.2, ... 1.0, then t = (step - 10) / 100
    assert [lr_factor("cosine", s, 110, 10, warmup_steps=10) for s in (0, 4, 9)] == pytest.approx(
        [0.1, 0.5, 1.0]
    )
    assert lr_factor("cosine", 10, 110, 10, warmup_steps=10) == pytest.approx(1.0)
    assert lr_factor("cosine", 60, 110, 10, warmup_steps=10) == pytest.approx(0.5)
    assert lr_factor("cosine", 85, 110, 10, warmup_steps=10) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 0.75))
    )
    assert lr_factor("poly", 60, 110, 10, warmup_steps=10) == pytest.approx(0.5**0.9)
    assert lr_factor("poly", 110, 110, 10, warmup_steps=10) == 0.0
    # warm-up applies to the paper's schedule too
    assert lr_factor("step", 1, 100, 10, warmup_steps=4) == pytest.approx(0.5)


def test_unknown_schedule_is_an_error():
    with pytest.raises(ValueError, match="onecycle"):
        lr_factor("onecycle", 0, 10, 1)


def test_restart_runs_a_second_cycle_after_the_classification_phase():
    # cycle 1 over steps 0..99, cycle 2 over 100..299, 10 warm-up steps in each
    kw = dict(warmup_steps=10, restart_at=100)
    assert lr_factor("cosine", 55, 300, 10, **kw) == pytest.approx(0.5)  # (55-10)/90
    assert lr_factor("cosine", 100, 300, 10, **kw) == pytest.approx(0.1)  # warm-up again
    assert lr_factor("cosine", 110, 300, 10, **kw) == pytest.approx(1.0)
    assert lr_factor("cosine", 205, 300, 10, **kw) == pytest.approx(0.5)  # (95)/190
    assert lr_factor("poly", 205, 300, 10, **kw) == pytest.approx(0.5**0.9)
    # the paper's step decay ignores it
    assert lr_factor("step", 150, 300, 10, **kw) == lr_factor("step", 150, 300, 10, 10, 10)
