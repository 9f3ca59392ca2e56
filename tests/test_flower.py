"""engine = "flower" (comm/flower.py, flower/): the simulator's numbers through Flower's apps, clean failures.

The runs use the in-process runtime (flower/local.py: the real ServerApp, ClientApp and flwr
Messages, delivered in this process); the deployment runtime (SuperLink + SuperNodes) starts a
process per message and is checked by benchmarks/flower.py instead (minutes on a busy machine).
"""
import json

import pytest
import torch

pytest.importorskip("flwr")

import distbo  # noqa: E402
from distbo.comm import Dense, DenseSum, SimulatedComm  # noqa: E402
from distbo.comm.flower import pack, reduce_nodes, unpack  # noqa: E402
from distbo.compressors import make_compressor  # noqa: E402

COMMON = dict(task={"name": "quadratic", "d_x": 3, "d_y": 6, "noise": 0.1}, workers=4, rounds=3,
              eval_every=1, dtype="float64", seed=1)
CASES = {
    "ef-soba-topk": dict(algorithm="ef-soba", compressor="topk:0.5"),
    # half the clients per round: with blocks of 2 a node hosts 0, 1 or 2 participants
    "aggitd-sampled": dict(algorithm={"name": "aggitd", "inner_rounds": 2, "local_steps": 2},
                           compressor="topk:0.5", clients={"fraction": 0.5}),
    # server optimizers of x: their state travels in the nodes' replicas (algorithms/upper.py)
    "ef-soba-adam": dict(algorithm={"name": "ef-soba", "upper_opt": "adam"}, compressor="topk:0.5"),
    "aggitd-dog": dict(algorithm={"name": "aggitd", "upper_opt": "dog", "inner_rounds": 2, "local_steps": 2}),
}
EXACT = ("round", "bits_up", "bits_down", "comm_rounds")


@pytest.fixture(scope="module")
def sim():
    return {case: distbo.run(**COMMON, **kw) for case, kw in CASES.items()}


def _check_wire(fl, final, nodes):
    wire = fl.extra["flower"]
    assert final["bits_up"] > 0 and wire["exchanges"] == final["comm_rounds"] and wire["nodes"] == nodes
    assert wire["messages"] == 2 * nodes * final["comm_rounds"]  # one request and one reply per node
    assert 8 * wire["bytes_up"] > final["bits_up"]  # the encoded payloads, in whole bytes, inside messages


@pytest.mark.parametrize("case", list(CASES))
def test_one_node_hosting_every_worker_is_the_simulator_bitwise(sim, case):
    """The engine itself (encoding, round trips, a node replaying its round from context.state)
    changes no bit: with the workers in one block, as in the simulator, the runs are identical."""
    fl = distbo.run(**COMMON, **CASES[case], engine="flower", flower={"nodes": 1})
    rows = [{k: v for k, v in r.items() if k != "wall_s"} for r in sim[case].metrics]
    assert [{k: v for k, v in r.items() if k != "wall_s"} for r in fl.metrics] == rows
    assert torch.equal(fl.x, sim[case].x) and torch.equal(fl.y, sim[case].y)
    _check_wire(fl, sim[case].metrics[-1], 1)


@pytest.mark.parametrize("case, nodes", [("ef-soba-topk", 4), ("aggitd-sampled", 2), ("ef-soba-adam", 2)])
def test_flower_nodes_give_the_simulators_metrics_and_bits(sim, case, nodes):
    """Blocks of workers on several nodes: bits and counters exactly; floats to rounding, because
    a batched kernel over a block of 1 or 2 workers may round differently from one over all 4
    (measured: 1 ulp in H v on this quadratic), as under torch.distributed."""
    fl = distbo.run(**COMMON, **CASES[case], engine="flower", flower={"nodes": nodes})
    assert len(fl.metrics) == len(sim[case].metrics)
    for a, b in zip(sim[case].metrics, fl.metrics):
        assert set(a) == set(b)
        for k in set(a) - {"wall_s"}:
            if k in EXACT:
                assert a[k] == b[k], (a["round"], k)
            else:
                assert b[k] == pytest.approx(a[k], rel=1e-12, abs=1e-14), (a["round"], k)
    torch.testing.assert_close(fl.x, sim[case].x, rtol=1e-12, atol=1e-14)
    _check_wire(fl, sim[case].metrics[-1], nodes)


SPECS = ("identity", "topk:0.3", "randk:2", "qsgd:3", "sign")


