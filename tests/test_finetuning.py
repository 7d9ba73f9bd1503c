"""Tests for trainwright.finetuning.ModelFreezer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainwright.finetuning import ModelFreezer


class Net(nn.Module):
    """Layer groups: stem (with a BatchNorm), blocks.0, blocks.1, head (one Sequential)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.1))
        self.activation = nn.ReLU()  # no parameters: not a group
        self.blocks = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])
        self.head = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = self.activation(self.stem(inputs))
        for block in self.blocks:
            hidden = self.activation(block(hidden))
        return self.head(hidden)


def trainable_names(model: nn.Module) -> set[str]:
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


ALL_NAMES = {name for name, _ in Net().named_parameters()}
BATCH_NORM_NAMES = {"stem.1.weight", "stem.1.bias"}
HEAD_NAMES = {"head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias"}


def test_layer_groups_are_top_level_children_with_module_lists_expanded():
    model = Net()
    groups = ModelFreezer(model).get_layer_groups()

    assert [(group.index, group.name) for group in groups] == [
        (0, "stem"),
        (1, "blocks.0"),
        (2, "blocks.1"),
        (3, "head"),  # an nn.Sequential stays one group
    ]
    assert groups[1].module is model.blocks[0]


def test_module_dicts_are_expanded_too():
    model = nn.Module()
    model.encoder = nn.Linear(2, 2)
    model.heads = nn.ModuleDict({"a": nn.Linear(2, 1), "b": nn.ModuleList([nn.Linear(2, 1)])})

    names = [group.name for group in ModelFreezer(model).get_layer_groups()]

    assert names == ["encoder", "heads.a", "heads.b.0"]


def test_default_freeze_keeps_the_last_group_and_batch_norms_trainable():
    model = Net()
    ModelFreezer(model).freeze()

    assert trainable_names(model) == HEAD_NAMES | BATCH_NORM_NAMES


def test_freeze_batch_norms_true_freezes_them_with_their_group():
    model = Net()
    ModelFreezer(model, freeze_batch_norms=True).freeze()

    assert trainable_names(model) == HEAD_NAMES


def test_frozen_parameters_get_no_gradient_and_do_not_move():
    torch.manual_seed(0)
    model = Net()
    freezer = ModelFreezer(model)
    freezer.freeze()
    optimizer = torch.optim.SGD(freezer.get_trainable_parameters(), lr=0.1)
    before = {name: value.clone() for name, value in model.named_parameters()}

    model(torch.randn(6, 4)).sum().backward()
    optimizer.step()

    for name, parameter in model.named_parameters():
        if name in HEAD_NAMES | BATCH_NORM_NAMES:
            assert parameter.grad is not None, name
            assert not torch.equal(parameter, before[name]), name
        else:
            assert parameter.grad is None, name
            assert torch.equal(parameter, before[name]), name


@pytest.mark.parametrize(("from_index", "to_index"), [(1, 2), (2, 1), (-3, -2), (-2, 1)])
def test_ranges_are_inclusive_accept_negative_indices_and_either_direction(from_index, to_index):
    model = Net()
    ModelFreezer(model, freeze_batch_norms=True).freeze(from_index, to_index)

    assert trainable_names(model) == ALL_NAMES - {
        "blocks.0.weight",
        "blocks.0.bias",
        "blocks.1.weight",
        "blocks.1.bias",
    }


