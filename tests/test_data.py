"""Offline datasets, client partitions and the federated split (src/distbo/data/)."""
import gzip
import struct

import numpy as np
import pytest
import torch

from distbo import ConfigError, rng, tasks
from distbo.data import FederatedData, check_spec, load_source, parse_partition, partition, read_idx
from distbo.data.partition import dirichlet

SPECS = ["iid", "dirichlet:0.1", "dirichlet:10", "shards:2"]


def _labels(n=2000, classes=10, seed=0):
    return rng.randint(rng.key(seed, 77), classes, (n,))


@pytest.mark.parametrize("spec", SPECS)
def test_partition_covers_every_sample_exactly_once_and_is_deterministic(spec):
    labels = _labels()
    parts = partition(labels, 7, spec, rng.key(3), min_size=2)
    assert len(parts) == 7 and min(p.numel() for p in parts) >= 2
    torch.testing.assert_close(torch.sort(torch.cat(parts)).values, torch.arange(labels.numel()))
    again = partition(labels, 7, spec, rng.key(3), min_size=2)
    assert all(torch.equal(a, b) for a, b in zip(parts, again))
    other = partition(labels, 7, spec, rng.key(4), min_size=2)
    assert any(not torch.equal(a, b) for a, b in zip(parts, other))


def _shares(labels, parts, classes=10):
    return torch.stack([torch.bincount(labels[p], minlength=classes).double() / p.numel() for p in parts])


def test_dirichlet_small_alpha_is_skewed_large_alpha_near_uniform():
    labels = _labels(5000)
    skewed = _shares(labels, partition(labels, 10, "dirichlet:0.05", rng.key(1)))
    flat = _shares(labels, partition(labels, 10, "dirichlet:1000", rng.key(1)))
    # small alpha: each client is dominated by few classes; large alpha: every client ~ 1/10 each
    assert skewed.max(1).values.mean() > 0.6
    assert (flat - 0.1).abs().max() < 0.05
    iid = _shares(labels, partition(labels, 10, "iid", rng.key(1)))
    assert (iid - 0.1).abs().max() < 0.06


def test_dirichlet_sampler_moments():
    # Dirichlet(a 1_n): mean 1/n, variance (n - 1) / (n^2 (n a + 1)); 8k draws, fixed key
    rows = 8000
    for alpha, n in ((0.1, 5), (2.0, 4)):
        p = dirichlet(rng.key(9), alpha, n, rows)
        torch.testing.assert_close(p.sum(1), torch.ones(rows, dtype=torch.float64))
        var = (n - 1) / (n**2 * (n * alpha + 1))
        assert (p.mean(0) - 1 / n).abs().max() < 4 * (var / rows) ** 0.5
        assert abs(float(p.var(0).mean()) / var - 1) < 0.06


def test_shards_give_each_client_about_k_labels():
    labels = _labels(4000)
    for k in (1, 2, 3):
        parts = partition(labels, 20, f"shards:{k}", rng.key(2))
        n_labels = torch.tensor([labels[p].unique().numel() for p in parts], dtype=torch.float64)
        assert n_labels.max() <= 2 * k  # a shard can straddle two labels
        assert n_labels.mean() <= k + 0.6
        sizes = torch.tensor([p.numel() for p in parts])
        assert sizes.max() - sizes.min() <= k  # equal shards


def test_tiny_dirichlet_tops_up_empty_clients():
    labels = _labels(300)
    parts = partition(labels, 60, "dirichlet:0.01", rng.key(0), min_size=2)
    assert min(p.numel() for p in parts) >= 2
    torch.testing.assert_close(torch.sort(torch.cat(parts)).values, torch.arange(300))


@pytest.mark.parametrize("spec", ["dirichlet:-1", "dirichlet:0", "dirichlet:x", "shards:0", "shards:1.5",
                                  "iid:3", "random"])
def test_bad_partition_specs_are_one_line_config_errors(spec):
    with pytest.raises(ValueError):
        parse_partition(spec)
    with pytest.raises(ConfigError) as exc:
        tasks.make("hyperclean", workers=2, dataset="digits", partition=spec)
    assert exc.value.field == "task.partition" and "\n" not in str(exc.value)
    assert "dirichlet:ALPHA" in str(exc.value)


def test_bad_dataset_specs_are_one_line_config_errors(tmp_path):
    for spec, hint in (("idx:/missing/path", "no such folder"), ("cifar", "allowed"),
                       (f"idx:{tmp_path}", "missing train-images")):
        with pytest.raises(ConfigError) as exc:
            tasks.make("hyperrep", workers=2, dataset=spec)
        assert exc.value.field == "task.dataset" and hint in str(exc.value) and "\n" not in str(exc.value)


def test_too_many_workers_is_a_config_error():
    with pytest.raises(ConfigError) as exc:
        tasks.make("hyperclean", workers=800, dataset="digits")
    assert exc.value.field == "workers" and "\n" not in str(exc.value) and "800" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        tasks.make("hyperrep", workers=100, dataset="digits", partition="shards:20")
    assert exc.value.field == "task.partition" and "2000 shards" in str(exc.value)


# ----- IDX files -----
def _write_idx(path, array, code):
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as fh:
            fh.write(raw)
    else:
        path.write_bytes(raw)


