"""A model compiled with ``torch.compile`` (the "eager" backend, for speed): it trains, and
every file documented as portable holds the plain model's keys, loadable into the uncompiled
model and back into a compiled trainer. Batches all have one size, so nothing recompiles."""

from __future__ import annotations

import pytest
import torch
from helpers.resume_job import StopAfter
from helpers.tiny import make_dataset, make_model
from torch import nn

from trainwright import Trainer
from trainwright.callbacks import SaveBestModelCallback
from trainwright.checkpointing import MODEL_STATE_KEY

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def compiled_trainer(callbacks=()) -> tuple[Trainer, nn.Module]:
    plain = make_model()
    compiled = torch.compile(plain, backend="eager")
    optimizer = torch.optim.SGD(compiled.parameters(), lr=0.5)
    return Trainer(compiled, nn.CrossEntropyLoss(), optimizer, callbacks), plain


def saved_weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)[MODEL_STATE_KEY]


def test_a_compiled_model_gives_the_plain_module_and_portable_files(tmp_path):
    best = tmp_path / "best.pt"
    trainer, plain = compiled_trainer(callbacks=[SaveBestModelCallback(best)])
    trainer.train(
        make_dataset(12), num_epochs=2, eval_dataset=make_dataset(8), per_device_batch_size=4
    )
    assert trainer.get_model() is plain
    trainer.save_checkpoint(tmp_path / "model.pt")
    for path in (tmp_path / "model.pt", best):
        assert set(saved_weights(path)) == set(plain.state_dict())  # no "_orig_mod." prefix
        make_model(seed=1).load_state_dict(saved_weights(path))  # loads without trainwright
    # The best model was reloaded at the end: the plain weights are the saved ones.
    for name, value in plain.state_dict().items():
        assert torch.equal(saved_weights(best)[name], value)

    other, other_plain = compiled_trainer()  # and back into a compiled trainer
    other.load_checkpoint(tmp_path / "model.pt")
    for loaded, trained in zip(other_plain.parameters(), plain.parameters()):
        assert torch.equal(loaded, trained)

    trainer.save_training_state(tmp_path / "state")  # training states still round-trip
    other.train(make_dataset(12), num_epochs=3, per_device_batch_size=4)
    other.load_training_state(tmp_path / "state")
    for loaded, trained in zip(other_plain.parameters(), plain.parameters()):
        assert torch.equal(loaded, trained)
    assert other.run_history.get_metric_values("train_loss_epoch") == (
        trainer.run_history.get_metric_values("train_loss_epoch")
    )


def test_a_run_compiled_by_accelerate_resumes_and_saves_plain_weights(tmp_path):
    def accelerate_compiled_trainer(callbacks=()) -> tuple[Trainer, nn.Module]:
        plain = make_model()
        optimizer = torch.optim.SGD(plain.parameters(), lr=0.5)
        kwargs = {"dynamo_backend": "eager"}
        return Trainer(
            plain, nn.CrossEntropyLoss(), optimizer, callbacks, accelerator_kwargs=kwargs
        ), plain

    # a 2-epoch run that saves its state at the end of epoch 1 and stops there
    trainer, plain = accelerate_compiled_trainer([StopAfter(1, 1, tmp_path)])
    trainer.train(make_dataset(8), num_epochs=2, per_device_batch_size=4)
    assert type(trainer.model).__name__ == "OptimizedModule"  # Accelerate compiled it
    assert trainer.get_model() is plain
    trainer.save_checkpoint(tmp_path / "model.pt")
    assert set(saved_weights(tmp_path / "model.pt")) == set(plain.state_dict())

    resumed, resumed_plain = accelerate_compiled_trainer()
    resumed.train(
        make_dataset(8), num_epochs=2, per_device_batch_size=4, resume_from=tmp_path / "state"
    )
    assert resumed.run_history.current_epoch == 3  # resumed after epoch 1, ran epoch 2
    reference, reference_plain = accelerate_compiled_trainer()  # the same run, uninterrupted
    reference.train(make_dataset(8), num_epochs=2, per_device_batch_size=4)
    for resumed_value, value in zip(resumed_plain.parameters(), reference_plain.parameters()):
        assert torch.equal(resumed_value, value)
