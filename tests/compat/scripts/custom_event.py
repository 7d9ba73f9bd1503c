"""pytorch-accelerated's custom callback event example: the trainer calls an event of its
own, which only the callbacks defining it receive."""

from offline_data import mnist_like
from pytorch_accelerated.callbacks import (
    LogMetricsCallback,
    PrintProgressCallback,
    TerminateOnNaNCallback,
    TrainerCallback,
)
from pytorch_accelerated.trainer import Trainer
from torch import nn, optim
from torch.utils.data import random_split


class VerifyBatchCallback(TrainerCallback):
    def __init__(self):
        self.num_verified = 0

    def verify_train_batch(self, trainer, xb, yb):
        assert xb.shape[0] == trainer.run_config.train_per_device_batch_size
        assert xb.shape[1:] == (1, 28, 28)
        assert yb.shape[0] == trainer.run_config.train_per_device_batch_size
        self.num_verified += 1


class TrainerWithCustomCallbackEvent(Trainer):
    def calculate_train_batch_loss(self, batch) -> dict:
        xb, yb = batch
        self.callback_handler.call_event("verify_train_batch", trainer=self, xb=xb, yb=yb)
        return super().calculate_train_batch_loss(batch)


def main():
    dataset = mnist_like(80)
    train_dataset, validation_dataset = random_split(dataset, [72, 8])
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))
    optimizer = optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    verifier = VerifyBatchCallback()

    trainer = TrainerWithCustomCallbackEvent(
        model,
        loss_func=nn.CrossEntropyLoss(),
        optimizer=optimizer,
        callbacks=(verifier, TerminateOnNaNCallback, PrintProgressCallback, LogMetricsCallback),
    )
    trainer.train(
        train_dataset=train_dataset,
        eval_dataset=validation_dataset,
        train_dataloader_kwargs={"drop_last": True},
        num_epochs=2,
        per_device_batch_size=16,
    )
    return trainer, verifier
