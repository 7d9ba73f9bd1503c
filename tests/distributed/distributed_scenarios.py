"""Training runs whose results must not depend on the number of processes.

Each scenario builds a fresh :class:`~trainwright.Trainer`, runs it and returns plain JSON
values. ``worker.py`` runs them under ``torchrun`` (one result per rank); the tests run the
same functions in the test process (one process) as the reference, so both sides share one
definition of every run. Batch sizes are given as totals over the processes where the runs
must see the same data per update.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import itertools
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from accelerate import DataLoaderConfiguration
from accelerate.tracking import GeneralTracker
from helpers.accumulation_cases import BatchSizeAsNumItemsTrainer, token_weighted_run
from torch import nn
from torch.utils.data import TensorDataset, default_collate

from trainwright import StopTrainingError, Trainer, TrainerCallback, TrainerPlaceholderValues
from trainwright.callbacks import (
    CallbackSetupError,
    ConvertSyncBatchNormCallback,
    EarlyStoppingCallback,
    ExperimentTrackerCallback,
    SaveTrainingStateCallback,
    TerminateOnNaNCallback,
)
from trainwright.data import is_read_in_memory

NO_WORKERS = {"num_workers": 0, "persistent_workers": False}
IN_ORDER = {"shuffle": False, **NO_WORKERS}


def make_dataset(num_samples: int, seed: int = 0) -> TensorDataset:
    """``num_samples`` pairs (4 features, a class of 3); sample ``i`` has ``inputs[i, 0] == i``
    so that gathered samples can be identified."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(num_samples, 4, generator=generator)
    inputs[:, 0] = torch.arange(num_samples, dtype=inputs.dtype)
    targets = torch.randint(0, 3, (num_samples,), generator=generator)
    return TensorDataset(inputs, targets)


