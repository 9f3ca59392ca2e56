"""RABO / RAFBO (algorithms/rabo.py, algorithms/submodels.py): dual pruning with coverage averaging."""
import pytest
import torch

import distbo
from distbo import ConfigError
from distbo import rng
from distbo.algorithms.base import STREAM_CLIENTS
from distbo.algorithms.federated import sample_clients
from distbo.algorithms.soba import soba_directions
from distbo.algorithms.submodels import Kept, coverage_average
from distbo.oracles import FiniteDifferenceOracles, Oracles
from distbo.runner import build, resolve
from helpers import SoftplusProblem

F64 = torch.float64
TINY_REP = {"name": "hyperrep", "dataset": "digits", "max_samples": 120, "batch_size": 5}


def _algorithm(**raw):
    res, problem = resolve(raw)
    alg, comm = build(res, problem)
    return alg, comm, problem


def test_finite_difference_products_match_autograd_to_order_delta_squared():
    p = SoftplusProblem(workers=3)
    gen = torch.Generator().manual_seed(4)
    x, y, v = (torch.randn(d, generator=gen, dtype=F64) for d in (p.d_x, p.d_y, p.d_y))
    b = p.sample("g", torch.arange(3), torch.tensor(7))
    gy, hx, hy = Oracles(p).grad_y_hvp_g(x, y, v, b)
    errs = []
    for delta in (1e-2, 1e-3):
        fgy, fhx, fhy = FiniteDifferenceOracles(p, delta).grad_y_hvp_g(x, y, v, b)
        torch.testing.assert_close(fgy, gy)
        errs.append(max(float((fhx - hx).norm()), float((fhy - hy).norm())))
    scale = float(torch.cat([hx, hy], 1).norm())
    assert 0 < errs[1] < 1e-5 * scale
    # g is not quadratic (softplus), so the error is really there and falls 100x for a 10x smaller delta
    assert 60 < errs[0] / errs[1] < 160
    # the summed form (reduce=True at a shared point) is the sum of the per-worker products
    summed = FiniteDifferenceOracles(p, 1e-3).grad_y_hvp_g(x, y, v, b, reduce=True)
    for s, per in zip(summed, FiniteDifferenceOracles(p, 1e-3).grad_y_hvp_g(x, y, v, b)):
        torch.testing.assert_close(s, per.sum(0))


@pytest.mark.parametrize("name,products,tol", [("rabo", "exact", 1e-12), ("rafbo", "exact", 1e-12),
                                               ("rabo", "finite-difference", 1e-8)])
def test_full_resources_equal_soba_trajectory(name, products, tol):
    """All resources 1, one local step: RABO's round is SOBA's (finite differences are exact on a
    quadratic up to round-off)."""
    common = dict(task={"name": "quadratic", "d_x": 4, "d_y": 6, "noise": 0.3}, workers=5, dtype="float64", seed=2)
    steps = {"alpha": 0.1, "beta": 0.3, "gamma": 0.3}  # the same steps for both (defaults may be derived)
    algo = {"name": name, "products": products, **steps, **({"local_steps": 1} if name == "rafbo" else {})}
    rabo, rcomm, _ = _algorithm(algorithm=algo, **common)
    soba, scomm, _ = _algorithm(algorithm={"name": "soba", **steps}, **common)
    a, b = rabo.init(), soba.init()
    for t in range(12):
        a, b = rabo.step(a, t), soba.step(b, t)
        for k in ("x", "y", "v"):
            torch.testing.assert_close(getattr(a, k), getattr(b, k), rtol=tol, atol=tol)
    assert rcomm.stats == scomm.stats  # same bits up and down, same rounds
    assert {k: rabo.metrics(a)[k] for k in ("C_x", "C_y")} == {"C_x": 5, "C_y": 5}


