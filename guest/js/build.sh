#!/bin/sh
# Builds the JavaScript port of the default room into a wsroom:room component:
#   guest/js/build.sh [OUT]      (default OUT: target/js-room.wasm)
# Needs Node.js with npm and the npm registry; installs componentize-js
# under target/ the first time.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$root/target/js-room.wasm}
tools=$root/target/componentize-js
version=0.23.0
if [ ! -x "$tools/node_modules/.bin/componentize-js" ]; then
    mkdir -p "$tools"
    if ! npm install --prefix "$tools" --no-audit --no-fund --loglevel=error \
        "@bytecodealliance/componentize-js@$version"; then
        echo "cannot install componentize-js $version from npm" >&2
        exit 3
    fi
fi
mkdir -p "$(dirname "$out")"
# --disable http fetch-event: the room imports no WASI HTTP of its own.
# The engine reads the modules under its working directory only.
cd "$root"
"$tools/node_modules/.bin/componentize-js" --wit "$root/wit/0.3.0" --world-name room \
    --disable http fetch-event -o "$out" guest/js/room.js
echo "built $out"