def _fake_mnist(n, seed):
    g = np.random.default_rng(seed)  # test data only
    labels = np.arange(n, dtype=np.uint8) % 10
    images = g.integers(0, 256, size=(n, 6, 5), dtype=np.uint8)
    images[:, 0, 0] = labels * 20  # make the label visible in the pixels
    return images, labels


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip_and_loader(tmp_path, gz):
    ext = ".gz" if gz else ""
    img, lab = _fake_mnist(120, 1)
    timg, tlab = _fake_mnist(40, 2)
    _write_idx(tmp_path / f"train-images-idx3-ubyte{ext}", img, 0x08)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{ext}", lab, 0x08)
    np.testing.assert_array_equal(read_idx(tmp_path / f"train-images-idx3-ubyte{ext}"), img)
    floats = np.linspace(-1, 1, 12).reshape(3, 4).astype(np.float32)
    _write_idx(tmp_path / f"f.idx{ext}", floats, 0x0D)
    np.testing.assert_array_equal(read_idx(tmp_path / f"f.idx{ext}"), floats)

    spec = f"idx:{tmp_path}"
    assert check_spec(spec) == spec
    src = load_source(spec)
    assert src.inputs.shape == (120, 30) and src.shape == (6, 5) and src.test_inputs is None
    np.testing.assert_allclose(src.inputs, img.reshape(120, 30) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(src.labels, lab)

    # with test files, the test set comes from them (at most max_test) and the pool is all train
    sub = tmp_path / "with_test"
    sub.mkdir()
    for name, arr in (("train-images.idx3-ubyte", img), ("train-labels.idx1-ubyte", lab),
                      ("t10k-images-idx3-ubyte", timg), ("t10k-labels-idx1-ubyte", tlab)):
        _write_idx(sub / f"{name}{ext}", arr, 0x08)
    data = FederatedData(f"idx:{sub}", 3, "shards:2", seed=0, max_test=25)
    assert data.test_labels.numel() == 25 and data.features == 30
    assert data.train.labels.numel() + data.val.labels.numel() == 120
    problem = tasks.make("hyperclean", workers=3, dataset=f"idx:{sub}", batch_size=4)
    x, y = problem.init(0)
    assert 0 <= problem.evaluate(x, y)["test_acc"] <= 1


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")
    _write_idx(tmp_path / "short", np.zeros((4, 3), np.uint8), 0x08)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-2])
    with pytest.raises(ValueError, match="header"):
        read_idx(tmp_path / "short")


# ----- the federated split -----
def test_federated_split_sizes_standardisation_and_histograms():
    data = FederatedData("digits", 5, "dirichlet:0.5", seed=1, val_fraction=0.25, test_fraction=0.2)
    n_train, n_val, n_test = data.train.labels.numel(), data.val.labels.numel(), data.test_labels.numel()
    assert n_train + n_val + n_test == 1797 and n_test == round(0.2 * 1797)
    assert (data.train.size >= 1).all() and (data.val.size >= 1).all()
    share = data.val.size.double() / (data.val.size + data.train.size)
    assert ((share - 0.25).abs() < 0.1).all()
    torch.testing.assert_close(data.train.inputs.mean(0), torch.zeros(64), atol=1e-4, rtol=0)
    info = data.describe()
    assert [sum(h) for h in info["client_train_label_hist"]] == data.train.size.tolist()
    assert [sum(h) for h in info["client_val_label_hist"]] == data.val.size.tolist()
    # the same seed rebuilds the same split; another seed another one
    again = FederatedData("digits", 5, "dirichlet:0.5", seed=1, val_fraction=0.25)
    assert torch.equal(again.train.inputs, data.train.inputs)
    assert not torch.equal(FederatedData("digits", 5, "dirichlet:0.5", seed=2).train.labels[:50],
                           data.train.labels[:50])


def test_mnist5k_ships_offline():
    src = load_source("mnist5k")
    assert src.inputs.shape == (5000, 784) and src.shape == (28, 28)
    assert np.bincount(src.labels).tolist() == [500] * 10
    assert 0 <= src.inputs.min() and src.inputs.max() <= 1


def test_batches_are_pure_functions_of_workers_and_key():
    problem = tasks.make("hyperclean", workers=6, dataset="digits", batch_size=7)
    key = rng.key(5, 6)
    full = problem.sample("g", torch.arange(6), key)
    block = problem.sample("g", torch.tensor([2, 3, 4]), key)  # what a process hosting 2..4 draws
    for name in ("inputs", "labels", "index"):
        torch.testing.assert_close(block[name], full[name][2:5])
    tr = problem.data.train
    lo, hi = tr.offset.unsqueeze(1), (tr.offset + tr.size).unsqueeze(1)
    assert ((full["index"] >= lo) & (full["index"] < hi)).all()  # each worker draws its own shard
    torch.testing.assert_close(full["inputs"], tr.inputs[full["index"]])
    f = problem.sample("f", torch.arange(6), key)
    assert set(f) == {"inputs", "labels"} and f["inputs"].shape == (6, 7, 64)
    assert not torch.equal(problem.sample("g", torch.arange(6), rng.key(5, 7))["index"], full["index"])
