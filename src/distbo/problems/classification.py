"""What the image-classification tasks (hyperclean.py, hyperrep.py) share: data, network, batches,
evaluation and the common parameters.

Data: ``FederatedData`` (data/federated.py): a test set, and per worker a training shard (used by
the lower level g) and a validation shard (used by the upper level f).

Batches are plain dicts with a leading worker axis, the contract pruning algorithms rely on:
  ``inputs`` [n, B, features] standardised pixels,  ``labels`` [n, B] int64,
  ``index``  [n, B] int64 (g-batches only): the samples' global positions in the training split.

Network: a ``models.DenseNet`` on flat vectors. Where x and y are exactly the network's parameters
(hyperrep: x = layers before ``net.split``, y = the rest), ``units()`` returns ``{"net": net}``, and
``f`` / ``g`` take ``sizes=`` (a sub-network's layer sizes, ``DenseNet.sub_sizes``) so a pruned
client computes with the sliced parameters (algorithms/submodels.py).
"""
from __future__ import annotations

import math
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from .. import rng
from ..data.federated import FederatedData, Split
from ..data.partition import TooFewSamples, parse_partition
from ..data.sources import check_spec
from ..errors import ConfigError
from ..models import DenseNet
from ..registry import Params
from .base import Problem, rows

Tensor = torch.Tensor
_INIT = 0x1417
Hidden = list[Annotated[int, Field(ge=1, le=100_000)]]  # hidden layer sizes


class ClassificationParams(Params):
    dataset: str = Field("mnist5k", description="mnist5k, digits or idx:PATH (folder of MNIST-format IDX files)")
    partition: str = Field("iid", description="how clients split the data: iid, dirichlet:ALPHA, shards:K")
    batch_size: int = Field(64, ge=1, le=100_000, description="minibatch per worker and level")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="share of each client's data used for validation (f)")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="share held out for testing (if the data has no test file)")
    max_test: int = Field(2000, ge=1, description="at most this many test samples")
    max_samples: int | None = Field(None, ge=2, description="cap on the train + validation pool (default: all)")
    l2: float = Field(1e-3, ge=0, le=100, description="L2 weight on the lower-level variable y")

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        try:
            return check_spec(v)
        except ValueError as exc:
            raise PydanticCustomError("dataset", str(exc)) from None

    @field_validator("partition")
    @classmethod
    def _partition(cls, v: str) -> str:
        try:
            parse_partition(v)
        except ValueError as exc:
            raise PydanticCustomError("partition", str(exc)) from None
        return v


def init_layers(net: DenseNet, layers: range, key: Tensor, dtype: torch.dtype) -> Tensor:
    """He-normal weights and zero biases for ``layers`` of ``net``, flat; the network's last layer
    (the head) starts at zero. Drawn with distbo.rng, so every process starts from the same point."""
    s, pieces = net.sizes, []
    for l in layers:
        w = rng.normal(rng.key(key, l), (s[l + 1] * s[l],), dtype) * math.sqrt(2.0 / s[l])
        pieces += [w if l < net.n_layers - 1 else torch.zeros_like(w), torch.zeros(s[l + 1], dtype=dtype)]
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=dtype)


