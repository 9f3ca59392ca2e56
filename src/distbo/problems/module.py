"""``distbo.ModuleProblem``: a Problem made of torch modules and per-worker data.

    problem = distbo.ModuleProblem(
        upper=body, lower=head,                        # nn.Modules: x = body's parameters, y = head's
        f=lambda up, low, batch: F.cross_entropy(low(up(batch[0])), batch[1]),
        g=lambda up, low, batch: F.cross_entropy(low(up(batch[0])), batch[1])
                                 + 1e-3 * sum((p ** 2).sum() for p in low.params.values()),
        train=[(X_i, Y_i) for each worker], val=[(Xv_i, Yv_i) for each worker], batch_size=32)

x and y are flat vectors: the modules' parameters (``named_parameters`` order, each flattened) one
after the other, starting at the values the modules hold at construction. ``f`` / ``g`` get ``up``
and ``low``: callables that run the module at the current x / y (``torch.func.functional_call``
over views of the flat vector), each with ``.params`` (name -> tensor view); a tensor ``upper`` (a
hyper-parameter vector) is passed as a tensor of its own shape. ``batch`` is a tuple of one worker's
samples (a tuple of tensors with B rows). Batches are drawn with distbo.rng (the same rows in every
process); ``batch_size="full"`` gives every worker's whole shard instead, every time (shards of
different sizes: padded, and f / g averaged over the real samples evaluated one by one). Buffers
(e.g. batch-norm statistics) are read from the modules, never updated. A malformed problem is one
ConfigError naming the culprit (problems/validate.py).

Data: ``train`` (g's samples) and ``val`` (f's), each a list of per-worker tuples of tensors or of
torch ``Dataset``s; or ONE dataset and ``partition="iid" | "dirichlet:A" | "shards:K"`` with
``workers=n`` (data/partition.py; labels = the last tensor), ``val=None`` then holding out
``val_fraction`` of each client's samples. Floating data is cast to the problem's dtype (the
modules' own unless ``dtype=`` is given).

Evaluation: ``upper_loss`` = mean over workers of f on the worker's whole validation shard; with
``test=(X, Y)``, ``test_loss`` / ``test_acc`` of ``predict(up, low, X)`` (default ``low(up(X))``, or
``low(X)`` for a tensor upper) for classifiers; ``metrics(up, low) -> dict`` adds any others.

Pruning (RABO / RAFBO): when both modules are ``nn.Linear`` chains (``nn.Sequential`` of Linear
layers with biases and parameter-free element-wise layers, or a single Linear), ``units()`` gives
the equivalent ``models.DenseNet`` and clients compute with sliced sub-networks; otherwise the
algorithms fall back to coordinate masks and one warning line says so.

Several processes: the problem is pickled into each; lambdas are sent with cloudpickle when it is
installed, else ``f`` / ``g`` / ``metrics`` / ``predict`` must be module-level functions.
"""
from __future__ import annotations

import math
import pickle
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from .. import rng
from ..data.federated import draw_rows
from ..data.partition import TooFewSamples, parse_partition, partition, permutation
from ..errors import ConfigError
from ..models import DenseNet
from . import validate
from .base import Problem

Tensor = torch.Tensor
Loss = Callable[[Any, Any, tuple[Tensor, ...]], Tensor]
_STREAM = 0x30D1
_EVAL_ROWS = 1024  # test samples per forward pass in evaluate()
ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus,
               nn.Identity, nn.Dropout, nn.Flatten)


class Bound:
    """A module run at given parameters: ``bound(*inputs)``; ``bound.params`` name -> tensor."""

    def __init__(self, module: nn.Module, params: dict[str, Tensor]):
        self.module, self.params = module, params

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self.module, self.params, args, kwargs)


