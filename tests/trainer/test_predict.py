"""Trainer.predict: the model's outputs over a dataset, in order, on one process (the
2-process runs are in tests/distributed/test_multiprocess.py)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from trainwright import Trainer, TrainerCallback


def _trainer(model: nn.Module, callbacks: tuple = ()) -> Trainer:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return Trainer(model, nn.CrossEntropyLoss(), optimizer, callbacks=callbacks)


class DictOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.linear(inputs)
        return {"logits": logits, "probabilities": logits.softmax(-1)}


@pytest.mark.parametrize("with_targets", [False, True])
def test_predict_equals_the_model_over_the_whole_dataset_in_order(with_targets: bool) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    inputs = torch.randn(11, 4)  # a short last batch of 3
    dataset = TensorDataset(inputs, torch.zeros(11)) if with_targets else TensorDataset(inputs)
    trainer = _trainer(model)
    predictions = trainer.predict(dataset, per_device_batch_size=4)
    model.eval()
    with torch.no_grad():
        expected = model(inputs)
    assert torch.equal(predictions, expected)
    assert model.training is False  # restored: it was in eval mode here
    model.train()
    trainer.predict(dataset, per_device_batch_size=4)
    assert model.training  # and back in training mode when it was


def test_predict_joins_dict_outputs_per_key() -> None:
    torch.manual_seed(0)
    model = DictOutputs()
    inputs = torch.randn(10, 4)
    predictions = _trainer(model).predict(TensorDataset(inputs), per_device_batch_size=3)
    with torch.no_grad():
        expected = model(inputs)
    assert set(predictions) == {"logits", "probabilities"}
    for key in expected:
        assert torch.equal(predictions[key], expected[key])


class TokenDataset(Dataset):
    def __init__(self, num_samples: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.input_ids = torch.randint(0, 50, (num_samples, 6), generator=generator)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[index], "attention_mask": torch.ones(6, dtype=int)}


def test_predict_returns_a_hugging_face_model_output_for_dict_batches() -> None:
    from transformers import BertConfig, BertForSequenceClassification
    from transformers.modeling_outputs import SequenceClassifierOutput

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        num_labels=3,
    )
    model = BertForSequenceClassification(config)
    dataset = TokenDataset(7)
    predictions = _trainer(model).predict(dataset, per_device_batch_size=3)
    assert isinstance(predictions, SequenceClassifierOutput)
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=dataset.input_ids, attention_mask=torch.ones(7, 6, dtype=int))
    assert torch.allclose(predictions.logits, expected.logits, atol=1e-6)


class PredictRecorder(TrainerCallback):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_predict_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        self.events.append(("on_predict_run_start", None))

    def on_predict_step_start(self, trainer: Trainer, batch: Any, step: int, **kwargs: Any) -> None:
        self.events.append(("on_predict_step_start", step))

    def on_predict_step_end(
        self, trainer: Trainer, batch: Any, outputs: Any, step: int, **kwargs: Any
    ) -> None:
        self.events.append(("on_predict_step_end", tuple(outputs.shape)))

    def on_predict_run_end(self, trainer: Trainer, predictions: Any, **kwargs: Any) -> None:
        self.events.append(("on_predict_run_end", tuple(predictions.shape)))


def test_predict_fires_its_events_and_works_before_and_after_training() -> None:
    torch.manual_seed(0)
    recorder = PredictRecorder()
    model = nn.Linear(4, 3)
    trainer = _trainer(model, callbacks=(recorder,))
    inputs, targets = torch.randn(5, 4), torch.randint(0, 3, (5,))
    trainer.predict(TensorDataset(inputs), per_device_batch_size=3)
    assert recorder.events == [
        ("on_predict_run_start", None),
        ("on_predict_step_start", 0),
        ("on_predict_step_end", (3, 3)),
        ("on_predict_step_start", 1),
        ("on_predict_step_end", (2, 3)),
        ("on_predict_run_end", (5, 3)),
    ]
    trainer.train(TensorDataset(inputs, targets), num_epochs=1, per_device_batch_size=2)
    with torch.no_grad():
        assert torch.equal(trainer.predict(TensorDataset(inputs)), model(inputs))


def test_predict_batch_can_be_overridden() -> None:
    class ProbabilitiesTrainer(Trainer):
        def predict_batch(self, batch: Any) -> torch.Tensor:
            return self.model(batch[0]).softmax(dim=-1)

    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    trainer = ProbabilitiesTrainer(model, nn.MSELoss(), torch.optim.SGD(model.parameters(), 0.1))
    inputs = torch.randn(6, 4)
    predictions = trainer.predict(TensorDataset(inputs), per_device_batch_size=4)
    assert torch.allclose(predictions.sum(-1), torch.ones(6))


def test_predict_names_the_hook_to_override_for_other_batches() -> None:
    dataset = TensorDataset(torch.randn(4, 4), torch.randn(4), torch.randn(4))
    with pytest.raises(TypeError, match="predict_batch"):
        _trainer(nn.Linear(4, 3)).predict(dataset)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5])
def test_predict_rejects_a_bad_batch_size(batch_size: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="per_device_batch_size"):
        _trainer(nn.Linear(4, 3)).predict(TensorDataset(torch.randn(4, 4)), batch_size)
