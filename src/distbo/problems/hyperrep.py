"""Hyper-representation learning (Franceschi et al. 2018; the federated setting of FedNest / AggITD).

An MLP (features -> hidden... -> classes, 784 -> 200 -> 10 by default) whose hidden layer(s) are the
upper-level variable x (the shared representation) and whose linear head is the lower-level y:
  g_i(x, y) = mean_{b in train batch of i} CE(head_y(phi_x(a_b)), label_b) + l2/2 ||y||^2
  f_i(x, y) = mean_{b in validation batch of i} CE(head_y(phi_x(a_b)), label_b)
g is strongly convex in y (a linear head on fixed features plus L2). x starts He-normal (from
distbo.rng), the head at zero. Metrics: test_acc, test_loss, upper_loss, val_acc.

Batches: see problems/classification.py. ``units()`` is ``{"net": net}`` with ``net.split`` = the
number of hidden layers: x = the hidden layers' flat parameters, y = the head's.
"""
from __future__ import annotations

import torch
from pydantic import Field

from ..models import DenseNet
from .classification import ClassificationParams, ClassificationTask, Hidden


class HyperrepParams(ClassificationParams):
    hidden: Hidden = Field([200], min_length=1, max_length=8, description="hidden sizes of the representation (x)")


class Hyperrep(ClassificationTask):
    def __init__(self, workers: int = 10, seed: int = 0, dtype=torch.float32,
                 params: HyperrepParams | None = None, **kw):
        p = params or HyperrepParams(**kw)
        super().__init__(workers, seed, dtype, p)
        self.net = DenseNet((self.data.features, *p.hidden, self.data.classes), split=len(p.hidden))
        self.d_x, self.d_y = self.net.numel("x"), self.net.numel("y")

    def g(self, x, y, batch, sizes=None):
        return self.ce(x, y, batch, sizes) + self.l2_term(y)
