"""A hyper-parameter problem of your own: per-feature weight decay of a linear classifier, 4 clients.

The upper level x is one log weight decay per feature (a tensor), the lower level y a logistic
regression on scikit-learn's bundled breast-cancer data (30 features); every client has its own
training (g) and validation (f) samples. Phi(x) is the validation loss of the classifier trained
with decay exp(x): the problem of issue 26, on which the former derived x step barely moved x.

    python examples/weight_decay.py
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import distbo


def breast_cancer(workers: int = 4):
    """Per-client (train, val) tensors and a test set: standardised features, labels 0/1."""
    from sklearn.datasets import load_breast_cancer

    features, labels = load_breast_cancer(return_X_y=True)
    x = torch.tensor(features, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    y = torch.tensor(labels, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    test = (x[:100], y[:100])
    chunks = list(zip(x[100:].chunk(workers), y[100:].chunk(workers)))
    train = [(a[: len(a) // 2], b[: len(b) // 2]) for a, b in chunks]
    val = [(a[len(a) // 2:], b[len(b) // 2:]) for a, b in chunks]
    return train, val, test


def validation_loss(decay, model, batch):
    features, labels = batch
    return F.cross_entropy(model(features), labels)


def regularised(decay, model, batch):  # strongly convex in y for every finite x
    features, labels = batch
    w = model.params["weight"]
    return F.cross_entropy(model(features), labels) + 0.5 * (torch.exp(decay) * w * w).sum() / w.shape[0]


def make_problem(workers: int = 4, batch_size: int = 32) -> distbo.ModuleProblem:
    torch.manual_seed(0)
    train, val, test = breast_cancer(workers)
    model = nn.Linear(30, 2)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    decay = torch.full((30,), -2.0)  # exp(-2) = 0.135 on every feature to start
    return distbo.ModuleProblem(upper=decay, lower=model, f=validation_loss, g=regularised,
                                train=train, val=val, batch_size=batch_size, test=test)


if __name__ == "__main__":
    problem = make_problem()
    result = distbo.run(problem, algorithm="soba", rounds=200, eval_every=50)
    for row in result.metrics:
        print(f"round {row['round']:4d}  validation loss {row['upper_loss']:.4f}  test accuracy {row['test_acc']:.3f}")
    print("learned decays:", [round(float(v), 3) for v in torch.exp(result.x)])
