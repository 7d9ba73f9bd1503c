"""pytorch-accelerated's progressive resizing example: one trainer trained several times on
growing image sizes, with OneCycleLR sized by placeholders and the run history kept."""

from collections import namedtuple
from functools import partial

import torch
from offline_data import Accuracy, TinyResNet, rgb_images
from pytorch_accelerated.callbacks import (
    EarlyStoppingCallback,
    PrintMetricsCallback,
    PrintProgressCallback,
    SaveBestModelCallback,
    TerminateOnNaNCallback,
    TrainerCallback,
)
from pytorch_accelerated.trainer import Trainer, TrainerPlaceholderValues
from torch import nn
from torch.optim.lr_scheduler import OneCycleLR


class AccuracyCallback(TrainerCallback):
    def __init__(self, num_classes):
        self.accuracy = Accuracy()

    def on_training_run_start(self, trainer, **kwargs):
        self.accuracy.to(trainer._eval_dataloader.device)

    def on_eval_step_end(self, trainer, batch, batch_output, **kwargs):
        preds = batch_output["model_outputs"].argmax(dim=-1)
        self.accuracy.update(preds, batch[1])

    def on_eval_epoch_end(self, trainer, **kwargs):
        trainer.run_history.update_metric("accuracy", self.accuracy.compute().item())
        self.accuracy.reset()


def main():
    num_classes = 3
    model = TinyResNet(num_classes)
    optimizer = torch.optim.Adam(params=model.parameters(), lr=0.01 / 25)
    trainer = Trainer(
        model,
        loss_func=nn.CrossEntropyLoss(),
        optimizer=optimizer,
        callbacks=(
            TerminateOnNaNCallback,
            AccuracyCallback(num_classes=num_classes),
            PrintProgressCallback,
            PrintMetricsCallback,
            EarlyStoppingCallback(early_stopping_patience=2),
            SaveBestModelCallback(watch_metric="accuracy", greater_is_better=True),
        ),
    )
    EpochConfig = namedtuple(
        "EpochConfig", ["num_epochs", "train_image_size", "eval_image_size", "lr"]
    )
    epoch_configs = [
        EpochConfig(num_epochs=1, train_image_size=4, eval_image_size=4, lr=0.01),
        EpochConfig(num_epochs=2, train_image_size=6, eval_image_size=6, lr=0.001),
    ]
    for e_config in epoch_configs:
        trainer.print(f"Training with image size: {e_config.train_image_size}")
        lr_scheduler = partial(
            OneCycleLR,
            max_lr=e_config.lr,
            epochs=TrainerPlaceholderValues.NUM_EPOCHS,
            steps_per_epoch=TrainerPlaceholderValues.NUM_UPDATE_STEPS_PER_EPOCH,
        )
        trainer.train(
            train_dataset=rgb_images(16, e_config.train_image_size),
            eval_dataset=rgb_images(8, e_config.eval_image_size, seed=1),
            num_epochs=e_config.num_epochs,
            create_scheduler_fn=lr_scheduler,
            per_device_batch_size=8,
            reset_run_history=False,
        )
    return trainer
