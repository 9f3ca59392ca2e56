"""The classification tasks hyperclean and hyperrep (problems/hyperclean.py, problems/hyperrep.py)."""
import json
import tomllib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import distbo
from distbo import rng, tasks
from distbo.algorithms import ALGORITHMS
from distbo.cli import main
from distbo.oracles import Oracles
from distbo.runner import resolve

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(dataset="digits", max_samples=90, batch_size=5)


def _mlp(params, sizes, inputs):
    """Reference network: plain torch ops on views of the flat parameter vector, layer by layer
    (weight [out, in] row-major, then bias)."""
    h, off = inputs, 0
    for l in range(len(sizes) - 1):
        n_in, n_out = sizes[l], sizes[l + 1]
        w = params[off: off + n_out * n_in].view(n_out, n_in)
        b = params[off + n_out * n_in: off + n_out * n_in + n_out]
        off += n_out * n_in + n_out
        h = F.linear(h, w, b)
        if l < len(sizes) - 2:
            h = torch.relu(h)
    return h


def _reference_losses(problem, name, hidden):
    """Per-worker f_i, g_i from the raw split arrays and the drawn indices (no vmap, no DenseNet)."""
    d, l2 = problem.data, problem.params.l2
    feats, classes = d.features, d.classes

    def logits(x, y, inputs):
        if name == "hyperrep":  # x = hidden layers, y = head
            h = _mlp(x, (feats, *hidden), inputs)
            return _mlp(y, (hidden[-1], classes), torch.relu(h))
        return _mlp(y, (feats, *hidden, classes), inputs)

    def f(x, y, idx):
        return F.cross_entropy(logits(x, y, d.val.inputs[idx]), d.val.labels[idx])

    def g(x, y, idx):
        labels = problem.noisy[idx] if name == "hyperclean" else d.train.labels[idx]
        ce = F.cross_entropy(logits(x, y, d.train.inputs[idx]), labels, reduction="none")
        weight = torch.sigmoid(x[idx]) if name == "hyperclean" else torch.ones_like(ce)
        return (weight * ce).mean() + 0.5 * l2 * (y @ y)

    return f, g


@pytest.mark.parametrize("name,kw,hidden", [("hyperclean", {}, []), ("hyperclean", {"model": "mlp", "hidden": [6]}, [6]),
                                            ("hyperrep", {"hidden": [7, 5]}, [7, 5])])
def test_losses_gradients_and_hvps_match_a_per_worker_autograd_reference(name, kw, hidden):
    n = 3
    problem = tasks.make(name, workers=n, dtype=torch.float64, seed=2, l2=0.01, **TINY, **kw)
    x, y = problem.init(0)
    gen = torch.Generator().manual_seed(0)  # test-only perturbation off the starting point
    x = x + 0.3 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    y = y + 0.3 * torch.randn(y.shape, generator=gen, dtype=torch.float64)
    v = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    workers, key = torch.arange(n), rng.key(11)
    bf, bg = problem.sample("f", workers, rng.key(key, 0)), problem.sample("g", workers, rng.key(key, 1))
    idx_f = problem.data.val.draw(workers, rng.key(key, 0), problem.batch_size)
    idx_g = bg["index"]
    orc = Oracles(problem)
    ref_f, ref_g = _reference_losses(problem, name, hidden)

    got = {"f": orc.f_values(x, y, bf), "g": orc.g_values(x, y, bg), "gf": orc.grad_f(x, y, bf),
           "gg": orc.grad_g(x, y, bg), "hvp": orc.grad_y_hvp_g(x, y, v, bg)}
    for i in range(n):
        xi, yi = x.clone().requires_grad_(), y.clone().requires_grad_()
        fi = ref_f(xi, yi, idx_f[i])
        gfx, gfy = torch.autograd.grad(fi, (xi, yi), allow_unused=True, materialize_grads=True)
        gi = ref_g(xi, yi, idx_g[i])
        ggx, ggy = torch.autograd.grad(gi, (xi, yi), create_graph=True)
        hxy, hyy = torch.autograd.grad(ggy @ v, (xi, yi), allow_unused=True, materialize_grads=True)
        torch.testing.assert_close(got["f"][i], fi.detach())
        torch.testing.assert_close(got["g"][i], gi.detach())
        for a, b in zip(got["gf"], (gfx, gfy)):
            torch.testing.assert_close(a[i], b)
        for a, b in zip(got["gg"], (ggx, ggy)):
            torch.testing.assert_close(a[i], b.detach())
        for a, b in zip(got["hvp"], (ggy, hxy, hyy)):
            torch.testing.assert_close(a[i], b.detach())
    if name == "hyperclean":  # a worker's g only touches its own samples' weights
        tr = problem.data.train
        own = (torch.arange(problem.d_x) >= tr.offset[:, None]) & (torch.arange(problem.d_x) < (tr.offset + tr.size)[:, None])
        assert (got["gg"][0][~own] == 0).all() and (got["gg"][0][own] != 0).any()
        assert problem.d_x == tr.labels.numel() and (got["gf"][0] == 0).all()
    summed = orc.grad_g(x, y, bg, reduce=True)
    torch.testing.assert_close(summed[1], got["gg"][1].sum(0))


