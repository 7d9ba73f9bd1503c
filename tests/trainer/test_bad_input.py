"""Bad input gets an error that says what was wrong and how to fix it, before training."""

from __future__ import annotations

import functools

import pytest
import torch
from helpers.tiny import RecorderCallback, make_dataset, make_model, make_trainer
from torch import nn
from torch.utils.data import TensorDataset

from trainwright import Trainer


def test_a_batch_that_is_not_inputs_and_targets_names_the_hook():
    dataset = TensorDataset(torch.randn(4, 4), torch.zeros(4), torch.zeros(4))
    with pytest.raises(TypeError, match=r"Override calculate_train_batch_loss\(\)") as info:
        make_trainer().train(dataset, num_epochs=1, per_device_batch_size=2)
    assert "pair (inputs, targets)" in str(info.value) and "list of 3 items" in str(info.value)
    with pytest.raises(TypeError, match=r"calculate_eval_batch_loss\(\)"):
        make_trainer().evaluate(dataset)


@pytest.mark.parametrize("output", [{"loss": torch.tensor(1.0)}, {"batch_size": 2}, 3])
def test_a_batch_loss_without_loss_or_batch_size(output):
    class BadTrainer(Trainer):
        def calculate_train_batch_loss(self, batch):
            return output

    model = make_model()
    trainer = BadTrainer(
        model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), 0.1), callbacks=()
    )
    with pytest.raises(TypeError, match=r"must return a dict with 'loss'.*and 'batch_size'"):
        trainer.train(make_dataset(4), num_epochs=1, per_device_batch_size=2)


def test_an_unreduced_loss():
    model = make_model()
    trainer = Trainer(
        model,
        nn.CrossEntropyLoss(reduction="none"),
        torch.optim.SGD(model.parameters(), 0.1),
        callbacks=(),
    )
    with pytest.raises(ValueError, match=r"must be a scalar tensor.*loss.mean\(\)"):
        trainer.train(make_dataset(4), num_epochs=1, per_device_batch_size=2)


def test_an_empty_dataset_fails_before_any_training_work():
    recorder = RecorderCallback()
    trainer = make_trainer(callbacks=[recorder])
    empty = TensorDataset(torch.randn(0, 4), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="train_dataset is empty"):
        trainer.train(empty, num_epochs=1)
    with pytest.raises(ValueError, match="eval_dataset is empty"):
        trainer.train(make_dataset(4), num_epochs=1, eval_dataset=empty)
    with pytest.raises(ValueError, match=r"no batches.*drop_last=True"):
        trainer.train(
            make_dataset(3),
            num_epochs=1,
            per_device_batch_size=4,
            train_dataloader_kwargs={"drop_last": True},
        )
    assert [event for event, _ in recorder.events] == ["on_init_end"]


def test_evaluate_without_a_dataset():
    with pytest.raises(ValueError, match=r"evaluate\(\) needs a dataset"):
        make_trainer().evaluate()


def test_a_scheduler_instance_as_create_scheduler_fn():
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), 0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    trainer = Trainer(model, nn.CrossEntropyLoss(), optimizer, callbacks=())
    with pytest.raises(TypeError, match=r"got StepLR instance.*functools.partial"):
        trainer.train(make_dataset(4), num_epochs=1, create_scheduler_fn=scheduler)
    with pytest.raises(TypeError, match="must be a function"):
        trainer.train(make_dataset(4), num_epochs=1, create_scheduler_fn=3)
    trainer.train(
        make_dataset(4),
        num_epochs=1,
        create_scheduler_fn=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1),
    )


@pytest.mark.parametrize(
    "arguments,message",
    [
        ({"num_epochs": 0}, "num_epochs must be a positive integer"),
        ({"per_device_batch_size": 0}, "per_device_batch_size must be a positive integer"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps must be"),
        ({"max_num_train_steps": -1}, "max_num_train_steps must be"),
        ({"gradient_clip_value": -1.0}, "gradient_clip_value must be a positive number"),
        ({"max_grad_norm": 0.0}, "max_grad_norm must be a positive number"),
    ],
)
def test_bad_numbers(arguments, message):
    kwargs = {"num_epochs": 1, **arguments}
    with pytest.raises(ValueError, match=message):
        make_trainer().train(make_dataset(4), **kwargs)


def test_eval_dataloader_len_placeholder_without_eval_data():
    from trainwright import TrainerPlaceholderValues

    factory = functools.partial(
        torch.optim.lr_scheduler.StepLR, step_size=TrainerPlaceholderValues.EVAL_DATALOADER_LEN
    )
    with pytest.raises(ValueError, match="EVAL_DATALOADER_LEN needs an eval_dataset"):
        make_trainer().train(make_dataset(4), num_epochs=1, create_scheduler_fn=factory)


def test_reserved_checkpoint_keys(tmp_path):
    with pytest.raises(ValueError, match="reserved key 'model_state_dict'"):
        make_trainer().save_checkpoint(tmp_path / "x.pt", {"model_state_dict": 1})


def test_loading_weights_of_another_architecture_lists_the_keys(tmp_path):
    trainer = make_trainer()
    trainer.save_checkpoint(tmp_path / "x.pt")
    other = make_trainer(model=nn.Sequential(nn.Linear(4, 3)))
    with pytest.raises(RuntimeError, match=r"Missing key|Unexpected key"):
        other.load_checkpoint(tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError, match="No checkpoint file"):
        other.load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("name", ["split_batches", "even_batches"])
def test_dataloader_settings_that_accelerate_would_ignore_are_refused(name):
    # Accelerate 1.x takes these Accelerator arguments without using them.
    with pytest.raises(ValueError, match=rf"DataLoaderConfiguration\({name}=False\)"):
        make_trainer(accelerator_kwargs={name: False})


def test_an_overridden_eval_hook_is_only_called_inside_evaluation_epochs():
    # pytorch-accelerated's "metrics in the loop" pattern: counters reset in
    # eval_epoch_start, updated in calculate_eval_batch_loss. The one-batch check before
    # training must not call such a hook outside an evaluation epoch.
    class CountingTrainer(Trainer):
        def eval_epoch_start(self):
            super().eval_epoch_start()
            self.num_seen = 0

        def calculate_eval_batch_loss(self, batch):
            self.num_seen += len(batch[1])  # AttributeError before eval_epoch_start
            return super().calculate_eval_batch_loss(batch)

    torch.manual_seed(0)
    model = make_model()
    trainer = CountingTrainer(
        model,
        torch.nn.CrossEntropyLoss(),
        torch.optim.SGD(model.parameters(), lr=0.1),
        callbacks=(),
    )
    trainer.train(
        make_dataset(8), num_epochs=1, eval_dataset=make_dataset(6), per_device_batch_size=4
    )
    assert trainer.num_seen == 6
