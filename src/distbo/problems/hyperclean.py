"""Data hyper-cleaning (Franceschi et al. 2017; the federated setting of FedNest / AggITD).

A share ``noise`` of the training labels is corrupted (each chosen sample gets a uniformly random
DIFFERENT label). The upper-level variable x holds one weight logit per training sample (d_x =
training-set size, coordinate = the sample's global index ``batch["index"]``, so a worker's loss only
touches its own samples' coordinates); the lower level trains a classifier y (linear, or an MLP with
``model = "mlp"``) on the sigmoid(x)-weighted loss; the upper level is the validation loss:
  g_i(x, y) = mean_{b in train batch of i} sigmoid(x_b) CE(net_y(a_b), noisy label_b) + l2/2 ||y||^2
  f_i(x, y) = mean_{b in validation batch of i} CE(net_y(a_b), label_b)
x starts at 0 (every weight 1/2). Metrics besides test_acc / test_loss: ``clean_recall`` = share
of corrupted samples with sigmoid(x) < 1/2, ``clean_precision`` = share of those flagged
(sigmoid(x) < 1/2) that are corrupted (0 while nothing is flagged), ``clean_f1``.

Batches: see problems/classification.py; g-batches carry ``index``. The network (``self.net``,
``split = 0``) is all of y; x is not part of it, so ``units()`` is None (pruning algorithms fall
back to coordinate masks) and ``f`` / ``g`` still accept ``sizes=`` for a sliced classifier.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from .. import rng
from ..data.partition import permutation
from ..models import DenseNet
from .classification import ClassificationParams, ClassificationTask, Hidden

Tensor = torch.Tensor
_NOISE = 0x7015E


class HypercleanParams(ClassificationParams):
    noise: float = Field(0.5, ge=0, lt=1, description="share of training labels corrupted")
    model: Literal["linear", "mlp"] = Field("linear", description="the lower-level classifier")
    hidden: Hidden = Field([200], min_length=1, max_length=8, description="MLP hidden sizes (model = 'mlp')")


def corrupt(labels: Tensor, fraction: float, classes: int, key: Tensor) -> tuple[Tensor, Tensor]:
    """(noisy labels, corrupted mask): exactly round(fraction N) samples get another label."""
    n = labels.numel()
    chosen = permutation(rng.key(key, 1), n)[: round(fraction * n)]
    mask = torch.zeros(n, dtype=torch.bool)
    mask[chosen] = True
    shift = 1 + rng.randint(rng.key(key, 2), max(classes - 1, 1), (n,))
    return torch.where(mask, (labels + shift) % classes, labels), mask


class Hyperclean(ClassificationTask):
    defaults = {"beta": 0.03, "gamma": 0.03}  # SOBA sweep on mnist5k (docs/defaults.md); alpha is derived

    def __init__(self, workers: int = 10, seed: int = 0, dtype=torch.float32,
                 params: HypercleanParams | None = None, **kw):
        p = params or HypercleanParams(**kw)
        super().__init__(workers, seed, dtype, p)
        hidden = tuple(p.hidden) if p.model == "mlp" else ()
        self.net = DenseNet((self.data.features, *hidden, self.data.classes), split=0)
        self.d_x, self.d_y = self.data.train.labels.numel(), self.net.numel("y")
        self.noisy, self.corrupted = corrupt(self.data.train.labels, p.noise, self.data.classes,
                                             rng.key(seed, _NOISE))

    def net_params(self, x, y):
        return None, y

    def train_labels(self):
        return self.noisy

    def g(self, x, y, batch, sizes=None):
        per_sample = self.ce(x, y, batch, sizes, reduction="none")
        return (torch.sigmoid(x[batch["index"]]) * per_sample).mean() + self.l2_term(y)

    def init(self, seed):
        return torch.zeros(self.d_x, dtype=self.dtype), super().init(seed)[1]

    def cleaning(self, x: Tensor) -> dict[str, float]:
        flagged, bad = x < 0, self.corrupted
        hits = float((flagged & bad).sum())
        recall = hits / max(int(bad.sum()), 1)
        precision = hits / int(flagged.sum()) if bool(flagged.any()) else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        return {"clean_recall": recall, "clean_precision": precision, "clean_f1": f1}

    def evaluate(self, x, y):
        return {**super().evaluate(x, y), **self.cleaning(x)}

    def describe(self):
        per_client = torch.zeros(self.n_workers, dtype=torch.int64).index_add_(
            0, self.data.train.owner, self.corrupted.to(torch.int64))
        return {**super().describe(), "noise": self.params.noise, "corrupted": int(self.corrupted.sum()),
                "client_corrupted": per_client.tolist()}