@pytest.mark.parametrize("spec", SPECS)
def test_node_messages_reduce_to_the_simulators_sums(spec):
    """Blocks of unequal size, one empty (client sampling): the server's reduction of the packed
    messages equals the simulator's, payload rows bitwise, and counts the same bits."""
    c = make_compressor(spec)
    U = torch.randn(6, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    blocks = [torch.tensor([0, 2]), torch.tensor([], dtype=torch.int64), torch.tensor([4, 5, 1])]

    def messages(ids):
        return {"p": c.compress(U[ids], 1000 + ids), "d": Dense(U[ids] * 2), "s": DenseSum(U[ids].sum(0), len(ids))}

    everyone = torch.cat(blocks)
    sim = SimulatedComm(6)
    want = sim.exchange(messages(everyone), mean=False)
    replies = [unpack(json.loads(json.dumps({k: v.hex() if isinstance(v, bytes) else v
                                             for k, v in pack(messages(b)).items()}),
                                 object_hook=lambda d: {k: bytes.fromhex(v) if "/" in k else v
                                                        for k, v in d.items()}))
               for b in blocks]
    sums, senders, bits = reduce_nodes(messages(blocks[1]), replies)
    assert senders == 5 and bits == sim.stats.bits_up
    assert torch.equal(sums["p"], want["p"]) and torch.equal(sums["d"], want["d"])
    torch.testing.assert_close(sums["s"], want["s"], rtol=1e-12, atol=1e-12)  # added node by node


def test_a_raising_clientapp_ends_the_run_with_one_line_and_keeps_the_metrics(tmp_path, monkeypatch, capfd):
    from distbo.cli import main

    monkeypatch.setenv("DISTBO_TEST_FAULT", "rank=1,exchange=3,action=raise")
    out = tmp_path / "bad"
    code = main(["run", "--engine", "flower", "--workers", "4", "--rounds", "6", "--eval-every", "1",
                 "--set", "dtype='float64'", "--quiet", "--out", str(out)])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert "Flower node 1 of 4" in err[0] and "exchange 3" in err[0] and "injected fault" in err[0]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2, 3]  # SOBA: one exchange per round, the 4th failed
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("args, field", [(["--set", "engine='grpc'"], "engine"),
                                         (["--set", "flower.nodes=3"], "flower.nodes")])
def test_bad_flower_settings_are_one_line_and_exit_2(args, field, tmp_path, capsys):
    from distbo.cli import main

    code = main(["run", "--engine", "flower", "--workers", "4", "--rounds", "1", "--quiet",
                 "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and field in err[0], err


def test_the_example_flower_project_names_distbos_apps_and_a_valid_configuration():
    import importlib
    import tomllib
    from pathlib import Path

    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    from distbo.runner import resolve

    conf = tomllib.loads((Path(__file__).parents[1] / "examples" / "flower" / "pyproject.toml").read_text())
    flwr = conf["tool"]["flwr"]["app"]
    for key, kind in (("serverapp", ServerApp), ("clientapp", ClientApp)):
        module, _, attr = flwr["components"][key].partition(":")
        assert isinstance(getattr(importlib.import_module(module), attr), kind)
    res, _ = resolve(json.loads(flwr["config"]["distbo"]))
    assert res.run.workers % res.run.flower.nodes == 0


@pytest.mark.skipif(not __import__("os").environ.get("DISTBO_FLOWER_DEPLOYMENT"),
                    reason="Flower's deployment runtime starts a process per message (minutes on a busy "
                           "machine); set DISTBO_FLOWER_DEPLOYMENT=1 to run it")
def test_deployment_runtime_on_loopback_matches_and_fails_cleanly(monkeypatch):
    """A SuperLink and 2 SuperNodes on 127.0.0.1 with ``flwr run``: the simulator's counters and
    metrics; then a raising ClientApp ends the run with one line naming its node."""
    from distbo.comm.flower import NodeError

    kw = dict(COMMON, rounds=2, timeout=600.0)
    flower = {"nodes": 2, "runtime": "deployment"}
    fl = distbo.run(**kw, **CASES["ef-soba-topk"], engine="flower", flower=flower)
    want = distbo.run(**kw, **CASES["ef-soba-topk"])
    for a, b in zip(want.metrics, fl.metrics, strict=True):
        assert {k: a[k] for k in EXACT} == {k: b[k] for k in EXACT}
        assert b["upper_loss"] == pytest.approx(a["upper_loss"], rel=1e-12)
    monkeypatch.setenv("DISTBO_TEST_FAULT", "rank=1,exchange=1,action=raise")
    with pytest.raises(NodeError, match="Flower node 1 of 2 .* failed at exchange 1: .*injected fault") as exc:
        distbo.run(**kw, **CASES["ef-soba-topk"], engine="flower", flower=flower)
    assert len(str(exc.value).splitlines()) == 1
