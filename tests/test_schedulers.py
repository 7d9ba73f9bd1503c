"""Tests for trainwright.schedulers: curves against closed forms, resuming, and bad arguments."""

from __future__ import annotations

import functools
import io
import itertools
import math

import pytest
import torch

from trainwright.schedulers import (
    CosineLrScheduler,
    StatefulLrScheduler,
    WSDLrScheduler,
)


def make_optimizer(*lrs: float) -> torch.optim.SGD:
    """An SGD optimizer with one single-parameter group per given LR."""
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups)


def lrs_used_by_updates(scheduler, optimizer, num_updates: int) -> list[list[float]]:
    """Drive the scheduler as the trainer does; return the LRs each update 0..n-1 ran with."""
    used = []
    for _ in range(num_updates):
        used.append([group["lr"] for group in optimizer.param_groups])
        # (the optimizer.step() would go here; the schedule depends only on the update count)
        scheduler.step()
    return used


def expected_cosine(step, base, start, min_lr, warmup, decay_steps, k_decay=1.0):
    """The documented closed form, written independently of the implementation."""
    if step < warmup:
        return start + (base - start) * step / warmup
    progress = min((step - warmup) / (decay_steps - 1), 1.0)
    return min_lr + (base - min_lr) * 0.5 * (1 + math.cos(math.pi * progress**k_decay))


# ---------------------------------------------------------------------------------------------
# CosineLrScheduler curves


def test_cosine_warmup_then_decay_matches_closed_form_point_by_point():
    optimizer = make_optimizer(0.1)
    scheduler = CosineLrScheduler(optimizer, total_num_steps=20, num_warmup_steps=5)
    used = [lrs[0] for lrs in lrs_used_by_updates(scheduler, optimizer, 20)]

    min_lr = 0.1 * 0.05
    for step, lr in enumerate(used):
        assert lr == pytest.approx(expected_cosine(step, 0.1, 1e-6, min_lr, 5, 15), rel=1e-12)
    assert used[0] == 1e-6  # the first update already runs at the warm-up start LR
    assert used[1] == pytest.approx(1e-6 + (0.1 - 1e-6) / 5, rel=1e-12)
    assert used[5] == 0.1  # base LR exactly at the end of the warm-up
    assert used[18] > min_lr  # not at the minimum early...
    assert used[19] == min_lr  # ...but exactly on the final update
    assert all(later < earlier for earlier, later in itertools.pairwise(used[5:]))
    assert scheduler.get_last_lr() == [min_lr]  # after the final step() it stays at the minimum


def test_cosine_without_warmup_starts_at_base_and_ends_at_minimum():
    optimizer = make_optimizer(2.0)
    scheduler = CosineLrScheduler(optimizer, total_num_steps=11, lr_min_ratio=0.1)
    used = [lrs[0] for lrs in lrs_used_by_updates(scheduler, optimizer, 11)]

    assert used[0] == 2.0
    assert used[5] == pytest.approx(0.2 + (2.0 - 0.2) * 0.5, rel=1e-12)  # half-way: the mean
    assert used[10] == 2.0 * 0.1


def test_cosine_cooldown_holds_the_minimum_after_the_decay():
    optimizer = make_optimizer(1.0)
    scheduler = CosineLrScheduler(
        optimizer, total_num_steps=20, num_warmup_steps=2, num_cooldown_steps=5, lr_min_ratio=0.2
    )
    used = [lrs[0] for lrs in lrs_used_by_updates(scheduler, optimizer, 20)]

    for step in range(15):
        assert used[step] == pytest.approx(expected_cosine(step, 1.0, 1e-6, 0.2, 2, 13), rel=1e-12)
    assert used[2] == 1.0
    assert used[13] > 0.2
    assert used[14:] == [0.2] * 6  # the decay's last update, then the 5 cooldown updates


