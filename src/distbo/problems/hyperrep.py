"""Hyper-representation learning (Franceschi et al. 2018; the federated setting of FedNest / AggITD).

A network whose representation (the body) is the upper-level variable x and whose linear head is
the lower-level y:
  g_i(x, y) = mean_{b in train batch of i} CE(head_y(phi_x(a_b)), label_b) + l2/2 ||y||^2
  f_i(x, y) = mean_{b in validation batch of i} CE(head_y(phi_x(a_b)), label_b)
g is strongly convex in y (a linear head on fixed features plus L2). Metrics: test_acc, test_loss,
upper_loss, val_acc. Batches: see problems/classification.py.

``model = "mlp"`` (default): an MLP (features -> hidden... -> classes, 784 -> 200 -> 10 by default)
on flat vectors (models.DenseNet); x = the hidden layers, y = the head; x starts He-normal (from
distbo.rng), the head at zero. ``units()`` is ``{"net": net}`` (hidden-unit pruning).
``model = "cnn"``: per entry of ``channels``, a 3x3 convolution (padding 1), ReLU and 2x2 max-pool
(while the image is at least 2 pixels wide), then the flattened features into a linear head.
x = the convolutions' weights and biases, y = the head's; the images are the dataset's (1 channel
for MNIST / digits, 3 for CIFAR-10). Same initialisation rule (He-normal convolutions from
distbo.rng, zero biases and head). Its modules run through ``problems/module.py``'s flat views
(torch.func.functional_call); RABO / RAFBO prune its coordinates (no unit slicing of convolutions).
"""
from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from .. import rng
from ..models import DenseNet
from .base import Representation, rows
from .classification import _INIT, ClassificationParams, ClassificationTask, Hidden
from .module import FlatParams
from .softmax_head import LinearSoftmaxHead

Channels = list[Annotated[int, Field(ge=1, le=4096)]]


class HyperrepParams(ClassificationParams):
    model: Literal["mlp", "cnn"] = Field("mlp", description="representation: MLP (hidden) or CNN (channels)")
    hidden: Hidden = Field([200], min_length=1, max_length=8, description="hidden sizes of the MLP representation (x)")
    channels: Channels = Field([16, 32], min_length=1, max_length=8,
                               description="channels of the CNN's 3x3 convolutions (x), model='cnn'")


class Hyperrep(ClassificationTask):
    def __init__(self, workers: int = 10, seed: int = 0, dtype=torch.float32,
                 params: HyperrepParams | None = None, **kw):
        p = params or HyperrepParams(**kw)
        super().__init__(workers, seed, dtype, p)
        self.net = DenseNet((self.data.features, *p.hidden, self.data.classes), split=len(p.hidden))
        self.d_x, self.d_y = self.net.numel("x"), self.net.numel("y")

    def g(self, x, y, batch, sizes=None):
        return self.ce(x, y, batch, sizes) + self.l2_term(y)

    # ----- g = head(features): the representation's features of the training samples -----
    def features(self, x: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        return self.net.body(x, inputs)

    def head_logits(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net.head(y, z)

    def g_head(self, z: torch.Tensor, y: torch.Tensor, batch) -> torch.Tensor:
        """g from the batch's features: the same operations as ``g`` after the representation."""
        return F.cross_entropy(self.head_logits(y, z), batch["labels"]) + self.l2_term(y)

    def pool(self, workers: torch.Tensor) -> dict[str, torch.Tensor]:
        """The workers' whole training shards, padded to the largest (see ``Representation``)."""
        tr = self.data.train
        workers = torch.as_tensor(workers, dtype=torch.int64)
        size, offset = tr.size[workers], tr.offset[workers]
        width = int(size.max()) if workers.numel() else 0
        pos = torch.arange(width)
        mask = pos < size.unsqueeze(-1)
        index = offset.unsqueeze(-1) + torch.minimum(pos, size.unsqueeze(-1) - 1)
        return {"inputs": rows(tr.inputs, index), "index": index, "mask": mask}

    def representation(self) -> Representation:
        """g depends on x through the hidden layers' features of each sample (problems/base.py)."""
        head = LinearSoftmaxHead(self.data.classes, self.d_y // self.data.classes - 1, self.params.l2)
        return Representation(self.features, self.g_head, self.pool, int(self.data.train.labels.numel()),
                              self.sample_g_index, head)


def conv_body(image: tuple[int, ...], channels: list[int]) -> tuple[nn.Sequential, int]:
    """The CNN representation for images of ``image`` = (C, H, W) and its output features."""
    c, h, w = image
    layers: list[nn.Module] = []
    for out in channels:
        layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU()]
        if min(h, w) >= 2:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        c = out
    return nn.Sequential(*layers, nn.Flatten()), c * h * w


class HyperrepCNN(Hyperrep):
    """Hyperrep with a convolutional representation (``model = "cnn"``)."""

    def __init__(self, workers: int = 10, seed: int = 0, dtype=torch.float32,
                 params: HyperrepParams | None = None, **kw):
        p = params or HyperrepParams(model="cnn", **kw)
        ClassificationTask.__init__(self, workers, seed, dtype, p)
        shape = tuple(self.data.shape)
        self.image = (1, *shape) if len(shape) == 2 else shape
        body, features = conv_body(self.image, p.channels)
        head = nn.Linear(features, self.data.classes)
        self.body, self.head = body.to(dtype), head.to(dtype)
        self.up, self.low = FlatParams(self.body, "task.channels"), FlatParams(self.head, "task")
        self.d_x, self.d_y = self.up.numel, self.low.numel

    def logits(self, x, y, inputs, sizes=None):
        return self.head_logits(y, self.features(x, inputs))

    def features(self, x, inputs):
        return self.up.bind(x)(inputs.reshape(*inputs.shape[:-1], *self.image))

    def head_logits(self, y, z):
        return self.low.bind(y)(z)

    def init(self, seed):
        """He-normal convolutions (std sqrt(2 / fan_in)) from distbo.rng, zero biases, zero head."""
        key = rng.key(seed, _INIT, 0)
        pieces = []
        for i, (name, shape) in enumerate(zip(self.up.names, self.up.shapes)):
            n = math.prod(shape)
            if name.endswith("weight"):
                fan_in = math.prod(shape[1:])
                pieces.append(rng.normal(rng.key(key, i), (n,), self.dtype) * math.sqrt(2.0 / fan_in))
            else:
                pieces.append(torch.zeros(n, dtype=self.dtype))
        return torch.cat(pieces), torch.zeros(self.d_y, dtype=self.dtype)

    def describe(self):
        return {**self.data.describe(), "model": "cnn", "image": list(self.image),
                "channels": list(self.params.channels), "d_x": self.d_x, "d_y": self.d_y}

    def units(self):
        return None


def make_hyperrep(p: HyperrepParams, workers: int, seed: int, dtype: torch.dtype) -> Hyperrep:
    cls = HyperrepCNN if p.model == "cnn" else Hyperrep
    return cls(workers=workers, seed=seed, dtype=dtype, params=p)