def make_trainer(
    lr: float,
    callbacks: tuple[TrainerCallback, ...] = (),
    trainer_class: type = Trainer,
    **trainer_kwargs: Any,
) -> Trainer:
    """A small MLP classifier with SGD, identically initialised on every process."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return trainer_class(
        model, nn.CrossEntropyLoss(), optimizer, callbacks=callbacks, **trainer_kwargs
    )


def _per_process(total_batch_size: int, trainer: Trainer) -> int:
    num_processes = trainer.accelerator.num_processes
    assert total_batch_size % num_processes == 0
    return total_batch_size // num_processes


def _metrics(trainer: Trainer, *names: str) -> dict[str, list[float]]:
    return {name: trainer.run_history.get_metric_values(name) for name in names}


class UpdateCounter(TrainerCallback):
    """Counts optimizer updates and records the learning rate used by each one."""

    def __init__(self) -> None:
        self.num_updates = 0
        self.learning_rates: list[float] = []

    def on_before_optimizer_step(self, trainer: Trainer, **kwargs: Any) -> None:
        self.learning_rates.append(trainer.optimizer.param_groups[0]["lr"])

    def on_after_optimizer_step(self, trainer: Trainer, **kwargs: Any) -> None:
        self.num_updates += 1


def equivalence(gradient_accumulation_steps: int) -> dict[str, Any]:
    """24 samples, 6 per update step over all processes, 2 epochs, uneven eval tails.

    The training data is not shuffled: Accelerate draws the permutation from a generator of
    its own when there are several processes, so shuffled orders differ across process
    counts.
    """
    counter = UpdateCounter()
    trainer = make_trainer(lr=0.2, callbacks=(counter,))
    eval_dataset = make_dataset(10, seed=1)
    trainer.train(
        make_dataset(24),
        num_epochs=2,
        eval_dataset=eval_dataset,
        per_device_batch_size=_per_process(6, trainer),
        eval_per_device_batch_size=3,
        gradient_accumulation_steps=gradient_accumulation_steps,
        train_dataloader_kwargs=IN_ORDER,
        eval_dataloader_kwargs=NO_WORKERS,
    )
    trainer.evaluate(eval_dataset, per_device_batch_size=3, dataloader_kwargs=NO_WORKERS)
    weights = torch.cat([p.detach().flatten() for p in trainer.get_model().parameters()])
    return {
        "weights": weights.tolist(),
        "num_updates": counter.num_updates,
        **_metrics(trainer, "train_loss_epoch", "eval_loss_epoch", "evaluation_loss"),
    }


class GatherForMetrics(TrainerCallback):
    """Gathers a nested structure of every evaluation batch with ``gather_for_metrics``."""

    def __init__(self) -> None:
        self.gathered: list[Any] = []

    def on_evaluation_run_start(self, trainer: Trainer, **kwargs: Any) -> None:
        self.gathered = []

    def on_eval_step_end(self, trainer: Trainer, batch: Any, **kwargs: Any) -> None:
        inputs, targets = batch
        nested = {"sample_ids": inputs[:, 0], "pair": (targets, {"doubled": 2 * targets})}
        self.gathered.append(trainer.gather_for_metrics(nested))

    def collected(self) -> dict[str, list[int]]:
        def concat(pick: Callable[[Any], torch.Tensor]) -> list[int]:
            return torch.cat([pick(item) for item in self.gathered]).long().tolist()

        return {
            "sample_ids": concat(lambda item: item["sample_ids"]),
            "targets": concat(lambda item: item["pair"][0]),
            "doubled": concat(lambda item: item["pair"][1]["doubled"]),
        }


def loss_metrics_with_tails() -> dict[str, Any]:
    """With ``lr=0`` the weights never change, so every loss metric is the plain mean loss
    over its dataset, whatever the batching: the tails decide whether it is exact."""
    gatherer = GatherForMetrics()
    trainer = make_trainer(lr=0.0, callbacks=(gatherer,))
    # 20 samples, batch 4: with 2 processes the 2nd process's last batch repeats 4 samples.
    trainer.train(
        make_dataset(20),
        num_epochs=1,
        eval_dataset=make_dataset(10, seed=1),
        per_device_batch_size=4,
        eval_per_device_batch_size=3,
        train_dataloader_kwargs=IN_ORDER,
        eval_dataloader_kwargs=NO_WORKERS,
    )
    results: dict[str, Any] = _metrics(trainer, "train_loss_epoch", "eval_loss_epoch")
    # 10 samples, batch 3: the last batch of every process is padded (to 12 samples); 7
    # samples: one process gets a batch of repeats only; 2 samples: fewer than a batch.
    for num_samples in (10, 7, 2):
        dataset = make_dataset(num_samples, seed=num_samples)
        trainer.evaluate(dataset, per_device_batch_size=3, dataloader_kwargs=NO_WORKERS)
        results[f"evaluation_loss_{num_samples}"] = trainer.run_history.get_latest_metric(
            "evaluation_loss"
        )
        results[f"gathered_{num_samples}"] = gatherer.collected()
    return results


def update_counting(gradient_accumulation_steps: int) -> dict[str, Any]:
    """``max_num_train_steps=12`` over 20 samples, 2 per process per batch, with a OneCycleLR
    schedule sized by the placeholder (it raises if stepped past its total)."""
    counter = UpdateCounter()
    trainer = make_trainer(lr=0.1, callbacks=(counter,))
    trainer.train(
        make_dataset(20),
        num_epochs=1,
        per_device_batch_size=2,
        max_num_train_steps=12,
        gradient_accumulation_steps=gradient_accumulation_steps,
        create_scheduler_fn=functools.partial(
            torch.optim.lr_scheduler.OneCycleLR,
            max_lr=0.1,
            total_steps=TrainerPlaceholderValues.NUM_UPDATE_STEPS,
        ),
        train_dataloader_kwargs=IN_ORDER,
    )
    run_config = trainer.run_config
    return {
        "num_updates": counter.num_updates,
        "learning_rates": counter.learning_rates,
        "scheduler_steps": trainer.scheduler.last_epoch,
        "scheduler_total_steps": trainer.scheduler.total_steps,
        "progress_updates": trainer.progress.num_update_steps,
        "num_epochs_run": trainer.run_history.current_epoch - 1,  # it counts from 1
        **{
            name: run_config[name]
            for name in (
                "num_epochs",
                "num_update_steps_per_epoch",
                "num_update_steps",
                "num_processes",
                "train_total_batch_size",
                "train_dataloader_len",
            )
        },
    }


class StopOnLastProcess(TrainerCallback):
    """Raises ``StopTrainingError`` in ``event`` at batch ``step`` (``None`` for epoch-level
    events) of epoch ``epoch``, on the last process only, and records how far it got."""

    def __init__(self, event: str, step: int | None, epoch: int = 0) -> None:
        self.event, self.step, self.epoch = event, step, epoch
        self.steps_ended: list[tuple[int, int]] = []
        self.stop_message: str | None = None
        self.run_ended = False

    def _maybe_stop(self, trainer: Trainer, event: str, step: int | None) -> None:
        accelerator = trainer.accelerator
        is_last_process = accelerator.process_index == accelerator.num_processes - 1
        moment = (event, step, trainer.progress.epoch)
        if is_last_process and moment == (self.event, self.step, self.epoch):
            raise StopTrainingError(f"stop requested in {event}")

    def on_train_step_start(self, trainer: Trainer, step: int, **kwargs: Any) -> None:
        self._maybe_stop(trainer, "on_train_step_start", step)

    def on_train_step_end(self, trainer: Trainer, step: int, **kwargs: Any) -> None:
        self.steps_ended.append((trainer.progress.epoch, step))
        self._maybe_stop(trainer, "on_train_step_end", step)

    def on_train_epoch_end(self, trainer: Trainer, **kwargs: Any) -> None:
        self._maybe_stop(trainer, "on_train_epoch_end", None)

    def on_eval_step_end(self, trainer: Trainer, step: int, **kwargs: Any) -> None:
        self._maybe_stop(trainer, "on_eval_step_end", step)

    def on_stop_training_error(
        self, trainer: Trainer, error: StopTrainingError, **kwargs: Any
    ) -> None:
        self.stop_message = str(error)

    def on_training_run_end(self, trainer: Trainer, **kwargs: Any) -> None:
        self.run_ended = True


def stop_on_one_process(
    event: str, step: int | None, epoch: int = 0, vote_interval: int | None = None
) -> dict[str, Any]:
    """3 epochs of 5 batches per process; the last process asks to stop in ``event``; the
    processes vote every ``vote_interval`` steps (None: the Trainer's default)."""
    stopper = StopOnLastProcess(event, step, epoch)
    trainer = make_trainer(lr=0.1, callbacks=(stopper,))
    if vote_interval is not None:
        trainer.vote_interval = vote_interval
    trainer.train(
        make_dataset(20),
        num_epochs=3,
        eval_dataset=make_dataset(6, seed=1),
        per_device_batch_size=_per_process(4, trainer),
        train_dataloader_kwargs=IN_ORDER,
        eval_dataloader_kwargs=NO_WORKERS,
    )
    weights = torch.cat([p.detach().flatten() for p in trainer.get_model().parameters()])
    return {
        "last_step_ended": list(stopper.steps_ended[-1]),
        "num_steps_ended": len(stopper.steps_ended),
        "stop_message": stopper.stop_message,
        "run_ended": stopper.run_ended,
        "epoch_at_stop": trainer.progress.epoch,
        "num_updates": trainer.progress.num_update_steps,
        "weights_sum": weights.sum().item(),
    }


class FailOnLastProcess(TrainerCallback):
    """Raises an ordinary error at step 3 on the last process only."""

    def on_train_step_end(self, trainer: Trainer, step: int, **kwargs: Any) -> None:
        accelerator = trainer.accelerator
        if accelerator.process_index == accelerator.num_processes - 1 and step == 3:
            raise RuntimeError("deliberate failure on the last process")


def error_on_one_process() -> dict[str, Any]:
    """Trains 3 epochs; the last process fails at step 3 of the first."""
    trainer = make_trainer(lr=0.1, callbacks=(FailOnLastProcess(),))
    trainer.train(
        make_dataset(20), num_epochs=3, per_device_batch_size=2, train_dataloader_kwargs=IN_ORDER
    )
    return {"finished": True}


class NanLossOnLastProcessTrainer(Trainer):
    """Its training loss turns NaN at step 2 of the first epoch, on the last process only
    (the NaN gradients then reach every process through the all-reduce)."""

    def calculate_train_batch_loss(self, batch: Any) -> dict[str, Any]:
        batch_output = super().calculate_train_batch_loss(batch)
        accelerator = self.accelerator
        is_last_process = accelerator.process_index == accelerator.num_processes - 1
        if is_last_process and (self.progress.epoch, self.progress.step) == (0, 2):
            batch_output["loss"] = batch_output["loss"] * math.nan
        return batch_output


class RecordStopError(TrainerCallback):
    """Keeps the error that stopped the run."""

    error: StopTrainingError | None = None

    def on_stop_training_error(
        self, trainer: Trainer, error: StopTrainingError, **kwargs: Any
    ) -> None:
        self.error = error


def nan_loss_on_one_process(
    check_every_n_steps: int, vote_interval: int | None = None
) -> dict[str, Any]:
    """TerminateOnNaNCallback sees the NaN on one process a step before the other (5 steps
    per epoch and process); the processes vote every ``vote_interval`` steps (None: the
    default)."""
    stopper = StopOnLastProcess("never", None)  # only records the steps and the stop
    recorder = RecordStopError()
    trainer = make_trainer(
        lr=0.1,
        callbacks=(TerminateOnNaNCallback(check_every_n_steps), stopper, recorder),
        trainer_class=NanLossOnLastProcessTrainer,
    )
    if vote_interval is not None:
        trainer.vote_interval = vote_interval
    trainer.train(
        make_dataset(20), num_epochs=2, per_device_batch_size=2, train_dataloader_kwargs=IN_ORDER
    )
    history = trainer.run_history
    return {
        "last_step_ended": list(stopper.steps_ended[-1]),
        "stop_message": stopper.stop_message,
        "error_fields": [recorder.error.epoch, recorder.error.step, str(recorder.error.loss)],
        "recorded": {
            name: [str(value) for value in history.get_metric_values(name)]
            for name in sorted(history.get_metric_names())
        },
        "num_updates": trainer.progress.num_update_steps,
    }


class ControlOnLastProcess(TrainerCallback):
    """On the last process only: asks for an evaluation and a save at epoch 0 step 1, to skip
    an update during step 2, and to end epoch 1 at its step 1. Records the steps, the
    skipped update, whether it left the weights and optimizer state untouched, and the first
    step that started after the evaluation and the save."""

    may_skip_updates = True

    def __init__(self, save_dir: Path) -> None:
        self.save_dir = save_dir
        self.first_step_after_requests: list[int] | None = None
        self.steps_ended: list[list[int]] = []
        self.skipped_at: list[list[int]] = []
        self.is_state_unchanged_by_skips = True
        self._before_update: list[torch.Tensor] = []

    def _is_last_process(self, trainer: Trainer) -> bool:
        accelerator = trainer.accelerator
        return accelerator.process_index == accelerator.num_processes - 1

    def _state(self, trainer: Trainer) -> list[torch.Tensor]:
        model = trainer.get_model()
        momenta = [trainer.optimizer.state[p].get("momentum_buffer") for p in model.parameters()]
        tensors = [p.detach() for p in model.parameters()] + [m for m in momenta if m is not None]
        return [tensor.clone() for tensor in tensors]

    def on_train_step_start(self, trainer: Trainer, step: int, **kwargs: Any) -> None:
        history = trainer.run_history
        is_evaluated = "step_eval_loss" in history.get_metric_names()
        if self.first_step_after_requests is None and is_evaluated:
            assert len(list(self.save_dir.glob("state-*"))) == 1  # saved by then as well
            self.first_step_after_requests = [trainer.progress.epoch, step]

    def on_after_backward(self, trainer: Trainer, step: int, **kwargs: Any) -> None:
        if self._is_last_process(trainer) and (trainer.progress.epoch, step) == (0, 2):
            trainer.request_skip_update("asked at step 2")

    def on_before_optimizer_step(self, trainer: Trainer, **kwargs: Any) -> None:
        self._before_update = self._state(trainer)

    def on_train_step_end(self, trainer: Trainer, step: int, **kwargs: Any) -> None:
        epoch = trainer.progress.epoch
        self.steps_ended.append([epoch, step])
        if trainer.progress.num_skipped_updates > len(self.skipped_at):
            self.skipped_at.append([epoch, step])
            after = self._state(trainer)
            self.is_state_unchanged_by_skips &= len(after) == len(self._before_update) and all(
                torch.equal(a, b) for a, b in zip(after, self._before_update)
            )
        if self._is_last_process(trainer) and (epoch, step) == (0, 1):
            trainer.request_evaluation()
            trainer.request_save()
        if self._is_last_process(trainer) and (epoch, step) == (1, 1):
            trainer.request_end_epoch()


def control_on_one_process(
    gradient_accumulation_steps: int, save_dir: str, vote_interval: int | None = None
) -> dict[str, Any]:
    """24 samples, 4 per batch over all processes (6 batches an epoch), 2 epochs, SGD with
    momentum and a StepLR scheduler; :class:`ControlOnLastProcess` evaluates, saves, skips
    and ends epochs; the processes vote every ``vote_interval`` steps (None: the default)."""
    control = ControlOnLastProcess(Path(save_dir))
    saver = SaveTrainingStateCallback(save_dir, save_at_end=False)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trainer = Trainer(model, nn.CrossEntropyLoss(), optimizer, callbacks=(control, saver))
    if vote_interval is not None:
        trainer.vote_interval = vote_interval
    trainer.train(
        make_dataset(24),
        num_epochs=2,
        eval_dataset=make_dataset(6, seed=1),
        per_device_batch_size=_per_process(4, trainer),
        gradient_accumulation_steps=gradient_accumulation_steps,
        create_scheduler_fn=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1),
        train_dataloader_kwargs=IN_ORDER,
    )
    weights = torch.cat([p.detach().flatten() for p in trainer.get_model().parameters()])
    return {
        "steps_ended": control.steps_ended,
        "first_step_after_requests": control.first_step_after_requests,
        "num_evaluations": len(trainer.run_history.get_metric_values("step_eval_loss")),
        "skipped_at": control.skipped_at,
        "is_state_unchanged_by_skips": control.is_state_unchanged_by_skips,
        "num_skipped_updates": trainer.progress.num_skipped_updates,
        "num_updates": trainer.progress.num_update_steps,
        "scheduler_steps": trainer.scheduler.last_epoch,
        "weights": weights.tolist(),
    }


