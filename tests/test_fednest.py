"""FedNest / LFedNest (docs/algorithms.md, FedNest), and the federated steps shared with AggITD."""
import threading

import pytest
import torch

import distbo
from distbo import rng
from distbo.algorithms.base import STREAM_CLIENTS
from distbo.algorithms.federated import sample_clients
from distbo.comm.base import Communicator
from distbo.problems.quadratic import Quadratic
from distbo.runner import build, resolve

F64 = torch.float64


def make(problem, name="fednest", fraction=1.0, **hp):
    raw = {"algorithm": {"name": name, **hp}, "workers": problem.n_workers, "dtype": "float64",
           "clients": {"fraction": fraction}}
    res, problem = resolve(raw, problem)
    return build(res, problem)


def quad(h=1.0):
    return Quadratic(workers=4, d_x=3, d_y=5, heterogeneity=h, dtype=F64, seed=1)


def point(q):
    gen = torch.Generator().manual_seed(2)
    return torch.randn(q.d_x, generator=gen, dtype=F64), torch.randn(q.d_y, generator=gen, dtype=F64)


def truncated_neumann(A, b, eta, N):
    """eta sum_{k=0}^{N} (I - eta A)^k b, densely."""
    M = torch.eye(A.shape[-1], dtype=F64) - eta * A
    return eta * sum(torch.linalg.matrix_power(M, k) @ b for k in range(N + 1))


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_fedihgp_is_the_global_truncated_neumann_series(fraction):
    q, N, eta = quad(), 7, 0.1
    (x, y), d = point(q), q._data64
    alg, comm = make(q, fraction=fraction, neumann_terms=N, eta=eta)
    fr = alg.begin(0, x=x, y=y)
    v, _ = alg.ihgp(fr, x, y)
    ids = fr.ids
    A = d["A"][ids].mean(0)  # the participants' global Hessian (their mean), not per-client series
    b = (torch.einsum("nij,nj->ni", d["P"][ids], y - d["t"][ids]) + d["R"][ids] @ x).mean(0)
    torch.testing.assert_close(v, truncated_neumann(A, b, eta, N), rtol=1e-12, atol=1e-12)
    assert comm.stats.comm_rounds == 1 + N


def test_lfednest_uses_each_clients_own_neumann_series():
    q, N, eta, alpha = quad(), 6, 0.1, 0.5
    (x, y), d = point(q), q._data64
    alg, comm = make(q, "lfednest", neumann_terms=N, eta=eta, alpha=alpha)
    h_mean = alg.update_x(alg.begin(0, x=x, y=y), x, y)["grad"]  # the server optimizer's direction
    h = []
    for i in range(q.n_workers):
        b_i = d["P"][i] @ (y - d["t"][i]) + d["R"][i] @ x
        v_i = truncated_neumann(d["A"][i], b_i, eta, N)
        h.append(d["R"][i].T @ y + d["S"][i] @ x + d["s"][i] - d["B"][i].T @ v_i)
    torch.testing.assert_close(h_mean, torch.stack(h).mean(0), rtol=1e-12, atol=1e-12)
    assert comm.stats.comm_rounds == 1  # no communication inside the local series


def test_fednest_hypergradient_approaches_exact_as_neumann_terms_grow():
    q = quad()
    x, _ = point(q)
    y = q.y_star(x)
    exact = q.hypergrad(x)
    errs = []
    for N in (5, 20, 100):
        alg, _ = make(q, alpha=1.0, neumann_terms=N, eta=0.15, inner_rounds=1)
        h = alg.update_x(alg.begin(0, x=x, y=y), x, y)["grad"]  # the aggregated estimate h
        errs.append(float((h - exact).norm() / exact.norm()))
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-8, errs


def test_fedinn_svrg_removes_client_drift_and_sgd_does_not():
    q = quad(h=1.0)
    x, _ = point(q)
    ystar = q.y_star(x)
    err = {}
    for inner in ("svrg", "sgd"):
        alg, _ = make(q, inner=inner, inner_rounds=60, local_steps=4, beta=0.1)
        y = alg.fedinn(alg.begin(0, x=x, y=torch.zeros(q.d_y, dtype=F64)), x, torch.zeros(q.d_y, dtype=F64))
        err[inner] = float((y - ystar).norm() / ystar.norm())
    assert err["svrg"] < 1e-8 and err["sgd"] > 1e-3, err


CASES = [  # (algorithm, hyper-parameters, rounds per outer iteration with T=2, N=3)
    ("fednest", {}, 2 * 2 + 3 + 2),
    ("fednest", {"inner": "sgd"}, 2 + 3 + 2),
    ("fednest", {"outer": "local-svrg", "local_steps_x": 2}, 2 * 2 + 3 + 3),
    ("fednest", {"inner": "sgd", "outer": "local-svrg"}, 2 + 3 + 3),
    ("lfednest", {}, 2 + 1),
]


@pytest.mark.parametrize("name,hp,per_iter", CASES)
@pytest.mark.parametrize("fraction,compressor", [(1.0, "identity"), (0.5, "qsgd:4"), (1.0, "sign")])
def test_rounds_follow_the_formula(name, hp, per_iter, fraction, compressor):
    r = distbo.run("quadratic", {"name": name, "inner_rounds": 2, "neumann_terms": 3, **hp}, workers=6,
                   rounds=2, eval_every=2, compressor=compressor,
                   overrides=["task.d_x=3", "task.d_y=5", f"clients.fraction={fraction}"])
    assert r.metrics[-1]["comm_rounds"] == 2 * per_iter


