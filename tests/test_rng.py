import torch

from distbo import rng


def test_pure_function_of_keys():
    k = rng.key(3, 7, torch.arange(5))
    assert torch.equal(rng.uniform(k, (100,)), rng.uniform(k, (100,)))
    # a block of workers draws exactly what the whole set draws for them
    assert torch.equal(rng.uniform(k, (50,))[2:4], rng.uniform(rng.key(3, 7, torch.arange(2, 4)), (50,)))


def test_uniform_and_normal_moments():
    u = rng.uniform(rng.key(1), (200_000,), torch.float64)
    assert 0 < float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.var()) - 1 / 12) < 0.002
    z = rng.normal(rng.key(2), (200_000,), torch.float64)
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01


def test_subset_is_uniform_and_distinct():
    idx = rng.subset(rng.key(torch.arange(20_000)), 10, 3)
    assert all(len(set(r)) == 3 for r in idx[:200].tolist())
    freq = torch.bincount(idx.flatten(), minlength=10) / 20_000
    assert float((freq - 0.3).abs().max()) < 5 * (0.21 / 20_000) ** 0.5
