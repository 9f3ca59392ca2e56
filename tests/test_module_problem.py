"""distbo.ModuleProblem (problems/module.py): equal to the hand-written flat hyperrep, CNNs learn,
processes agree with the simulator, bits follow the modules' sizes, pruning, devices."""
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import distbo
from distbo import tasks
from distbo.algorithms import ALGORITHMS
from distbo.algorithms.base import Clients
from distbo.algorithms.submodels import NetLayout, make_layout
from distbo.data.federated import FederatedData
from distbo.errors import ConfigError

STEPS = {"alpha": 0.1, "beta": 0.1, "gamma": 0.1}


def ce(up, low, batch):
    return F.cross_entropy(low(up(batch[0])), batch[1])


def ce_l2(up, low, batch):
    return ce(up, low, batch) + 0.5e-3 * sum((p ** 2).sum() for p in low.params.values())


def shards(split):
    return [(split.inputs[o:o + n], split.labels[o:o + n]) for o, n in zip(split.offset.tolist(), split.size.tolist())]


def digits_problem(body, head, workers=4, dtype=torch.float32, **kw):
    d = FederatedData("digits", workers, "iid", 0, max_samples=400, dtype=dtype)
    return distbo.ModuleProblem(body, head, f=ce, g=ce_l2, train=shards(d.train), val=shards(d.val),
                                batch_size=kw.pop("batch_size", 8), test=(d.test_inputs, d.test_labels), **kw)


def tiny_mlp(hidden=8, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU()), nn.Linear(hidden, 10)


class Images(nn.Module):
    """A flat 64-pixel digit as a 1 x 8 x 8 image, then a small CNN body."""

    def __init__(self, channels=4):
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1)

    def forward(self, x):
        return F.max_pool2d(torch.relu(self.conv(x.reshape(-1, 1, 8, 8))), 2).flatten(1)


