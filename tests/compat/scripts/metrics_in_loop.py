"""pytorch-accelerated's "metrics in the loop" example: a Trainer subclass updates a metric
in calculate_eval_batch_loss and records it in eval_epoch_end."""

from offline_data import Accuracy, mnist_like
from pytorch_accelerated import Trainer
from torch import nn, optim
from torch.utils.data import random_split


class TrainerWithMetrics(Trainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.metrics = Accuracy()

    def training_run_start(self):
        self.metrics.to(self.device)

    def calculate_eval_batch_loss(self, batch):
        batch_output = super().calculate_eval_batch_loss(batch)
        preds = batch_output["model_outputs"].argmax(dim=-1)
        self.metrics.update(preds, batch[1])
        return batch_output

    def eval_epoch_end(self):
        self.run_history.update_metric("accuracy", self.metrics.compute().cpu())
        self.metrics.reset()


def main():
    dataset = mnist_like(96)
    train_dataset, validation_dataset, test_dataset = random_split(dataset, [64, 16, 16])
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    trainer = TrainerWithMetrics(model=model, loss_func=nn.CrossEntropyLoss(), optimizer=optimizer)
    trainer.train(
        train_dataset=train_dataset,
        eval_dataset=validation_dataset,
        num_epochs=2,
        per_device_batch_size=16,
    )
    trainer.evaluate(dataset=test_dataset, per_device_batch_size=8)
    return trainer
