"""Default DataLoader settings, and the seeding that makes data randomness resumable.

Where the randomness of the data comes from, in the loaders the trainer prepares
(`seeded_dataloader`, `seeded_epoch`):

- every epoch has a *data seed*, one number drawn from torch's global RNG as the epoch starts
  (saved with a training state). It seeds the order of a shuffled map-style dataset (the same
  draw ``RandomSampler`` makes itself, so with no augmentation the order is torch's own) and
  every random number drawn while the epoch's iterator starts (worker seeds, a custom
  sampler's own draws), inside a fork of the RNGs: the global RNG is not consumed there;
- every batch of a map-style dataset is fetched and collated with torch's CPU RNG, Python's
  ``random`` and NumPy's global RNG seeded from the data seed and the batch's indices, in the
  main process (the RNGs are put back afterwards) or in a worker alike. A random augmentation
  (a torchvision transform, a masking collator) then draws the same numbers for the same batch
  whatever happened before it: with any number of workers, persistent or not, and in an epoch
  resumed in its middle;
- DataLoader workers ignore SIGTERM and SIGINT, so that a signal to the whole process group
  (SLURM, ``systemd stop``, ``kill -TERM -PGID``) reaches the trainer, which saves and stops,
  while the workers keep serving it; they exit with it.

So ``torch.manual_seed`` (or ``accelerate.utils.set_seed``) before ``train()`` fixes the data
order and every augmentation, runs with the same seed are identical, and a resumed run
continues bit for bit. An ``IterableDataset`` is not wrapped: its own iteration decides its
randomness (see docs/checkpoints.md).

Batched fetching: a plain ``DataLoader`` over a ``TensorDataset`` reads each batch sample by
sample (``dataset[i]`` for every index, then ``default_collate`` stacks them), which is most of
a step for a small model. `create_dataloader` builds the loader over `BatchedTensorDataset`
instead, which reads the whole batch with one indexing call per tensor: same sampler, same
order, bit-identical values (the seeded fetch above then calls it once per batch).
"""

from __future__ import annotations

import array
import contextlib
import hashlib
import inspect
import itertools
import operator
import os
import random
import signal
import sys
from collections.abc import Callable, Iterator, Sequence, Sized
from typing import Any

import torch
from accelerate.data_loader import DataLoaderShard
from accelerate.utils import send_to_device, synchronize_rng_states
from torch.utils.data import (
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    TensorDataset,
    default_collate,
)

__all__ = [
    "BatchedTensorDataset",
    "create_dataloader",
    "dataloader_batch_size",
    "dataloader_length",
    "default_dataloader_kwargs",
    "draw_data_seed",
    "inexact_resume_reason",
    "is_read_in_memory",
    "merge_dataloader_kwargs",
    "rngs_seeded",
    "seeded_dataloader",
    "seeded_epoch",
]


class BatchedTensorDataset(TensorDataset):
    """A `TensorDataset` over the same tensors whose batches are read with one indexing call.

    PyTorch's ``DataLoader`` hands a dataset that defines ``__getitems__`` the whole batch of
    indices from its sampler, then applies its ``collate_fn`` to the result. Here
    ``__getitems__`` returns what ``default_collate`` makes of the samples of a
    `TensorDataset`: a list with one tensor per dataset tensor, the rows at those indices,
    stacked in order (contiguous, same dtype, same values bit for bit), so the loader's
    ``collate_fn`` must pass it through unchanged (`create_dataloader` sets that up).

    Indexing one sample (``dataset[i]``), ``len()`` and ``tensors`` are `TensorDataset`'s own;
    `source` is the dataset it was made from.

    Args:
        dataset: the `TensorDataset` to read from (its tensors are shared, not copied).
    """

    def __init__(self, dataset: TensorDataset) -> None:
        super().__init__(*dataset.tensors)
        self.source = dataset
        # Rows indexed out of a contiguous tensor are contiguous already, as default_collate's
        # stacks are; only the others need a copy.
        self._are_contiguous = all(tensor.is_contiguous() for tensor in self.tensors)
        # Dense tensors in host memory are read with index_select and an index tensor made
        # from the indices in one step (see __getitems__).
        self._are_dense_on_cpu = all(
            tensor.layout == torch.strided and tensor.device.type == "cpu"
            for tensor in self.tensors
        )

    def __getitems__(self, indices: Sequence[int]) -> list[torch.Tensor]:
        """The batch at ``indices``: one stacked tensor per dataset tensor, as a list."""
        if self._are_dense_on_cpu:
            try:
                # One index tensor for every dataset tensor, made from a C array of the
                # indices: indexing with a Python list converts it element by element, once
                # per tensor, which costs more than reading the rows of a small batch.
                # index_select's rows are contiguous, as default_collate's stacks are.
                index = torch.frombuffer(array.array("q", indices), dtype=torch.int64)
                return [tensor.index_select(0, index) for tensor in self.tensors]
            except (TypeError, ValueError, OverflowError, IndexError):
                pass  # negative or odd indices, or none: read as any indices below
        # A list index, turned into an index tensor inside torch, once per dataset tensor.
        index = indices if type(indices) is list else list(indices)
        if self._are_contiguous:
            return [tensor[index] for tensor in self.tensors]
        return [tensor[index].contiguous() for tensor in self.tensors]


