"""distbo vs a per-client loop written the way public federated bilevel code is written.

The peer (``PeerFedNest``, ``PeerAggITD``, written here from docs/algorithms.md, FedNest and AggITD, not
taken from any project) does one outer iteration the usual way: the server samples its clients,
then visits them one after another; each client gets ``copy.deepcopy`` of the global modules
(an ``nn.Module`` MLP: the hidden layer is x, the linear head y), runs a Python loop over its
local steps with ``torch.autograd.grad`` (``create_graph`` for the Hessian-vector products) on
minibatches it draws itself, and the server averages ``state_dict`` tensors. Same task, the same
client shards, batch size, network and hyper-parameters as the distbo run next to it, so both
do the same arithmetic per outer iteration; only the execution differs (distbo maps all sampled
clients at once over the worker axis).

    python benchmarks/peers.py                 # hyperrep, 100 clients, 10% sampled, 1 thread
    python benchmarks/peers.py --iters 3 --clients 100 --fraction 0.1

Prints ms per outer iteration for each and the ratio peer / distbo (measured alternately in one
run, so load on a shared machine hits both alike).
"""
from __future__ import annotations

import argparse
import copy
import random
import time

import torch
import torch.nn.functional as F
from torch import nn

from distbo.allocator import reuse_freed_memory
from distbo.config import apply_set
from distbo.runner import build, resolve

CONFIG = ["task.name=\"hyperrep\"", "task.partition=\"shards:2\"", "task.hidden=[64]"]
HYPER = {"alpha": 0.1, "beta": 0.1, "inner_rounds": 5, "local_steps": 5}  # configs/federated/hyperrep.toml
NEUMANN = {"neumann_terms": 5, "eta": 0.1}


class Representation(nn.Module):
    def __init__(self, features: int, hidden: int):
        super().__init__()
        self.fc = nn.Linear(features, hidden)

    def forward(self, a):
        return torch.relu(self.fc(a))


class Client:
    """One client's shards and its own minibatch sampler (with replacement, like distbo)."""

    def __init__(self, data, i: int, batch: int, gen: torch.Generator):
        tr, va = data.train, data.val
        self.train = (tr.inputs[tr.offset[i]:tr.offset[i] + tr.size[i]], tr.labels[tr.offset[i]:tr.offset[i] + tr.size[i]])
        self.val = (va.inputs[va.offset[i]:va.offset[i] + va.size[i]], va.labels[va.offset[i]:va.offset[i] + va.size[i]])
        self.batch, self.gen = batch, gen

    def draw(self, split):
        inputs, labels = split
        idx = torch.randint(0, inputs.shape[0], (self.batch,), generator=self.gen)
        return inputs[idx], labels[idx]