def tiny_cnn(channels=4):
    torch.manual_seed(0)
    return Images(channels), nn.Linear(channels * 16, 10)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_equals_hand_written_hyperrep(model):
    """The same modules as ModuleProblem and as the flat hyperrep task (float64): same batches,
    losses, oracles and metric rows of a SOBA run."""
    kw = dict(dataset="digits", max_samples=200, batch_size=6, l2=1e-3)
    rep = tasks.make("hyperrep", workers=3, dtype=torch.float64, **kw,
                     **({"hidden": [8]} if model == "mlp" else {"model": "cnn", "channels": [3]}))
    x0, y0 = rep.init(0)
    if model == "mlp":
        body, head = nn.Sequential(nn.Linear(64, 8), nn.ReLU()), nn.Linear(8, 10)
        prep = lambda a: a  # noqa: E731
    else:
        body, head = rep.body, rep.head
        prep = lambda a: a.reshape(-1, 1, 8, 8)  # noqa: E731
    body, head = body.double(), head.double()
    nn.utils.vector_to_parameters(x0, body.parameters())
    nn.utils.vector_to_parameters(y0, head.parameters())
    f = lambda up, low, b: F.cross_entropy(low(up(prep(b[0]))), b[1])  # noqa: E731
    g = lambda up, low, b: f(up, low, b) + 0.5e-3 * sum((p ** 2).sum() for p in low.params.values())  # noqa: E731
    mp = distbo.ModuleProblem(body, head, f, g, train=shards(rep.data.train), val=shards(rep.data.val),
                              batch_size=6, test=(rep.data.test_inputs, rep.data.test_labels),
                              predict=lambda up, low, a: low(up(prep(a))))
    assert (mp.d_x, mp.d_y, mp.dtype) == (rep.d_x, rep.d_y, torch.float64)
    assert torch.equal(mp.init(0)[0], x0) and torch.equal(mp.init(0)[1], y0)
    workers, key = torch.arange(3), distbo.rng.key(5)
    for level in ("f", "g"):
        ours, theirs = mp.sample(level, workers, key), rep.sample(level, workers, key)
        assert torch.equal(ours[0], theirs["inputs"]) and torch.equal(ours[1], theirs["labels"])
    run = dict(algorithm={"name": "soba", **STEPS}, rounds=6, eval_every=3)
    a, b = distbo.run(mp, **run), distbo.run(rep, **run)
    for ra, rb in zip(a.metrics, b.metrics):
        for k in ("upper_loss", "test_loss", "test_acc", "bits_up"):
            assert ra[k] == pytest.approx(rb[k], rel=1e-10, abs=1e-12), k
    assert torch.allclose(a.x, b.x, rtol=0, atol=1e-12) and torch.allclose(a.y, b.y, rtol=0, atol=1e-12)
    if model == "mlp":  # pruned clients compute with the same sliced sub-networks
        run = dict(algorithm={"name": "rafbo", **STEPS, "local_steps": 2}, clients={"resources": [1, 0.5]},
                   rounds=3, eval_every=3)
        a, b = distbo.run(mp, **run), distbo.run(rep, **run)
        assert a.metrics[-1]["upper_loss"] == pytest.approx(b.metrics[-1]["upper_loss"], rel=1e-10)
        assert torch.allclose(a.x, b.x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("algorithm,extra", [("soba", {}), ("ef-soba", {"compressor": "topk:0.2"}),
                                             ("aggitd", {})])
def test_cnn_lowers_validation_loss(algorithm, extra):
    hp = ({"name": algorithm, "alpha": 0.1, "beta": 0.02, "inner_rounds": 2, "local_steps": 2}
          if algorithm == "aggitd" else {"name": algorithm, **STEPS})
    r = distbo.run(digits_problem(*tiny_cnn()), algorithm=hp, rounds=40, eval_every=40, **extra)
    assert r.metrics[-1]["upper_loss"] < 0.8 * r.metrics[0]["upper_loss"]
    assert isinstance(r.metrics[-1]["test_acc"], float)


def test_soba_bits_are_32_per_value_of_the_modules():
    body, head = tiny_cnn()
    d_x, d_y = sum(p.numel() for p in body.parameters()), sum(p.numel() for p in head.parameters())
    p = digits_problem(body, head, workers=4)
    assert (p.d_x, p.d_y) == (d_x, d_y)
    r = distbo.run(p, algorithm="soba", rounds=3, eval_every=3)
    assert r.metrics[-1]["bits_up"] == 3 * 4 * 32 * (d_x + 2 * d_y)


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_every_algorithm_runs(name):
    comp = {"c-soba": "randk:0.5", "cm-soba": "randk:0.5", "cm-soba-msc": "topk:0.5", "ef-soba": "topk:0.5",
            "ef-soba-msc": "topk:0.5"}.get(name, "identity")
    hp = {"name": name, "alpha": 0.05, "beta": 0.05, **({"gamma": 0.05} if "soba" in name or "abo" in name else {})}
    extra = {"clients": {"resources": [1, 0.5]}} if name in ("rabo", "rafbo") else {}
    r = distbo.run(digits_problem(*tiny_mlp()), algorithm=hp, compressor=comp, rounds=2, eval_every=2, **extra)
    assert torch.isfinite(r.x).all() and r.metrics[-1]["round"] == 2


def test_procs_equal_simulator():
    kw = dict(algorithm={"name": "ef-soba", **STEPS}, compressor="topk:0.3", rounds=3, eval_every=3)
    sim = distbo.run(digits_problem(*tiny_mlp()), **kw)
    par = distbo.run(digits_problem(*tiny_mlp()), procs=2, **kw)
    for a, b in zip(sim.metrics, par.metrics):
        assert {k: v for k, v in a.items() if k != "wall_s"} == {k: v for k, v in b.items() if k != "wall_s"}
    assert torch.equal(sim.x, par.x) and torch.equal(sim.y, par.y)


def test_lambdas_travel_with_cloudpickle():
    pytest.importorskip("cloudpickle")
    body, head = tiny_mlp()
    p = digits_problem(body, head, metrics=lambda up, low: {"head_norm": low.params["weight"].norm()})
    q = pickle.loads(pickle.dumps(p))
    x, y = p.init(0)
    assert q.evaluate(x, y) == p.evaluate(x, y)


def test_pruning_slices_linear_chains_and_says_when_it_cannot(capsys):
    p = digits_problem(*tiny_mlp(hidden=6))
    assert p.units()["net"].sizes == (64, 6, 10)
    assert isinstance(make_layout(p, Clients(resources=[1, 0.5]), p.n_workers), NetLayout)
    r = distbo.run(p, algorithm={"name": "rabo", **STEPS}, clients={"resources": [1, 0.5]}, rounds=2, eval_every=2)
    assert r.metrics[-1]["C_x"] >= 1
    assert capsys.readouterr().err.count("warning") == 0
    c = digits_problem(*tiny_cnn())
    distbo.run(c, algorithm={"name": "rabo", **STEPS}, clients={"resources": [1, 0.5]}, rounds=2, eval_every=2)
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(err) == 1 and "coordinates" in err[0] and "Images" in err[0]


def test_one_dataset_partitioned_dirichlet():
    d = FederatedData("digits", 1, "iid", 0, max_samples=300)
    body, head = tiny_mlp()
    p = distbo.ModuleProblem(body, head, ce, ce_l2, train=(d.train.inputs, d.train.labels), batch_size=4,
                             partition="dirichlet:0.1", workers=5)
    assert p.n_workers == 5 and int(p.train.size.sum() + p.val.size.sum()) == d.train.labels.numel()
    sizes = torch.stack([torch.bincount(p.train.shard(i)[1], minlength=10) for i in range(5)]).float()
    assert float((sizes > 0).float().mean()) < 0.9  # label skew: not every client sees every class
    ds = torch.utils.data.TensorDataset(d.train.inputs[:40], d.train.labels[:40])
    q = distbo.ModuleProblem(body, head, ce, ce_l2, train=[ds, ds], val=[ds, ds], batch_size=4)
    assert torch.equal(q.train.tensors[0][:40], d.train.inputs[:40])


def test_module_problem_input_errors():
    body, head = tiny_mlp()
    with pytest.raises(ConfigError, match="^val:"):
        distbo.ModuleProblem(body, head, ce, ce, train=[(torch.zeros(3, 64), torch.zeros(3, dtype=torch.long))])
    with pytest.raises(ConfigError, match="^upper:"):
        distbo.ModuleProblem("body", head, ce, ce, train=[], val=[])


def test_device_cpu_is_bit_identical_and_cuda_is_one_line(capsys):
    kw = dict(algorithm={"name": "soba", **STEPS}, rounds=3, eval_every=3)
    a = distbo.run(digits_problem(*tiny_mlp()), **kw)
    b = distbo.run(digits_problem(*tiny_mlp()), device="cpu", **kw)
    assert torch.equal(a.x, b.x) and a.metrics[-1]["upper_loss"] == b.metrics[-1]["upper_loss"]
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="^device: 'cuda' asks for CUDA"):
        distbo.run(digits_problem(*tiny_mlp()), device="cuda", **kw)
    from distbo.cli import main

    code = main(["run", "--task", "quadratic", "--rounds", "1", "--set", 'device="cuda:1"', "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "device" in err[0]


def test_gpu_benchmark_skips_cleanly_without_cuda(capsys, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: run benchmarks/gpu.py itself")
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("gpu_bench", Path(__file__).parents[1] / "benchmarks" / "gpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr("sys.argv", ["gpu.py"])
    assert mod.main() == 0
    out = capsys.readouterr().out
    assert "skipped" in out and "no CUDA" in out
