"""pytorch-accelerated's pets fine-tuning example: a pretrained-style CNN with a new head,
frozen with ModelFreezer, trained, then unfrozen group by group into new optimizer param
groups at a lower LR, with a create_scheduler(self) override for OneCycleLR. A tiny CNN and
generated images stand in for timm's resnet50d and the Oxford-IIIT pets images."""

from functools import partial

import torch
from offline_data import DictImages, TinyResNet, rgb_images
from pytorch_accelerated import notebook_launcher
from pytorch_accelerated.callbacks import (
    LogMetricsCallback,
    PrintProgressCallback,
    TerminateOnNaNCallback,
)
from pytorch_accelerated.finetuning import ModelFreezer
from pytorch_accelerated.trainer import Trainer
from torch import nn
from torch.optim.lr_scheduler import OneCycleLR


class PetsTrainer(Trainer):
    def training_run_start(self):
        config = self._accelerator.unwrap_model(self.model).default_cfg
        self.mean = torch.tensor(config["mean"])[None, :, None, None].to(self._accelerator.device)
        self.std = torch.tensor(config["std"])[None, :, None, None].to(self._accelerator.device)

    def calculate_train_batch_loss(self, batch):
        inputs = (batch["image"] - self.mean) / self.std
        return super().calculate_train_batch_loss((inputs, batch["label"]))

    def eval_epoch_start(self):
        super().eval_epoch_start()
        self.accurate = 0
        self.num_elems = 0

    def calculate_eval_batch_loss(self, batch):
        inputs = (batch["image"] - self.mean) / self.std
        with torch.no_grad():
            outputs = self.model(inputs)
            loss = self.loss_func(outputs, batch["label"])
        predictions = outputs.argmax(dim=-1)
        accurate_preds = self._accelerator.gather(predictions) == self._accelerator.gather(
            batch["label"]
        )
        self.num_elems += accurate_preds.shape[0]
        self.accurate += accurate_preds.long().sum()
        return {"loss": loss, "model_outputs": outputs, "batch_size": inputs.size(0)}

    def eval_epoch_end(self):
        super().eval_epoch_end()
        self.run_history.update_metric(
            "accuracy", round(100 * self.accurate.item() / self.num_elems, 2)
        )

    def create_scheduler(self):
        return self.create_scheduler_fn(
            optimizer=self.optimizer,
            steps_per_epoch=len(self._train_dataloader),
            epochs=self.run_config.num_epochs,
        )


def training_function(config, results):
    lr = config["lr"]
    torch.manual_seed(config["seed"])
    train_dataset = DictImages(rgb_images(16, config["image_size"]))
    eval_dataset = DictImages(rgb_images(8, config["image_size"], seed=1))

    model = TinyResNet(num_classes=3)
    num_in_features = model.get_classifier().in_features
    model.fc = nn.Sequential(
        nn.Linear(num_in_features, 8),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Dropout(0.4),
        nn.Linear(8, 3),
    )
    freezer = ModelFreezer(model, freeze_batch_norms=False)
    freezer.freeze(set_modules_as_eval=False)
    optimizer = torch.optim.Adam(
        params=[param for param in model.parameters() if param.requires_grad], lr=lr / 25
    )
    results["frozen_groups"] = [
        group.layer_group_idx for group in freezer.get_layer_groups() if group.is_frozen
    ]

    trainer = PetsTrainer(
        model=model,
        loss_func=torch.nn.functional.cross_entropy,
        optimizer=optimizer,
        callbacks=(TerminateOnNaNCallback, PrintProgressCallback, LogMetricsCallback),
    )
    trainer.train(
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        num_epochs=1,
        per_device_batch_size=config["batch_size"],
        create_scheduler_fn=partial(OneCycleLR, max_lr=lr),
    )

    param_groups = freezer.unfreeze()
    for _idx, param_group in param_groups.items():
        param_group["lr"] = lr / 1000
        optimizer.add_param_group(param_group)
    results["num_param_groups"] = len(optimizer.param_groups)

    trainer.train(
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        num_epochs=2,
        per_device_batch_size=config["batch_size"],
        create_scheduler_fn=partial(OneCycleLR, max_lr=lr / 100),
        reset_run_history=False,
    )
    results["trainer"] = trainer
    results["layers"] = freezer.get_layers()


def main():
    config = {"lr": 3e-2, "seed": 42, "batch_size": 8, "image_size": 4}
    results = {}
    notebook_launcher(partial(training_function, config, results), num_processes=1)
    return results