def process_helpers(shared_dir: str) -> dict[str, Any]:
    """What each process printed and ran with the trainer's process helpers, and whether the
    other processes waited for the main one in ``main_process_first``."""
    trainer = make_trainer(lr=0.1)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        trainer.print("print")
        trainer.print_once("print_once")
    ran = trainer.run_on_main_process(lambda *args, **kwargs: [*args, kwargs], 1, key="value")
    ran_locally = trainer.run_on_local_main_process(lambda: "ran locally")
    saw_main_first = {}
    for name in ("main_process_first", "local_main_process_first"):
        marker = Path(shared_dir) / name
        with getattr(trainer, name)():
            saw_main_first[name] = marker.exists()  # written by the main process's block
            if trainer.accelerator.is_main_process:
                time.sleep(0.3)  # a process that did not wait would enter meanwhile
                marker.write_text("main process was here")
    return {
        "printed": output.getvalue().splitlines(),
        "ran": ran,
        "ran_locally": ran_locally,
        "saw_main_first": saw_main_first,
    }


def pytorch_accelerated_utils() -> dict[str, Any]:
    """pytorch-accelerated's padded gather and process decorators: process ``r`` gathers
    ``r + 1`` rows of value ``r``, padded with -1 to the longest; the decorated functions
    return the process index where they run."""
    from trainwright.utils import local_process_zero_only, remove_padding, world_process_zero_only

    trainer = make_trainer(lr=0.1)
    rank = trainer.accelerator.process_index
    rows = torch.full((rank + 1, 2), float(rank))
    gathered = trainer.gather(rows, padding_value=-1)

    @world_process_zero_only
    def on_world_zero() -> int:
        return rank

    @local_process_zero_only
    def on_local_zero() -> int:
        return rank

    return {
        "gathered": gathered.tolist(),
        "without_padding": remove_padding(gathered, -1).tolist(),
        "world_zero_only": on_world_zero(),
        "local_zero_only": on_local_zero(),
    }


