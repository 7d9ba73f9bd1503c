"""Counting host syncs (``Tensor.item``, ``__bool__``, ``tolist``) during training steps."""

from __future__ import annotations

import sys

import torch

from trainwright import TrainerCallback


class HostSyncCounter(TrainerCallback):
    """Counts Tensor.item / __bool__ / tolist calls between the first step start and the last
    step end of each epoch."""

    order = -100

    def __init__(self):
        self.count = 0
        self._originals = {}

    def _install(self):
        for name in ("item", "__bool__", "tolist"):
            original = getattr(torch.Tensor, name)
            self._originals[name] = original

            def counting(tensor, *args, _original=original, **kwargs):
                # The sampler turns its CPU index permutation into a list: data loading, not
                # a read of a value computed on the training device.
                if "torch/utils/data" not in sys._getframe(1).f_code.co_filename:
                    self.count += 1
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, counting)

    def _uninstall(self):
        for name, original in self._originals.items():
            setattr(torch.Tensor, name, original)
        self._originals = {}

    def on_train_epoch_start(self, trainer, **kwargs):
        self._install()

    def on_train_epoch_end(self, trainer, **kwargs):
        self._uninstall()


class UninstallLast(TrainerCallback):
    order = 100

    def __init__(self, counter):
        self.counter = counter

    def on_train_epoch_start(self, trainer, **kwargs):
        pass_through = self.counter  # the counter installs itself first (order -100)
        assert pass_through._originals

    def on_train_step_end(self, trainer, step, **kwargs):
        if step == trainer.run_config.train_dataloader_len - 1:
            self.counter._uninstall()  # stop counting before the epoch-end metric read