def test_cosine_k_decay_raises_the_progress_to_the_power_k():
    optimizer = make_optimizer(1.0)
    scheduler = CosineLrScheduler(optimizer, total_num_steps=11, lr_min_ratio=0.0, k_decay=2.0)

    for step in range(11):
        progress = step / 10
        expected = 0.5 * (1 + math.cos(math.pi * progress**2))
        assert scheduler.get_lr(step)[0] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert scheduler.get_lr(5)[0] == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)), rel=1e-12)
    assert scheduler.get_lr(0) == [1.0]
    assert scheduler.get_lr(10) == [0.0]


def test_cosine_minimum_ratio_per_param_group():
    optimizer = make_optimizer(0.1, 0.02)
    scheduler = CosineLrScheduler(
        optimizer, total_num_steps=10, num_warmup_steps=3, lr_min_ratio=[0.1, 0.5]
    )
    used = lrs_used_by_updates(scheduler, optimizer, 10)

    assert used[0] == [1e-6, 1e-6]
    assert used[3] == [0.1, 0.02]
    assert used[9] == [0.1 * 0.1, 0.02 * 0.5]
    assert used[6][1] == pytest.approx(expected_cosine(6, 0.02, 1e-6, 0.01, 3, 7), rel=1e-12)


def test_cosine_warmup_ratio_reaches_base_exactly_and_never_overshoots():
    optimizer = make_optimizer(0.5)
    scheduler = CosineLrScheduler(
        optimizer, total_num_steps=40, num_warmup_steps=0.25, warmup_starting_lr_ratio=0.1
    )
    used = [lrs[0] for lrs in lrs_used_by_updates(scheduler, optimizer, 40)]

    assert scheduler.num_warmup_steps == 10
    assert used[0] == 0.05  # 0.1 * base
    assert used[10] == 0.5
    assert max(used) == 0.5
    assert used[39] == 0.5 * 0.05


def test_cosine_get_lr_is_pure_and_step_can_jump():
    optimizer = make_optimizer(0.1)
    scheduler = CosineLrScheduler(optimizer, total_num_steps=30, num_warmup_steps=4)
    used = [lrs[0] for lrs in lrs_used_by_updates(scheduler, optimizer, 30)]

    assert [scheduler.get_lr(step)[0] for step in range(30)] == used
    scheduler.step(update_step=7)
    assert scheduler.update_step == 7
    assert optimizer.param_groups[0]["lr"] == used[7] == scheduler.get_last_lr()[0]


def test_construction_keeps_the_configured_lr_as_base_when_the_optimizer_is_reused():
    optimizer = make_optimizer(0.1)
    CosineLrScheduler(optimizer, total_num_steps=10, num_warmup_steps=2)
    assert optimizer.param_groups[0]["lr"] == 1e-6
    # A second scheduler on the same optimizer must still see 0.1, not the warm-up start LR.
    scheduler = CosineLrScheduler(optimizer, total_num_steps=10)
    assert scheduler.base_lrs == [0.1]
    assert optimizer.param_groups[0]["lr"] == 0.1


# ---------------------------------------------------------------------------------------------
# WSDLrScheduler curves


@pytest.mark.parametrize(
    ("decay_shape", "decay_formula"),
    [
        ("linear", lambda p, base, low: low + (base - low) * (1 - p)),
        ("sqrt", lambda p, base, low: low + (base - low) * (1 - math.sqrt(p))),
        ("inverse_proportional", lambda p, base, low: 1 / ((1 - p) / base + p / low)),
    ],
)
def test_wsd_warmup_stable_decay_for_each_shape(decay_shape, decay_formula):
    optimizer = make_optimizer(0.4)
    scheduler = WSDLrScheduler(
        optimizer,
        total_num_steps=40,
        num_warmup_steps=4,
        warmup_starting_lr=0.0,
        decay_phase_ratio=0.25,
        lr_min_ratio=0.1,
        decay_shape=decay_shape,
    )
    used = [lrs[0] for lrs in lrs_used_by_updates(scheduler, optimizer, 40)]

    assert used[:4] == pytest.approx([0.0, 0.1, 0.2, 0.3], rel=1e-12)
    assert used[4:31] == [0.4] * 27  # stable, and the decay window's first update (step 30)
    for step in range(30, 40):
        expected = decay_formula((step - 30) / 9, 0.4, 0.04)
        assert used[step] == pytest.approx(expected, rel=1e-12)
    assert used[39] == 0.4 * 0.1
    assert used[38] > used[39]
    assert scheduler.decay_phase_start_steps == [30]
    assert scheduler.get_last_lr() == [0.4 * 0.1]  # after the run it stays at the minimum


