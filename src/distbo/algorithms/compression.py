"""Pieces of the compressed SOBA variants (docs/algorithms.md, SOBA), composed by algorithms/soba.py.

Uplinks (workers -> server, one ``comm.exchange`` each; interface of algorithms/pieces.py):
- ``CompressedUplink``: C-SOBA / CM-SOBA. Worker i sends C(D_*^i); the server gets mean_i C(D_*^i).
- ``ErrorFeedbackUplink``: EF-SOBA (EF21 / DIANA-style shifts). Worker i keeps m_*^i, the server
  m_* = mean_i m_*^i (both start at 0):
      c_*^i = C(D_*^i - m_*^i);  m_*^i += rho c_*^i;  estimate g_* = m_* + mean_i c_*^i;
      m_* += rho mean_i c_*^i.
  rho: derived by distbo/defaults.py when the run is resolved (1 for a contractive or exact C,
  the smallest 1/(1+omega(d)) over the variables for an unbiased C); built without a resolved
  value (None) the uplink uses 1/(1+omega(d)) per variable. The server shift is a function of what
  workers sent, so it is replicated.
  The workers' shifts [n, d] are updated in place (one pass instead of a copy per round): the
  state a round starts from is consumed by it.
Multi-step compression (the MSC variants) is not an uplink: it is the compressor
``compressors.multi_step(C, R)`` fed to either uplink.

Server filter:
- ``MovingAverage``: CM-SOBA / EF-SOBA. h_* <- (1 - theta) h_* + theta est_*, h_* starting at 0,
  for x only or (SWITCH ``average_yv``) for x, y and v. theta = 1 is no filter.

Down-links (server -> workers, counted with ``comm.broadcast``):
- ``ExactDownlink``: the server broadcasts (x, y, v) uncompressed; workers hold exact copies.
- ``CompressedDownlink``: server-side error feedback on the model (EF21-P style). Workers and
  server hold the same public copy z_hat of z = (x, y, v) (starting at z_0, known to all). After
  each update the server broadcasts q = C'(z - z_hat) (C' the contractive form of the down-link
  compressor) and both sides apply z_hat <- z_hat + q, so every worker's copy stays identical and
  what the compressor dropped is sent in a later round. Workers evaluate their directions at
  z_hat; the server steps and is evaluated on its exact z.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from .. import rng
from ..comm.base import Communicator
from ..compressors import Compressor, contractive
from ..errors import ConfigError
from .base import STREAM_COMPRESS

Tensor = torch.Tensor
Vectors = dict[str, Tensor]
UNBIASED_ONLY_HINT = "use ef-soba (or ef-soba-msc), which accept contractive compressors such as topk and sign"


def require_unbiased(algorithm: str, c: Compressor) -> None:
    """C-SOBA and CM-SOBA average compressed directions, so their compressor must be unbiased."""
    if c.kind == "contractive":
        raise ConfigError("compressor", f"{algorithm} needs an unbiased compressor (identity, randk:K, qsgd:S) "
                          f"but '{c.spec}' is contractive (biased); {UNBIASED_ONLY_HINT}")


class CompressedUplink:
    """Each worker sends C(D^i) per variable; the server gets the mean of the decoded vectors."""

    per_worker = True

    def __init__(self, compressor: Compressor):
        self.c = compressor

    def init(self, dims: dict[str, int], n_local: int):
        return ()

    def send(self, state, D: Vectors, comm: Communicator, keys: dict[str, Tensor]):
        return state, comm.exchange({k: self.c.compress(D[k], keys[k]) for k in D})


class Shifts(NamedTuple):
    worker: Vectors  # m_*^i, [n_local, d] per variable
    server: Vectors  # m_* = mean_i m_*^i, [d]


class ErrorFeedbackUplink:
    """Workers compress D^i - m^i; shifts m^i (and their mean on the server) move by rho c^i."""

    per_worker = True

    def __init__(self, compressor: Compressor, rho: float | None, dtype: torch.dtype):
        self.c, self.rho, self.dtype = compressor, rho, dtype

    def shift_step(self, d: int) -> float:
        if self.rho is not None:
            return self.rho
        return 1.0 / (1.0 + self.c.omega(d)) if self.c.kind == "unbiased" else 1.0

    def init(self, dims: dict[str, int], n_local: int) -> Shifts:
        return Shifts({k: torch.zeros(n_local, d, dtype=self.dtype) for k, d in dims.items()},
                      {k: torch.zeros(d, dtype=self.dtype) for k, d in dims.items()})

    def send(self, s: Shifts, D: Vectors, comm: Communicator, keys: dict[str, Tensor]):
        payloads = {k: self.c.compress(D[k] - s.worker[k], keys[k]) for k in D}
        mean_c = comm.exchange(payloads)
        rho = {k: self.shift_step(D[k].shape[-1]) for k in D}
        est = {k: s.server[k] + mean_c[k] for k in D}
        return Shifts({k: self.c.add_to_(s.worker[k], payloads[k].fields, D[k].shape[-1], rho[k]) for k in D},
                      {k: s.server[k] + rho[k] * mean_c[k] for k in D}), est


class MovingAverage:
    """h <- (1 - theta) h + theta est on the chosen variables (h starts at 0); est replaced by h."""

    def __init__(self, theta: float, names: tuple[str, ...], dtype: torch.dtype):
        self.theta, self.names, self.dtype = theta, names, dtype

    def init(self, dims: dict[str, int]) -> Vectors:
        return {k: torch.zeros(dims[k], dtype=self.dtype) for k in self.names}

    def update(self, h: Vectors, est: Vectors):
        h = {k: (1 - self.theta) * h[k] + self.theta * est[k] for k in h}
        return h, {**est, **h}


def downlink_keys(alg, t: int, names: tuple[str, ...]) -> dict[str, Tensor]:
    """One key (a [1] tensor: the server is the single sender) per variable broadcast at round t."""
    server = torch.zeros(1, dtype=torch.int64)
    return {k: rng.key(alg.round_key(t), STREAM_COMPRESS, 1, i, server) for i, k in enumerate(names)}


class ExactDownlink:
    """Uncompressed broadcast: workers hold the server's values."""

    def init(self, z: Vectors):
        return ()

    def view(self, state, z: Vectors) -> Vectors:
        return z

    def send(self, state, z: Vectors, comm: Communicator, keys: Callable[[], dict[str, Tensor]]):
        comm.broadcast(z)
        return ()


class CompressedDownlink:
    """Broadcast q = C'(z - z_hat); server and workers apply z_hat += q (server-side error feedback)."""

    def __init__(self, compressor: Compressor):
        self.c = contractive(compressor)

    def init(self, z: Vectors) -> Vectors:
        return dict(z)

    def view(self, z_hat: Vectors, z: Vectors) -> Vectors:
        return z_hat

    def send(self, z_hat: Vectors, z: Vectors, comm: Communicator,
             keys: Callable[[], dict[str, Tensor]], receivers: int | None = None) -> Vectors:
        """``keys()`` gives the per-variable keys (drawn only when the broadcast is compressed);
        ``receivers`` as in ``comm.broadcast`` (default: every worker)."""
        keys = keys()
        payloads = {k: self.c.compress((z[k] - z_hat[k]).unsqueeze(0), keys[k]) for k in z}
        comm.broadcast(payloads, receivers)
        return {k: z_hat[k] + payloads[k].decoded()[0].to(z_hat[k].dtype) for k in z}


def make_downlink(compressor: Compressor | None):
    return ExactDownlink() if compressor is None or compressor.kind == "exact" else CompressedDownlink(compressor)