def test_fednest_bits_uncompressed_with_client_sampling():
    n, m, T, N, dx, dy, R = 6, 3, 2, 3, 3, 5, 2
    r = distbo.run("quadratic", {"name": "fednest", "inner_rounds": T, "neumann_terms": N}, workers=n,
                   rounds=R, eval_every=R, overrides=["task.d_x=3", "task.d_y=5", "clients.fraction=0.5"])
    # per client: T x (q, y - y_i), b, N x H p, h
    assert r.metrics[-1]["bits_up"] == R * m * 32 * (2 * T * dy + dy + N * dy + dx)
    # down: (x, y), T x (q, y), b, N x H p
    assert r.metrics[-1]["bits_down"] == R * m * 32 * (dx + dy + 2 * T * dy + dy + N * dy)


def test_compressed_downlink_counts_payloads_per_channel():
    """Down-link top-K 2 of d (d_x = 3, d_y = 5): every payload sends 2 values and 2 indices
    (ceil(log2 d) bits each); (x, y), T x (q, y), b, N x H p, each to all n clients (their copies
    stay identical although only m = 3 take part)."""
    n, T, N, R = 6, 2, 3, 2
    r = distbo.run("quadratic", {"name": "fednest", "inner_rounds": T, "neumann_terms": N}, workers=n,
                   rounds=R, eval_every=R, downlink="topk:2",
                   overrides=["task.d_x=3", "task.d_y=5", "clients.fraction=0.5"])
    px, py = 2 * (32 + 2), 2 * (32 + 3)
    assert r.metrics[-1]["bits_down"] == R * n * (px + py + py * (2 * T + 1 + N))
    up = distbo.run("quadratic", {"name": "fednest", "inner_rounds": T, "neumann_terms": N}, workers=n,
                    rounds=R, eval_every=R, overrides=["task.d_x=3", "task.d_y=5", "clients.fraction=0.5"])
    assert r.metrics[-1]["bits_up"] == up.metrics[-1]["bits_up"]  # the up-link is untouched


def test_fednest_converges_on_quadratic():
    for h, hp in ((1.0, {}), (0.0, {"inner": "sgd", "outer": "local-svrg", "local_steps_x": 2})):
        r = distbo.run("quadratic", {"name": "fednest", "alpha": 0.3, "beta": 0.1, "inner_rounds": 2,
                                     "local_steps": 3, "neumann_terms": 20, "eta": 0.25, **hp},
                       workers=4, rounds=20, eval_every=20, dtype="float64",
                       overrides=["task.d_x=3", "task.d_y=5", f"task.heterogeneity={h}"])
        start, end = r.metrics[0]["hypergrad_norm"], r.metrics[-1]["hypergrad_norm"]
        assert end < 1e-2 * start, (h, start, end)


# --- processes hosting blocks of workers (some with no participant after sampling) ---
class _Hub:
    def __init__(self, size):
        self.size, self.slots = size, [None] * size
        self.barrier = threading.Barrier(size, timeout=120)

    def combine(self, rank, item, fn):
        self.slots[rank] = item
        self.barrier.wait()
        out = fn(list(self.slots))
        self.barrier.wait()  # everyone has read before the next write
        return out


class BlockComm(Communicator):
    """A process hosting ``ids``; reductions across 'processes' (threads) in rank order."""

    def __init__(self, n, ids, rank, hub):
        super().__init__()
        self.n_workers, self.local_workers, self.rank, self.world_size, self.hub = n, ids, rank, hub.size, hub

    def _reduce(self, messages):
        local = ({k: m.local_sum() for k, m in messages.items()}, next(iter(messages.values())).count,
                 sum(m.bits() for m in messages.values()))
        return self.hub.combine(self.rank, local, lambda s: (
            {k: sum(p[0][k] for p in s) for k in s[0][0]}, sum(p[1] for p in s), sum(p[2] for p in s)))

    def all_sum(self, t):
        return self.hub.combine(self.rank, t, sum)


@pytest.mark.parametrize("name,compressor", [("aggitd", "identity"), ("fednest", "randk:0.5"),
                                             ("lfednest", "identity")])
def test_blocks_with_empty_participants_match_the_simulator(name, compressor):
    n, rounds, seed = 8, 4, 3
    hp = {"name": name, "inner_rounds": 2, "local_steps": 2}
    if name == "fednest":
        hp["outer"] = "local-svrg"
    kw = dict(workers=n, rounds=rounds, eval_every=rounds, seed=seed, compressor=compressor, dtype="float64",
              overrides=["task.d_x=3", "task.d_y=5", "clients.fraction=0.25"])
    blocks = [torch.arange(0, 4), torch.arange(4, 8)]
    # with 2 of 8 clients per round, some round leaves a block without participants
    picks = [sample_clients(rng.key(rng.key(seed, 0x5EED, t), STREAM_CLIENTS), n, 0.25, blocks[0])[0].numel()
             for t in range(rounds)]
    assert 0 in picks or 2 in picks
    hub, out, errors = _Hub(2), [None, None], []

    def work(rank):
        try:
            out[rank] = distbo.run("quadratic", dict(hp), comm=BlockComm(n, blocks[rank], rank, hub), **kw)
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)
            hub.barrier.abort()

    threads = [threading.Thread(target=work, args=(r,)) for r in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors, errors
    sim = distbo.run("quadratic", dict(hp), **kw)
    for res in out:
        torch.testing.assert_close(res.x, sim.x, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(res.y, sim.y, rtol=1e-10, atol=1e-12)
        for key in ("comm_rounds", "bits_up", "bits_down"):
            assert res.metrics[-1][key] == sim.metrics[-1][key]
