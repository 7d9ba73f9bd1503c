"""pytorch-accelerated's "metrics in a callback" example: a callback updates a metric at
every evaluation step and records it at the end of the evaluation epoch."""

from offline_data import Accuracy, mnist_like
from pytorch_accelerated import Trainer
from pytorch_accelerated.callbacks import TrainerCallback, get_default_callbacks
from torch import nn, optim
from torch.utils.data import random_split


class ClassificationMetricsCallback(TrainerCallback):
    def __init__(self):
        self.metrics = Accuracy()

    def _move_to_device(self, trainer):
        self.metrics.to(trainer.device)

    def on_training_run_start(self, trainer, **kwargs):
        self._move_to_device(trainer)

    def on_evaluation_run_start(self, trainer, **kwargs):
        self._move_to_device(trainer)

    def on_eval_step_end(self, trainer, batch, batch_output, **kwargs):
        preds = batch_output["model_outputs"].argmax(dim=-1)
        self.metrics.update(preds, batch[1])

    def on_eval_epoch_end(self, trainer, **kwargs):
        trainer.run_history.update_metric("accuracy", self.metrics.compute().item())
        self.metrics.reset()


def main():
    dataset = mnist_like(96)
    train_dataset, validation_dataset, test_dataset = random_split(dataset, [64, 16, 16])
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    trainer = Trainer(
        model,
        loss_func=nn.CrossEntropyLoss(),
        optimizer=optimizer,
        callbacks=(*get_default_callbacks(progress_bar=False), ClassificationMetricsCallback()),
    )
    trainer.train(
        train_dataset=train_dataset,
        eval_dataset=validation_dataset,
        num_epochs=2,
        per_device_batch_size=16,
    )
    trainer.evaluate(dataset=test_dataset, per_device_batch_size=8)
    return trainer
