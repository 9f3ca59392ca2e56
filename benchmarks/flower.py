"""Flower beside torch.distributed: time per round and bytes on the wire per exchange.

    python benchmarks/flower.py [--nodes 2] [--workers 4] [--rounds 20] [--warmup 5] [--deployment]

For EF-SOBA with top-K 10% on the quadratic (small and large lower level) prints, per exchange,
the bytes the run counts (``bits_up`` / 8, all workers), what torch.distributed hands to its
collectives with P = ``nodes`` processes (benchmarks/procs.py's job), and what Flower's messages
carry (every object of each message deflated, as Flower ships it: replies = up, requests with
the previous exchange's sums = down), with the training time per round (evaluation excluded,
after ``warmup`` rounds) of each and of the simulator. Flower runs in the in-process runtime (flower/local.py);
``--deployment`` adds the real one (SuperLink + SuperNodes on 127.0.0.1, ``flwr run``, a
process per message: minutes) for the small model, with its total time including start-up.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import procs  # noqa: E402  (benchmarks/procs.py: the torch.distributed job)

from distbo import launch  # noqa: E402
from distbo.flower import run_flower  # noqa: E402
from distbo.runner import execute, resolve  # noqa: E402

MODELS = [("quadratic d_y=20", {"name": "quadratic", "d_x": 10, "d_y": 20}),
          ("quadratic d_y=1000", {"name": "quadratic", "d_x": 10, "d_y": 1000})]
ALG, COMP = "ef-soba", "topk:0.1"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--deployment", action="store_true")
    a = ap.parse_args()
    raws = [(label, {"task": task, "algorithm": ALG, "compressor": COMP, "workers": a.workers,
                     "rounds": a.warmup + a.rounds, "eval_every": a.warmup, "seed": 0, "threads": 1})
            for label, task in MODELS]
    tdist = launch.spawn(procs._job, ([(label, ALG, COMP, raw) for label, raw in raws], a.warmup), a.nodes,
                         timeout=300)[0]
    rows = []
    for (label, raw), m in zip(raws, tdist):
        m["sim_ms"] = procs.per_round_ms(execute(*resolve(raw)).metrics, a.warmup)
        runtimes = [("inprocess", raw)]
        if a.deployment and label == MODELS[0][0]:
            runtimes.append(("deployment", {**raw, "timeout": 300.0}))
        for runtime, r in runtimes:
            tic = time.perf_counter()
            fl = run_flower({**r, "engine": "flower", "flower": {"nodes": a.nodes, "runtime": runtime}}, None)
            rows.append((label, runtime, m, fl, time.perf_counter() - tic))
    print(f"# {ALG} {COMP}, {a.workers} workers on {a.nodes} processes / Flower nodes, {a.rounds} timed rounds "
          f"after {a.warmup} warm-up rounds, 1 torch thread per process")
    head = ["model", "Flower runtime", "ms/round simulator", "ms/round torch.distributed", "ms/round Flower", "Flower run total s",
            "bytes counted/exchange", "torch.distributed bytes/exchange", "Flower bytes up/exchange",
            "Flower bytes down/exchange", "Flower up/counted"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for label, runtime, m, fl, total in rows:
        final, wire = fl.metrics[-1], fl.extra["flower"]
        assert final["bits_up"] == m["bits_up"] and final["comm_rounds"] == m["exchanges"]
        ex = final["comm_rounds"]
        counted = final["bits_up"] / 8 / ex
        print(f"| {label} | {runtime} | {m['sim_ms']:.1f} | {m['ms']:.1f} | {procs.per_round_ms(fl.metrics, a.warmup):.1f} | "
              f"{total:.1f} | {counted:,.0f} | {m['wire'][0] / ex:,.0f} | {wire['bytes_up'] / ex:,.0f} | "
              f"{wire['bytes_down'] / ex:,.0f} | {wire['bytes_up'] / ex / counted:.2f} |")


if __name__ == "__main__":
    main()
