"""Functional dense networks on flat parameter vectors, with structured (hidden-unit) slicing.

A ``DenseNet`` is a chain of affine layers with ReLU between them, e.g. sizes (784, 200, 10).
Its parameters live in ONE flat vector: for each layer, the weight [out, in] row-major, then the
bias [out]. The layers can be split between two flat vectors (``split``): layers before it form
the upper-level variable x (e.g. the representation), layers from it on the lower-level y (the
head), as hyper-representation does; ``split = 0`` puts everything in y.

Structured pruning keeps a subset of each hidden layer's units. ``slice_params`` gathers the
sub-network's parameters (smaller matrices: the rows of a unit's layer and the columns of the next
layer), so a client really computes with the smaller network; ``scatter`` puts a sub-network's
vectors back in place, and ``unit_masks`` gives the full-size 0/1 masks of the kept coordinates.
Every function is written for one client and works under ``torch.func.vmap``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class DenseNet:
    sizes: tuple[int, ...]
    split: int = 0  # layers [0, split) belong to x, [split, L) to y

    @property
    def n_layers(self) -> int:
        return len(self.sizes) - 1

    def layer_numel(self, l: int, sizes: tuple[int, ...] | None = None) -> int:
        s = sizes or self.sizes
        return s[l + 1] * s[l] + s[l + 1]

    def numel(self, part: str, sizes: tuple[int, ...] | None = None) -> int:
        """Number of parameters in 'x' (layers before split) or 'y' (the rest)."""
        return sum(self.layer_numel(l, sizes) for l in self._layers(part))

    def _layers(self, part: str) -> range:
        return range(0, self.split) if part == "x" else range(self.split, self.n_layers)

    def unflatten(self, x: Tensor | None, y: Tensor, sizes: tuple[int, ...] | None = None):
        """[(W_l [out, in], b_l [out]) for every layer] as views of x and y.

        One ``split`` per vector rather than a slice per tensor: the backward of a split is one
        concatenation, where slices would each write their gradient into a zero-filled full-size
        buffer and then add them up (per worker under vmap, that dominated the round)."""
        s = sizes or self.sizes
        out = []
        for part, flat in (("x", x), ("y", y)):
            layers = self._layers(part)
            if not layers:
                continue
            pieces = flat.split([n for l in layers for n in (s[l + 1] * s[l], s[l + 1])])
            for j, l in enumerate(layers):
                out.append((pieces[2 * j].reshape(s[l + 1], s[l]), pieces[2 * j + 1]))
        return out

    def forward(self, x: Tensor | None, y: Tensor, inputs: Tensor, sizes: tuple[int, ...] | None = None) -> Tensor:
        """Logits of a batch of inputs [B, sizes[0]] (ReLU between layers)."""
        return self._layers_on(inputs, self.unflatten(x, y, sizes), relu_last=False)

    def body(self, x: Tensor, inputs: Tensor) -> Tensor:
        """The x-layers' output (after their ReLU) on inputs [B, sizes[0]]: the features y's layers
        take. ``forward(x, y, a) == head(y, body(x, a))`` operation for operation (split >= 1)."""
        s = self.sizes
        pieces = x.split([n for l in range(self.split) for n in (s[l + 1] * s[l], s[l + 1])])
        layers = [(pieces[2 * l].reshape(s[l + 1], s[l]), pieces[2 * l + 1]) for l in range(self.split)]
        return self._layers_on(inputs, layers, relu_last=True)

    def head(self, y: Tensor, features: Tensor) -> Tensor:
        """Logits from the x-layers' features (see ``body``)."""
        s, layers = self.sizes, range(self.split, self.n_layers)
        pieces = y.split([n for l in layers for n in (s[l + 1] * s[l], s[l + 1])])
        return self._layers_on(features, [(pieces[2 * j].reshape(s[l + 1], s[l]), pieces[2 * j + 1])
                                          for j, l in enumerate(layers)], relu_last=False)

    @staticmethod
    def _layers_on(h: Tensor, layers: list[tuple[Tensor, Tensor]], relu_last: bool) -> Tensor:
        for l, (w, b) in enumerate(layers):
            h = h @ w.T + b
            if relu_last or l < len(layers) - 1:
                h = torch.relu(h)
        return h

    def flops(self, batch: int, sizes: tuple[int, ...] | None = None) -> int:
        """Forward multiply-adds x2 for one batch (a backward pass costs about twice this)."""
        s = sizes or self.sizes
        return sum(2 * batch * s[l] * s[l + 1] for l in range(self.n_layers))

    # ----- structured sub-networks -----
    def sub_sizes(self, keep: list[int]) -> tuple[int, ...]:
        """Layer sizes when hidden layer h keeps keep[h] units."""
        return (self.sizes[0], *keep, self.sizes[-1])

    def _coords(self, part: str, idx: list[Tensor]) -> Tensor:
        """Flat positions (in the full x or y) of the sub-network's parameters, in sub-network order."""
        s = self.sizes
        full = [torch.arange(s[0])] + list(idx) + [torch.arange(s[-1])]
        pieces, off = [], 0
        for l in self._layers(part):
            rows, cols = full[l + 1], full[l]
            pieces.append(off + (rows[:, None] * s[l] + cols[None, :]).reshape(-1))
            off += s[l + 1] * s[l]
            pieces.append(off + rows)
            off += s[l + 1]
        return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)

    def coords(self, part: str, idx: list[Tensor]) -> Tensor:
        """Flat positions of the sub-network's ``part`` parameters; ``idx[h]`` may carry a leading
        client axis ([n, k_h]), giving one row of positions per client ([n, numel(part, sub)])."""
        if idx and idx[0].dim() == 2:
            return torch.vmap(lambda *i: self._coords(part, list(i)))(*idx)
        return self._coords(part, idx)

    def coverage(self, part: str, kept: list[Tensor], n: int) -> Tensor:
        """How many of n sub-networks keep each coordinate of ``part`` (float counts).

        ``kept[h]`` is the [n, sizes[h + 1]] 0/1 matrix of the units each sub-network keeps in
        hidden layer h. A weight is kept when both its units are, so a layer's weight counts are
        the product rows' @ cols of its units' matrices, and its bias counts those of its rows.
        """
        s = self.sizes
        dt = kept[0].dtype if kept else torch.float64
        full = [torch.ones(n, s[0], dtype=dt), *kept, torch.ones(n, s[-1], dtype=dt)]
        pieces = []
        for l in self._layers(part):
            rows, cols = full[l + 1], full[l]
            pieces += [(rows.T @ cols).reshape(-1), rows.sum(0)]
        return torch.cat(pieces) if pieces else torch.zeros(0, dtype=dt)

    def slice_params(self, flat: Tensor, part: str, idx: list[Tensor]) -> Tensor:
        """The sub-network's flat parameters of ``part`` for hidden-unit indices ``idx`` (one per hidden layer)."""
        return flat[self._coords(part, idx)]

    def scatter(self, sub: Tensor, part: str, idx: list[Tensor]) -> Tensor:
        """Full-size vector with the sub-network's entries in place and zeros elsewhere."""
        out = sub.new_zeros(self.numel(part))
        return out.index_copy(0, self._coords(part, idx), sub)

    def unit_masks(self, idx: list[Tensor], dtype=torch.float32) -> tuple[Tensor, Tensor]:
        """0/1 masks (m_x, m_y) of the coordinates a sub-network keeps."""
        masks = []
        for part in ("x", "y"):
            m = torch.zeros(self.numel(part), dtype=dtype)
            m[self._coords(part, idx)] = 1
            masks.append(m)
        return masks[0], masks[1]
