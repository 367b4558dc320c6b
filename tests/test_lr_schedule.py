"""The learning-rate schedules: the paper's step halving and the cosine-window shape."""

from __future__ import annotations

import dataclasses
import math

import pytest

from cigl_bayes.config import TrainConfig
from cigl_bayes.train import lr_factor


def test_step_schedule_halves_every_decay_interval():
    cfg = TrainConfig(epochs=10, lr_decay_every=30, warmup_steps=0).resolved()
    assert [lr_factor(t, cfg, 100) for t in (0, 29, 30, 59, 60, 89, 90)] == [1, 1, 0.5, 0.5, 0.25, 0.25, 0.125]


def test_cosine_window_reaches_the_step_schedules_lr_at_t_star_and_holds_it():
    cfg = TrainConfig(epochs=20, lr_decay_every=2400, warmup_steps=0, lr_schedule="cosine-window").resolved()
    total = 7040  # 20 epochs × 352 steps; T* = epoch 16 → step 5632; the step schedule is at 0.5² there
    t_star = 5632
    step_cfg = dataclasses.replace(cfg, lr_schedule="step")
    assert lr_factor(t_star, step_cfg, total) == 0.25
    assert lr_factor(0, cfg, total) == pytest.approx(1.0)
    assert lr_factor(t_star // 2, cfg, total) == pytest.approx(0.25 + 0.75 * 0.5)  # cos(π/2) = 0
    assert lr_factor(t_star // 3, cfg, total) == pytest.approx(0.25 + 0.75 * 0.5 * (1 + math.cos(math.pi / 3)),
                                                                rel=1e-3)
    assert [lr_factor(t, cfg, total) for t in (t_star, t_star + 1, total - 1)] == [pytest.approx(0.25)] * 3
    factors = [lr_factor(t, cfg, total) for t in range(0, t_star + 1, 64)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))  # no plateaus, no increases


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="lr schedule"):
        TrainConfig(lr_schedule="linear").validate()
