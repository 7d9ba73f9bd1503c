"""Sharded training (FSDP, DeepSpeed): run what was asked for, or refuse it before training.

Accelerate sets FSDP and DeepSpeed up only on GPU-like devices: on CPU processes it leaves
their plugins aside and trains with plain DDP, without a word (and without DeepSpeed's
settings, such as its ``gradient_clipping``). The Trainer never trains something other than
what was asked:

- FSDP2 on CPU processes runs for real: torch's ``fully_shard`` works with gloo, so the
  Trainer has Accelerate take its FSDP path there (see `prepare_sharding`);
- FSDP1 and DeepSpeed on CPU processes, and FSDP or DeepSpeed that Accelerate did not set up
  (e.g. a single process), are refused with an error that says why and what to do.

A request comes from ``accelerator_kwargs`` (``fsdp_plugin``, ``deepspeed_plugin``,
``deepspeed_plugins``) or from the launch: ``accelerate launch --use_fsdp`` /
``--use_deepspeed``, or a config file with ``distributed_type: FSDP`` / ``DEEPSPEED``, set
``ACCELERATE_USE_FSDP`` / ``ACCELERATE_USE_DEEPSPEED`` (and ``FSDP_VERSION``) for the script.

With the model sharded, the Trainer also gathers the full optimizer state for portable
checkpoints (`full_optimizer_state_dict`), loads full states into the shards, and saves and
restores each process's shard of the gradients in a training state (`local_gradients`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, InitProcessGroupKwargs, parse_flag_from_env
from torch import nn

# torch.distributed.tensor and torch.distributed.checkpoint are imported where they are used:
# importing them takes time that runs without FSDP have no use for.

__all__ = [
    "ShardingRequest",
    "check_sharding_set_up",
    "full_optimizer_state_dict",
    "is_sharded",
    "load_full_model_state_dict",
    "load_full_optimizer_state_dict",
    "local_gradients",
    "prepare_sharding",
    "restore_local_gradients",
    "sharding_request",
]

_LAUNCH_SETTING = (
    "{env}=true, set by accelerate launch {flag} or by a config file with distributed_type: "
    "{distributed_type}"
)


@dataclass(frozen=True)
class ShardingRequest:
    """FSDP or DeepSpeed, as asked for by the arguments or the launch.

    Attributes:
        name: ``"FSDP"`` or ``"DeepSpeed"``.
        distributed_type: what Accelerate's ``distributed_type`` must be for it to run.
        source: where it was asked for, for error messages.
        fsdp_version: for FSDP, the version asked for (1 or 2).
    """

    name: str
    distributed_type: DistributedType
    source: str
    fsdp_version: int | None = None


def sharding_request(accelerator_kwargs: dict[str, Any]) -> ShardingRequest | None:
    """The FSDP or DeepSpeed request of ``accelerator_kwargs`` and the launch, if any
    (DeepSpeed first, as Accelerate decides)."""
    for name in ("deepspeed_plugin", "deepspeed_plugins"):
        if accelerator_kwargs.get(name) is not None:
            return ShardingRequest(
                "DeepSpeed", DistributedType.DEEPSPEED, f"accelerator_kwargs[{name!r}]"
            )
    if parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"):
        source = _LAUNCH_SETTING.format(
            env="ACCELERATE_USE_DEEPSPEED", flag="--use_deepspeed", distributed_type="DEEPSPEED"
        )
        return ShardingRequest("DeepSpeed", DistributedType.DEEPSPEED, source)
    plugin = accelerator_kwargs.get("fsdp_plugin")
    if plugin is not None:
        version = getattr(plugin, "fsdp_version", None) or 1
        return ShardingRequest(
            "FSDP", DistributedType.FSDP, "accelerator_kwargs['fsdp_plugin']", version
        )
    if parse_flag_from_env("ACCELERATE_USE_FSDP"):
        source = _LAUNCH_SETTING.format(
            env="ACCELERATE_USE_FSDP", flag="--use_fsdp", distributed_type="FSDP"
        )
        # Accelerate's FSDP plugin reads its version there, 1 when it is not set.
        version = int(os.environ.get("FSDP_VERSION", "1"))
        return ShardingRequest("FSDP", DistributedType.FSDP, source, version)
    return None


def prepare_sharding(
    request: ShardingRequest, accelerator_kwargs: dict[str, Any], world_size: int
) -> None:
    """Gets a multi-process CPU run ready for FSDP2, before its `Accelerator` is created, or
    refuses what cannot run on CPU processes. Does nothing for runs on GPUs (or other
    accelerators), which Accelerate sets up itself.

    Accelerate's ``AcceleratorState`` turns a multi-process run into an FSDP one only on
    GPU-like devices. So, on CPU processes, the processes are joined here as Accelerate joins
    them (gloo, with the user's ``InitProcessGroupKwargs``), and the run is then described to
    Accelerate as a multi-device one, for which it sets FSDP up as usual (its plugin, mixed
    precision policy and ``fully_shard`` wrapping included).

    Raises:
        RuntimeError: for DeepSpeed or FSDP1 on CPU processes.
    """
    is_cpu = bool(accelerator_kwargs.get("cpu")) or parse_flag_from_env("ACCELERATE_USE_CPU")
    if not is_cpu:
        return
    if request.name == "DeepSpeed":
        raise RuntimeError(
            f"DeepSpeed was asked for ({request.source}), but this run is on CPU processes, "
            "where Accelerate does not run DeepSpeed: it would silently train with plain DDP "
            "instead, without DeepSpeed's settings (e.g. its gradient_clipping). Run on GPUs; "
            "or, on CPUs, shard with FSDP2 (accelerator_kwargs={'fsdp_plugin': "
            "FullyShardedDataParallelPlugin(fsdp_version=2)}, or accelerate launch --use_fsdp "
            "--fsdp_version 2), or drop the DeepSpeed setting to train with DDP."
        )
    if request.fsdp_version != 2:
        raise RuntimeError(
            f"FSDP version {request.fsdp_version} was asked for ({request.source}), but this "
            "run is on CPU processes, where trainwright runs FSDP2 only (Accelerate's FSDP1 "
            "needs a GPU). Ask for FSDP2: FullyShardedDataParallelPlugin(fsdp_version=2), "
            "accelerate launch --use_fsdp --fsdp_version 2, or fsdp_version: 2 in the "
            "config file's fsdp_config."
        )
    if world_size <= 1:
        return  # nothing to shard across; check_sharding_set_up says so
    init_kwargs: dict[str, Any] = {}
    for handler in accelerator_kwargs.get("kwargs_handlers") or ():
        if isinstance(handler, InitProcessGroupKwargs):
            init_kwargs = handler.to_kwargs()
    state = PartialState(cpu=True, **init_kwargs)
    if state.distributed_type == DistributedType.MULTI_CPU:
        # AcceleratorState then replaces it with DistributedType.FSDP.
        PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU


def check_sharding_set_up(request: ShardingRequest, accelerator: Accelerator) -> None:
    """Fails if Accelerate did not set up the sharding asked for.

    Raises:
        RuntimeError: naming what was asked, what Accelerate set up, and what to do.
    """
    if accelerator.distributed_type == request.distributed_type:
        return
    raise RuntimeError(
        f"{request.name} was asked for ({request.source}), but Accelerate set up "
        f"{accelerator.distributed_type.value} with {accelerator.num_processes} process(es), "
        f"so the run would silently train without {request.name}. {request.name} shards the "
        "model across the processes of a launch: start several (torchrun --nproc_per_node N, "
        "or accelerate launch --num_processes N), or drop the setting."
    )


def is_sharded(accelerator: Accelerator, model: nn.Module) -> bool:
    """Whether ``model`` (prepared by ``accelerator``) holds sharded parameters (FSDP)."""
    if accelerator.distributed_type != DistributedType.FSDP:
        return False
    from torch.distributed.tensor import DTensor

    return any(isinstance(parameter, DTensor) for parameter in model.parameters())


def full_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The full optimizer state of a sharded model, gathered from every process, in the
    format of a plain ``optimizer.state_dict()`` (parameters numbered in the order of the
    parameter groups), so that it loads into an unsharded optimizer too.

    Call it on every process; the state is complete on the main process (empty elsewhere).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_optimizer_state_dict(model, optimizer, options=options)
    if not state:
        return {}
    numbers: dict[str, int] = {}
    groups = []
    for group in state["param_groups"]:
        for name in group["params"]:
            numbers[name] = len(numbers)
        groups.append({**group, "params": [numbers[name] for name in group["params"]]})
    return {
        "state": {numbers[name]: value for name, value in state["state"].items()},
        "param_groups": groups,
    }


def load_full_optimizer_state_dict(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Loads a full optimizer state (as `full_optimizer_state_dict` writes it, or a plain
    ``optimizer.state_dict()``) into the shards of a sharded model's optimizer. Call it on
    every process, each with the full state."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names_by_parameter = {id(parameter): name for name, parameter in model.named_parameters()}
    names = [
        names_by_parameter[id(parameter)]
        for group in optimizer.param_groups
        for parameter in group["params"]
    ]
    by_name = {
        "state": {names[number]: value for number, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [names[number] for number in group["params"]]}
            for group in state["param_groups"]
        ],
    }
    options = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(model, optimizer, by_name, options=options)


def load_full_model_state_dict(model: nn.Module, state: dict[str, Any]) -> None:
    """Loads full (unsharded) weights into a sharded model, each process keeping its shard.

    Raises:
        RuntimeError: if the weights do not fit the model (missing or unexpected keys).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def local_gradients(model: nn.Module) -> list[torch.Tensor | None]:
    """Each parameter's gradient, on the CPU; for a sharded parameter, this process's shard."""
    from torch.distributed.tensor import DTensor

    gradients: list[torch.Tensor | None] = []
    for parameter in model.parameters():
        gradient = parameter.grad
        if isinstance(gradient, DTensor):
            gradient = gradient.to_local()
        gradients.append(None if gradient is None else gradient.detach().cpu())
    return gradients


def restore_local_gradients(model: nn.Module, gradients: list[torch.Tensor | None]) -> None:
    """Sets the gradients saved by `local_gradients` (by the same process) back."""
    from torch.distributed.tensor import DTensor

    with torch.no_grad():
        for parameter, gradient in zip(model.parameters(), gradients):
            if gradient is None:
                parameter.grad = None
            elif isinstance(parameter, DTensor):
                sharded = torch.zeros_like(parameter)  # the parameter's layout over processes
                sharded.to_local().copy_(gradient)
                parameter.grad = sharded
            else:
                parameter.grad = gradient.to(parameter.device)
