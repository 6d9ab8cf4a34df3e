"""Schedules as pure functions of the global step."""

import math

import pytest

from moco3.schedules import lr_at, momentum_at, probe_lr, scaled_lr, wd_at


def test_scaled_lr():
    assert scaled_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)
    assert scaled_lr(0.3, 256) == pytest.approx(0.3)
    assert scaled_lr(1.0e-4, 1024) == pytest.approx(4.0e-4)


def test_warmup_starts_at_zero_and_reaches_peak():
    total, warmup, peak = 1000, 100, 2.0
    assert lr_at(0, total, warmup, peak) == 0.0
    assert lr_at(25, total, warmup, peak) == pytest.approx(0.5)
    assert lr_at(99, total, warmup, peak) == pytest.approx(peak * 99 / 100)
    assert lr_at(warmup, total, warmup, peak) == pytest.approx(peak)
    # Linear: equal increments per step during warmup.
    steps = [lr_at(s, total, warmup, peak) for s in range(warmup + 1)]
    diffs = [b - a for a, b in zip(steps, steps[1:], strict=False)]
    assert max(diffs) == pytest.approx(min(diffs))


def test_cosine_decays_to_zero():
    total, warmup, peak = 1000, 100, 2.0
    mid = warmup + (total - warmup) / 2
    assert lr_at(mid, total, warmup, peak) == pytest.approx(peak / 2)
    assert lr_at(total, total, warmup, peak) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(total + 10, total, warmup, peak) == pytest.approx(0.0, abs=1e-12)
    decay = [lr_at(s, total, warmup, peak) for s in range(warmup, total + 1)]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))
    # Same as the official per-epoch formula written in epochs (10 steps per epoch).
    epoch = 37.3
    official = peak * 0.5 * (1 + math.cos(math.pi * (epoch - 10) / (100 - 10)))
    assert lr_at(epoch * 10, total, warmup, peak) == pytest.approx(official)


def test_no_warmup():
    assert lr_at(0, 100, 0, 1.0) == pytest.approx(1.0)


def test_momentum_cosine_from_m0_to_one():
    assert momentum_at(0, 500, 0.99) == pytest.approx(0.99)
    assert momentum_at(250, 500, 0.99) == pytest.approx(0.995)
    assert momentum_at(500, 500, 0.99) == pytest.approx(1.0)
    s = 123
    expected = 1 - 0.5 * (1 + math.cos(math.pi * s / 500)) * (1 - 0.996)
    assert momentum_at(s, 500, 0.996, "cosine") == pytest.approx(expected)


def test_momentum_constant():
    assert all(momentum_at(s, 500, 0.9, "constant") == 0.9 for s in (0, 250, 500))
    with pytest.raises(ValueError, match="cosine, constant"):
        momentum_at(0, 500, 0.9, "linear")


def test_weight_decay_constant_and_cosine():
    assert wd_at(0, 100, 0.1) == 0.1
    assert wd_at(77, 100, 0.1) == 0.1
    assert wd_at(0, 100, 0.04, 0.4) == pytest.approx(0.04)
    assert wd_at(50, 100, 0.04, 0.4) == pytest.approx(0.22)
    assert wd_at(100, 100, 0.04, 0.4) == pytest.approx(0.4)


def test_probe_lr_is_the_official_per_epoch_cosine():
    for epoch in range(90):
        official = 0.1 * 1024 / 256 * 0.5 * (1.0 + math.cos(math.pi * epoch / 90))
        assert probe_lr(0.1, 1024, epoch, 90) == pytest.approx(official, rel=1e-12)
    assert probe_lr(0.1, 256, 0, 90) == 0.1
