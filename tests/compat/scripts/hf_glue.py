"""pytorch-accelerated's Hugging Face GLUE MRPC example: a Trainer subclass for a
transformers model computing its own loss, with a metric gathered across processes and a
``create_scheduler(self)`` override. A tiny randomly initialised BERT and generated sentence
pairs stand in for bert-base-cased and GLUE."""

from functools import partial

import torch
from pytorch_accelerated.trainer import Trainer
from transformers import BertConfig, BertForSequenceClassification, get_linear_schedule_with_warmup

EVAL_BATCH_SIZE = 8


class GeneratedMrpc(torch.utils.data.Dataset):
    """Token-id pairs of random lengths; the label says whether the pair repeats a token."""

    def __init__(self, num_samples, vocab_size, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(num_samples):
            length = int(torch.randint(4, 12, (1,), generator=generator))
            input_ids = torch.randint(5, vocab_size, (length,), generator=generator)
            label = int(torch.randint(0, 2, (1,), generator=generator))
            if label:
                input_ids[-1] = input_ids[0]
            self.items.append({"input_ids": input_ids, "labels": label})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def collate_fn(examples):
    longest = max(len(example["input_ids"]) for example in examples)
    input_ids = torch.zeros(len(examples), longest, dtype=torch.long)
    attention_mask = torch.zeros(len(examples), longest, dtype=torch.long)
    for row, example in enumerate(examples):
        input_ids[row, : len(example["input_ids"])] = example["input_ids"]
        attention_mask[row, : len(example["input_ids"])] = 1
    labels = torch.tensor([example["labels"] for example in examples])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class AccuracyAndF1:
    """A stand-in for ``evaluate.load("glue", "mrpc")``: add_batch, then compute."""

    def __init__(self):
        self.predictions, self.references = [], []

    def add_batch(self, predictions, references):
        self.predictions.append(predictions.cpu())
        self.references.append(references.cpu())

    def compute(self):
        predictions, references = torch.cat(self.predictions), torch.cat(self.references)
        self.predictions, self.references = [], []
        true_positives = ((predictions == 1) & (references == 1)).sum().item()
        f1 = (
            2
            * true_positives
            / max((predictions == 1).sum().item() + (references == 1).sum().item(), 1)
        )
        return {"accuracy": (predictions == references).float().mean().item(), "f1": f1}


class TransformersTrainer(Trainer):
    def __init__(self, model, optimizer, metric, *args, **kwargs):
        super().__init__(*args, model=model, optimizer=optimizer, loss_func=None, **kwargs)
        self.metric = metric

    def calculate_train_batch_loss(self, batch):
        outputs = self.model(**batch)
        return {
            "loss": outputs.loss,
            "model_outputs": outputs.logits,
            "batch_size": batch["attention_mask"].size(0),
        }

    def calculate_eval_batch_loss(self, batch):
        with torch.no_grad():
            outputs = self.model(**batch)
        predictions = outputs.logits.argmax(dim=-1)
        self.metric.add_batch(
            predictions=self._accelerator.gather(predictions),
            references=self._accelerator.gather(batch["labels"]),
        )
        return {
            "loss": outputs.loss,
            "model_outputs": outputs.logits,
            "batch_size": batch["attention_mask"].size(0),
        }

    def eval_epoch_end(self):
        self.run_history.update_metric("metrics", self.metric.compute())

    def create_scheduler(self):
        return self.create_scheduler_fn(
            optimizer=self.optimizer,
            num_training_steps=len(self._train_dataloader) * self.run_config["num_epochs"],
        )


def main(num_epochs=2, batch_size=8, gradient_accumulation_steps=2):
    config = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=2,
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    optimizer = torch.optim.AdamW(params=model.parameters(), lr=1e-3)
    trainer = TransformersTrainer(model=model, optimizer=optimizer, metric=AccuracyAndF1())
    lr_scheduler = partial(get_linear_schedule_with_warmup, num_warmup_steps=2)
    trainer.train(
        num_epochs=num_epochs,
        train_dataset=GeneratedMrpc(16, config.vocab_size),
        eval_dataset=GeneratedMrpc(8, config.vocab_size, seed=1),
        collate_fn=collate_fn,
        per_device_batch_size=batch_size,
        train_dataloader_kwargs={"num_workers": 0},
        eval_dataloader_kwargs={"batch_size": EVAL_BATCH_SIZE, "num_workers": 0},
        create_scheduler_fn=lr_scheduler,
        gradient_accumulation_steps=gradient_accumulation_steps,
    )
    return trainer