def test_hyperclean_with_soba_beats_training_on_the_noisy_labels():
    task = {"name": "hyperclean", "dataset": "digits", "noise": 0.5}
    common = dict(workers=4, rounds=400, eval_every=400, seed=0)
    clean = distbo.run(task, algorithm={"name": "soba", "alpha": 100.0, "beta": 0.1, "gamma": 0.1}, **common)
    # the same lower-level iterations with x frozen at 0: every sample weighted 1/2, noisy labels
    noisy = distbo.run(task, algorithm={"name": "soba", "alpha": 1e-12, "beta": 0.1, "gamma": 0.1}, **common)
    c, b = clean.metrics[-1], noisy.metrics[-1]
    assert torch.all(noisy.x.abs() < 1e-6)  # weights stay 1/2
    assert c["test_acc"] > b["test_acc"] + 0.04, (c["test_acc"], b["test_acc"])
    assert c["clean_recall"] > 0.8 and c["clean_precision"] > 0.8  # 50% noise: chance precision is 0.5
    assert c["upper_loss"] < b["upper_loss"]


@pytest.mark.parametrize("algorithm", ALGORITHMS.names())
def test_every_algorithm_learns_both_tasks_at_its_defaults(algorithm):
    """Derived defaults on tiny tasks (90 samples, batches of 5): with the curvature of (x0, y0)
    alone (L_g 0.36; x's own L_f_xx is 8.3) every single-loop method and FedNest diverged on this
    hyperrep within 20-100 rounds (issue 12, docs/defaults.md)."""
    fed = algorithm in ("aggitd", "fednest", "lfednest")
    for task, rounds in (({"name": "hyperclean", **TINY, "model": "mlp", "hidden": [8]}, 2),
                         ({"name": "hyperrep", **TINY, "hidden": [8]}, 8 if fed else 40)):
        res = distbo.run(task, algorithm=algorithm, workers=4, rounds=rounds, eval_every=rounds)
        first, row = res.metrics[0], res.metrics[-1]
        assert row["round"] == rounds and row["comm_rounds"] >= rounds and 0 <= row["test_acc"] <= 1
        assert all(torch.isfinite(t).all() for t in (res.x, res.y))
        if rounds > 2:
            assert row["test_acc"] > first["test_acc"] + 0.2, (first["test_acc"], row["test_acc"])


def test_units_and_pruned_clients_compute_with_a_smaller_network():
    rep = tasks.make("hyperrep", workers=4, hidden=[12, 10], **TINY)
    net = rep.units()["net"]
    assert net.sizes == (64, 12, 10, 10) and net.split == 2
    assert (net.numel("x"), net.numel("y")) == (rep.d_x, rep.d_y)
    assert tasks.make("hyperclean", workers=4, **TINY).units() is None  # x (sample weights) is not in the net
    task = {"name": "hyperrep", **TINY, "hidden": [12]}
    full = distbo.run(task, algorithm="rabo", workers=4, rounds=2, eval_every=2)
    half = distbo.run(task, algorithm="rabo", workers=4, rounds=2, eval_every=2, clients={"resources": [0.5]})
    assert half.metrics[-1]["client_flops_max"] < full.metrics[-1]["client_flops_max"]
    assert half.metrics[-1]["bits_up"] < full.metrics[-1]["bits_up"]


def test_cli_run_records_client_histograms(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "--task", "hyperrep", "--workers", "10", "--rounds", "3", "--eval-every", "3",
                 "--set", "task.dataset=digits", "--set", "task.partition=shards:2", "--set", "task.hidden=[16]",
                 "--out", str(out), "--quiet"])
    assert code == 0
    info = json.loads((out / "config.json").read_text())["task_info"]
    hists = info["client_train_label_hist"]
    assert len(hists) == 10 and [sum(h) for h in hists] == info["client_train_sizes"]
    # shards:2 -> 20 shards of ~72 samples, each within at most 2 of the ~144-sample classes
    assert max(sum(c > 0 for c in h) for h in hists) <= 4
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"test_acc", "test_loss", "upper_loss", "val_acc"} <= set(rows[-1])


def test_bad_task_values_are_one_line_errors(capsys):
    for sets, field in ((["task.noise=1.5"], "task.noise"), (["task.model=cnn"], "task.model"),
                        (["task.hidden=[0]"], "task.hidden"), (["task.dataset=idx:/missing/path"], "task.dataset")):
        args = ["run", "--task", "hyperclean", "--rounds", "1", "--out", "/nonexistent/never"]
        for s in sets:
            args += ["--set", s]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and field in err, err


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("hyper*.toml")))
def test_ready_configs_resolve(path):
    raw = tomllib.loads(path.read_text())
    res, problem = resolve(raw)
    assert problem.n_workers == raw["workers"] and res.run.task["partition"] == raw["task"]["partition"]
    given = raw.get("algorithm", {}).get("alpha")
    assert res.algorithm.alpha == given if given is not None else res.algorithm.alpha > 0  # else derived