def sync_batchnorm_on_cpu() -> dict[str, Any]:
    """ConvertSyncBatchNormCallback in a CPU multi-process run: the error it raises."""
    try:
        make_trainer(lr=0.1, callbacks=(ConvertSyncBatchNormCallback(),))
    except ValueError as error:
        return {"error": str(error)}
    return {"error": None}


def tiny_datasets() -> dict[str, Any]:
    """A world larger than the data: 1 training sample and 3 evaluation samples, with an
    evaluation batch (8 per process) larger than the whole evaluation set."""
    gatherer = GatherForMetrics()
    trainer = make_trainer(lr=0.2, callbacks=(gatherer,))
    trainer.train(
        make_dataset(1),
        num_epochs=2,
        eval_dataset=make_dataset(3, seed=1),
        per_device_batch_size=4,
        eval_per_device_batch_size=8,
        train_dataloader_kwargs=IN_ORDER,
        eval_dataloader_kwargs=NO_WORKERS,
    )
    weights = torch.cat([p.detach().flatten() for p in trainer.get_model().parameters()])
    return {
        "weights": weights.tolist(),
        "num_updates": trainer.progress.num_update_steps,
        "gathered": gatherer.collected(),
        **_metrics(trainer, "train_loss_epoch", "eval_loss_epoch"),
    }


