"""A dataset split into test / per-client train / per-client validation, and batch sampling.

Construction (every draw a pure function of the seed, so all processes build the same thing):
  1. test set: the source's own test file if it has one, else a random ``test_fraction`` of the
     pool; at most ``max_test`` samples either way (evaluation stays one cheap forward pass);
  2. the remaining pool (optionally capped at ``max_samples``) is partitioned over the n clients
     (data/partition.py), and each client's samples are split at random into its training shard
     and its validation shard (``val_fraction``, at least one sample in each);
  3. features are standardised with the training shards' mean and standard deviation (the latter
     floored at a tenth of its mean over features, so near-constant pixels do not blow up).

Storage: each split (train, val) holds its samples client-contiguously, ``inputs`` [N, F] and
``labels`` [N], with per-client ``offset`` and ``size`` [n]. A minibatch for any set of workers is
one batched draw and one gather, with no per-worker Python loop:
  local = rng.randint(rng.key(key, workers), size[workers], (B,));  index = offset[workers, None] + local
``index`` is then the sample's global position in its split (for hyper-cleaning, its coordinate in x).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .. import rng
from .partition import histograms, partition, permutation
from .sources import Source, load_source

Tensor = torch.Tensor
_STREAM = 0xDA7A


def draw_rows(offset: Tensor, size: Tensor, workers: Tensor, key: Tensor, batch_size: int) -> Tensor:
    """[n_local, B] global rows of a with-replacement minibatch from each worker's contiguous shard
    (``offset``, ``size`` [n]); a pure function of (workers, key)."""
    local = rng.randint(rng.key(key, workers), size[workers], (batch_size,))
    return offset[workers].unsqueeze(-1) + local


@dataclass
class Split:
    """One split's samples over the clients, stored client-contiguously."""

    inputs: Tensor  # [N, F]
    labels: Tensor  # [N] int64
    offset: Tensor  # [n] first position of each client
    size: Tensor  # [n] samples of each client

    @property
    def owner(self) -> Tensor:
        """Client of each sample [N]."""
        return torch.repeat_interleave(torch.arange(self.size.numel()), self.size)

    def draw(self, workers: Tensor, key: Tensor, batch_size: int) -> Tensor:
        """[n_local, B] global indices of a with-replacement minibatch from each worker's shard."""
        return draw_rows(self.offset, self.size, workers, key, batch_size)

    def parts(self) -> list[Tensor]:
        return list(torch.split(torch.arange(self.labels.numel()), self.size.tolist()))


def _contiguous(inputs: Tensor, labels: Tensor, owner: Tensor, n: int) -> Split:
    order = torch.sort(owner, stable=True).indices
    size = torch.bincount(owner, minlength=n)
    offset = torch.cumsum(size, 0) - size
    return Split(inputs[order], labels[order], offset, size)


class FederatedData:
    """Test set plus per-client train and validation shards of one dataset (see module doc)."""

    def __init__(self, dataset: str, workers: int, partition_spec: str = "iid", seed: int = 0,
                 val_fraction: float = 0.2, test_fraction: float = 0.2, max_test: int = 2000,
                 max_samples: int | None = None, dtype: torch.dtype = torch.float32):
        src: Source = load_source(dataset)
        self.dataset, self.partition, self.n = dataset, partition_spec, workers
        self.classes, self.shape = src.n_classes, src.shape
        key = rng.key(seed, _STREAM)
        x, y = torch.from_numpy(src.inputs), torch.from_numpy(src.labels)
        if src.test_inputs is not None:
            pick = permutation(rng.key(key, 1), src.test_labels.shape[0])[:max_test]
            tx, ty = torch.from_numpy(src.test_inputs)[pick], torch.from_numpy(src.test_labels)[pick]
        else:
            perm = permutation(rng.key(key, 1), y.numel())
            n_test = min(max_test, max(1, round(test_fraction * y.numel())))
            tx, ty = x[perm[:n_test]], y[perm[:n_test]]
            x, y = x[perm[n_test:]], y[perm[n_test:]]
        if max_samples is not None and max_samples < y.numel():
            keep = permutation(rng.key(key, 2), y.numel())[:max_samples]
            x, y = x[keep], y[keep]
        parts = partition(y, workers, partition_spec, rng.key(key, 3), min_size=2)
        owner = torch.empty(y.numel(), dtype=torch.int64)
        for i, p in enumerate(parts):
            owner[p] = i
        is_val = self._val_mask(owner, workers, val_fraction, rng.key(key, 4))
        mean = x[~is_val].mean(0)
        std = x[~is_val].std(0)
        scale = std.clamp_min(0.1 * float(std.mean()) + 1e-12)
        self.mean, self.scale = mean, scale

        def prep(a: Tensor) -> Tensor:
            return ((a - mean) / scale).to(dtype)

        self.train = _contiguous(prep(x[~is_val]), y[~is_val], owner[~is_val], workers)
        self.val = _contiguous(prep(x[is_val]), y[is_val], owner[is_val], workers)
        self.test_inputs, self.test_labels = prep(tx), ty

    @staticmethod
    def _val_mask(owner: Tensor, n: int, fraction: float, key: Tensor) -> Tensor:
        """A random ``fraction`` of each client's samples (at least 1, at most all but 1)."""
        size = torch.bincount(owner, minlength=n)
        n_val = torch.clamp(torch.round(fraction * size.to(torch.float64)).to(torch.int64), 1, None)
        n_val = torch.minimum(n_val, size - 1)
        order = permutation(key, owner.numel())
        order = order[torch.sort(owner[order], stable=True).indices]  # by client, random within
        start = torch.cumsum(size, 0) - size
        rank = torch.empty_like(owner)
        rank[order] = torch.arange(owner.numel()) - start[owner[order]]
        return rank < n_val[owner]

    @property
    def features(self) -> int:
        return int(self.train.inputs.shape[1])

    def describe(self) -> dict[str, Any]:
        """Sizes and per-client label histograms (for config.json's task_info)."""
        return {
            "dataset": self.dataset, "partition": self.partition, "features": self.features,
            "classes": self.classes, "image_shape": list(self.shape),
            "train_size": self.train.labels.numel(), "val_size": self.val.labels.numel(),
            "test_size": self.test_labels.numel(),
            "client_train_sizes": self.train.size.tolist(), "client_val_sizes": self.val.size.tolist(),
            "client_train_label_hist": histograms(self.train.labels, self.train.parts(), self.classes),
            "client_val_label_hist": histograms(self.val.labels, self.val.parts(), self.classes),
        }
