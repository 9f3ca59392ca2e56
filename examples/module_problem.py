"""Bring your own model and data: a CNN hyper-representation on the 8x8 digits, 4 clients.

The upper level learns the convolutional body (x), the lower level a linear head (y) on top of it,
each client with its own training (g) and validation (f) data. You write the losses on modules;
ModuleProblem flattens the parameters, draws the batches, counts the bits and evaluates.

    python examples/module_problem.py
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import distbo


def digits(workers: int = 4):
    """Per-client (train, val) tensors and a test set, from scikit-learn's bundled digits."""
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    x = torch.tensor(images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(labels)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    test = (x[:300], y[:300])
    chunks = list(zip(x[300:].chunk(workers), y[300:].chunk(workers)))
    train = [(a[: len(a) * 3 // 4], b[: len(b) * 3 // 4]) for a, b in chunks]
    val = [(a[len(a) * 3 // 4:], b[len(b) * 3 // 4:]) for a, b in chunks]
    return train, val, test


def cross_entropy(up, low, batch):
    images, labels = batch
    return F.cross_entropy(low(up(images)), labels)


def regularised(up, low, batch):  # strongly convex in the head y
    return cross_entropy(up, low, batch) + 1e-3 * sum((p ** 2).sum() for p in low.params.values())


def make_problem(workers: int = 4) -> distbo.ModuleProblem:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    head = nn.Linear(8 * 4 * 4, 10)
    train, val, test = digits(workers)
    return distbo.ModuleProblem(upper=body, lower=head, f=cross_entropy, g=regularised,
                                train=train, val=val, batch_size=32, test=test)


if __name__ == "__main__":
    problem = make_problem()
    print(f"x: {problem.d_x} conv parameters, y: {problem.d_y} head parameters, {problem.n_workers} clients")
    result = distbo.run(problem, algorithm={"name": "ef-soba", "alpha": 0.3, "beta": 0.3, "gamma": 0.3},
                        compressor="topk:0.1", rounds=300, eval_every=100)
    for row in result.metrics:
        print(f"round {row['round']:4d}  bits_up {row['bits_up']:>11,}  validation loss {row['upper_loss']:.3f}"
              f"  test accuracy {row['test_acc']:.3f}")