def indivisible_split_batch() -> dict[str, Any]:
    """``split_batches=True`` with a batch of 3 for all processes together: the error, and
    ``run_config``'s batch sizes with a batch of 4 (2 per process)."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    trainer = Trainer(
        model,
        nn.CrossEntropyLoss(),
        torch.optim.SGD(model.parameters(), lr=0.1),
        callbacks=(),
        accelerator_kwargs={"dataloader_config": DataLoaderConfiguration(split_batches=True)},
    )
    error = None
    try:
        trainer.train(make_dataset(12), num_epochs=1, per_device_batch_size=3)
    except ValueError as exception:
        error = str(exception)
    trainer.train(make_dataset(12), num_epochs=1, per_device_batch_size=4)
    run_config = trainer.run_config
    return {
        "error": error,
        "train_per_device_batch_size": run_config.train_per_device_batch_size,
        "train_total_batch_size": run_config.train_total_batch_size,
        "train_dataloader_len": run_config.train_dataloader_len,
    }


class DictOutputs(nn.Module):
    """A linear layer returning a dict of two per-sample outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.linear(inputs)
        return {"logits": logits, "argmax": logits.argmax(-1)}


class ModelOutputs(DictOutputs):
    """The same layer returning a Hugging Face ``ModelOutput``."""

    def forward(self, inputs: torch.Tensor) -> Any:
        from transformers.modeling_outputs import SequenceClassifierOutput

        return SequenceClassifierOutput(logits=self.linear(inputs))


