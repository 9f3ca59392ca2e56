"""Compressors (docs/algorithms.md, compressors): unbiasedness and variance, contraction, exact bit counts,
seeding, decoding from the fields alone, spec errors."""
import math

import pytest
import torch

from distbo import ConfigError, rng
from distbo.compressors import COMPRESSORS, make_compressor, multi_step

N_MC = 20_000  # Monte Carlo rows, compressed in one batched call


def _vec(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3.0, d, dtype=torch.float64)
    u[3] = 0.0  # a zero coordinate
    return u


def _keys(n, seed=0):
    return rng.key(seed, 77, torch.arange(n))


@pytest.mark.parametrize("spec", ["randk:5", "randk:0.5", "qsgd:1", "qsgd:4"])
def test_unbiased_mean_and_variance_bound(spec):
    c, d = make_compressor(spec), 20
    u = _vec(d)
    out = c(u.expand(N_MC, d).clone(), _keys(N_MC))
    assert c.kind == "unbiased"
    omega, u2 = c.omega(d), float(u @ u)
    err2 = ((out - u) ** 2).sum(-1)
    # E||mean - u||^2 = tr Cov / N <= omega ||u||^2 / N: a 5x margin at fixed seeds
    assert float(((out.mean(0) - u) ** 2).sum()) <= 5 * omega * u2 / N_MC
    # per coordinate: within 5 standard errors
    se = out.std(0) / math.sqrt(N_MC)
    assert bool(((out.mean(0) - u).abs() <= 5 * se + 1e-12).all())
    assert float(err2.mean()) <= omega * u2 * (1 + 5 / math.sqrt(N_MC) * 3)
    if spec.startswith("randk"):  # rand-K's variance is exactly omega ||u||^2 in expectation
        assert float(err2.mean()) == pytest.approx(omega * u2, rel=0.05)


@pytest.mark.parametrize("spec", ["topk:1", "topk:0.3", "topk:20", "sign"])
def test_contractive_bound_holds_for_every_vector(spec):
    c, d = make_compressor(spec), 20
    g = torch.Generator().manual_seed(3)
    u = torch.randn(500, d, generator=g, dtype=torch.float64) ** 3  # heavy tails
    u[0] = 0.0
    u[1] = 1.0  # all ties
    u[2, :5] = 0.0
    out = c(u, _keys(500))
    assert c.kind == "contractive"
    err2, u2 = ((out - u) ** 2).sum(-1), (u**2).sum(-1)
    assert bool((err2 <= (1 - c.delta(d)) * u2 + 1e-12).all())
    if spec == "sign":  # exact error: ||u||^2 - ||u||_1^2 / d
        torch.testing.assert_close(err2, u2 - u.abs().sum(-1) ** 2 / d)
    else:  # exact error: the mass outside the K largest squares
        k = c.k(d)
        torch.testing.assert_close(err2, u2 - torch.topk(u**2, k, dim=-1).values.sum(-1))


@pytest.mark.parametrize("inner,steps", [("topk:0.2", 3), ("sign", 2), ("randk:0.25", 3)])
def test_multi_step_error_shrinks_geometrically(inner, steps):
    d, n = 20, 4000
    c = make_compressor(inner)
    msc = multi_step(c, steps)
    u = _vec(d).expand(n, d).clone()
    u2 = float(u[0] @ u[0])
    err2 = ((msc(u, _keys(n)) - u) ** 2).sum(-1)
    bound = (1 - msc.step_c.delta(d)) ** steps * u2
    assert msc.delta(d) == pytest.approx(1 - (1 - msc.step_c.delta(d)) ** steps)
    if c.kind == "contractive":  # deterministic bound, every row
        assert bool((err2 <= bound + 1e-12).all())
    else:  # in expectation
        assert float(err2.mean()) <= bound * 1.05
    p = msc.compress(u[:3], _keys(3))
    assert p.bits() == steps * c.compress(u[:3], _keys(3)).bits()  # R payloads, bits add up
    assert multi_step(make_compressor("identity"), steps).kind == "exact"


def _formula(spec, d):
    """docs/algorithms.md, compressors, float32 values."""
    name, _, arg = spec.partition(":")
    if name == "identity":
        return 32 * d
    if name in ("randk", "topk"):
        v = float(arg)
        k = max(1, min(d, round(v * d))) if "." in arg else int(v)  # a count > d is refused
        return 32 * k + 32 if name == "randk" else k * (32 + math.ceil(math.log2(d)))
    if name == "qsgd":
        return 32 + d * (1 + math.ceil(math.log2(int(arg) + 1)))
    return 32 + d


