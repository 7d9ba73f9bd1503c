"""Freeze and unfreeze a model's layer groups, for fine-tuning a pretrained model.

The usual recipe: freeze everything but the new head, train a few epochs, then unfreeze the
body group by group (often with a lower LR), adding the newly trainable parameters to the
optimizer as a new param group.

Layer groups are the model's top-level children, in registration order, with two rules:

* children without any parameter (activations, pooling, dropout) are skipped, so every
  index names something that can be frozen;
* an ``nn.ModuleList`` or ``nn.ModuleDict`` child is expanded into its items (recursively),
  because these are pure containers with no ``forward``: the items are the layers, e.g. the
  blocks of a transformer become one group each. An ``nn.Sequential`` child is *not*
  expanded: it is a layer of its own (a head built as ``Linear, ReLU, Linear`` is one group,
  so "freeze all but the last group" leaves the whole head trainable).

For finer groups inside one child, build a ``ModelFreezer`` on that child instead. Parameters
registered directly on the root model (not inside any child) belong to no group and are left
as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["Layer", "LayerGroup", "ModelFreezer", "UnfrozenParameters"]


@dataclass(frozen=True)
class LayerGroup:
    """One unit of freezing: a module and where it sits in the model.

    Attributes:
        index: the position among the layer groups (0 is the input end).
        name: the module's qualified name in the model, e.g. ``"blocks.3"``.
        module: the module itself.
        reverse_index: the same position counted from the output end (-1 is the last group).
    """

    index: int
    name: str
    module: nn.Module
    reverse_index: int

    @property
    def layer_group_idx(self) -> tuple[int, int]:
        """``(index, reverse_index)``, pytorch-accelerated's name for the position."""
        return (self.index, self.reverse_index)

    @property
    def is_frozen(self) -> bool:
        """Whether any parameter of the group is frozen (requires no gradient) now."""
        return any(not parameter.requires_grad for parameter in self.module.parameters())


@dataclass(frozen=True)
class Layer:
    """A module without submodules (``nn.Linear``, ``nn.BatchNorm2d``, ...) inside a layer group.

    Attributes:
        layer_group_idx: ``(index, reverse_index)`` of the layer group it belongs to.
        name: its qualified name in the model.
        module: the module itself.
    """

    layer_group_idx: tuple[int, int]
    name: str
    module: nn.Module

    @property
    def is_frozen(self) -> bool:
        """Whether the layer has parameters and none of them requires a gradient now."""
        parameters = list(self.module.parameters(recurse=False))
        return bool(parameters) and not any(parameter.requires_grad for parameter in parameters)


class UnfrozenParameters(dict):
    """What `ModelFreezer.unfreeze` returns: for every layer group that had frozen parameters,
    its index mapped to a param group ``{"params": [...]}`` for ``optimizer.add_param_group``
    (pytorch-accelerated's shape).

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
        >>> freezer = ModelFreezer(model)
        >>> freezer.freeze()
        >>> optimizer = torch.optim.SGD(freezer.get_trainable_parameters(), lr=0.1)
        >>> for param_group in freezer.unfreeze().values():
        ...     optimizer.add_param_group({**param_group, "lr": 0.01})
        >>> len(optimizer.param_groups)
        2
    """

    def as_param_group(self) -> dict[str, list[nn.Parameter]]:
        """Every unfrozen parameter in one param group ``{"params": [...]}``, in model order."""
        return {"params": [p for group in self.values() for p in group["params"]]}

    def __missing__(self, key: Any) -> Any:
        if key == "params":
            raise KeyError(
                "unfreeze() returns one param group per layer group, keyed by the group's "
                "index: add them with `for param_group in unfrozen.values(): "
                "optimizer.add_param_group(param_group)`, or add "
                "`unfrozen.as_param_group()` for a single group."
            )
        raise KeyError(key)