def test_coverage_average_is_exact_on_hand_made_masks():
    gen = torch.Generator().manual_seed(0)
    old = torch.randn(6, generator=gen, dtype=F64)
    # two groups of different sizes: clients 0, 1 keep three coordinates, client 2 one; 4, 5 uncovered
    coords_a, coords_b = torch.tensor([[0, 1, 2], [3, 1, 2]]), torch.tensor([[2]])
    vals_a, vals_b = torch.randn(2, 3, generator=gen, dtype=F64), torch.randn(1, 1, generator=gen, dtype=F64)
    msg = Kept(6, [(vals_a, coords_a), (vals_b, coords_b)], count=3, dtype=F64)
    assert msg.bits() == 7 * 64  # only the kept values travel
    cover = torch.tensor([1, 2, 3, 1, 0, 0], dtype=F64)
    new = coverage_average(old, msg.local_sum(), cover)
    sent = {0: {0: vals_a[0, 0], 1: vals_a[0, 1], 2: vals_a[0, 2]},
            1: {3: vals_a[1, 0], 1: vals_a[1, 1], 2: vals_a[1, 2]}, 2: {2: vals_b[0, 0]}}
    for j in range(6):
        got = [c[j] for c in sent.values() if j in c]
        ref = old[j] + sum(got) / len(got) if got else old[j]
        torch.testing.assert_close(new[j], ref)


def test_mixed_round_on_quadratic_equals_per_client_masked_reference():
    """Coordinate-level fallback: full-point directions, each client's update on its kept
    coordinates only, each coordinate averaged over the clients that kept it."""
    alg, comm, q = _algorithm(task={"name": "quadratic", "d_x": 5, "d_y": 7, "noise": 0.2}, workers=6,
                              dtype="float64", algorithm={"name": "rabo", "products": "exact", "alpha": 0.05},
                              clients={"resources": [1, 0.5, 0.25], "policy": "random"})
    s = alg.init()
    s = s._replace(v=torch.linspace(-1, 1, q.d_y, dtype=F64))
    t = 3
    plan = alg.layout.plan(t, alg.round_key(t), alg.workers)
    masks = {k: torch.zeros(6, d, dtype=F64) for k, d in (("x", q.d_x), ("y", q.d_y))}
    for grp in plan.groups:
        for k in masks:
            masks[k][grp.workers] = grp.kept[k].to(F64)
    # levels 1, 0.5, 0.25 cycled: ceil(r d) coordinates kept of x (d = 5) and y (d = 7)
    assert masks["x"].sum(1).tolist() == [5, 3, 2] * 2 and masks["y"].sum(1).tolist() == [7, 4, 2] * 2
    bf, bg = alg.batches(t)
    D = soba_directions(Oracles(q), s.x, s.y, s.v, bf, bg, reduce=False)
    new = alg.step(s, t)
    hp = alg.hp
    for name, lr, space in (("x", hp.alpha, "x"), ("y", hp.beta, "y"), ("v", hp.gamma, "y")):
        m = masks[space]
        torch.testing.assert_close(plan.coverage[space], m.sum(0))
        ref = getattr(s, name) - lr * (m * D[name]).sum(0) / m.sum(0).clamp(min=1)
        torch.testing.assert_close(getattr(new, name), ref, rtol=1e-12, atol=1e-12)
    kept = int(masks["x"].sum() + 2 * masks["y"].sum())
    assert comm.stats.bits_up == 64 * kept and comm.stats.bits_down == 6 * 64 * (q.d_x + 2 * q.d_y)


