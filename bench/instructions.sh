#!/usr/bin/env bash
# The server's own instructions per rpc request, per fan-out message and
# per connection to a live room (docs/benchmarks.md, "Instructions per
# request"): the server runs under
# valgrind's callgrind while wsroom-load drives it, twice, with two run
# lengths; the difference of the two totals divided by the difference of
# the work is the cost of one unit, start-up and shut-down cancelling out.
# Unlike a time or a rate it does not move with the machine's noise (the
# same binary gives the same count to ~0.3%), so two builds, or a build
# and the reference server, compare in one run each.
#
# Needs valgrind (callgrind_control too), ss, curl and a release build
# (cargo build --release).
#   bench/instructions.sh [SERVER_BINARY|ref ...]   # default: ./target/release/wsroom ref
# Prints one line per server and scenario. KEEP=1 keeps callgrind's files
# (for callgrind_annotate) and says where.
set -euo pipefail
cd "$(dirname "$0")/.."
L=./target/release/wsroom-load
PORT=14567
DIR=$(mktemp -d /tmp/wsroom-bench-instructions.XXXXXX)
[ $# -gt 0 ] || set -- ./target/release/wsroom ref

# Starts the server $1 (a binary, or "ref") under callgrind, its counts
# going to $2, and waits until it listens; sets `pid`.
start_server() {
    if [ "$1" = ref ]; then
        valgrind --tool=callgrind --callgrind-out-file="$2" \
            "$L" --server 127.0.0.1:$PORT reference-server >"$2.log" 2>&1 &
    else
        # --smc-check: the rooms' code is generated at run time.
        valgrind --tool=callgrind --smc-check=all-non-file --callgrind-out-file="$2" \
            "$1" --listen 127.0.0.1:$PORT --in-memory >"$2.log" 2>&1 &
    fi
    pid=$!
    for _ in $(seq 300); do
        (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break
        sleep 0.2
    done
}

# Total instructions of one server run that does the scenario $2 with
# ${3} in place of N; $1 is the server (a binary, or "ref"), $4 a name.
run_once() {
    local server=$1 args=${2//N/$3} out="$DIR/callgrind.$4.$3" pid
    start_server "$server" "$out"
    # shellcheck disable=SC2086
    "$L" --server 127.0.0.1:$PORT $args --json --timeout-secs 600 | grep -q '"ok":true' ||
        { echo "the run failed: $server $args" >&2; kill -KILL $pid; exit 1; }
    kill -TERM $pid
    wait $pid 2>/dev/null || true
    grep -o 'Collected : [0-9]*' "$out.log" | grep -o '[0-9]*$'
}

# Instructions of one server run up to the moment $2 clients of one
# project are connected (dumped then with callgrind_control, while
# wsroom-load holds them): their closes, which the reference answers with
# nothing and the default room with a `client_left` to everyone left, never
# count. $1 is the server, $3 a name.
connect_once() {
    local server=$1 n=$2 out="$DIR/callgrind.$3.$2" pid load
    start_server "$server" "$out"
    "$L" --server 127.0.0.1:$PORT connect --connections "$n" --projects 1 \
        --hold-secs 120 --server-pid $pid --json --timeout-secs 600 >/dev/null &
    load=$!
    # All n accepted by the kernel, then time for the last handshakes (at
    # most the tool's 64 at once); wsroom's /health then says all n are
    # upgraded (asked once per run, so the question's own cost cancels; the
    # reference has no /health).
    local open=0 upgraded=yes
    for _ in $(seq 1200); do
        open=$(ss -Htn state established "( sport = :$PORT )" | wc -l)
        [ "$open" -ge "$n" ] && break
        sleep 0.2
    done
    sleep 5
    if [ "$server" != ref ] &&
        ! curl -s "127.0.0.1:$PORT/health" | grep -q "\"connections\":$n[,}]"; then
        upgraded=no
    fi
    if [ "$open" -lt "$n" ] || [ $upgraded = no ]; then
        echo "the connect run did not get its $n connections: $server" >&2
        kill -KILL $pid $load
        exit 1
    fi
    callgrind_control -d $pid >/dev/null 2>&1 ||
        { echo "callgrind_control could not dump $pid" >&2; kill -KILL $pid $load; exit 1; }
    kill $load 2>/dev/null || true
    kill -TERM $pid
    wait $pid 2>/dev/null || true
    wait $load 2>/dev/null || true
    grep -m1 '^summary:' "$out.1" | grep -o '[0-9]*$'
}

# $1 server, $2 name, $3 scenario with N, $4 $5 the two N, $6 units per N.
measure() {
    local a b
    local name
    name="$(basename "$1").${2// /-}"
    a=$(run_once "$1" "$3" "$4" "$name")
    b=$(run_once "$1" "$3" "$5" "$name")
    echo "$2 $(basename "$1"): $(((b - a) / (($5 - $4) * $6))) instructions per $7"
}

for server in "$@"; do
    # rpc: 10 pairs making N requests each.
    measure "$server" rpc "rpc --pairs 10 --projects 2 --requests N" 200 700 10 request
    # 20 projects, one sender each, N messages to 10 receivers.
    measure "$server" "fanout 20x10" "fanout --projects 20 --receivers 10 --messages N" 100 400 20 message
    # N clients joining one project (its room made by the first).
    name="$(basename "$server").connect"
    a=$(connect_once "$server" 300 "$name")
    b=$(connect_once "$server" 900 "$name")
    echo "connect $(basename "$server"): $(((b - a) / 600)) instructions per connection to a live room"
done
if [ -n "${KEEP:-}" ]; then
    echo "callgrind's files: $DIR" >&2
else
    rm -rf "$DIR"
fi
