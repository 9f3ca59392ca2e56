"""Splitting a labelled pool over clients: ``iid``, ``dirichlet:ALPHA`` and ``shards:K``.

  iid            a random permutation cut into n near-equal parts;
  dirichlet:A    label skew: for every class c, proportions p_c ~ Dirichlet(A 1_n) over the clients
                 and the class's samples are cut in those proportions (small A: each client sees few
                 classes; large A: close to iid);
  shards:K       FedNest / FedAvg style: samples sorted by label, cut into n K equal shards, each
                 client gets K random shards (so about K labels; a shard may straddle two labels).
Every draw is a pure function of the key (``distbo.rng``; Dirichlet through Gamma variates drawn
by Marsaglia-Tsang with a fixed number of vectorised proposals), so every process builds the
same partition. A client that ends up with fewer than ``min_size`` samples (possible for small
Dirichlet A) is topped up from the largest client.
"""
from __future__ import annotations

import math

import torch

from .. import rng

ALLOWED = "iid, dirichlet:ALPHA (ALPHA > 0), shards:K (K >= 1 integer)"
class TooFewSamples(ValueError):
    """The pool cannot give every client its share; ``field`` is the setting to change."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


_TRIES = 16  # Marsaglia-Tsang proposals per variate; each accepted w.p. >= 0.95, all fail w.p. < 1e-20


def parse_partition(spec: str) -> tuple[str, float]:
    """('iid', 0) | ('dirichlet', alpha) | ('shards', K); ValueError (one line) if malformed."""
    kind, _, arg = spec.partition(":")
    if kind == "iid" and not arg:
        return "iid", 0.0
    if kind == "dirichlet":
        try:
            alpha = float(arg)
        except ValueError:
            alpha = float("nan")
        if not (alpha > 0 and math.isfinite(alpha)):
            raise ValueError(f"dirichlet needs a concentration ALPHA > 0, got '{arg}'; allowed: {ALLOWED}")
        return "dirichlet", alpha
    if kind == "shards":
        if not arg.isdigit() or int(arg) < 1:
            raise ValueError(f"shards needs an integer K >= 1, got '{arg}'; allowed: {ALLOWED}")
        return "shards", float(int(arg))
    raise ValueError(f"unknown partition '{spec}'; allowed: {ALLOWED}")


def permutation(k: torch.Tensor, n: int) -> torch.Tensor:
    """A uniformly random permutation of range(n) (ties of the 32-bit scores broken by index)."""
    scores = rng.bits32(k, (n,)) * n + torch.arange(n)
    return torch.argsort(scores)


def log_gamma_variates(k: torch.Tensor, alpha: float, shape: tuple[int, ...]) -> torch.Tensor:
    """log of Gamma(alpha, 1) samples (float64), Marsaglia & Tsang (2000); alpha < 1 by boosting
    (Gamma(alpha) = Gamma(alpha + 1) U^(1/alpha)), kept in log space so tiny values stay exact."""
    a = alpha + 1.0 if alpha < 1 else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    z = rng.normal(rng.key(k, 1), (*shape, _TRIES), torch.float64)
    u = rng.uniform(rng.key(k, 2), (*shape, _TRIES), torch.float64)
    v = (1.0 + c * z) ** 3
    logv = torch.log(v.clamp_min(1e-300))
    ok = (v > 0) & (torch.log(u) < 0.5 * z**2 + d - d * v + d * logv)
    if not bool(ok.any(-1).all()):  # probability < 1e-20 per variate
        raise RuntimeError("Gamma sampler: no proposal accepted")
    first = torch.argmax(ok.to(torch.int8), dim=-1, keepdim=True)
    out = math.log(d) + logv.gather(-1, first).squeeze(-1)
    if alpha < 1:
        out = out + torch.log(rng.uniform(rng.key(k, 3), shape, torch.float64)) / alpha
    return out


def dirichlet(k: torch.Tensor, alpha: float, n: int, rows: int) -> torch.Tensor:
    """``rows`` independent Dirichlet(alpha 1_n) vectors [rows, n] (float64, rows sum to 1)."""
    return torch.softmax(log_gamma_variates(k, alpha, (rows, n)), dim=-1)


def _iid(k: torch.Tensor, n_samples: int, n: int) -> list[torch.Tensor]:
    return list(torch.tensor_split(permutation(k, n_samples), n))


def _dirichlet(k: torch.Tensor, labels: torch.Tensor, n: int, alpha: float) -> list[torch.Tensor]:
    classes = int(labels.max()) + 1 if labels.numel() else 0
    props = dirichlet(rng.key(k, 1), alpha, n, classes)
    order = permutation(rng.key(k, 2), labels.numel())
    parts: list[list[torch.Tensor]] = [[] for _ in range(n)]
    for c in range(classes):
        idx = order[labels[order] == c]
        cuts = torch.round(torch.cumsum(props[c], 0) * idx.numel()).to(torch.int64)
        cuts[-1] = idx.numel()
        start = 0
        for i, end in enumerate(cuts.tolist()):
            parts[i].append(idx[start:end])
            start = end
    return [torch.cat(p) if p else torch.zeros(0, dtype=torch.int64) for p in parts]


def _shards(k: torch.Tensor, labels: torch.Tensor, n: int, per_client: int) -> list[torch.Tensor]:
    order = permutation(rng.key(k, 1), labels.numel())
    order = order[torch.sort(labels[order], stable=True).indices]  # label-sorted, random within class
    shards = torch.tensor_split(order, n * per_client)
    assign = permutation(rng.key(k, 2), n * per_client)
    return [torch.cat([shards[s] for s in assign[i * per_client:(i + 1) * per_client].tolist()])
            for i in range(n)]


def _top_up(parts: list[torch.Tensor], min_size: int) -> list[torch.Tensor]:
    """Move samples from the largest client to any client holding fewer than ``min_size``."""
    parts = list(parts)
    for i in range(len(parts)):
        while parts[i].numel() < min_size:
            j = max(range(len(parts)), key=lambda c: (parts[c].numel(), -c))
            parts[i] = torch.cat([parts[i], parts[j][-1:]])
            parts[j] = parts[j][:-1]
    return parts


def partition(labels: torch.Tensor, n: int, spec: str, key: torch.Tensor,
              min_size: int = 1) -> list[torch.Tensor]:
    """Indices into ``labels`` held by each of the ``n`` clients: disjoint, covering all samples.

    Raises TooFewSamples if there are fewer than ``n * min_size`` samples (or shards).
    """
    kind, arg = parse_partition(spec)
    total = labels.numel()
    if total < n * min_size:
        raise TooFewSamples("workers", f"at most {total // min_size} workers for a pool of {total} samples "
                            f"(each needs {min_size}), got {n}")
    if kind == "iid":
        parts = _iid(key, total, n)
    elif kind == "dirichlet":
        parts = _dirichlet(key, labels, n, arg)
    else:
        if n * int(arg) > total:
            raise TooFewSamples("task.partition", f"shards:{int(arg)} with {n} workers needs {n * int(arg)} "
                                f"shards but the pool has {total} samples")
        parts = _shards(key, labels, n, int(arg))
    return _top_up(parts, min_size)


def histograms(labels: torch.Tensor, parts: list[torch.Tensor], classes: int) -> list[list[int]]:
    """Per-client label counts [n][classes] (plain ints, for config.json)."""
    return [torch.bincount(labels[p], minlength=classes).tolist() for p in parts]