def _collated(batch: Any) -> Any:
    """The ``collate_fn`` of a loader over a `BatchedTensorDataset`: the batch is collated."""
    return batch


def is_batched_fetch_exact(dataset: Any, kwargs: dict[str, Any]) -> bool:
    """Whether a ``DataLoader(dataset, **kwargs)`` can read each batch with one indexing call
    and produce exactly what it produces sample by sample.

    True for a `TensorDataset` (or a subclass that changes neither ``__getitem__`` nor adds
    ``__getitems__``), batched by the loader (``batch_size`` not None, or a ``batch_sampler``),
    with no ``collate_fn`` (PyTorch's ``default_collate``). Passing any ``collate_fn``,
    ``torch.utils.data.default_collate`` included, keeps the sample-by-sample path.
    """
    dataset_type = type(dataset)
    return (
        isinstance(dataset, TensorDataset)
        and not isinstance(dataset, BatchedTensorDataset)
        and dataset_type.__getitem__ is TensorDataset.__getitem__
        and getattr(dataset_type, "__getitems__", None) is None
        and kwargs.get("collate_fn") is None
        and (kwargs.get("batch_size", 1) is not None or kwargs.get("batch_sampler") is not None)
    )


def create_dataloader(dataset: Dataset, **kwargs: Any) -> DataLoader:
    """``DataLoader(dataset, **kwargs)``, reading each batch with one indexing call where that
    is exact (see `is_batched_fetch_exact`): the loader's ``dataset`` is then a
    `BatchedTensorDataset` over the same tensors and its ``collate_fn`` passes batches through.

    Same sampler, same order, same values and dtypes as the sample-by-sample loader, with
    workers, pinned memory and Accelerate's per-process sharding (which keeps the loader's
    dataset and ``collate_fn``). To keep the sample-by-sample path, pass
    ``collate_fn=torch.utils.data.default_collate``.

    Example:
        ```python
        import torch
        from torch.utils.data import DataLoader, TensorDataset
        from trainwright.data import create_dataloader

        dataset = TensorDataset(torch.randn(10, 3), torch.arange(10))
        torch.manual_seed(0)
        plain = list(DataLoader(dataset, batch_size=4, shuffle=True))
        torch.manual_seed(0)
        batched = list(create_dataloader(dataset, batch_size=4, shuffle=True))
        assert all(
            torch.equal(a, b) for p, q in zip(plain, batched, strict=True) for a, b in zip(p, q)
        )
        ```
    """
    if is_batched_fetch_exact(dataset, kwargs):
        return DataLoader(BatchedTensorDataset(dataset), **{**kwargs, "collate_fn": _collated})
    return DataLoader(dataset, **kwargs)


def _cpus_available() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_num_workers(num_local_processes: int = 1) -> int:
    """Worker processes per dataloader: the CPUs left per local process after the process
    itself, at most 4, and 0 (load in the main process) when fewer than 2 CPUs remain."""
    cpus_per_process = _cpus_available() // max(num_local_processes, 1)
    workers = min(cpus_per_process - 1, 4)
    return workers if workers >= 2 else 0


def default_dataloader_kwargs(
    *, shuffle: bool, device: torch.device, num_local_processes: int = 1
) -> dict[str, Any]:
    """The keyword arguments the trainer gives ``torch.utils.data.DataLoader`` by default.

    - ``shuffle``: ``True`` for training, ``False`` for evaluation.
    - ``num_workers``: from the CPUs available per local process (see
      [`default_num_workers`][trainwright.data.default_num_workers]), never every CPU per device.
    - ``pin_memory``: only when training on CUDA.

    Any of these can be overridden with ``train_dataloader_kwargs`` /
    ``eval_dataloader_kwargs``. Settings that depend on the number of workers
    (``persistent_workers``) are decided once those are merged in, by
    `merge_dataloader_kwargs`.
    """
    return {
        "shuffle": shuffle,
        "num_workers": default_num_workers(num_local_processes),
        "pin_memory": device.type == "cuda",
    }