def predictions(num_samples: int) -> dict[str, Any]:
    """``Trainer.predict`` over ``num_samples`` samples (batches of 2 per process: uneven
    shards for odd counts), with tensor and dict outputs, and the model applied to the whole
    dataset at once as the expected result."""
    torch.manual_seed(0)
    model = DictOutputs()
    trainer = Trainer(model, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.1))
    dataset = make_dataset(num_samples)
    outputs = trainer.predict(dataset, per_device_batch_size=2, dataloader_kwargs=NO_WORKERS)
    inputs_only = trainer.predict(
        TensorDataset(dataset.tensors[0]), per_device_batch_size=2, dataloader_kwargs=NO_WORKERS
    )
    hf_model = ModelOutputs()
    hf_model.load_state_dict(model.state_dict())
    hf_trainer = Trainer(hf_model, nn.MSELoss(), torch.optim.SGD(hf_model.parameters(), lr=0.1))
    hf_outputs = hf_trainer.predict(dataset, per_device_batch_size=2, dataloader_kwargs=NO_WORKERS)
    with torch.no_grad():
        expected = model(dataset.tensors[0])
    return {
        "model_output_type": type(hf_outputs).__name__,
        "model_output_logits": hf_outputs.logits.tolist(),
        "logits": outputs["logits"].tolist(),
        "argmax": outputs["argmax"].tolist(),
        "inputs_only_logits": inputs_only["logits"].tolist(),
        "expected_logits": expected["logits"].tolist(),
        "expected_argmax": expected["argmax"].tolist(),
    }


def learning_rate_finder() -> dict[str, Any]:
    """``find_learning_rate`` on every process: one suggestion, and weights as before."""
    trainer = make_trainer(lr=0.1)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    result = trainer.find_learning_rate(
        make_dataset(64), per_device_batch_size=4, num_steps=40, dataloader_kwargs=NO_WORKERS
    )
    return {
        "suggestion": result.suggestion,
        "losses": result.losses,
        "unchanged": all(
            torch.equal(a, b) for a, b in zip(before, trainer.get_model().parameters())
        ),
    }


class _UnreachableTracker(GeneralTracker):
    """A tracker whose server cannot be reached: ``start`` raises (on the main process, the
    only one that starts trackers)."""

    name = "unreachable"
    requires_logging_directory = False
    tracker = None

    def start(self) -> None:
        raise ConnectionError("tracking server unreachable")


def tracker_that_cannot_start() -> dict[str, Any]:
    """A tracker that cannot start on the main process: the error every process raises, and
    the metrics recorded (none: it fails before training)."""
    trainer = make_trainer(lr=0.1, callbacks=(ExperimentTrackerCallback(_UnreachableTracker()),))
    error = None
    try:
        trainer.train(make_dataset(8), num_epochs=1, per_device_batch_size=2)
    except CallbackSetupError as caught:
        error = str(caught)
    return {"error": error, "metrics": sorted(trainer.run_history.get_metric_names())}


def early_stop_counts_the_epoch() -> dict[str, Any]:
    """lr 0: the evaluation loss never improves, so early stopping ends epoch 2 (a stop
    agreed after ``on_training_run_epoch_end``); the epoch counters afterwards."""
    trainer = make_trainer(lr=0.0, callbacks=(EarlyStoppingCallback(early_stopping_patience=1),))
    trainer.train(
        make_dataset(8), num_epochs=5, eval_dataset=make_dataset(4, seed=1), per_device_batch_size=2
    )
    return {
        "current_epoch": trainer.run_history.current_epoch,
        "epoch": trainer.progress.epoch,
        "num_train_losses": len(trainer.run_history.get_metric_values("train_loss_epoch")),
    }


class SampleIds(TrainerCallback):
    """Records the sample ids (``inputs[:, 0]``, see `make_dataset`) of every training batch."""

    def __init__(self) -> None:
        self.batches: list[list[float]] = []

    def on_train_step_start(self, trainer: Trainer, batch: Any, **kwargs: Any) -> None:
        self.batches.append(batch[0][:, 0].tolist())


def _fetching_dataset_type(trainer: Trainer) -> str:
    """The class of the dataset the training loader fetches from (inside the seeded wrapper
    that trainwright.data puts around a map-style dataset)."""
    dataset = trainer.train_dataloader.dataset
    return type(getattr(dataset, "dataset", dataset)).__name__


def batched_fetch(num_workers: int = 0) -> dict[str, Any]:
    """Shuffled training with batched fetching (the default for a ``TensorDataset``: without
    workers, read straight from the tensors) and with the sample-by-sample path
    (``collate_fn=default_collate``), from the same seed: the batches each saw, the final
    weights, the type of the loader's dataset and whether it was read in memory."""
    runs = {}
    for name, collate_fn in (("batched", None), ("per_sample", default_collate)):
        sample_ids = SampleIds()
        trainer = make_trainer(lr=0.2, callbacks=(sample_ids,))
        trainer.train(
            make_dataset(30),
            num_epochs=2,
            per_device_batch_size=4,
            collate_fn=collate_fn,
            train_dataloader_kwargs={
                "num_workers": num_workers,
                "persistent_workers": num_workers > 0,
            },
        )
        weights = torch.cat([p.detach().flatten() for p in trainer.get_model().parameters()])
        runs[name] = {
            "batches": sample_ids.batches,
            "weights": weights.tolist(),
            "dataset_type": _fetching_dataset_type(trainer),
            "read_in_memory": is_read_in_memory(trainer.train_dataloader),
        }
    return runs