class FlatParams:
    """One side of the problem (a module or a tensor) as a flat vector of its parameters."""

    def __init__(self, owner: nn.Module | Tensor, what: str):
        if isinstance(owner, Tensor):
            self.module, self.names, self.shapes = None, [], [tuple(owner.shape)]
        elif isinstance(owner, nn.Module):
            named = [(n, p) for n, p in owner.named_parameters()]
            if not named:
                raise ConfigError(what, f"the {type(owner).__name__} module has no parameters")
            self.module = owner
            self.names, self.shapes = [n for n, _ in named], [tuple(p.shape) for _, p in named]
        else:
            raise ConfigError(what, f"expected an nn.Module or a tensor, got {type(owner).__name__}")
        self.numel = sum(math.prod(s) for s in self.shapes)

    def initial(self, owner: nn.Module | Tensor, dtype: torch.dtype) -> Tensor:
        values = [owner] if self.module is None else [p for _, p in owner.named_parameters()]
        return torch.cat([v.detach().reshape(-1).to(dtype) for v in values])

    def bind(self, flat: Tensor, shapes: list[tuple[int, ...]] | None = None) -> Bound | Tensor:
        """``up`` / ``low`` at the flat vector (``shapes``: a sub-network's parameter shapes)."""
        shapes = shapes or self.shapes
        views = [p.view(s) for p, s in zip(torch.split(flat, [math.prod(s) for s in shapes]), shapes)]
        if self.module is None:
            return views[0]
        return Bound(self.module, dict(zip(self.names, views)))


@dataclass
class Shards:
    """Samples of all workers stored worker-contiguously: tensors [N, ...], ``offset`` / ``size`` [n]."""

    tensors: tuple[Tensor, ...]
    offset: Tensor
    size: Tensor

    def shard(self, i: int) -> tuple[Tensor, ...]:
        a, n = int(self.offset[i]), int(self.size[i])
        return tuple(t[a:a + n] for t in self.tensors)


def as_tensors(data: Any, what: str) -> tuple[Tensor, ...]:
    """A tuple of tensors (or a single tensor) or a torch Dataset -> a tuple of tensors [N, ...]."""
    if isinstance(data, Tensor):
        return (data,)
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, Tensor) for t in data):
        rows = {t.shape[0] if t.dim() else -1 for t in data}
        if len(rows) != 1 or -1 in rows:
            raise ConfigError(what, f"the tensors of one dataset must share their first dimension, got "
                              f"{[tuple(t.shape) for t in data]}")
        return tuple(data)
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):  # a torch Dataset
        items = [data[i] for i in range(len(data))]
        if not items:
            raise ConfigError(what, "a dataset is empty")
        items = [it if isinstance(it, (tuple, list)) else (it,) for it in items]
        return tuple(torch.stack([torch.as_tensor(it[j]) for it in items]) for j in range(len(items[0])))
    raise ConfigError(what, f"expected a tuple of tensors or a torch Dataset per worker, got {type(data).__name__}")


def full_mode(batch_size: int | str, size: Tensor) -> str | None:
    """Full batches: None (minibatches), "equal" (every shard has the same size: the whole shard)
    or "masked" (padded to the largest shard; the loss averages per-sample values over the real rows)."""
    if batch_size != "full":
        return None
    return "equal" if bool((size == size[0]).all()) else "masked"


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t.to(dtype) if t.is_floating_point() else t


def stack_shards(parts: Sequence[tuple[Tensor, ...]], dtype: torch.dtype, what: str) -> Shards:
    if not parts:
        raise ConfigError(what, "needs at least one worker's data")
    width = {len(p) for p in parts}
    if len(width) != 1:
        raise ConfigError(what, f"every worker's samples must have the same number of tensors, got {sorted(width)}")
    size = torch.tensor([int(p[0].shape[0]) for p in parts], dtype=torch.int64)
    if bool((size == 0).any()):
        raise ConfigError(what, f"worker {int(torch.nonzero(size == 0)[0])} has no samples")
    tensors = tuple(_cast(torch.cat([p[j] for p in parts]), dtype) for j in range(width.pop()))
    return Shards(tensors, torch.cumsum(size, 0) - size, size)