def test_subnetwork_round_equals_full_network_with_pruned_units_zeroed():
    """Network layout (hyperrep, two hidden layers in x): each client computes with its sliced
    sub-network; the round equals full-network directions at the points whose pruned units are zeroed,
    masked, and coverage-averaged."""
    alg, comm, p = _algorithm(task={**TINY_REP, "hidden": [10, 6]}, workers=4, dtype="float64",
                              algorithm={"name": "rabo", "products": "exact"},
                              clients={"resources": [1, 0.5], "policy": "random"})
    net = p.units()["net"]
    s = alg.init()
    gen = torch.Generator().manual_seed(1)
    s = s._replace(y=torch.randn(p.d_y, generator=gen, dtype=F64), v=torch.randn(p.d_y, generator=gen, dtype=F64))
    t = 1
    plan = alg.layout.plan(t, alg.round_key(t), alg.workers)
    mx, my = torch.zeros(4, p.d_x, dtype=F64), torch.zeros(4, p.d_y, dtype=F64)
    bf, bg = alg.batches(t)
    for grp in plan.groups:
        xs, ys, _ = alg.layout.view(grp, s.x, s.y, s.v)
        sub = alg.layout.losses(grp.level)
        for r, w in enumerate(grp.workers.tolist()):
            mx[w], my[w] = net.unit_masks([i[r] for i in grp.idx], F64)
            one = {k: val[w] for k, val in bf.items()}
            # the task-level sub-network loss equals the full loss with the pruned units zeroed
            torch.testing.assert_close(sub.f(xs[r], ys[r], one), p.f(s.x * mx[w], s.y * my[w], one))
    D = soba_directions(Oracles(p), s.x * mx, s.y * my, s.v * my, bf, bg, reduce=False)
    new = alg.step(s, t)
    for name, m, lr in (("x", mx, alg.hp.alpha), ("y", my, alg.hp.beta), ("v", my, alg.hp.gamma)):
        torch.testing.assert_close(plan.coverage["x" if name == "x" else "y"], m.sum(0))
        ref = getattr(s, name) - lr * (m * D[name]).sum(0) / m.sum(0).clamp(min=1)
        torch.testing.assert_close(getattr(new, name), ref, rtol=1e-10, atol=1e-12)
    # level 0.5 keeps 5 of 10 and 3 of 6 units; only kept coordinates travel
    half = net.sub_sizes([5, 3])
    per_client = [net.numel("x", s_) + 2 * net.numel("y", s_) for s_ in (net.sizes, half)]
    assert comm.stats.bits_up == comm.stats.bits_down == 64 * 2 * sum(per_client)


def test_coverage_metrics_for_known_policies():
    # static [1, 0.5] on 4 clients: the second half of every vector is kept by the 2 full clients only
    r = distbo.run({"name": "quadratic", "d_x": 6, "d_y": 8}, "rabo", workers=4, rounds=3, eval_every=3,
                   overrides=["clients.resources=[1, 0.5]", 'clients.policy="static"'])
    assert (r.metrics[0]["C_x"], r.metrics[0]["C_y"]) == (None, None)
    assert (r.metrics[-1]["C_x"], r.metrics[-1]["C_y"]) == (2, 2)
    # rolling, all 0.25 of 8 hidden units on 6 clients: windows start at t, t+2, t+4, t+6, t, t+2,
    # so two windows are kept twice and two once every round: C_x* = C_y* = 1 (head bias: 6)
    alg, _, p = _algorithm(task={**TINY_REP, "hidden": [8]}, workers=6, algorithm="rabo",
                           clients={"resources": [0.25], "policy": "rolling"})
    s = alg.init()
    for t in range(3):
        cov = alg.layout.plan(t, alg.round_key(t), alg.workers).coverage
        units = cov["y"][: 10 * 8].reshape(10, 8)[0]  # head weight columns = hidden units
        assert sorted(units.tolist()) == [1, 1, 1, 1, 2, 2, 2, 2]
        assert units[t % 8] == 2 and units[(t + 4) % 8] == 1
        s = alg.step(s, t)
    assert alg.metrics(s)["C_x"] == alg.metrics(s)["C_y"] == 1


def test_client_flops_and_bits_follow_the_sub_network_sizes():
    r = distbo.run({**TINY_REP, "hidden": [12]}, {"name": "rafbo", "local_steps": 2}, workers=4, rounds=2,
                   eval_every=2, overrides=["clients.resources=[1, 0.5]"])
    fwd = lambda h: 2 * 5 * (64 * h + h * 10)  # DenseNet.flops, batch 5, digits 64 -> h -> 10
    per = [2 * (3 * fwd(h) + 9 * fwd(h)) for h in (12, 6)]  # 2 local steps; grad F + 3 grads of G
    last = r.metrics[-1]
    assert last["client_flops_max"] == per[0] and last["client_flops_mean"] == sum(per) / 2
    kept = [(64 * h + h) + 2 * (10 * h + 10) for h in (12, 6)]
    assert last["bits_up"] == 2 * 32 * 2 * sum(kept)  # rounds x float32 x 2 clients per level