class ClassificationTask(Problem):
    """Base of the classification tasks; subclasses set ``self.net`` and define ``g`` (and ``d_x``)."""

    net: DenseNet

    def __init__(self, workers: int, seed: int, dtype: torch.dtype, p: ClassificationParams):
        self.n_workers, self.dtype, self.params = workers, dtype, p
        try:
            self.data = FederatedData(p.dataset, workers, p.partition, seed, p.val_fraction, p.test_fraction,
                                      p.max_test, p.max_samples, dtype)
        except TooFewSamples as exc:
            raise ConfigError(exc.field, f"{exc} (dataset {p.dataset}, partition {p.partition})") from None
        self.batch_size = p.batch_size

    # ----- network -----
    def net_params(self, x: Tensor, y: Tensor) -> tuple[Tensor | None, Tensor]:
        """The network's (x-part, y-part) of the flat parameters (x is the representation here)."""
        return x, y

    def logits(self, x: Tensor, y: Tensor, inputs: Tensor, sizes: tuple[int, ...] | None = None) -> Tensor:
        return self.net.forward(*self.net_params(x, y), inputs, sizes)

    def ce(self, x: Tensor, y: Tensor, batch: dict[str, Tensor], sizes: tuple[int, ...] | None = None,
           reduction: str = "mean") -> Tensor:
        return F.cross_entropy(self.logits(x, y, batch["inputs"], sizes), batch["labels"], reduction=reduction)

    def l2_term(self, y: Tensor) -> Tensor:
        return 0.5 * self.params.l2 * (y @ y)

    # ----- Problem API -----
    def f(self, x, y, batch, sizes=None):
        """Upper level: cross-entropy on the worker's validation batch."""
        return self.ce(x, y, batch, sizes)

    def train_labels(self) -> Tensor:
        """Labels the lower level trains on (hyper-cleaning: the corrupted ones)."""
        return self.data.train.labels

    def sample(self, level, workers, key):
        """f: the worker's validation shard; g: its training shard (with global ``index``)."""
        if level == "g":
            batch = self.sample_g_index(workers, key)
            return {"inputs": rows(self.data.train.inputs, batch["index"]), **batch}
        workers = torch.as_tensor(workers, dtype=torch.int64)
        idx = self.data.val.draw(workers, key, self.batch_size)
        return {"inputs": rows(self.data.val.inputs, idx), "labels": rows(self.data.val.labels, idx)}

    def sample_g_index(self, workers, key):
        """A g-batch's labels and ``index`` without its inputs (the same draw as ``sample``)."""
        idx = self.data.train.draw(torch.as_tensor(workers, dtype=torch.int64), key, self.batch_size)
        return {"labels": rows(self.train_labels(), idx), "index": idx}

    def draws_per_shard(self, level):
        split = self.data.train if level == "g" else self.data.val
        return max(1, math.ceil(float(split.size.double().mean()) / self.batch_size))

    def init(self, seed):
        key = rng.key(seed, _INIT)
        return (init_layers(self.net, range(self.net.split), rng.key(key, 0), self.dtype),
                init_layers(self.net, range(self.net.split, self.net.n_layers), rng.key(key, 1), self.dtype))

    def _split_metrics(self, x: Tensor, y: Tensor, split: Split) -> tuple[Tensor, Tensor]:
        """Per-sample cross-entropy and correctness on a whole split (one forward pass)."""
        with torch.no_grad():
            out = self.logits(x, y, split.inputs)
            return F.cross_entropy(out, split.labels, reduction="none"), out.argmax(-1) == split.labels

    def evaluate(self, x, y):
        """upper_loss = f = mean over workers of each worker's validation cross-entropy (full shard);
        test_loss / test_acc on the held-out test set."""
        val = self.data.val
        loss, hit = self._split_metrics(x, y, val)
        per_worker = torch.zeros(self.n_workers, dtype=torch.float64).index_add_(0, val.owner, loss.double())
        with torch.no_grad():
            out = self.logits(x, y, self.data.test_inputs)
        labels = self.data.test_labels
        return {"upper_loss": float((per_worker / val.size).mean()), "val_acc": float(hit.double().mean()),
                "test_loss": float(F.cross_entropy(out.double(), labels)),
                "test_acc": float((out.argmax(-1) == labels).double().mean())}

    def describe(self) -> dict[str, Any]:
        return {**self.data.describe(), "network": list(self.net.sizes), "net_split": self.net.split,
                "d_x": self.d_x, "d_y": self.d_y}

    def units(self):
        """``{"net": DenseNet}`` when x and y are the network's parameters and it has hidden units."""
        covers = (self.net.numel("x"), self.net.numel("y")) == (self.d_x, self.d_y)
        return {"net": self.net} if covers and self.net.n_layers > 1 else None
