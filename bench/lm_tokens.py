"""Tokens per second of a small causal language model on the CPU, trained with
token-weighted gradient accumulation: trainwright against a hand-written loop.

The model is a random-init GPT-2 from ``transformers`` (2 layers, width 64, vocabulary 512,
no download); the data are sequences of random lengths (16..128 tokens) right-padded to 128,
with the padding masked out of the loss. Each update accumulates 4 micro-batches of 8
sequences. Loops measured, each in a fresh process, interleaved over rounds:

- ``torch``: a hand-written loop that is exact the way the Hugging Face Trainer is: it
  counts the window's target tokens up front, then back-propagates each micro-batch's summed
  token loss divided by that count (one host read per window);
- ``trainwright+num_items``: ``Trainer`` whose ``calculate_train_batch_loss`` returns the
  micro-batch's mean token loss and ``num_items`` (its token count, a tensor);
- ``trainwright``: the same returning only ``batch_size`` (weighs by sequences: not
  token-exact, for the cost of the weighting itself).

Usage, from the repository root::

    python bench/lm_tokens.py                 # 5 rounds of 20 updates each
    python bench/lm_tokens.py --rounds 3 --updates 10

Run ``PYTHONPATH=src`` to measure the working tree (any other checkout's ``src`` works too, to
compare versions of trainwright). Prints a markdown table of medians: tokens per second of
wall-clock time, and per CPU-second of the training process (one thread; steadier on a
shared machine), each with its ratio to the hand-written loop. Not part of the test run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

VOCAB_SIZE = 512
MAX_LENGTH = 128
BATCH_SIZE = 8
ACCUMULATION = 4
IGNORE_INDEX = -100
LOOPS = ("torch", "trainwright+num_items", "trainwright")


def build(num_updates: int):
    import torch
    from torch.utils.data import TensorDataset
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_positions=MAX_LENGTH,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=VOCAB_SIZE - 1,
        eos_token_id=VOCAB_SIZE - 1,
    )
    model = GPT2LMHeadModel(config)
    num_sequences = num_updates * ACCUMULATION * BATCH_SIZE
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, VOCAB_SIZE, (num_sequences, MAX_LENGTH), generator=generator)
    lengths = torch.randint(16, MAX_LENGTH + 1, (num_sequences,), generator=generator)
    attention_mask = (torch.arange(MAX_LENGTH) < lengths[:, None]).long()
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    labels[:, 0] = IGNORE_INDEX  # the first token is never a target
    dataset = TensorDataset(input_ids, attention_mask, labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return model, optimizer, dataset


def token_loss_sum(model, input_ids, attention_mask, labels):
    import torch.nn.functional as F

    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1),
        labels[:, 1:].flatten(),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def run_torch(model, optimizer, dataset) -> None:
    from torch.utils.data import DataLoader

    batches = list(DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=False))
    model.train()
    for start in range(0, len(batches), ACCUMULATION):
        window = batches[start : start + ACCUMULATION]
        num_tokens = sum((labels[:, 1:] != IGNORE_INDEX).sum() for _, _, labels in window)
        num_tokens = num_tokens.item()  # the window's total, known before its backward passes
        for input_ids, attention_mask, labels in window:
            (token_loss_sum(model, input_ids, attention_mask, labels) / num_tokens).backward()
        optimizer.step()
        optimizer.zero_grad()


def run_trainwright(model, optimizer, dataset, returns_num_items: bool) -> None:
    import torch.nn.functional as F

    from trainwright import Trainer

    class LanguageModelTrainer(Trainer):
        def calculate_train_batch_loss(self, batch):
            input_ids, attention_mask, labels = batch
            num_tokens = (labels[:, 1:] != IGNORE_INDEX).sum()
            loss = token_loss_sum(self.model, input_ids, attention_mask, labels) / num_tokens
            output = {"loss": loss, "model_outputs": None, "batch_size": input_ids.size(0)}
            if returns_num_items:
                output["num_items"] = num_tokens
            return output

    trainer = LanguageModelTrainer(model, F.cross_entropy, optimizer, callbacks=())
    trainer.train(
        dataset,
        num_epochs=1,
        per_device_batch_size=BATCH_SIZE,
        gradient_accumulation_steps=ACCUMULATION,
        train_dataloader_kwargs={"shuffle": False, "num_workers": 0, "persistent_workers": False},
    )


def worker(loop: str, num_updates: int) -> None:
    import torch

    torch.set_num_threads(1)
    model, optimizer, dataset = build(num_updates)
    num_tokens = int((dataset.tensors[2][:, 1:] != IGNORE_INDEX).sum())
    start, start_cpu = time.perf_counter(), time.process_time()
    if loop == "torch":
        run_torch(model, optimizer, dataset)
    else:
        run_trainwright(model, optimizer, dataset, returns_num_items=loop.endswith("num_items"))
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    result = {"tokens_per_s": num_tokens / seconds, "tokens_per_cpu_s": num_tokens / cpu_seconds}
    print("BENCH_RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--worker", choices=LOOPS)
    arguments = parser.parse_args()
    if arguments.worker:
        worker(arguments.worker, arguments.updates)
        return
    results: dict[str, list[dict[str, float]]] = {loop: [] for loop in LOOPS}
    for round_index in range(arguments.rounds):
        for offset in range(len(LOOPS)):  # a different loop first each round
            loop = LOOPS[(round_index + offset) % len(LOOPS)]
            command = [sys.executable, __file__, "--worker", loop]
            command += ["--updates", str(arguments.updates)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            line = next(line for line in output.splitlines() if line.startswith("BENCH_RESULT"))
            results[loop].append(json.loads(line.split(" ", 1)[1]))
            print(f"round {round_index + 1}: {loop} done", file=sys.stderr)

    def median(loop: str, key: str) -> float:
        return statistics.median(result[key] for result in results[loop])

    print("| loop | tokens/s | vs hand-written | tokens per CPU-second | vs hand-written |")
    print("|---|---:|---:|---:|---:|")
    for loop in LOOPS:
        row = [f"`{loop}`"]
        for key in ("tokens_per_s", "tokens_per_cpu_s"):
            value = median(loop, key)
            row += [f"{value:,.0f}", f"{value / median('torch', key):.3f}"]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
