#!/usr/bin/env bash
# The cluster's benchmarks (docs/benchmarks.md, "A cluster"), in one
# sitting: rounds alternating a node alone, a cluster node whose clients are
# all local, and a three-node cluster whose clients are spread over the
# nodes; each round starts fresh servers. Prints one JSON line per run to
# stdout, and the medians at the end (to stderr).
#
# Needs nats-server on the PATH and a release build (cargo build --release).
#   bench/cluster.sh [rounds]            # default 5
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
W=./target/release/wsroom
L=./target/release/wsroom-load
NATS_PORT=14555
DIR=$(mktemp -d /tmp/wsroom-bench-cluster.XXXXXX)
RESULTS="$DIR/results.jsonl"
pids=()
cleanup() {
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT

nats-server -js -a 127.0.0.1 -p $NATS_PORT -sd "$DIR/nats" >"$DIR/nats.log" 2>&1 &
pids+=($!)
sleep 0.5

# Starts a server with "$@" on port $1; waits for its readiness line.
start() {
    local port=$1
    shift
    "$W" --listen "127.0.0.1:$port" --in-memory "$@" >"$DIR/server-$port.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 200); do
        grep -q "listening on" "$DIR/server-$port.log" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "server on $port did not start; see $DIR" >&2
    exit 1
}

stop_all_servers() {
    pkill -TERM -f "$W --listen 127.0.0.1:190" || true
    sleep 0.5
}

# Runs the load tool: label, then its arguments; appends the JSON line.
run() {
    local label=$1
    shift
    local out
    out=$("$L" --json "$@")
    echo "{\"label\":\"$label\",\"report\":$out}" | tee -a "$RESULTS"
}

scenarios() {
    local config=$1
    shift
    # "$@": --server ... [--also-server ...]
    run "$config connect 10000/1000" "$@" connect --connections 10000 --projects 1000
    run "$config fanout 1x100" "$@" fanout --receivers 100
    run "$config fanout 100x10" "$@" fanout --projects 100 --receivers 10
    run "$config rpc 50/10" "$@" rpc --pairs 50 --projects 10
}

nats=(--nats "nats://127.0.0.1:$NATS_PORT")
for round in $(seq "$ROUNDS"); do
    start 19001
    scenarios alone --server 127.0.0.1:19001
    stop_all_servers

    start 19011 "${nats[@]}" --node-name "solo-$round"
    scenarios cluster-local --server 127.0.0.1:19011
    stop_all_servers

    for i in 1 2 3; do
        start $((19020 + i)) "${nats[@]}" --node-name "n$i-$round"
    done
    three=(--server 127.0.0.1:19021 --also-server 127.0.0.1:19022 --also-server 127.0.0.1:19023)
    scenarios cluster-3 "${three[@]}"
    run "cluster-3 connect 10000/10000" "${three[@]}" connect --connections 10000 --projects 10000
    for i in 1 2 3; do
        curl -s "127.0.0.1:$((19020 + i))/health" |
            python3 -c 'import json,sys; c=json.load(sys.stdin)["cluster"]; print(json.dumps({"label":"owned","node":c["node"],"ownedProjects":c["ownedProjects"]}))' |
            tee -a "$RESULTS"
    done
    stop_all_servers
done

python3 - "$RESULTS" >&2 <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in rows:
    if r["label"] == "owned":
        continue
    rep = r["report"]
    rate = rep.get("deliveriesPerSec") or rep.get("requestsPerSec") or rep.get("connectionsPerSec")
    by.setdefault(r["label"], []).append((rate, rep.get("ok")))
for label, runs in sorted(by.items()):
    rates = [x for x, _ in runs]
    print(f"{label:40s} median {statistics.median(rates):12.0f}/s  runs {[round(x) for x in rates]}  ok {all(o for _, o in runs)}")
for r in rows:
    if r["label"] == "owned":
        print("owned", r["node"], r["ownedProjects"])
EOF