def test_wsd_shapes_differ_mid_decay():
    def mid_decay_lr(decay_shape):
        scheduler = WSDLrScheduler(
            make_optimizer(1.0),
            20,
            decay_phase_ratio=0.5,
            lr_min_ratio=0.01,
            decay_shape=decay_shape,
        )
        return scheduler.get_lr(15)[0]  # progress 5/9

    # 1 - sqrt drops fastest early among linear/sqrt; inverse-proportional drops faster still.
    assert mid_decay_lr("inverse_proportional") < mid_decay_lr("sqrt") < mid_decay_lr("linear")


def test_wsd_evenly_spaced_checkpoints_each_decay_then_restart_stable():
    optimizer = make_optimizer(1.0)
    scheduler = WSDLrScheduler(
        optimizer,
        total_num_steps=100,
        num_warmup_steps=10,
        decay_phase_ratio=0.1,
        lr_min_ratio=0.0,
        decay_shape="linear",
        num_checkpoints=2,
    )
    used = [lrs[0] for lrs in lrs_used_by_updates(scheduler, optimizer, 100)]

    assert scheduler.checkpoint_steps == [50, 100]
    assert scheduler.decay_phase_start_steps == [45, 90]  # windows of 5 and 10 updates
    assert used[10:46] == [1.0] * 36
    assert used[45:50] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0], abs=1e-15)
    assert used[49] == 0.0
    assert used[50:91] == [1.0] * 41  # the next segment restarts at the base LR
    assert used[99] == 0.0
    assert used[95] == pytest.approx(1 - 5 / 9, rel=1e-12)


def test_wsd_explicit_checkpoints_and_the_pre_decay_queries():
    scheduler = WSDLrScheduler(
        make_optimizer(1.0), total_num_steps=100, checkpoint_steps=[30, 60], decay_phase_ratio=0.1
    )

    assert scheduler.checkpoint_steps == [30, 60, 100]  # the end of the run is always one
    assert scheduler.decay_phase_start_steps == [27, 54, 90]
    assert [step for step in range(101) if scheduler.is_decay_phase_start(step)] == [27, 54, 90]
    assert [step for step in range(101) if scheduler.is_checkpoint_step(step)] == [30, 60, 100]
    # A pre-decay checkpoint at step 27: every update so far ran at the base LR or below it.
    assert scheduler.get_lr(26) == scheduler.get_lr(27) == [1.0]
    assert scheduler.get_lr(29) == [0.0]


def test_wsd_with_total_already_in_checkpoint_steps():
    scheduler = WSDLrScheduler(make_optimizer(1.0), 50, checkpoint_steps=[25, 50])
    assert scheduler.checkpoint_steps == [25, 50]


def test_wsd_one_update_decay_window_goes_straight_to_the_minimum():
    scheduler = WSDLrScheduler(
        make_optimizer(1.0), total_num_steps=4, decay_phase_ratio=0.1, lr_min_ratio=0.5
    )
    assert scheduler.decay_phase_start_steps == [3]
    assert [scheduler.get_lr(step)[0] for step in range(4)] == [1.0, 1.0, 1.0, 0.5]


# ---------------------------------------------------------------------------------------------
# Resuming