#: ``DataLoader`` arguments that only mean something with worker processes: torch rejects
#: them with ``num_workers=0``.
_WORKER_ONLY_KWARGS = ("persistent_workers", "prefetch_factor", "multiprocessing_context")

#: Default arguments that a ``sampler`` / ``batch_sampler`` given by the user replaces (torch
#: rejects them together).
_REPLACED_BY_SAMPLER = ("shuffle",)
_REPLACED_BY_BATCH_SAMPLER = ("batch_size", "shuffle", "sampler", "drop_last")


def merge_dataloader_kwargs(
    defaults: dict[str, Any],
    overrides: dict[str, Any] | None = None,
    collate_fn: Callable | None = None,
) -> dict[str, Any]:
    """The ``DataLoader`` keyword arguments from the defaults, the ``collate_fn`` given to
    ``train()`` / ``evaluate()`` and the user's overrides, in that order of precedence.

    - A ``sampler`` in ``overrides`` replaces the default shuffling, a ``batch_sampler`` the
      default batching too (``batch_size``, ``shuffle``, ``sampler``, ``drop_last``).
    - Settings that depend on the number of workers are decided after the merge: with
      ``num_workers=0`` the worker-only settings of the defaults (``persistent_workers``,
      ``prefetch_factor``, ``multiprocessing_context``) are dropped; with workers,
      ``persistent_workers`` defaults to ``True`` (workers are not restarted every epoch).
      Settings given in ``overrides`` are always kept as given.

    Args:
        defaults: e.g. ``Trainer.get_default_train_dl_kwargs(batch_size)``.
        overrides: e.g. ``train_dataloader_kwargs``.
        collate_fn: applied over the defaults when not ``None``.

    Raises:
        ValueError: if ``collate_fn`` and ``overrides["collate_fn"]`` are two different
            functions (one would be silently ignored).

    Example:
        ```python
        from trainwright.data import merge_dataloader_kwargs

        kwargs = merge_dataloader_kwargs(
            {"batch_size": 8, "shuffle": True, "num_workers": 4}, {"num_workers": 0}
        )
        assert "persistent_workers" not in kwargs
        ```
    """
    overrides = dict(overrides or {})
    if collate_fn is not None and overrides.get("collate_fn", collate_fn) is not collate_fn:
        raise ValueError(
            "Two collate functions were given: collate_fn and a 'collate_fn' in the dataloader "
            "kwargs. Pass only one of them."
        )
    replaced: tuple[str, ...] = ()
    if overrides.get("batch_sampler") is not None:
        replaced = _REPLACED_BY_BATCH_SAMPLER
    elif overrides.get("sampler") is not None:
        replaced = _REPLACED_BY_SAMPLER
    kwargs = {name: value for name, value in defaults.items() if name not in replaced}
    if collate_fn is not None:
        kwargs["collate_fn"] = collate_fn
    kwargs.update(overrides)
    if kwargs.get("num_workers", 0) == 0:
        for name in _WORKER_ONLY_KWARGS:
            if name not in overrides:
                kwargs.pop(name, None)
    else:
        kwargs.setdefault("persistent_workers", True)
    return kwargs


def dataloader_batch_size(dataloader: Any) -> int | None:
    """The number of samples in each batch of a ``DataLoader`` (its ``batch_size``, or that of
    its ``batch_sampler``), or ``None`` when its batches have no fixed size (a batch sampler
    without a ``batch_size``, or ``batch_size=None`` for data that comes batched)."""
    batch_size = getattr(dataloader, "batch_size", None)
    if batch_size is None:
        batch_size = getattr(getattr(dataloader, "batch_sampler", None), "batch_size", None)
    return batch_size if isinstance(batch_size, int) else None


def dataloader_length(dataloader: Any) -> int | None:
    """``len(dataloader)``, or ``None`` when it has no length.

    A ``DataLoader`` over an ``IterableDataset`` without ``__len__`` (and Accelerate's
    prepared loaders over one) has a ``__len__`` method that raises ``TypeError``.
    """
    try:
        return len(dataloader)
    except TypeError:
        return None


