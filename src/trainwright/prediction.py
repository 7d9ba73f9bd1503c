"""What `Trainer.predict` needs besides its loop: the model inputs of a batch, and joining the
per-batch outputs into outputs over the whole dataset.

Outputs are gathered across processes by Accelerate's `gather_for_metrics`, which also drops
the samples it repeated to give every process as many batches; here they are only joined.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["concatenate_outputs", "predict_inputs"]


def predict_inputs(batch: Any) -> Any:
    """The model inputs of a prediction batch: the batch itself for a tensor (or a mapping,
    e.g. a tokenizer's output, passed as keyword arguments by `Trainer.predict_batch`), the
    first item of a `(inputs,)` or `(inputs, targets)` pair.

    Raises:
        TypeError: for any other batch, naming `predict_batch` as the hook to override.
    """
    if torch.is_tensor(batch) or isinstance(batch, Mapping):
        return batch
    if isinstance(batch, (tuple, list)) and len(batch) in (1, 2):
        return batch[0]
    shape = type(batch).__name__
    if isinstance(batch, (tuple, list)):
        shape += f" of {len(batch)} items"
    raise TypeError(
        "The default Trainer.predict_batch() expects each batch to be the model's inputs, "
        f"(inputs,) or (inputs, targets), but got a {shape}. Override predict_batch() in a "
        "Trainer subclass to return the model outputs of one batch."
    )


def concatenate_outputs(outputs: Sequence[Any]) -> Any:
    """Joins the outputs of consecutive batches along their first dimension.

    Tensors are concatenated; mappings (dicts, Hugging Face `ModelOutput`s) and tuples or
    lists are joined entry by entry and keep their type; `None` entries stay `None`. A
    0-dim tensor (e.g. a batch's loss) has no sample dimension: the batches' values are
    stacked into one tensor with an entry per batch.

    Example:
        ```python
        import torch
        from trainwright.prediction import concatenate_outputs

        joined = concatenate_outputs([{"logits": torch.ones(2, 3)}, {"logits": torch.ones(1, 3)}])
        assert joined["logits"].shape == (3, 3)
        ```
    """
    if not outputs:
        return None
    first = outputs[0]
    if first is None:
        return None
    if torch.is_tensor(first):
        if first.dim() == 0:
            return torch.stack(list(outputs))
        return torch.cat(list(outputs))
    if isinstance(first, Mapping):
        joined = {key: concatenate_outputs([output[key] for output in outputs]) for key in first}
        return _same_type(first, joined)
    if isinstance(first, (tuple, list)):
        items = [concatenate_outputs([output[i] for output in outputs]) for i in range(len(first))]
        return _same_type(first, items)
    return list(outputs)


def _same_type(example: Any, values: Any) -> Any:
    """`values` (a dict or a list) in the container type of `example` where it can be."""
    if isinstance(values, dict):
        if type(example) is dict:
            return values
        try:  # a ModelOutput, an OrderedDict: built from keyword arguments
            return type(example)(**values)
        except TypeError:
            return values
    if hasattr(example, "_fields"):  # a namedtuple
        return type(example)(*values)
    return type(example)(values)