def _continue_after_reload(make_scheduler, make_other_scheduler, lrs, save_at, total):
    optimizer = make_optimizer(*lrs)
    scheduler = make_scheduler(optimizer)
    uninterrupted = lrs_used_by_updates(scheduler, optimizer, total)

    optimizer = make_optimizer(*lrs)
    scheduler = make_scheduler(optimizer)
    lrs_used_by_updates(scheduler, optimizer, save_at)
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)  # through torch.save, as a checkpoint would
    buffer.seek(0)

    # A fresh optimizer with other LRs and a scheduler built with other settings: the loaded
    # state must win for both.
    fresh_optimizer = make_optimizer(*[lr * 7 for lr in lrs])
    fresh_scheduler = make_other_scheduler(fresh_optimizer)
    fresh_scheduler.load_state_dict(torch.load(buffer, weights_only=True))
    assert fresh_scheduler.update_step == save_at
    resumed = lrs_used_by_updates(fresh_scheduler, fresh_optimizer, total - save_at)
    assert resumed == uninterrupted[save_at:]


@pytest.mark.parametrize("save_at", [0, 3, 7, 15, 19])
def test_cosine_state_dict_round_trip_continues_the_identical_curve(save_at):
    _continue_after_reload(
        lambda opt: CosineLrScheduler(
            opt, 20, num_warmup_steps=5, lr_min_ratio=[0.1, 0.3], num_cooldown_steps=2, k_decay=1.5
        ),
        lambda opt: CosineLrScheduler(opt, 50),
        lrs=(0.1, 0.01),
        save_at=save_at,
        total=20,
    )


@pytest.mark.parametrize("save_at", [0, 5, 29, 44, 47, 50, 99])
def test_wsd_state_dict_round_trip_continues_the_identical_curve(save_at):
    _continue_after_reload(
        lambda opt: WSDLrScheduler(
            opt, 100, num_warmup_steps=10, num_checkpoints=2, decay_shape="sqrt", lr_min_ratio=0.1
        ),
        lambda opt: WSDLrScheduler(opt, 300, decay_shape="linear"),
        lrs=(1.0,),
        save_at=save_at,
        total=100,
    )


def test_loading_another_schedulers_state_is_refused():
    state = CosineLrScheduler(make_optimizer(0.1), 10).state_dict()
    with pytest.raises(ValueError, match="saved by a CosineLrScheduler"):
        WSDLrScheduler(make_optimizer(0.1), 10).load_state_dict(state)


def test_loading_state_with_another_number_of_param_groups_is_refused():
    state = CosineLrScheduler(make_optimizer(0.1), 10).state_dict()
    with pytest.raises(ValueError, match="1 param groups but the optimizer has 2"):
        CosineLrScheduler(make_optimizer(0.1, 0.1), 10).load_state_dict(state)


# ---------------------------------------------------------------------------------------------
# StatefulLrScheduler


class DecayByFactor(StatefulLrScheduler):
    def __init__(self, optimizer: torch.optim.Optimizer, factor: float) -> None:
        self.factor = factor
        super().__init__(optimizer)

    def get_next_lrs(self) -> list[float]:
        return [lr * self.factor for lr in self.get_last_lr()]


def test_stateful_scheduler_steps_from_its_state_and_resumes():
    optimizer = make_optimizer(1.0)
    scheduler = DecayByFactor(optimizer, factor=0.5)
    assert optimizer.param_groups[0]["lr"] == 1.0
    used = lrs_used_by_updates(scheduler, optimizer, 3)
    assert used == [[1.0], [0.5], [0.25]]

    fresh_optimizer = make_optimizer(1.0)
    fresh_scheduler = DecayByFactor(fresh_optimizer, factor=0.9)
    fresh_scheduler.load_state_dict(scheduler.state_dict())
    assert fresh_scheduler.factor == 0.5
    assert fresh_scheduler.update_step == 3
    assert lrs_used_by_updates(fresh_scheduler, fresh_optimizer, 2) == [[0.125], [0.0625]]


# ---------------------------------------------------------------------------------------------
# create_scheduler_fn (the trainer placeholder default is covered by the trainer's tests)