#: The ``torch.distributed`` collectives a training run may call from Python (DDP's gradient
#: all-reduce runs in its C++ reducer, and is not among them).
COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_object",
    "broadcast",
    "broadcast_object_list",
    "barrier",
    "gather",
    "reduce_scatter",
)


@contextlib.contextmanager
def counting_collectives() -> Iterator[list[int]]:
    """Counts the calls of :data:`COLLECTIVES` made through ``torch.distributed`` in the block
    (the one-element list holds the count so far)."""
    count = [0]
    originals = {name: getattr(dist, name) for name in COLLECTIVES}

    def counted(function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            count[0] += 1
            return function(*args, **kwargs)

        return wrapper

    for name, function in originals.items():
        setattr(dist, name, counted(function))
    try:
        yield count
    finally:
        for name, function in originals.items():
            setattr(dist, name, function)


class CollectivesPerStep(TrainerCallback):
    """Records, at the end of every training step, how many collectives were called so far."""

    def __init__(self, count: list[int]) -> None:
        self.count = count
        self.at_step_end: list[int] = []

    def on_train_step_end(self, trainer: Trainer, **kwargs: Any) -> None:
        self.at_step_end.append(self.count[0])


def _steps_collectives(counter: CollectivesPerStep) -> list[int]:
    steps = counter.at_step_end
    return [after - before for before, after in itertools.pairwise(steps)]


def collectives_per_step(
    vote_interval: int | None = None, returns_num_items: bool = False, num_steps: int = 16
) -> dict[str, Any]:
    """One epoch of ``num_steps`` steps per process, without callbacks but the counter; the
    collectives called between the end of each step and the end of the next (the first
    entry: the second step's), and in the whole ``train()``. ``returns_num_items``: the hook
    returns each batch's size as its ``num_items``. ``vote_interval`` None: the default."""
    trainer_class = BatchSizeAsNumItemsTrainer if returns_num_items else Trainer
    with counting_collectives() as count:
        counter = CollectivesPerStep(count)
        trainer = make_trainer(lr=0.1, callbacks=(counter,), trainer_class=trainer_class)
        if vote_interval is not None:
            trainer.vote_interval = vote_interval
        trainer.train(make_dataset(4 * num_steps), num_epochs=1, per_device_batch_size=2)
        total = count[0]
    return {
        "per_step": _steps_collectives(counter),
        "num_steps": len(counter.at_step_end),
        "in_train": total,
    }


def collective_right_before_exit() -> dict[str, Any]:
    """A short run, then an all-reduce of a tensor made in Python as the script's very last
    act: an ``atexit`` handler registered after the trainer's, so it runs first.

    The all-reduce is left unwaited, so that gloo's thread is sure to be the one freeing it
    when it finishes, which needs the GIL: the situation a script's last blocking collective
    (or the trainer's own last ones) meets by chance. Python's switch interval is raised to
    1 s, so that the thread gets the GIL only when this one lets it go: an exit that does
    not wait for it aborts ("terminate called without an active exception").
    """
    sys.setswitchinterval(1.0)
    trainer = make_trainer(lr=0.1)
    trainer.train(make_dataset(8), num_epochs=1, per_device_batch_size=2)
    atexit.register(_all_reduce_left_unwaited)
    return {"num_updates": trainer.progress.num_update_steps}


def _all_reduce_left_unwaited() -> None:
    dist.barrier()  # both processes are exiting, so the all-reduce finishes at once
    dist.all_reduce(torch.ones(1), async_op=True)


class DropsASampleTrainer(Trainer):
    """Reports one sample fewer than each batch holds, as a ``collate_fn`` that drops
    samples would (without returning ``num_items``)."""

    def calculate_train_batch_loss(self, batch: Any) -> dict[str, Any]:
        output = super().calculate_train_batch_loss(batch)
        return {**output, "batch_size": output["batch_size"] - 1}


def batch_size_unlike_the_loaders() -> dict[str, Any]:
    """The error of a run whose hook reports batch sizes other than the default loader's."""
    trainer = make_trainer(lr=0.1, trainer_class=DropsASampleTrainer)
    try:
        trainer.train(make_dataset(16), num_epochs=1, per_device_batch_size=4)
    except ValueError as error:
        return {"error": str(error), "num_updates": trainer.progress.num_update_steps}
    return {"error": None}


def padded_dataset(num_samples: int, multiple: int) -> torch.utils.data.Subset:
    """``make_dataset(num_samples)`` followed by its first samples again, up to a multiple of
    ``multiple``: the samples that unshuffled batches of ``multiple // P`` samples on each
    of ``P`` processes cover, as Accelerate completes the last ones (``even_batches``)."""
    length = -(-num_samples // multiple) * multiple
    indices = [index % num_samples for index in range(length)]
    return torch.utils.data.Subset(make_dataset(num_samples), indices)


def padded_last_batch(num_processes: int, split_batches: bool = False) -> dict[str, Any]:
    """Default loader, 25 samples, 2 per batch and process, accumulation 2: with 2 processes
    the last batch is completed by Accelerate, and each process holds as many items in every
    window. One process trains on the samples the 2 processes see, 4 per batch.
    ``split_batches``: batches of 4 split between the processes (the same samples)."""
    with counting_collectives() as count:
        counter = CollectivesPerStep(count)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        config = DataLoaderConfiguration(split_batches=split_batches)
        trainer = Trainer(
            model,
            nn.CrossEntropyLoss(),
            torch.optim.SGD(model.parameters(), lr=0.2),
            callbacks=(counter,),
            accelerator_kwargs={"dataloader_config": config},
        )
        is_reference = trainer.accelerator.num_processes == 1
        trainer.train(
            padded_dataset(25, 2 * num_processes) if is_reference else make_dataset(25),
            num_epochs=2,
            per_device_batch_size=2 * num_processes if is_reference or split_batches else 2,
            gradient_accumulation_steps=2,
            train_dataloader_kwargs=IN_ORDER,
        )
    return {
        "weights": torch.cat(
            [p.detach().flatten() for p in trainer.get_model().parameters()]
        ).tolist(),
        "per_step": _steps_collectives(counter),
    }


class AlternatingBatches(torch.utils.data.Sampler[list[int]]):
    """Consecutive batches of ``sizes[0]``, ``sizes[1]``, ... samples in order, cycling through
    ``sizes`` (each of 2 processes gets every other batch: its own size)."""

    def __init__(self, num_samples: int, sizes: tuple[int, ...]) -> None:
        self.num_samples, self.sizes = num_samples, sizes

    def __iter__(self) -> Iterator[list[int]]:
        start = 0
        for size in itertools.cycle(self.sizes):
            if start >= self.num_samples:
                return
            yield list(range(start, min(start + size, self.num_samples)))
            start += size

    def __len__(self) -> int:
        return sum(1 for _ in self)


def uneven_batch_sampler() -> dict[str, Any]:
    """24 samples in batches of 3 and 1 alternately (2 processes: 3 on one, 1 on the other),
    accumulation 2: 8 samples per update in all. One process trains on batches of 4.

    ``even_batches=False``: the 12 batches split evenly anyway, and Accelerate before 1.15
    refuses a batch sampler without a ``batch_size`` with ``even_batches`` on."""
    with counting_collectives() as count:
        counter = CollectivesPerStep(count)
        config = DataLoaderConfiguration(even_batches=False)
        trainer = make_trainer(
            lr=0.2, callbacks=(counter,), accelerator_kwargs={"dataloader_config": config}
        )
        is_reference = trainer.accelerator.num_processes == 1
        sampler = AlternatingBatches(24, (4,) if is_reference else (3, 1))
        trainer.train(
            make_dataset(24),
            num_epochs=1,
            gradient_accumulation_steps=2,
            train_dataloader_kwargs={"batch_sampler": sampler, **NO_WORKERS},
        )
    return {
        "weights": torch.cat(
            [p.detach().flatten() for p in trainer.get_model().parameters()]
        ).tolist(),
        "per_step": _steps_collectives(counter),
    }


#: Every scenario the worker can run, by name.
SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {
    "token_weighted_run": token_weighted_run,
    "equivalence": equivalence,
    "loss_metrics_with_tails": loss_metrics_with_tails,
    "update_counting": update_counting,
    "stop_on_one_process": stop_on_one_process,
    "error_on_one_process": error_on_one_process,
    "nan_loss_on_one_process": nan_loss_on_one_process,
    "control_on_one_process": control_on_one_process,
    "process_helpers": process_helpers,
    "pytorch_accelerated_utils": pytorch_accelerated_utils,
    "sync_batchnorm_on_cpu": sync_batchnorm_on_cpu,
    "tiny_datasets": tiny_datasets,
    "indivisible_split_batch": indivisible_split_batch,
    "predictions": predictions,
    "learning_rate_finder": learning_rate_finder,
    "tracker_that_cannot_start": tracker_that_cannot_start,
    "early_stop_counts_the_epoch": early_stop_counts_the_epoch,
    "batched_fetch": batched_fetch,
    "collectives_per_step": collectives_per_step,
    "padded_last_batch": padded_last_batch,
    "uneven_batch_sampler": uneven_batch_sampler,
    "batch_size_unlike_the_loaders": batch_size_unlike_the_loaders,
    "collective_right_before_exit": collective_right_before_exit,
}