def split_dataset(data: tuple[Tensor, ...], workers: int, spec: str, key: Tensor,
                  val_fraction: float | None) -> tuple[list[tuple[Tensor, ...]], list[tuple[Tensor, ...]] | None]:
    """One dataset over ``workers`` clients with distbo's partitioners; with ``val_fraction``, each
    client's samples are cut at random into its training and validation shards."""
    try:
        labels = data[-1]
        if parse_partition(spec)[0] != "iid" and labels.is_floating_point():
            raise ConfigError("partition", f"'{spec}' needs integer labels as the last tensor of the dataset")
        parts = partition(labels.reshape(labels.shape[0], -1)[:, 0].long(), workers, spec, key,
                          min_size=2 if val_fraction else 1)
    except ValueError as exc:
        field = exc.field if isinstance(exc, TooFewSamples) else "partition"
        raise ConfigError(field, str(exc)) from None
    if val_fraction is None:
        return [tuple(t[p] for t in data) for p in parts], None
    train, val = [], []
    for i, p in enumerate(parts):
        p = p[permutation(rng.key(key, 7, i), p.numel())]
        n_val = min(p.numel() - 1, max(1, round(val_fraction * p.numel())))
        val.append(tuple(t[p[:n_val]] for t in data))
        train.append(tuple(t[p[n_val:]] for t in data))
    return train, val


def dense_chain(upper: Any, lower: Any) -> tuple[DenseNet | None, str]:
    """The DenseNet equivalent to (upper, lower) if both are Linear chains, else (None, why not)."""
    layers: list[list[nn.Linear]] = []
    for side, m in (("upper", upper), ("lower", lower)):
        if not isinstance(m, nn.Module):
            return None, f"the {side} level is a tensor, not a module"
        mods = [m] if isinstance(m, nn.Linear) else list(m) if isinstance(m, nn.Sequential) else None
        if mods is None:
            return None, f"the {side} module is a {type(m).__name__}, not an nn.Sequential or nn.Linear"
        found = []
        for c in mods:
            if isinstance(c, nn.Linear) and c.bias is not None:
                found.append(c)
            elif not isinstance(c, ELEMENTWISE):
                return None, f"its {type(c).__name__} layer has no hidden units to slice"
        if not found:
            return None, f"the {side} module has no Linear layer"
        layers.append(found)
    chain = layers[0] + layers[1]
    sizes = [chain[0].in_features] + [l.out_features for l in chain]
    if any(a.out_features != b.in_features for a, b in zip(chain, chain[1:])):
        return None, "its Linear layers do not chain (an output size differs from the next input size)"
    return DenseNet(tuple(sizes), split=len(layers[0])), ""


def _portable(fn: Any, what: str) -> bytes:
    """A callable as bytes another process can load (cloudpickle for lambdas and closures)."""
    try:
        return pickle.dumps(fn)
    except (pickle.PicklingError, AttributeError, TypeError):
        pass
    try:
        import cloudpickle
    except ImportError:
        raise ConfigError("procs", f"ModuleProblem's {what} cannot be sent to other processes (a lambda or a "
                          "local function); define it at module level, or pip install cloudpickle") from None
    return cloudpickle.dumps(fn)


