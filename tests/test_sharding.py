"""FSDP and DeepSpeed requests that cannot run here are refused before training, whichever
way they were made (``accelerator_kwargs`` or the launch's environment), instead of
silently training with plain DDP. (FSDP2 on CPU processes runs: tests/distributed/
test_multiprocess_sharding.py.)

A launch of 2 CPU processes is simulated with ``WORLD_SIZE=2``: the errors come before
Accelerate would join the processes.
"""

from __future__ import annotations

import pytest
from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin
from helpers.tiny import make_trainer


@pytest.fixture(autouse=True)
def launch_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    # Accelerate writes these when given a plugin; set here, they are restored afterwards.
    for name in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.setenv(name, "false")
    return monkeypatch


def test_deepspeed_plugin_on_cpu_processes_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    plugin = DeepSpeedPlugin(zero_stage=2, gradient_clipping=1.0)
    with pytest.raises(
        RuntimeError,
        match=r"DeepSpeed was asked for \(accelerator_kwargs\['deepspeed_plugin'\]\), but this "
        r"run is on CPU processes.*gradient_clipping.*fsdp_version=2",
    ):
        make_trainer(accelerator_kwargs={"deepspeed_plugin": plugin})


def test_accelerate_launch_use_deepspeed_on_cpu_processes_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what accelerate launch sets
    with pytest.raises(
        RuntimeError,
        match=r"DeepSpeed was asked for \(ACCELERATE_USE_DEEPSPEED=true, set by accelerate "
        r"launch --use_deepspeed or by a config file with distributed_type: DEEPSPEED\)",
    ):
        make_trainer()


def test_deepspeed_on_one_cpu_process_is_refused() -> None:
    with pytest.raises(RuntimeError, match=r"DeepSpeed was asked for .* CPU processes"):
        make_trainer(accelerator_kwargs={"cpu": True, "deepspeed_plugin": DeepSpeedPlugin()})


def test_fsdp1_on_cpu_processes_is_refused_with_the_fsdp2_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # accelerate launch --use_fsdp
    monkeypatch.delenv("FSDP_VERSION", raising=False)  # the launcher's default: 1
    with pytest.raises(
        RuntimeError,
        match=r"FSDP version 1 was asked for \(ACCELERATE_USE_FSDP=true.*FSDP2 only.*"
        r"--fsdp_version 2.*fsdp_version: 2",
    ):
        make_trainer()


def test_fsdp_that_accelerate_does_not_set_up_is_refused_not_dropped() -> None:
    # One process: Accelerate leaves the plugin aside and would train without FSDP.
    trainer_kwargs = {"fsdp_plugin": FullyShardedDataParallelPlugin(fsdp_version=2)}
    with pytest.raises(
        RuntimeError,
        match=r"FSDP was asked for \(accelerator_kwargs\['fsdp_plugin'\]\), but Accelerate set "
        r"up NO with 1 process\(es\), so the run would silently train without FSDP.*torchrun",
    ):
        make_trainer(accelerator_kwargs=trainer_kwargs)
