"""Tests for trainwright.ema.ModelEma."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from trainwright.ema import ModelEma


def make_model() -> nn.Module:
    torch.manual_seed(0)
    # No bias before the BatchNorm: it would get no gradient, so every parameter moves.
    return nn.Sequential(nn.Linear(3, 4, bias=False), nn.BatchNorm1d(4), nn.Linear(4, 1))


def train_one_update(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    model(torch.randn(8, 3)).pow(2).mean().backward()
    optimizer.step()


def run_updates(model, ema, num_updates):
    """Train and update the EMA; return the model's float parameters after each update."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    snapshots = []
    for _ in range(num_updates):
        train_one_update(model, optimizer)
        ema.update(model)
        snapshots.append(
            {name: value.detach().double().clone() for name, value in model.named_parameters()}
        )
    return snapshots


def hand_computed_ema(initial, snapshots, decays):
    average = {name: value.double().clone() for name, value in initial.items()}
    for snapshot, decay in zip(snapshots, decays):
        for name in average:
            average[name] = decay * average[name] + (1 - decay) * snapshot[name]
    return average


@pytest.mark.parametrize(
    ("use_warmup", "expected_decays"),
    [
        (False, [0.9] * 5),
        # min(0.9, (1 + t) / (10 + t)) for t = 0..4 updates done before each update
        (True, [1 / 10, 2 / 11, 3 / 12, 4 / 13, 5 / 14]),
    ],
)
def test_five_updates_match_a_hand_computed_ema(use_warmup, expected_decays):
    model = make_model().train()
    initial = {name: value.detach().clone() for name, value in model.named_parameters()}
    ema = ModelEma(model, decay=0.9, use_warmup=use_warmup)

    assert [ema.get_decay(t) for t in range(5)] == pytest.approx(expected_decays, rel=1e-15)
    snapshots = run_updates(model, ema, 5)

    expected = hand_computed_ema(initial, snapshots, expected_decays)
    for name, value in ema.module.named_parameters():
        torch.testing.assert_close(value.double(), expected[name], rtol=1e-6, atol=1e-7)
        assert not torch.allclose(value.double(), snapshots[-1][name])  # really an average
    assert ema.num_updates == 5


def test_warmup_decay_is_capped_at_decay():
    ema = ModelEma(nn.Linear(1, 1), decay=0.5, use_warmup=True)
    assert ema.get_decay(0) == 0.1
    assert ema.get_decay(8) == 0.5  # (1 + 8) / (10 + 8)
    assert ema.get_decay(1000) == 0.5


def test_buffers_are_copied_not_averaged():
    model = make_model().train()
    ema = ModelEma(model, decay=0.9)
    run_updates(model, ema, 3)

    for (name, ema_buffer), (_, buffer) in zip(ema.module.named_buffers(), model.named_buffers()):
        assert torch.equal(ema_buffer, buffer), name
    assert int(ema.module[1].num_batches_tracked) == 3


def test_the_copy_is_frozen_in_eval_mode_and_independent():
    model = make_model().train()
    ema = ModelEma(model)

    assert not ema.module.training
    assert not any(parameter.requires_grad for parameter in ema.module.parameters())
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert not torch.equal(ema.module[0].weight, model[0].weight)


def test_update_unwraps_a_compiled_model_style_wrapper():
    class CompiledLike(nn.Module):
        """Holds the real model as ``_orig_mod``, as ``torch.compile``'s wrapper does."""

        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self._orig_mod = model

    model = make_model()
    ema = ModelEma(CompiledLike(model), decay=0.0)  # decay 0: the average is the model
    assert [name for name, _ in ema.module.named_parameters()] == [
        name for name, _ in model.named_parameters()
    ]
    with torch.no_grad():
        model[0].weight.fill_(3.0)
    ema.update(CompiledLike(model))

    assert torch.equal(ema.module[0].weight, model[0].weight)


def test_update_unwraps_data_parallel():
    model = make_model()
    ema = ModelEma(nn.DataParallel(model), decay=0.0)
    with torch.no_grad():
        model[2].bias.fill_(-2.0)
    ema.update(nn.DataParallel(model))

    assert torch.equal(ema.module[2].bias, model[2].bias)


def test_a_different_architecture_is_refused():
    ema = ModelEma(make_model())
    with pytest.raises(ValueError, match="same model"):
        ema.update(nn.Sequential(nn.Linear(3, 4)))


def test_state_dict_round_trip_continues_the_same_average():
    model = make_model().train()
    ema = ModelEma(model, decay=0.8, use_warmup=True)
    run_updates(model, ema, 3)
    buffer = io.BytesIO()
    torch.save(ema.state_dict(), buffer)
    buffer.seek(0)

    restored = ModelEma(make_model(), decay=0.99, use_warmup=False)
    restored.load_state_dict(torch.load(buffer, weights_only=True))

    assert restored.num_updates == 3
    assert (restored.decay, restored.use_warmup) == (0.8, True)
    assert restored.get_decay() == ema.get_decay() == 4 / 13
    for (name, value), (_, restored_value) in zip(
        ema.module.state_dict().items(), restored.module.state_dict().items()
    ):
        assert torch.equal(value, restored_value), name
    with torch.no_grad():
        model[0].weight.add_(0.25)
    ema.update(model)
    restored.update(model)
    for value, restored_value in zip(ema.module.parameters(), restored.module.parameters()):
        assert torch.equal(value, restored_value)


def test_device_argument_moves_the_copy():
    ema = ModelEma(make_model(), device="cpu")
    assert ema.device == torch.device("cpu")
    assert all(parameter.device.type == "cpu" for parameter in ema.module.parameters())


@pytest.mark.parametrize("decay", [-0.1, 1.5])
def test_decay_outside_zero_one_is_refused(decay):
    with pytest.raises(ValueError, match="decay must be between 0 and 1"):
        ModelEma(nn.Linear(1, 1), decay=decay)