@pytest.mark.parametrize("scheduler_class", [CosineLrScheduler, WSDLrScheduler])
def test_create_scheduler_fn_returns_a_partial_of_the_class(scheduler_class):
    create_scheduler = scheduler_class.create_scheduler_fn(total_num_steps=12, num_warmup_steps=2)

    assert isinstance(create_scheduler, functools.partial)
    assert create_scheduler.func is scheduler_class
    assert create_scheduler.keywords == {"total_num_steps": 12, "num_warmup_steps": 2}
    optimizer = make_optimizer(0.1)
    scheduler = create_scheduler(optimizer)
    assert isinstance(scheduler, scheduler_class)
    assert (scheduler.total_num_steps, scheduler.num_warmup_steps) == (12, 2)
    assert optimizer.param_groups[0]["lr"] == 1e-6


# ---------------------------------------------------------------------------------------------
# Bad arguments


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"num_warmup_steps": 6, "num_cooldown_steps": 4}, ValueError, "leave no update"),
        ({"num_warmup_steps": 11}, ValueError, "leave no update"),
        ({"num_warmup_steps": -1}, ValueError, "num_warmup_steps must be a non-negative"),
        ({"num_warmup_steps": 1.5}, ValueError, "must be in \\(0, 1\\)"),
        ({"num_warmup_steps": 3.0}, ValueError, "pass an int \\(3\\)"),
        ({"num_cooldown_steps": -2}, ValueError, "num_cooldown_steps must be a non-negative"),
        ({"warmup_starting_lr": -1e-3}, ValueError, "warmup_starting_lr must be a non-negative"),
        ({"warmup_starting_lr_ratio": 1.5}, ValueError, "warmup_starting_lr_ratio must be"),
        (
            {"warmup_starting_lr": 0.0, "warmup_starting_lr_ratio": 0.1},
            ValueError,
            "not both",
        ),
        ({"lr_min_ratio": -0.1}, ValueError, "lr_min_ratio must be between 0 and 1"),
        ({"lr_min_ratio": [0.1, 0.2]}, ValueError, "lr_min_ratio has 2 values but the optim"),
        ({"k_decay": 0.0}, ValueError, "k_decay must be > 0"),
        ({"k_decay": -1.0}, ValueError, "k_decay must be > 0"),
        ({"total_num_steps": 0}, ValueError, "total_num_steps must be at least 1"),
        ({"total_num_steps": 10.0}, TypeError, "total_num_steps must be an int"),
    ],
)
def test_cosine_bad_arguments_say_what_is_wrong(kwargs, error, message):
    kwargs = {"total_num_steps": 10, **kwargs}
    with pytest.raises(error, match=message):
        CosineLrScheduler(make_optimizer(0.1), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"decay_shape": "cosine"}, "decay_shape must be one of"),
        ({"decay_phase_ratio": 0.0}, "decay_phase_ratio must be in \\(0, 1\\)"),
        ({"decay_phase_ratio": 1.0}, "decay_phase_ratio must be in \\(0, 1\\)"),
        ({"decay_shape": "inverse_proportional"}, "lr_min_ratio\\s+must be > 0"),
        ({"num_checkpoints": 2, "checkpoint_steps": [50]}, "not both"),
        ({"num_checkpoints": 0}, "num_checkpoints must be between 1 and"),
        ({"checkpoint_steps": [60, 40]}, "strictly increasing"),
        ({"checkpoint_steps": [0, 40]}, "strictly increasing"),
        ({"checkpoint_steps": [50, 150]}, "strictly increasing"),
        ({"num_warmup_steps": 95}, "before the end of the warm-up \\(step 95\\)"),
        (
            {"num_checkpoints": 20, "checkpoint_spacing": "even"},
            "before the previous checkpoint \\(step 50\\)",
        ),
        ({"num_checkpoints": 20}, "halve the run 19 times"),
        ({"checkpoint_spacing": "log"}, "checkpoint_spacing must be"),
        ({"lr_min_ratio": [0.1, 0.1]}, "lr_min_ratio has 2 values"),
    ],
)
def test_wsd_bad_arguments_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WSDLrScheduler(make_optimizer(1.0), total_num_steps=100, **kwargs)


def test_step_rejects_a_negative_update_step():
    scheduler = CosineLrScheduler(make_optimizer(0.1), 10)
    with pytest.raises(ValueError, match="non-negative int"):
        scheduler.step(update_step=-1)