# --------------------------------------------------------------------------------------------
# Data randomness from one seed per epoch
# --------------------------------------------------------------------------------------------

_SEED_MASK = (1 << 63) - 1


def draw_data_seed() -> int:
    """An epoch's data seed: one draw from torch's global RNG, as ``RandomSampler`` makes
    (a CPU tensor: reading it waits for no device)."""
    return int(torch.empty((), dtype=torch.int64).random_())


@contextlib.contextmanager
def rngs_seeded(seed: int) -> Iterator[None]:
    """Runs the block with torch's CPU RNG, Python's ``random`` and NumPy's global RNG (when
    NumPy is imported) seeded from ``seed``, and puts their states back afterwards.

    Only the CPU generator: ``torch.manual_seed`` would also reseed (and not restore) CUDA's.
    """
    numpy = sys.modules.get("numpy")
    torch_state, python_state = torch.default_generator.get_state(), random.getstate()
    numpy_state = numpy.random.get_state() if numpy is not None else None
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    if numpy is not None:
        numpy.random.seed(seed % 2**32)
    try:
        yield
    finally:
        torch.default_generator.set_state(torch_state)
        random.setstate(python_state)
        if numpy is not None:
            numpy.random.set_state(numpy_state)


def _batch_seed(epoch_seed: int, indices: Any) -> int:
    """A seed from the epoch's data seed and a batch's indices, the same in every process."""
    try:  # ints (and NumPy / tensor integers) hash the same in every process
        return hash((epoch_seed, *map(operator.index, indices))) & _SEED_MASK
    except TypeError:  # other indices: a digest of their text (str hashes vary per process)
        digest = hashlib.blake2b(repr((epoch_seed, list(indices))).encode(), digest_size=8)
        return int.from_bytes(digest.digest(), "little") & _SEED_MASK


class _SeededDataset(Dataset):
    """A map-style dataset whose batches are fetched and collated with seeded RNGs.

    It stands in for the user's dataset inside the trainer's DataLoaders, with the loader's
    ``collate_fn``: ``__getitems__`` returns the collated batch (the loader's own collate
    function is then `_already_collated`), so that a random collator is seeded as well. The
    epoch's data seed is in shared memory, so persistent workers see each new epoch's seed.
    Other attributes are those of the wrapped dataset.

    A plain `TensorDataset` (or `BatchedTensorDataset`) collated by ``default_collate`` (or
    passed through) draws no random numbers, so its batches are fetched without seeding: the
    same batches, without saving, seeding and restoring three RNGs per batch (about 150 µs).
    """

    def __init__(self, dataset: Dataset, collate_fn: Callable[[list], Any]) -> None:
        self.dataset = dataset
        self.collate_fn = collate_fn
        self.draws_no_random_numbers = type(dataset) in (
            TensorDataset,
            BatchedTensorDataset,
        ) and collate_fn in (default_collate, _collated)
        self.epoch_seed = torch.zeros((), dtype=torch.int64).share_memory_()
        #: The generator given to the loader's ``RandomSampler``, reseeded every epoch.
        self.sampler_generator: torch.Generator | None = None
        self._seed_view: Any = None

    def _current_seed(self) -> int:
        # Read through a NumPy view of the shared memory: no tensor op on the per-step path.
        if self._seed_view is None:
            self._seed_view = self.epoch_seed.numpy()
        return int(self._seed_view)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: Any) -> Any:  # not used by the loader, which fetches batches
        return self.dataset[index]

    def __getitems__(self, indices: list) -> Any:
        if self.draws_no_random_numbers:
            return self._fetch(indices)
        with rngs_seeded(_batch_seed(self._current_seed(), indices)):
            return self._fetch(indices)

    def _fetch(self, indices: list) -> Any:
        getitems = getattr(self.dataset, "__getitems__", None)
        samples = getitems(indices) if getitems else [self.dataset[i] for i in indices]
        return self.collate_fn(samples)

    def __getstate__(self) -> dict[str, Any]:  # to a worker: the sampler stays behind
        return {**self.__dict__, "sampler_generator": None, "_seed_view": None}

    def __getattr__(self, name: str) -> Any:
        dataset = self.__dict__.get("dataset")  # absent while unpickling
        if dataset is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(dataset, name)


def _already_collated(batch: Any) -> Any:
    return batch


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