class Peer:
    def __init__(self, problem, hp: dict, fraction: float, seed: int = 0):
        data = problem.data
        hidden = problem.net.sizes[1]
        self.rep = Representation(data.features, hidden)
        self.head = nn.Linear(hidden, data.classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        gen = torch.Generator().manual_seed(seed)
        self.clients = [Client(data, i, problem.batch_size, gen) for i in range(problem.n_workers)]
        self.hp, self.l2 = hp, problem.params.l2
        self.m = max(1, round(fraction * problem.n_workers))
        self.rand = random.Random(seed)

    # losses of one client on one batch
    def g(self, rep, head, batch):
        a, lab = batch
        reg = 0.5 * self.l2 * sum((p * p).sum() for p in head.parameters())
        return F.cross_entropy(head(rep(a)), lab) + reg

    def f(self, rep, head, batch):
        a, lab = batch
        return F.cross_entropy(head(rep(a)), lab)

    def grad_y(self, loss, head):
        return torch.autograd.grad(loss, list(head.parameters()))

    def hvp(self, rep, head, batch, vec):
        """(H_xy v, H_yy v) of g by double backward."""
        gy = torch.autograd.grad(self.g(rep, head, batch), list(head.parameters()), create_graph=True)
        dot = sum((a * b).sum() for a, b in zip(gy, vec))
        return torch.autograd.grad(dot, list(rep.parameters()) + list(head.parameters()))

    @staticmethod
    def average(states):
        return {k: sum(s[k] for s in states) / len(states) for k in states[0]}

    def sample(self):
        return self.rand.sample(self.clients, self.m)


class PeerFedNest(Peer):
    def step(self):
        hp, chosen = self.hp, self.sample()
        for _ in range(hp["inner_rounds"]):  # FedInn with SVRG local steps
            q = [self.grad_y(self.g(self.rep, self.head, c.draw(c.train)), self.head) for c in chosen]
            q = [sum(t) / len(q) for t in zip(*q)]
            states = []
            for c in chosen:
                head = copy.deepcopy(self.head)
                for _ in range(hp["local_steps"]):
                    b = c.draw(c.train)
                    local = self.grad_y(self.g(self.rep, head, b), head)
                    at_global = self.grad_y(self.g(self.rep, self.head, b), self.head)
                    with torch.no_grad():
                        for p, gl, gg, qq in zip(head.parameters(), local, at_global, q):
                            p -= hp["beta"] * (gl - gg + qq)
                states.append(head.state_dict())
            self.head.load_state_dict(self.average(states))
        # FedIHGP: global Neumann series
        grads = []
        for c in chosen:
            fb = c.draw(c.val)
            grads.append(torch.autograd.grad(self.f(self.rep, self.head, fb),
                                             list(self.rep.parameters()) + list(self.head.parameters())))
        n_x = len(list(self.rep.parameters()))
        b = [sum(t) / len(grads) for t in zip(*[g[n_x:] for g in grads])]
        p = b
        for _ in range(hp["neumann_terms"]):
            hps = [self.hvp(self.rep, self.head, c.draw(c.train), p)[n_x:] for c in chosen]
            hpm = [sum(t) / len(hps) for t in zip(*hps)]
            p = [bb + pp - hp["eta"] * hh for bb, pp, hh in zip(b, p, hpm)]
        v = [hp["eta"] * pp for pp in p]
        # FedOut: one global x step
        hs = []
        for c, g in zip(chosen, grads):
            hx = self.hvp(self.rep, self.head, c.draw(c.train), v)[:n_x]
            hs.append([gx - h for gx, h in zip(g[:n_x], hx)])
        with torch.no_grad():
            for prm, h in zip(self.rep.parameters(), zip(*hs)):
                prm -= hp["alpha"] * sum(h) / len(h)


class PeerAggITD(Peer):
    def step(self):
        hp, chosen = self.hp, self.sample()
        trajectory = []  # per round: per client, the (head copy, batch) each local step started from
        for _ in range(hp["inner_rounds"]):  # FedAvg forward, storing the iterates
            states, kept = [], []
            for c in chosen:
                head, mine = copy.deepcopy(self.head), []
                for _ in range(hp["local_steps"]):
                    b = c.draw(c.train)
                    mine.append((copy.deepcopy(head), b))
                    grad = self.grad_y(self.g(self.rep, head, b), head)
                    with torch.no_grad():
                        for prm, gr in zip(head.parameters(), grad):
                            prm -= hp["beta"] * gr
                states.append(head.state_dict())
                kept.append(mine)
            self.head.load_state_dict(self.average(states))
            trajectory.append(kept)
        n_x = len(list(self.rep.parameters()))
        accs, vs = [], []
        for c in chosen:  # v^N and each client's grad_x F_i
            g = torch.autograd.grad(self.f(self.rep, self.head, c.draw(c.val)),
                                    list(self.rep.parameters()) + list(self.head.parameters()))
            accs.append(list(g[:n_x]))
            vs.append(g[n_x:])
        v = [sum(t) / len(vs) for t in zip(*vs)]
        for r in reversed(range(hp["inner_rounds"])):  # backward sweep over the stored iterates
            us = []
            for j, c in enumerate(chosen):
                u = v
                for head, b in reversed(trajectory[r][j]):
                    h = self.hvp(self.rep, head, b, u)
                    accs[j] = [a - hp["beta"] * hx for a, hx in zip(accs[j], h[:n_x])]
                    u = [uu - hp["beta"] * hy for uu, hy in zip(u, h[n_x:])]
                us.append(u)
            v = [sum(t) / len(us) for t in zip(*us)]
        with torch.no_grad():
            for prm, h in zip(self.rep.parameters(), zip(*accs)):
                prm -= hp["alpha"] * sum(h) / len(h)


def distbo_alg(name: str, clients: int, fraction: float, hp: dict):
    raw = {"algorithm": {"name": name, **hp}, "workers": clients, "rounds": 10, "clients": {"fraction": fraction}}
    for item in CONFIG:
        apply_set(raw, item)
    res, problem = resolve(raw)
    return build(res, problem)[0], problem


def timed(step, iters: int) -> float:
    tic = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - tic) / iters


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--iters", type=int, default=3, help="outer iterations per timing (after 1 warm-up)")
    ap.add_argument("--repeats", type=int, default=3, help="alternating distbo / peer timings; median kept")
    a = ap.parse_args()
    torch.set_num_threads(1)
    reuse_freed_memory()  # as distbo.run does (it helps the peer too)
    print("| algorithm | clients | sampled | distbo ms/outer | peer ms/outer | ratio |")
    print("|---|---|---|---:|---:|---:|")
    for name, peer_cls, hp in (("fednest", PeerFedNest, {**HYPER, **NEUMANN}), ("aggitd", PeerAggITD, HYPER)):
        alg, problem = distbo_alg(name, a.clients, a.fraction, hp)
        peer = peer_cls(problem, hp, a.fraction)
        state, t = alg.init(), 0

        def dist_step():
            nonlocal state, t
            state, t = alg.step(state, t), t + 1

        dist_step(), peer.step()  # warm-up
        ours, theirs = [], []
        for _ in range(a.repeats):
            ours.append(timed(dist_step, a.iters))
            theirs.append(timed(peer.step, a.iters))
        d, p = sorted(ours)[len(ours) // 2], sorted(theirs)[len(theirs) // 2]
        print(f"| {name} | {a.clients} | {peer.m} | {1000 * d:.1f} | {1000 * p:.1f} | {p / d:.1f}x |", flush=True)
    print(f"\ntorch {torch.__version__}, 1 thread")


if __name__ == "__main__":
    main()
