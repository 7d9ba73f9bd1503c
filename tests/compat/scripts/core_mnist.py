"""pytorch-accelerated's core example: an MLP on MNIST with the default callbacks, then an
evaluation on held-out data (generated, MNIST-shaped data here)."""

from offline_data import mnist_like
from pytorch_accelerated import Trainer
from torch import nn, optim
from torch.utils.data import random_split


class MNISTModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(
            nn.Linear(in_features=784, out_features=32),
            nn.ReLU(),
            nn.Linear(in_features=32, out_features=10),
        )

    def forward(self, input):
        return self.main(input.view(input.shape[0], -1))


def main():
    dataset = mnist_like(96)
    train_dataset, validation_dataset, test_dataset = random_split(dataset, [64, 16, 16])
    model = MNISTModel()
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_func = nn.CrossEntropyLoss()

    trainer = Trainer(model, loss_func=loss_func, optimizer=optimizer)
    trainer.train(
        train_dataset=train_dataset,
        eval_dataset=validation_dataset,
        num_epochs=2,
        per_device_batch_size=16,
    )
    trainer.evaluate(dataset=test_dataset, per_device_batch_size=8)
    return trainer
