"""pytorch-accelerated's timm mixup + EMA example, with hand-written timm-style pieces (a
cosine scheduler with ``step(epoch)`` / ``step_update(num_updates)``, mixup and soft-target
cross-entropy) so that it runs without timm."""

import math

import torch
from offline_data import Accuracy, TinyResNet, rgb_images
from pytorch_accelerated.callbacks import SaveBestModelCallback
from pytorch_accelerated.trainer import DEFAULT_CALLBACKS, Trainer
from pytorch_accelerated.utils import ModelEma


class TimmStyleCosineScheduler:
    """Like timm's CosineLRScheduler with t_in_epochs=True: the LR is set per epoch by
    ``step(epoch)``; ``step_update`` is a no-op for an epoch-based schedule."""

    def __init__(self, optimizer, t_initial, lr_min, warmup_t, warmup_lr_init):
        self.optimizer = optimizer
        self.t_initial, self.lr_min = t_initial, lr_min
        self.warmup_t, self.warmup_lr_init = warmup_t, warmup_lr_init
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.epochs_stepped = []
        self.num_update_calls = 0
        self._set(0)

    def _lr(self, base_lr, epoch):
        if epoch < self.warmup_t:
            return self.warmup_lr_init + (base_lr - self.warmup_lr_init) * epoch / self.warmup_t
        progress = min((epoch - self.warmup_t) / max(self.t_initial - self.warmup_t, 1), 1.0)
        return self.lr_min + 0.5 * (base_lr - self.lr_min) * (1 + math.cos(math.pi * progress))

    def _set(self, epoch):
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self._lr(base_lr, epoch)

    def step(self, epoch, metric=None):
        self.epochs_stepped.append(epoch)
        self._set(epoch)

    def step_update(self, num_updates, metric=None):
        self.num_update_calls += 1

    def state_dict(self):
        return {"base_lrs": self.base_lrs, "epochs_stepped": self.epochs_stepped}

    def load_state_dict(self, state_dict):
        self.__dict__.update(state_dict)


class Mixup:
    def __init__(self, alpha, num_classes, label_smoothing):
        self.alpha, self.num_classes, self.label_smoothing = alpha, num_classes, label_smoothing

    def __call__(self, x, y):
        lam = float(torch.distributions.Beta(self.alpha, self.alpha).sample())
        off = self.label_smoothing / self.num_classes
        targets = (
            torch.nn.functional.one_hot(y, self.num_classes).float() * (1 - self.label_smoothing)
            + off
        )
        return lam * x + (1 - lam) * x.flip(0), lam * targets + (1 - lam) * targets.flip(0)


def soft_target_cross_entropy(logits, soft_targets):
    return torch.sum(-soft_targets * logits.log_softmax(dim=-1), dim=-1).mean()


class TimmMixupTrainer(Trainer):
    def __init__(self, eval_loss_fn, mixup_args, num_classes, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_loss_fn = eval_loss_fn
        self.num_updates = None
        self.mixup_fn = Mixup(**mixup_args)
        self.accuracy = Accuracy()
        self.ema_accuracy = Accuracy()
        self.ema_model = None

    def create_scheduler(self):
        return TimmStyleCosineScheduler(
            self.optimizer,
            t_initial=self.run_config.num_epochs,
            lr_min=1e-6,
            warmup_t=1,
            warmup_lr_init=1e-4,
        )

    def training_run_start(self):
        self.ema_model = ModelEma(self._accelerator.unwrap_model(self.model), decay=0.9)
        if self.run_config.is_distributed:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)

    def train_epoch_start(self):
        super().train_epoch_start()
        self.num_updates = self.run_history.current_epoch * len(self._train_dataloader)

    def calculate_train_batch_loss(self, batch):
        xb, yb = batch
        mixup_xb, mixup_yb = self.mixup_fn(xb, yb)
        return super().calculate_train_batch_loss((mixup_xb, mixup_yb))

    def train_epoch_end(self):
        self.ema_model.update(self.model)
        self.ema_model.eval()

    def scheduler_step(self):
        self.num_updates += 1
        if self.scheduler is not None:
            self.scheduler.step_update(num_updates=self.num_updates)

    def calculate_eval_batch_loss(self, batch):
        with torch.no_grad():
            xb, yb = batch
            outputs = self.model(xb)
            val_loss = self.eval_loss_fn(outputs, yb)
            self.accuracy.update(outputs.argmax(-1), yb)
            ema_model_preds = self.ema_model.module(xb).argmax(-1)
            self.ema_accuracy.update(ema_model_preds, yb)
        return {"loss": val_loss, "model_outputs": outputs, "batch_size": xb.size(0)}

    def eval_epoch_end(self):
        super().eval_epoch_end()
        if self.scheduler is not None:
            self.scheduler.step(self.run_history.current_epoch + 1)
        self.run_history.update_metric("accuracy", self.accuracy.compute().cpu())
        self.run_history.update_metric("ema_model_accuracy", self.ema_accuracy.compute().cpu())
        self.accuracy.reset()
        self.ema_accuracy.reset()


def main(num_epochs=3):
    num_classes = 3
    train_dataset, eval_dataset = rgb_images(32, 4), rgb_images(8, 4, seed=1)
    model = TinyResNet(num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.01)
    trainer = TimmMixupTrainer(
        model=model,
        optimizer=optimizer,
        loss_func=soft_target_cross_entropy,
        eval_loss_fn=torch.nn.CrossEntropyLoss(),
        mixup_args={"alpha": 0.2, "num_classes": num_classes, "label_smoothing": 0.1},
        num_classes=num_classes,
        callbacks=[
            *DEFAULT_CALLBACKS,
            SaveBestModelCallback(watch_metric="accuracy", greater_is_better=True),
        ],
    )
    trainer.train(
        per_device_batch_size=16,
        train_dataset=train_dataset,
        train_dataloader_kwargs={"drop_last": True},  # mixup requires even batches
        eval_dataset=eval_dataset,
        num_epochs=num_epochs,
        create_scheduler_fn=trainer.create_scheduler,
    )
    return trainer
