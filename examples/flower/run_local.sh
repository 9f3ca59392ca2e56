#!/usr/bin/env bash
# Flower's deployment runtime on this machine, by hand: a SuperLink and two SuperNodes on 127.0.0.1
# only, then `flwr run` of this app (docs/flower.md). Run from examples/flower with distbo[flower]
# installed; the run folder is runs/flower-example (see pyproject.toml). Stops what it started.
set -euo pipefail
cd "$(dirname "$0")"
PORT=${PORT:-39093}                        # SuperLink: Runtime, Control and Fleet APIs on one HTTP port
export FLWR_HOME=${FLWR_HOME:-$PWD/.flwr} FLWR_TELEMETRY_ENABLED=0
mkdir -p "$FLWR_HOME"
cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "distbo-local"

[superlink.distbo-local]
address = "127.0.0.1:$PORT"
insecure = true
TOML
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
flower-superlink --insecure --host 127.0.0.1 --port "$PORT" > superlink.log 2>&1 & pids+=($!)
for j in 0 1; do
  flower-supernode --insecure --superlink "127.0.0.1:$PORT" --host 127.0.0.1 --port $((PORT + 10 + j)) \
    --node-config "partition-id=$j num-partitions=2" > "supernode$j.log" 2>&1 & pids+=($!)
done
sleep 5
flwr run . distbo-local --stream
cat runs/flower-example/summary.json
