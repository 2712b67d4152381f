#!/usr/bin/env bash
# A three-node wsroom cluster on loopback behind HAProxy: nats-server with
# JetStream, nodes node1..node3 on 127.0.0.1:8801..8803, and HAProxy on
# 127.0.0.1:8787 sending each projectId to one node (consistent hashing of
# the projectId query parameter), so that a project's clients meet on its
# owner. Everything stops on Ctrl-C; logs and data are in a temporary
# directory, printed at start.
#
# Needs nats-server and haproxy on the PATH (Debian: apt-get install
# nats-server haproxy) and a release build (cargo build --release).
#
#   scripts/cluster.sh                      # then: ws://127.0.0.1:8787/websocket?type=runtime&projectId=p1
#   WSROOM_BIN=target/debug/wsroom LB_PORT=9000 scripts/cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${WSROOM_BIN:-target/release/wsroom}
NATS_PORT=${NATS_PORT:-4222}
LB_PORT=${LB_PORT:-8787}
FIRST_NODE_PORT=${FIRST_NODE_PORT:-8801}

for tool in nats-server haproxy; do
    command -v "$tool" >/dev/null || {
        echo "$tool is not on the PATH (Debian: apt-get install $tool)" >&2
        exit 1
    }
done
[ -x "$BIN" ] || {
    echo "$BIN is missing: run cargo build --release (or set WSROOM_BIN)" >&2
    exit 1
}

DIR=$(mktemp -d /tmp/wsroom-cluster.XXXXXX)
echo "logs and data in $DIR"
pids=()
cleanup() {
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# Waits until something listens on 127.0.0.1:$1.
wait_port() {
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on port $1; see $DIR" >&2
    exit 1
}

nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$DIR/nats" >"$DIR/nats.log" 2>&1 &
pids+=($!)
wait_port "$NATS_PORT"

servers=""
for i in 1 2 3; do
    port=$((FIRST_NODE_PORT + i - 1))
    "$BIN" --listen "127.0.0.1:$port" --nats "nats://127.0.0.1:$NATS_PORT" \
        --node-name "node$i" >"$DIR/node$i.log" 2>&1 &
    pids+=($!)
    servers+="    server node$i 127.0.0.1:$port check
"
done
for i in 1 2 3; do
    wait_port $((FIRST_NODE_PORT + i - 1))
done

cat >"$DIR/haproxy.cfg" <<EOF
global
    # maxconn: as many as the open-files limit allows (HAProxy's default).

defaults
    mode http
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h

frontend websockets
    bind 127.0.0.1:$LB_PORT
    default_backend wsroom

backend wsroom
    # One projectId, one node (while it is up): its clients meet on it.
    balance url_param projectId
    hash-type consistent
    option httpchk GET /health
$servers
EOF
haproxy -f "$DIR/haproxy.cfg" -db >"$DIR/haproxy.log" 2>&1 &
pids+=($!)
wait_port "$LB_PORT"

echo "cluster up: ws://127.0.0.1:$LB_PORT/websocket?type=runtime&projectId=p1"
echo "nodes: http://127.0.0.1:$FIRST_NODE_PORT/health .. :$((FIRST_NODE_PORT + 2)); Ctrl-C stops everything"
wait