def test_uncovered_coordinates_are_a_config_error_before_the_run(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ConfigError) as e:
        distbo.run("quadratic", "rabo", workers=4, rounds=5, out=out,
                   overrides=["clients.resources=[0.5, 0.25]", 'clients.policy="static"'])
    msg = str(e.value)
    assert e.value.field == "clients.policy" and "'static'" in msg and "[0.5, 0.25]" in msg and "of x" in msg
    assert "\n" not in msg and not out.exists()
    # a rolling window needs enough rounds to pass over every coordinate (x: 3 of 10, y: 5 of 20 kept)
    kw = dict(workers=1, overrides=["clients.resources=[0.25]", 'clients.policy="rolling"'])
    with pytest.raises(ConfigError, match="rolling.*never covers 6 of 10 coordinates of x"):
        distbo.run("quadratic", "rabo", rounds=2, **kw)
    with pytest.raises(ConfigError, match="never covers 4 of 20 coordinates of y"):
        distbo.run("quadratic", "rabo", rounds=12, **kw)
    assert distbo.run("quadratic", "rabo", rounds=16, eval_every=16, **kw).metrics[-1]["C_x"] == 0


DIST_CASES = {  # mixed levels, 3 clients per process: each rank draws every client's masks itself
    "quadratic-random": dict(task={"name": "quadratic", "d_x": 5, "d_y": 7, "noise": 0.1},
                             algorithm={"name": "rafbo", "local_steps": 2},
                             clients={"resources": [1, 0.5, 0.25], "policy": "random"}),
    "hyperrep-rolling": dict(task={**TINY_REP, "hidden": [12, 6]}, algorithm="rabo",
                             clients={"resources": [0.5, 1, 0.25], "policy": "rolling"}),
    # composition: top-K with per-client shifts, a QSGD down-link, half the clients per round (a
    # rank may host no client of a level: zero-row blocks)
    "quadratic-composed": dict(task={"name": "quadratic", "d_x": 5, "d_y": 7, "noise": 0.1},
                               algorithm={"name": "rafbo", "local_steps": 2}, compressor="topk:0.3",
                               downlink="qsgd:4", clients={"resources": [1, 0.5, 0.25], "policy": "random",
                                                           "fraction": 0.5}),
    "hyperrep-composed": dict(task={**TINY_REP, "hidden": [12, 6]}, algorithm="rabo", compressor="randk:0.5",
                              downlink="sign", clients={"resources": [0.5, 1, 0.25], "policy": "rolling"}),
}
DIST_COMMON = dict(workers=6, rounds=4, eval_every=2, dtype="float64", seed=3)


def _dist_job():
    return {k: (r.metrics, r.x) for k, c in DIST_CASES.items() for r in [distbo.run(**DIST_COMMON, **c)]}