@pytest.mark.parametrize("spec", ["identity", "randk:7", "randk:0.1", "topk:3", "topk:0.05", "qsgd:1",
                                  "qsgd:4", "qsgd:255", "sign"])
@pytest.mark.parametrize("d", [1, 10, 257, 1000])
def test_bits_equal_the_section_5_formula(spec, d):
    n = 3
    u = torch.randn(n, d)
    name, _, arg = spec.partition(":")
    if name in ("randk", "topk") and "." not in arg and int(arg) > d:  # more than the message holds
        with pytest.raises(ConfigError, match=f"size {arg} is more coordinates than a message of {d} values"):
            make_compressor(spec).compress(u, _keys(n))
        return
    p = make_compressor(spec).compress(u, _keys(n))
    assert p.bits() == n * _formula(spec, d)
    assert p.decoded().shape == (n, d) and p.decoded().dtype == torch.float32


@pytest.mark.parametrize("spec", ["randk:4", "topk:4", "qsgd:3", "sign", "identity"])
def test_decoding_needs_only_the_fields(spec):
    """As under torch.distributed: payloads of two blocks of workers, all-gathered (concatenated
    along the rows) and decoded by a freshly parsed compressor, give the same vectors."""
    d = 12
    u = torch.randn(6, d)
    keys = _keys(6)
    a, b = make_compressor(spec).compress(u[:2], keys[:2]), make_compressor(spec).compress(u[2:], keys[2:])
    gathered = {k: (torch.cat([a.fields[k][0], b.fields[k][0]]), w) for k, (_, w) in a.fields.items()}
    fresh = make_compressor(spec)
    whole = make_compressor(spec)(u, keys)
    torch.testing.assert_close(fresh.decode(gathered, d), whole)
    torch.testing.assert_close(torch.cat([a.decoded(), b.decoded()]), whole)


@pytest.mark.parametrize("spec", ["randk:3", "qsgd:2"])
def test_random_compressors_are_seeded_by_their_keys(spec):
    c, u = make_compressor(spec), torch.randn(8, 16)
    k = _keys(8)
    torch.testing.assert_close(c(u, k), c(u, k))
    assert not torch.equal(c(u, k), c(u, _keys(8, seed=1)))
    rows = c(u[:1].expand(8, 16).clone(), k)  # rows with different keys draw differently
    assert len({tuple(r.tolist()) for r in rows}) > 1
    if spec.startswith("randk"):  # the seed travels as a field, the indices do not
        p = c.compress(u, k)
        assert set(p.fields) == {"values", "seed"} and p.fields["values"][0].shape == (8, 3)


@pytest.mark.parametrize("spec,says", [
    ("topk", "needs a size"), ("randk:abc", "not a number"), ("topk:0", "> 0"), ("randk:-2", "> 0"),
    ("topk:1.5", "fraction must be in (0, 1]"), ("randk:2.5", "fraction"), ("qsgd", "levels"),
    ("qsgd:0", "integer >= 1"), ("qsgd:2.5", "integer >= 1"), ("sign:3", "no argument"),
    ("topq:3", "did you mean 'topk'"), ("", "expected a compressor spec"),
])
def test_bad_specs_are_one_line_errors_at_parse_time(spec, says):
    for field in ("compressor", "downlink"):
        with pytest.raises(ConfigError) as e:
            make_compressor(spec, field)
        assert e.value.field == field and says in str(e.value) and "\n" not in str(e.value)


def test_every_compressor_is_registered_with_a_summary():
    names = set(COMPRESSORS.names())
    assert {"identity", "randk", "topk", "qsgd", "sign"} <= names
    assert all(e.summary and "\n" not in e.summary for e in COMPRESSORS.entries())


@pytest.mark.parametrize("spec", ["identity", "randk:0.2", "topk:5", "qsgd:3", "sign"])
def test_sparse_reductions_equal_the_dense_decode(spec):
    """decode_sum (the server's sum) and add_to (error-feedback shifts) skip densifying each row;
    they must equal the dense decode, plain, in contractive form and as multi-step."""
    from distbo.compressors.multistep import contractive, multi_step

    gen = torch.Generator().manual_seed(0)
    u, base = torch.randn(7, 50, generator=gen, dtype=torch.float64), torch.randn(7, 50, generator=gen, dtype=torch.float64)
    keys = rng.key(3, torch.arange(7))
    for c in (make_compressor(spec), contractive(make_compressor(spec)), multi_step(make_compressor(spec), 3)):
        p = c.compress(u, keys)
        dec = c.decode(p.fields, 50)
        torch.testing.assert_close(c.decode_sum(p.fields, 50), dec.sum(0))
        torch.testing.assert_close(c.add_to(base, p.fields, 50, 0.3), base + 0.3 * dec)