def test_unfreeze_returns_only_newly_trainable_parameters_for_add_param_group():
    model = Net()
    freezer = ModelFreezer(model)
    freezer.freeze()
    optimizer = torch.optim.SGD(freezer.get_trainable_parameters(), lr=0.1)

    unfrozen = freezer.unfreeze(from_index=2, to_index=1)

    # pytorch-accelerated's shape: one param group per layer group index
    assert list(unfrozen) == [1, 2]
    assert unfrozen[1]["params"] == [model.blocks[0].weight, model.blocks[0].bias]
    assert unfrozen[2]["params"] == [model.blocks[1].weight, model.blocks[1].bias]
    assert unfrozen.as_param_group()["params"] == [
        model.blocks[0].weight,
        model.blocks[0].bias,
        model.blocks[1].weight,
        model.blocks[1].bias,
    ]
    # Not already-trainable ones (BatchNorm, head): adding them twice would make torch raise.
    for param_group in unfrozen.values():
        optimizer.add_param_group({**param_group, "lr": 0.01})
    assert len(optimizer.param_groups) == 3
    assert trainable_names(model) == ALL_NAMES - {"stem.0.weight", "stem.0.bias"}
    assert freezer.unfreeze(1, 2) == {}


def test_unfreeze_result_read_as_one_param_group_says_what_to_write():
    freezer = ModelFreezer(Net())
    freezer.freeze()
    optimizer = torch.optim.SGD(freezer.get_trainable_parameters(), lr=0.1)
    with pytest.raises(KeyError, match=r"as_param_group\(\)"):
        optimizer.add_param_group(freezer.unfreeze())


def test_unfreeze_defaults_to_every_group():
    model = Net()
    freezer = ModelFreezer(model, freeze_batch_norms=True)
    freezer.freeze(0, -1)
    assert trainable_names(model) == set()

    param_group = freezer.unfreeze().as_param_group()

    assert trainable_names(model) == ALL_NAMES
    assert [id(parameter) for parameter in param_group["params"]] == [
        id(parameter) for parameter in model.parameters()
    ]


def test_unfreeze_returns_a_shared_parameter_once():
    model = nn.Module()
    model.embedding = nn.Linear(3, 3, bias=False)
    model.unembedding = nn.Linear(3, 3, bias=False)
    model.unembedding.weight = model.embedding.weight
    freezer = ModelFreezer(model)
    freezer.freeze(0, -1)

    param_group = freezer.unfreeze().as_param_group()

    assert param_group["params"] == [model.embedding.weight]
    torch.optim.SGD(**param_group, lr=0.1)  # would warn/raise on a duplicate parameter


def test_freeze_with_set_modules_as_eval_keeps_trainable_batch_norms_training():
    model = Net().train()
    ModelFreezer(model).freeze(0, 0, set_modules_as_eval=True)

    assert model.stem.training is False
    assert model.stem[0].training is False
    assert model.stem[2].training is False  # dropout in a frozen group is switched off
    assert model.stem[1].training is True  # still trainable, so it keeps updating its stats
    assert model.blocks[0].training is True  # outside the range


def test_freeze_with_set_modules_as_eval_and_frozen_batch_norms():
    model = Net().train()
    ModelFreezer(model, freeze_batch_norms=True).freeze(0, 0, set_modules_as_eval=True)

    assert model.stem[1].training is False


def test_set_modules_as_eval_false_leaves_modes_alone():
    model = Net().train()
    freezer = ModelFreezer(model)
    freezer.freeze(0, -1)
    assert all(module.training for module in model.modules())

    model.eval()
    freezer.unfreeze()
    assert not any(module.training for module in model.modules())


def test_unfreeze_with_set_modules_as_eval():
    model = Net().train()
    freezer = ModelFreezer(model)
    freezer.freeze(0, -1)

    freezer.unfreeze(-1, -1, set_modules_as_eval=True)

    assert not any(module.training for module in model.head.modules())
    assert model.blocks[1].training is True


@pytest.mark.parametrize("index", [4, -5])
def test_out_of_range_index_says_what_the_valid_range_is(index):
    freezer = ModelFreezer(Net())
    with pytest.raises(IndexError, match="model has 4 layer groups, so use 0 to 3, or -4 to -1"):
        freezer.freeze(0, index)
    with pytest.raises(IndexError, match=f"index {index} is out of range"):
        freezer.unfreeze(index, 0)


def test_a_model_without_parameterised_children_is_refused():
    with pytest.raises(ValueError, match="no child module with parameters"):
        ModelFreezer(nn.Sequential(nn.ReLU()))