def test_two_processes_draw_the_same_masks_as_the_simulator():
    from distbo import launch

    par = launch.spawn(_dist_job, (), 2, timeout=120)
    for k, c in DIST_CASES.items():
        sim = distbo.run(**DIST_COMMON, **c)
        for a, b in zip(sim.metrics, par[0][k][0], strict=True):
            assert set(a) == set(b)
            for f in a:
                if f != "wall_s":
                    assert b[f] == (pytest.approx(a[f], rel=1e-9, abs=1e-12) if isinstance(a[f], float) else a[f])
        torch.testing.assert_close(par[0][k][1], sim.x, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(par[1][k][1], par[0][k][1], rtol=0, atol=0)


# --- composition: up-link compressors, down-link compressors, client sampling ---
def _sampled(alg, t: int, fraction: float) -> list[int]:
    """Round t's sampled clients, drawn here as the federated methods draw them."""
    return alg.participants(t).tolist() if alg.sampled else \
        sample_clients(rng.key(alg.round_key(t), STREAM_CLIENTS), alg.comm.n_workers, fraction,
                       torch.arange(alg.comm.n_workers))[0].tolist()


QUAD_SAME = {"name": "quadratic", "heterogeneity": 0.0, "d_x": 6, "d_y": 10}
MIXED = ["clients.resources=[1, 0.5, 0.25, 0.125]", 'clients.policy="rolling"']


def test_topk_with_error_feedback_converges_as_plain_rabo():
    """Identical workers, coordinate masks: top-K 30% of each client's kept coordinates with
    per-client shifts follows plain RABO to the same accuracy for a third of the up-link bits."""
    steps = {"name": "rabo", "alpha": 0.1, "beta": 0.3, "gamma": 0.3}  # the same for both (not derived)
    runs = {c: distbo.run(QUAD_SAME, steps, workers=4, rounds=100, eval_every=100, dtype="float64",
                          compressor=c, overrides=MIXED) for c in ("identity", "topk:0.3")}
    (p0, p1), (c0, c1) = ((r.metrics[0], r.metrics[-1]) for r in runs.values())
    assert p1["hypergrad_norm"] < 1e-3 * p0["hypergrad_norm"]
    assert c1["hypergrad_norm"] < 1e-3 * c0["hypergrad_norm"] and c1["hypergrad_norm"] < 2 * p1["hypergrad_norm"]
    assert c1["bits_up"] < 0.4 * p1["bits_up"] and c1["C_x"] == p1["C_x"]


def test_compressed_uplink_sends_the_sub_model_vectors_and_keeps_shifts_on_kept_coordinates():
    """Coordinate layout, levels 1 and 0.5 (d_x = 6: 6 and 3 kept): top-K 1/3 sends 2 and 1 values
    with indices into the sub-model vector; the server's estimate of a client's change is its
    shift plus what it sent, on that client's kept coordinates only."""
    alg, comm, q = _algorithm(task={"name": "quadratic", "d_x": 6, "d_y": 4}, workers=2, dtype="float64",
                              algorithm={"name": "rabo", "products": "exact"}, compressor="topk:0.34",
                              clients={"resources": [1, 0.5], "policy": "random"})
    s = alg.step(alg.init(), 0)
    bits = [comm.stats.bits_up]
    s1 = alg.step(s, 1)
    bits.append(comm.stats.bits_up - bits[0])
    # per round: x (k = 6, 3 -> K = 2, 1; indices of 3 and 2 bits), y and v (k = 4, 2 -> K = 1, 1; 2 and 1 bits)
    per = 2 * (64 + 3) + (64 + 2) + 2 * ((64 + 2) + (64 + 1))
    assert bits == [per, per]
    masks = alg.layout.masks(alg.layout.draw(1, alg.round_key(1)))
    for n in ("x", "y", "v"):
        m = masks["x" if n == "x" else "y"]
        moved = s1.up[n] - s.up[n]
        # shifts move only on each client's kept coordinates, by at most K entries per client
        assert bool((moved[~m] == 0).all())
        assert all(int((r != 0).sum()) <= K for r, K in zip(moved, (2 if n == "x" else 1, 1)))
        # coverage average of the estimates (new shifts) over the clients keeping each coordinate
        est = (s1.up[n] * m).sum(0) / m.sum(0).clamp(min=1)
        torch.testing.assert_close(getattr(s1, n), getattr(s, n) + est, rtol=1e-12, atol=1e-12)


def test_sampled_coverage_and_c_x_star_on_a_hand_made_case():
    """Static masks, resources [1, 0.5] on 4 clients: clients 0 and 2 keep everything, 1 and 3
    the first half. With half the clients per round, the second half of x is covered by the
    sampled full clients only: C_x* = min over rounds of their number; a round that samples none
    leaves that half unchanged."""
    alg, comm, q = _algorithm(task={"name": "quadratic", "d_x": 4, "d_y": 6}, workers=4, dtype="float64", rounds=8,
                              seed=4, algorithm="rabo",
                              clients={"resources": [1, 0.5], "policy": "static", "fraction": 0.5})
    s, per_round = alg.init(), []
    for t in range(8):
        sampled = sample_clients(rng.key(alg.round_key(t), STREAM_CLIENTS), 4, 0.5, torch.arange(4))[0].tolist()
        assert sampled == _sampled(alg, t, 0.5)  # RABO samples as the federated methods do
        full = len({0, 2} & set(sampled))
        cov = alg.layout.plan(t, alg.round_key(t), torch.tensor(sampled), torch.tensor(sampled)).coverage
        assert cov["x"].tolist() == [2, 2, full, full] and cov["y"].tolist() == [2] * 3 + [full] * 3
        new = alg.step(s, t)
        if full == 0:
            torch.testing.assert_close(new.x[2:], s.x[2:], rtol=0, atol=0)
        per_round.append(full)
        s = new
    assert alg.metrics(s)["C_x"] == alg.metrics(s)["C_y"] == min(per_round)
    assert set(per_round) == {0, 1, 2}  # this seed has every kind of round
    # 2 clients per round send: bits follow the sampled clients' sub-models
    kept = {0: 4 + 2 * 6, 2: 4 + 2 * 6, 1: 2 + 2 * 3, 3: 2 + 2 * 3}
    assert comm.stats.bits_up == 64 * sum(kept[w] for t in range(8) for w in _sampled(alg, t, 0.5))


def test_sampling_that_never_covers_a_coordinate_is_refused_before_the_run():
    """One client of 4 per round: a run whose sampled clients are all half-width never covers the
    second half (the draw is a pure function of the seed, so it is known before the run)."""
    clients = {"resources": [1, 0.5], "policy": "static"}
    seen = {}
    for seed in range(8):
        alg, _, _ = _algorithm(task="quadratic", algorithm="rabo", workers=4, seed=seed, clients=clients)
        picks = [_sampled(alg, t, 0.25)[0] for t in range(2)]
        never = all(p % 2 == 1 for p in picks)  # clients 1 and 3 keep the first half only
        if never in seen:
            continue
        seen[never] = seed
        sampled = dict(task="quadratic", algorithm="rabo", workers=4, seed=seed, rounds=2,
                       clients={**clients, "fraction": 0.25})
        if never:
            with pytest.raises(ConfigError, match="^clients.fraction: the sampled clients never cover 5 of 10"):
                _algorithm(**sampled)
        else:
            _algorithm(**sampled)
            with pytest.raises(ConfigError, match="^clients.policy"):  # without the full clients: never
                _algorithm(**{**sampled, "clients": {**sampled["clients"], "resources": [0.5]}})
    assert set(seen) == {True, False}


def test_compressed_downlink_sends_each_client_its_sub_model():
    """Network layout: a down-link top-K 10% of each client's received sub-model vector, bits per
    receiver; at rate 1 (topk:1.0) the clients' copies equal the server's values and the run is
    plain RABO's."""
    common = dict(task={**TINY_REP, "hidden": [8]}, workers=4, rounds=3, eval_every=3, dtype="float64",
                  overrides=["clients.resources=[1, 0.5]"])
    plain = distbo.run(algorithm="rabo", **common)
    full = distbo.run(algorithm="rabo", downlink="topk:1.0", **common)
    torch.testing.assert_close(full.x, plain.x, rtol=1e-12, atol=1e-12)
    assert full.metrics[-1]["bits_up"] == plain.metrics[-1]["bits_up"]
    lossy = distbo.run(algorithm="rabo", downlink="topk:0.1", **common)
    import math
    sizes = [(64 * h + h, 10 * h + 10) for h in (8, 4)]  # kept x and y of levels 1 and 0.5
    per = sum(round(0.1 * d) * (64 + math.ceil(math.log2(d))) for dx, dy in sizes for d in (dx, dy, dy))
    assert lossy.metrics[-1]["bits_down"] == 3 * 2 * per  # 3 rounds, 2 clients per level