@contextlib.contextmanager
def _stop_signals_held() -> Iterator[None]:
    """Holds SIGTERM and SIGINT back while the block runs (they are delivered after it), so
    that a worker started in it cannot be killed by one before `_WorkerInit` ignores them:
    a new process inherits the held signals."""
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _WorkerInit:
    """The ``worker_init_fn`` of the trainer's DataLoaders: ignore SIGTERM and SIGINT, then
    run the user's ``worker_init_fn``. A worker exits when its loader shuts it down, or on its
    own once the trainer's process is gone (PyTorch's workers watch their parent)."""

    def __init__(self, user_worker_init_fn: Callable[[int], Any] | None) -> None:
        self.user_worker_init_fn = user_worker_init_fn

    def __call__(self, worker_id: int) -> None:
        for number in _STOP_SIGNALS:
            signal.signal(number, signal.SIG_IGN)
        if hasattr(signal, "pthread_sigmask"):  # held back while the worker started
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        if self.user_worker_init_fn is not None:
            self.user_worker_init_fn(worker_id)


def seeded_dataloader(dataloader: DataLoader) -> DataLoader:
    """The same DataLoader, built anew so that its randomness comes from `seeded_epoch`'s
    seed and its workers outlive a SIGTERM to the process group (see the module docstring).

    A map-style dataset with a length is wrapped to fetch every batch with seeded RNGs, and a
    ``RandomSampler`` without a generator of its own gets one, seeded every epoch. A subclass
    of ``DataLoader`` is returned as it is.
    """
    if type(dataloader) is not DataLoader:
        return dataloader
    kwargs = {
        name: getattr(dataloader, name)
        for name in inspect.signature(DataLoader).parameters
        if name not in ("shuffle", "sampler", "batch_sampler", "batch_size", "drop_last")
        and hasattr(dataloader, name)
    }
    if not isinstance(dataloader.worker_init_fn, _WorkerInit):
        kwargs["worker_init_fn"] = _WorkerInit(dataloader.worker_init_fn)
    dataset = dataloader.dataset
    is_batched = dataloader.batch_sampler is not None  # automatic batching: a fetch per batch
    is_wrapped = (
        is_batched
        and not isinstance(dataset, (IterableDataset, _SeededDataset))
        and isinstance(dataset, Sized)
    )
    if is_wrapped:
        kwargs["dataset"] = _SeededDataset(dataset, dataloader.collate_fn)
        kwargs["collate_fn"] = _already_collated
        sampler = dataloader.sampler
        if isinstance(sampler, RandomSampler) and sampler.generator is None:
            sampler.generator = kwargs["dataset"].sampler_generator = torch.Generator()
    if isinstance(dataset, IterableDataset):
        sampling = {"batch_size": dataloader.batch_size, "drop_last": dataloader.drop_last}
    elif dataloader.batch_size is not None:  # the loader's own BatchSampler
        sampling = {
            "sampler": dataloader.sampler,
            "batch_size": dataloader.batch_size,
            "drop_last": dataloader.drop_last,
        }
    elif is_batched:  # a batch_sampler of the user's
        sampling = {"batch_sampler": dataloader.batch_sampler}
    else:
        sampling = {"sampler": dataloader.sampler, "batch_size": None}
    return DataLoader(**kwargs, **sampling)


def inexact_resume_reason(dataloader: Any) -> str | None:
    """Why a resume of a run on this (prepared) training loader may not continue exactly when
    its data draws random numbers from the global RNGs; ``None`` when it does."""
    dataset = getattr(dataloader, "dataset", None)
    if dataloader is None or isinstance(dataset, _SeededDataset):
        return None
    if isinstance(dataset, IterableDataset):
        if dataloader.num_workers > 0 and not dataloader.persistent_workers:
            return None  # fresh workers, seeded from the epoch's data seed, every epoch
        return (
            "the training data is an IterableDataset loaded in the main process or by "
            "persistent workers, whose random draws (e.g. augmentation from torch's, Python's "
            "or NumPy's global RNG) a resume cannot replay"
        )
    return (
        "the training DataLoader is not one trainwright seeds batch by batch (a DataLoader "
        "subclass, a dataset without a length, or a loader without automatic batching), so "
        "random draws of the dataset or collate_fn from the global RNGs are not replayed"
    )