class ModelFreezer:
    """Freeze and unfreeze ranges of a model's layer groups (see the module docstring).

    Ranges are inclusive at both ends, accept negative indices like Python lists, and may run
    in either direction: ``freeze(0, 2)`` and ``freeze(2, 0)`` freeze the same groups.

    Args:
        model: the model whose parameters to freeze and unfreeze. Pass the bare model, not a
            DDP or compiled wrapper, so the group names read as in the model's code.
        freeze_batch_norms: if False (default), BatchNorm layers inside frozen groups stay
            trainable, a common choice when the new data's statistics differ from the
            pretraining data's. If True, they are frozen with the rest of their group.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(
        ...     torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.Linear(8, 2)
        ... )
        >>> freezer = ModelFreezer(model)
        >>> [group.name for group in freezer.get_layer_groups()]
        ['0', '2', '3']
        >>> freezer.freeze()  # all but the last group
        >>> optimizer = torch.optim.SGD(freezer.get_trainable_parameters(), lr=0.1)
        >>> # ... later, unfreeze the middle group with a lower LR:
        >>> unfrozen = freezer.unfreeze(from_index=1, to_index=1)
        >>> optimizer.add_param_group({**unfrozen[1], "lr": 0.01})
    """

    def __init__(self, model: nn.Module, freeze_batch_norms: bool = False) -> None:
        self.model = model
        self.freeze_batch_norms = freeze_batch_norms
        named_modules = list(_iter_layer_group_modules(model))
        self._layer_groups = [
            LayerGroup(index, name, module, index - len(named_modules))
            for index, (name, module) in enumerate(named_modules)
        ]
        if not self._layer_groups:
            raise ValueError(
                f"{type(model).__name__} has no child module with parameters, so there is "
                "nothing to freeze group by group. Pass a model built from submodules."
            )

    def get_layer_groups(self) -> list[LayerGroup]:
        """Return the layer groups, from the input end (index 0) to the output end."""
        return list(self._layer_groups)

    def get_layers(self) -> list[Layer]:
        """Return every module without submodules inside the layer groups, in model order."""
        return [
            Layer(group.layer_group_idx, f"{group.name}.{name}" if name else group.name, module)
            for group in self._layer_groups
            for name, module in group.module.named_modules()
            if not any(True for _ in module.children())
        ]

    def get_trainable_parameters(self) -> list[nn.Parameter]:
        """Return every parameter of the model that currently requires a gradient."""
        return [parameter for parameter in self.model.parameters() if parameter.requires_grad]

    def freeze(
        self, from_index: int = 0, to_index: int = -2, set_modules_as_eval: bool = False
    ) -> None:
        """Stop the gradients of the layer groups ``from_index`` to ``to_index`` (inclusive).

        The default freezes every group but the last. BatchNorm layers stay trainable unless
        the freezer was built with ``freeze_batch_norms=True``.

        Args:
            from_index: first group of the range; negative counts from the end.
            to_index: last group of the range (inclusive); negative counts from the end.
            set_modules_as_eval: if True, also put the frozen modules in eval mode (dropout
                off, BatchNorm statistics fixed); BatchNorm layers that stay trainable keep
                their mode. If False, modes are left alone. Note that ``model.train()``,
                which a trainer calls at the start of every training epoch, sets every module
                back to training mode, so re-apply this after it when needed.
        """
        for module in self._modules_in_range(from_index, to_index):
            if isinstance(module, _BatchNorm) and not self.freeze_batch_norms:
                continue
            for parameter in module.parameters(recurse=False):
                parameter.requires_grad_(False)
            if set_modules_as_eval:
                # Set the flag on this module only: ``module.eval()`` would also recurse into
                # BatchNorm children that must keep their mode.
                module.training = False

    def unfreeze(
        self,
        from_index: int = -1,
        to_index: int = 0,
        set_modules_as_eval: bool = False,
        set_modules_as_training: bool = False,
    ) -> UnfrozenParameters:
        """Let the layer groups ``from_index`` to ``to_index`` (inclusive) train again.

        The default unfreezes every group.

        Args:
            from_index: first group of the range; negative counts from the end.
            to_index: last group of the range (inclusive); negative counts from the end.
            set_modules_as_eval: if True, put the unfrozen modules in eval mode, to fine-tune
                their weights with dropout off and BatchNorm statistics fixed. If False,
                modes are left alone (``model.train()`` restores training mode).
            set_modules_as_training: if True, put the unfrozen modules in training mode
                (pytorch-accelerated's argument, True by default there).

        Returns:
            For each layer group that had frozen parameters, its index mapped to
            ``{"params": [...]}`` with the parameters that were frozen before this call, in
            model order, ready for ``optimizer.add_param_group`` (add keys such as ``"lr"``
            as needed); `UnfrozenParameters.as_param_group` puts them all in one group.
            Parameters already trainable are left out, so an optimizer built on
            `get_trainable_parameters` never receives a parameter twice.
        """
        if set_modules_as_eval and set_modules_as_training:
            raise ValueError("Give set_modules_as_eval or set_modules_as_training, not both.")
        # Keyed by id: a parameter shared by two modules must be added only once.
        seen: set[int] = set()
        unfrozen = UnfrozenParameters()
        first, last = self._range(from_index, to_index)
        for group in self._layer_groups[first : last + 1]:
            newly_trainable = []
            for module in group.module.modules():
                for parameter in module.parameters(recurse=False):
                    if not parameter.requires_grad and id(parameter) not in seen:
                        seen.add(id(parameter))
                        newly_trainable.append(parameter)
                        parameter.requires_grad_(True)
                if set_modules_as_eval or set_modules_as_training:
                    module.training = set_modules_as_training and not set_modules_as_eval
            if newly_trainable:
                unfrozen[group.index] = {"params": newly_trainable}
        return unfrozen

    def _range(self, from_index: int, to_index: int) -> tuple[int, int]:
        first, last = sorted((self._to_positive(from_index), self._to_positive(to_index)))
        return first, last

    def _modules_in_range(self, from_index: int, to_index: int) -> Iterator[nn.Module]:
        """Every module (each group's submodules included) of the groups in the range."""
        first, last = self._range(from_index, to_index)
        for group in self._layer_groups[first : last + 1]:
            yield from group.module.modules()

    def _to_positive(self, index: int) -> int:
        num_groups = len(self._layer_groups)
        if not -num_groups <= index < num_groups:
            raise IndexError(
                f"Layer group index {index} is out of range: the model has {num_groups} layer "
                f"groups, so use 0 to {num_groups - 1}, or -{num_groups} to -1 from the end. "
                "See get_layer_groups() for what each index holds."
            )
        return index % num_groups


def _iter_layer_group_modules(
    module: nn.Module, prefix: str = ""
) -> Iterator[tuple[str, nn.Module]]:
    for name, child in module.named_children():
        qualified_name = f"{prefix}{name}"
        if isinstance(child, (nn.ModuleList, nn.ModuleDict)):
            yield from _iter_layer_group_modules(child, prefix=f"{qualified_name}.")
        elif any(True for _ in child.parameters()):
            yield qualified_name, child
