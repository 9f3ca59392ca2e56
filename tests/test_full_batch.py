"""batch_size="full" (ModuleProblem): deterministic full-batch oracles; two seeds give identical metrics."""
import pytest
import torch
import torch.nn.functional as F

import distbo
from distbo.oracles import Oracles


def ce(up, low, batch):
    return F.cross_entropy(low(batch[0] * up), batch[1])


def ridge(up, low, batch):
    return ce(up, low, batch) + 1e-2 * (low.params["weight"] ** 2).sum()


def problem(sizes, **kw):
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(n, 6, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen))
            for n in sizes]
    torch.manual_seed(0)
    return distbo.ModuleProblem(torch.ones(6, dtype=torch.float64), torch.nn.Linear(6, 3).double(), ce, ridge,
                                train=data, val=data, **kw)


@pytest.mark.parametrize("sizes", [(7, 7, 7), (5, 9, 7)], ids=["equal shards", "unequal shards"])
def test_full_batch_gradients_are_those_of_each_whole_shard(sizes):
    p = problem(sizes, batch_size="full")
    x, y = p.init(0)
    workers = torch.arange(len(sizes))
    batch = p.sample("g", workers, distbo.rng.key(0, 1))
    assert all(torch.equal(a, b) for a, b in zip(batch, p.sample("g", workers, distbo.rng.key(5, 2))))
    gx, gy = Oracles(p).grad_g(x, y, batch)
    for i in range(len(sizes)):
        xi, yi = x.clone().requires_grad_(), y.clone().requires_grad_()
        ridge(*p.bind(xi, yi), p.train.shard(i)).backward()
        torch.testing.assert_close(gx[i], xi.grad, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(gy[i], yi.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("sizes", [(7, 7, 7), (5, 9, 7)], ids=["equal shards", "unequal shards"])
def test_two_seeds_give_identical_metrics(sizes):
    test = (torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)), torch.arange(4) % 3)
    runs = [distbo.run(problem(sizes, batch_size="full", test=test), algorithm="soba", rounds=6, eval_every=2, seed=s)
            for s in (0, 7)]
    strip = [[{k: v for k, v in r.items() if k != "wall_s"} for r in run.metrics] for run in runs]
    assert strip[0] == strip[1] and strip[0][-1]["upper_loss"] < strip[0][0]["upper_loss"]
    assert runs[0].config["algorithm"] == runs[1].config["algorithm"]  # the same derived step sizes
    assert runs[0].config["task_info"]["batch_size"] == "full"
    mini = distbo.run(problem(sizes, batch_size=3), algorithm="soba", rounds=6, eval_every=2, seed=7)
    assert mini.metrics[-1]["upper_loss"] != strip[0][-1]["upper_loss"]
