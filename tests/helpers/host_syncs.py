"""Counting host syncs (``Tensor.item``, ``__bool__``, ``tolist``, or every way to read a
tensor) during training steps."""

from __future__ import annotations

import sys

import torch

from trainwright import TrainerCallback

#: Every way to read a tensor's value on the host.
ALL_HOST_READS = ("item", "__bool__", "tolist", "__float__", "__int__", "__index__", "numpy")


class HostSyncCounter(TrainerCallback):
    """Counts Tensor.item / __bool__ / tolist calls (or the reads named in ``names``) between
    the first step start and the last step end of each epoch, and notes the ``(epoch,
    step)`` of each in ``read_at``. A `DeviceValueReader.ready()` read is not counted: it
    reads a copy that has already landed on the host (``wait()`` can wait, so it counts)."""

    order = -100

    def __init__(self, names=("item", "__bool__", "tolist")):
        self.count = 0
        self.read_at = []
        self.names = names
        self._originals = {}
        self._progress = None

    def _install(self):
        for name in self.names:
            original = getattr(torch.Tensor, name)
            self._originals[name] = original

            def counting(tensor, *args, _original=original, **kwargs):
                caller = sys._getframe(1).f_code
                # The sampler turns its CPU index permutation into a list, trainwright.data
                # draws each epoch's data seed on the CPU: data loading, not reads of values
                # computed on the training device.
                is_data_loading = "torch/utils/data" in caller.co_filename or (
                    caller.co_filename.endswith("trainwright/data.py")
                )
                is_landed_copy = caller.co_filename.endswith("device_values.py") and (
                    caller.co_name == "ready"
                )
                if not is_data_loading and not is_landed_copy:
                    self.count += 1
                    self.read_at.append((self._progress.epoch, self._progress.step))
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, counting)

    def _uninstall(self):
        for name, original in self._originals.items():
            setattr(torch.Tensor, name, original)
        self._originals = {}

    def on_train_epoch_start(self, trainer, **kwargs):
        self._progress = trainer.progress
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