def seeded_epoch(dataloader: DataLoader, seed: int) -> Iterator[Any]:
    """Iterates over one epoch of ``dataloader`` with its randomness drawn from ``seed``.

    The seed goes to the batches of a loader built by `seeded_dataloader` (or one Accelerate
    prepared from it, or ``skip_first_batches`` made of that), and to the sampler's generator
    when the loader gave it one. The iterator starts (workers' seeds, the sampler's first draw,
    the first batches) with the RNGs forked and seeded: the global RNG is left as it was.

    A prepared loader over in-memory tensors (see `is_read_in_memory`) is read without its
    ``DataLoader``: the same batches from the same batch sampler, indexed directly.
    """
    dataset = getattr(dataloader, "dataset", None)
    if isinstance(dataset, _SeededDataset):
        dataset.epoch_seed.fill_(seed)
        if dataset.sampler_generator is not None:
            dataset.sampler_generator.manual_seed(seed)
    in_memory = _in_memory_source(dataloader)
    with rngs_seeded(seed), _stop_signals_held():
        iterator = iter(dataloader) if in_memory is None else _shard_batches(dataloader, in_memory)
        first_batch = next(iterator, _NO_BATCH)
    if first_batch is _NO_BATCH:
        return
    yield first_batch
    yield from iterator


_NO_BATCH = object()


def is_read_in_memory(dataloader: Any) -> bool:
    """Whether the trainer reads the batches of ``dataloader`` (one it prepared) straight
    from in-memory tensors, without iterating the ``DataLoader`` under it.

    That is Accelerate's ``DataLoaderShard`` (not stateful) over a `BatchedTensorDataset`
    (what `create_dataloader` makes of a plain `TensorDataset` without a ``collate_fn``),
    loaded in the main process (``num_workers=0``) without pinned memory. Each batch is then
    one indexing call per tensor, from the same batch sampler in the same order, and the
    ``DataLoader``'s iterator, fetcher and profiler annotations around it would be most of
    the cost of a small model's step (see docs/performance.md). Loaders with workers or
    pinned memory are iterated as usual.
    """
    return _in_memory_source(dataloader) is not None


def _in_memory_source(dataloader: Any) -> BatchedTensorDataset | None:
    """The tensors `is_read_in_memory` reads ``dataloader``'s batches from, or ``None``."""
    if type(dataloader) is not DataLoaderShard or dataloader.use_stateful_dataloader:
        return None
    dataset = dataloader.dataset
    if not (
        isinstance(dataset, _SeededDataset)
        and dataset.draws_no_random_numbers
        and type(dataset.dataset) is BatchedTensorDataset
        and dataset.collate_fn is _collated
        and dataloader.batch_sampler is not None
        and dataloader.num_workers == 0
        and not dataloader.pin_memory
    ):
        return None
    return dataset.dataset


def _shard_batches(loader: DataLoaderShard, source: BatchedTensorDataset) -> Iterator[Any]:
    """The batches iterating ``loader`` (Accelerate's ``DataLoaderShard``) yields, read from
    ``source`` by index without the ``DataLoader`` under it.

    What the shard does around its loader is done the same way, with its own methods:
    synchronizing the RNGs it synchronizes, registering with Accelerate's gradient state
    (``begin`` / ``end``), setting the sampler's epoch, the random draw the ``DataLoader``
    iterator makes as it starts, skipping ``skip_batches``, moving each batch to its
    ``device``, setting ``end_of_dataloader`` before the last batch and counting the
    ``iteration``. The batch sampler is read one batch ahead, as the shard reads its
    loader. `tests/test_data.py` compares it with iterating the loader, on 1 and 2 processes.
    """
    if loader.rng_types is not None:
        synchronize_rng_states(loader.rng_types, loader.synchronized_generator)
    loader.begin()
    loader.set_epoch(loader.iteration)
    # non_blocking is the shard's own setting (dataloader_config), read as it reads it.
    device, non_blocking = loader.device, getattr(loader, "_non_blocking", False)
    index_batches = itertools.islice(loader.batch_sampler, loader.skip_batches, None)
    # The draw a DataLoader iterator makes as it starts (its workers' base seed), from the
    # loader's generator or torch's global RNG: a sampler drawing from the same one then
    # draws the numbers it draws under the DataLoader.
    torch.empty((), dtype=torch.int64).random_(generator=loader.generator)
    indices = next(index_batches, None)
    if indices is None:
        loader.end()
        return
    for next_indices in index_batches:
        batch = source.__getitems__(indices)
        yield batch if device is None else send_to_device(batch, device, non_blocking)
        indices = next_indices
    loader.end_of_dataloader = True
    batch = source.__getitems__(indices)
    yield batch if device is None else send_to_device(batch, device, non_blocking)
    loader.iteration += 1
    loader.end()