class ModuleProblem(Problem):
    """A bilevel problem on torch modules and per-worker data (see the module docstring)."""

    _CALLABLES = ("_f", "_g", "_metrics", "_predict")

    def __init__(self, upper: nn.Module | Tensor, lower: nn.Module, f: Loss, g: Loss, train: Any, val: Any = None,
                 batch_size: int | str = 32, *, val_batch_size: int | str | None = None,
                 metrics: Callable[[Any, Any], dict[str, Any]] | None = None,
                 test: tuple[Tensor, Tensor] | None = None, predict: Callable[[Any, Any, Tensor], Tensor] | None = None,
                 partition: str | None = None, workers: int | None = None, val_fraction: float = 0.2,
                 seed: int = 0, dtype: torch.dtype | None = None):
        if not isinstance(lower, nn.Module):
            raise ConfigError("lower", f"expected an nn.Module (its parameters are y), got {type(lower).__name__}")
        for name, fn in (("f", f), ("g", g)):
            if not callable(fn):
                raise ConfigError(name, "expected a callable (up, low, batch) -> scalar loss")
        for name, b in (("batch_size", batch_size), ("val_batch_size", val_batch_size)):
            if not (b == "full" or (isinstance(b, int) and not isinstance(b, bool) and b >= 1)
                    or (b is None and name == "val_batch_size")):
                raise ConfigError(name, f"expected an integer >= 1 or \"full\" (every sample of the worker's "
                                  f"shard, deterministic), got {b!r}")
        first = next(iter(lower.parameters()), None)
        self.dtype = dtype or (first.dtype if first is not None else torch.float32)
        self.up, self.low = FlatParams(upper, "upper"), FlatParams(lower, "lower")
        self.x0, self.y0 = self.up.initial(upper, self.dtype), self.low.initial(lower, self.dtype)
        for m in (upper, lower):
            if isinstance(m, nn.Module):
                m.to(self.dtype)
        self.upper, self.lower = upper, lower
        self._f, self._g, self._metrics, self._predict = f, g, metrics, predict
        self.d_x, self.d_y = self.up.numel, self.low.numel
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        train_parts, val_parts = self._worker_data(train, val, partition, workers, val_fraction, seed)
        validate.check_shards(train_parts, "train")
        validate.check_shards(val_parts, "val")
        self.train = stack_shards(train_parts, self.dtype, "train")
        self.val = stack_shards(val_parts, self.dtype, "val")
        if self.train.size.numel() != self.val.size.numel():
            raise ConfigError("val", f"{self.val.size.numel()} workers' validation data for "
                              f"{self.train.size.numel()} workers' training data")
        self.n_workers = int(self.train.size.numel())
        self.test = None if test is None else tuple(_cast(t, self.dtype) for t in as_tensors(test, "test"))
        if self.test is not None:
            validate.check_test(self.test, self.train.tensors, predict is None)
        validate.check_predict(upper, lower, test, predict)
        validate.warn_batch_size(self.batch_size, self.train.size, "batch_size")
        validate.warn_batch_size(self.val_batch_size, self.val.size, "val_batch_size")
        self._full = {level: full_mode(b, s.size) for level, b, s in
                      (("f", self.val_batch_size, self.val), ("g", self.batch_size, self.train))}
        self.net, self._why_not = dense_chain(upper, lower)
        self._warned = False

    @staticmethod
    def _worker_data(train, val, spec, workers, val_fraction, seed):
        if spec is None:
            if val is None:
                raise ConfigError("val", "needs the workers' validation data (f's samples), or one dataset "
                                  "with partition= to split")
            if workers is not None:
                raise ConfigError("workers", "is only used with partition=; here it is the length of train")
            train, val = validate.worker_list(train, "train"), validate.worker_list(val, "val")
            return ([as_tensors(d, "train") for d in train], [as_tensors(d, "val") for d in val])
        if workers is None or workers < 1:
            raise ConfigError("workers", f"partition='{spec}' needs workers=N >= 1")
        key = rng.key(seed, _STREAM)
        train_parts, val_parts = split_dataset(as_tensors(train, "train"), workers, spec, rng.key(key, 1),
                                               None if val is not None else val_fraction)
        if val is not None:
            val_parts, _ = split_dataset(as_tensors(val, "val"), workers, spec, rng.key(key, 2), None)
        return train_parts, val_parts

    # ----- the two levels at flat vectors -----
    def _sub_shapes(self, part: str, sizes: tuple[int, ...] | None) -> list[tuple[int, ...]] | None:
        if sizes is None:
            return None
        layers = range(self.net.split) if part == "x" else range(self.net.split, self.net.n_layers)
        return [s for l in layers for s in ((sizes[l + 1], sizes[l]), (sizes[l + 1],))]

    def bind(self, x: Tensor, y: Tensor, sizes: tuple[int, ...] | None = None) -> tuple[Any, Any]:
        """(up, low) at (x, y); ``sizes``: a sub-network's layer sizes (pruning, see units())."""
        return self.up.bind(x, self._sub_shapes("x", sizes)), self.low.bind(y, self._sub_shapes("y", sizes))

    def _loss(self, level: str, x, y, batch, sizes):
        loss, (up, low) = self._f if level == "f" else self._g, self.bind(x, y, sizes)
        if self._full[level] != "masked":
            return loss(up, low, tuple(batch))
        *tensors, mask = batch  # shards of unequal sizes, padded: each real sample on its own, averaged
        per_sample = vmap(lambda *row: loss(up, low, tuple(r.unsqueeze(0) for r in row)))(*tensors)
        return (per_sample * mask).sum() / mask.sum()

    def f(self, x, y, batch, sizes=None):
        return self._loss("f", x, y, batch, sizes)

    def g(self, x, y, batch, sizes=None):
        return self._loss("g", x, y, batch, sizes)

    def draws_per_shard(self, level):
        shards, size = (self.train, self.batch_size) if level == "g" else (self.val, self.val_batch_size)
        if size == "full":  # every draw is the whole shard
            return 1
        return max(1, math.ceil(float(shards.size.double().mean()) / size))

    def sample(self, level, workers, key):
        shards = self.val if level == "f" else self.train
        if self._full[level] is None:
            rows = draw_rows(shards.offset, shards.size, workers, key,
                             self.val_batch_size if level == "f" else self.batch_size)
            return tuple(t[rows] for t in shards.tensors)
        size = shards.size[workers].unsqueeze(-1)
        local = torch.arange(int(shards.size.max()), device=size.device)
        rows = shards.offset[workers].unsqueeze(-1) + torch.minimum(local, size - 1)
        batch = tuple(t[rows] for t in shards.tensors)
        return batch if self._full[level] == "equal" else (*batch, (local < size).to(self.dtype))

    def init(self, seed):
        return self.x0.clone(), self.y0.clone()

    # ----- evaluation -----
    def predict(self, up: Any, low: Any, inputs: Tensor) -> Tensor:
        if self._predict is not None:
            return self._predict(up, low, inputs)
        return low(inputs) if self.up.module is None else low(up(inputs))

    def evaluate(self, x, y):
        """upper_loss: mean over workers of f on each whole validation shard; test_loss / test_acc
        with ``test=``; then the user's ``metrics``."""
        up, low = self.bind(x, y)
        with torch.no_grad():
            per_worker = [float(self._f(up, low, self.val.shard(i))) for i in range(self.n_workers)]
            out: dict[str, Any] = {"upper_loss": math.fsum(per_worker) / self.n_workers}
            if self.test is not None:
                inputs, labels = self.test[0], self.test[-1]
                loss = hits = 0.0
                for a in range(0, inputs.shape[0], _EVAL_ROWS):
                    logits = self.predict(up, low, inputs[a:a + _EVAL_ROWS]).double()
                    lab = labels[a:a + _EVAL_ROWS]
                    loss += float(F.cross_entropy(logits, lab, reduction="sum"))
                    hits += float((logits.argmax(-1) == lab).sum())
                out.update(test_loss=loss / inputs.shape[0], test_acc=hits / inputs.shape[0])
            if self._metrics is not None:
                out.update(self._metrics(up, low))
        return out

    def describe(self):
        return {"problem": "ModuleProblem", "d_x": self.d_x, "d_y": self.d_y,
                "upper": type(self.upper).__name__, "lower": type(self.lower).__name__,
                "client_train_sizes": self.train.size.tolist(), "client_val_sizes": self.val.size.tolist(),
                "batch_size": self.batch_size, "val_batch_size": self.val_batch_size,
                "hidden_units": list(self.net.sizes[1:-1]) if self.net is not None else None,
                "test_size": None if self.test is None else int(self.test[0].shape[0])}

    def units(self):
        """``{"net": DenseNet}`` for Linear chains with hidden units; else None, said once on stderr."""
        if self.net is not None and self.net.n_layers > 1:
            return {"net": self.net}
        if not self._warned:
            self._warned = True
            from ..comm.job import rank

            if rank() == 0:
                sys.stderr.write(f"distbo: warning: pruning this ModuleProblem by coordinates, not hidden "
                                 f"units ({self._why_not or 'no hidden layer'}); only nn.Linear chains are "
                                 "sliced, so clients compute with the full model\n")
        return None

    # ----- pickling (several processes) -----
    def __getstate__(self):
        state = dict(self.__dict__)
        for k in self._CALLABLES:
            state[k] = _portable(state[k], k.lstrip("_"))
        return state

    def __setstate__(self, state):
        for k in self._CALLABLES:
            state[k] = pickle.loads(state[k])
        self.__dict__.update(state)
