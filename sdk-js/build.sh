#!/bin/sh
# Builds a JavaScript room (on this SDK, or any module exporting the room
# world's functions) into a wsroom:room component:
#   sdk-js/build.sh ROOM.js OUT.wasm
# Run it from a directory that holds both ROOM.js and the modules it
# imports (the SDK included): the engine reads modules under the working
# directory only. Installs componentize-js under target/ the first time,
# as guest/js/build.sh does.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
if [ "$#" -ne 2 ]; then
    echo "usage: sdk-js/build.sh ROOM.js OUT.wasm" >&2
    exit 2
fi
tools=$root/target/componentize-js
if [ ! -x "$tools/node_modules/.bin/componentize-js" ]; then
    "$root/guest/js/build.sh" "$root/target/js-room.wasm"
fi
# --disable http fetch-event: a room calls out through wasi:http itself if
# it wants to, not through the engine's fetch().
"$tools/node_modules/.bin/componentize-js" --wit "$root/wit/0.3.0" --world-name room \
    --disable http fetch-event -o "$2" "$1"
echo "built $2"
