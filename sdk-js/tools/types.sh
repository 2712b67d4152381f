#!/bin/sh
# Generates sdk-js/types/ (TypeScript declarations of the room world, from
# wit/0.3.0/room.wit by jco's guest-types: JavaScript rooms are built
# against wsroom:room@0.3.0) and type-checks the SDK against them:
#   sdk-js/tools/types.sh            check: the committed types are current and the SDK fits them
#   sdk-js/tools/types.sh --write    regenerate sdk-js/types/
# Needs Node.js and the npm registry (jco 1.9.1 and typescript 5.6.3 go under
# target/sdk-js-tools the first time; jco's later releases cannot read the WIT under
# Node 20). Exit 3: the tools could not be installed.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
tools=$root/target/sdk-js-tools
if [ ! -x "$tools/node_modules/.bin/tsc" ] || [ ! -x "$tools/node_modules/.bin/jco" ]; then
    mkdir -p "$tools"
    if ! npm install --prefix "$tools" --no-audit --no-fund --loglevel=error \
        "@bytecodealliance/jco@1.9.1" "typescript@5.6.3"; then
        echo "cannot install jco and typescript from npm" >&2
        exit 3
    fi
fi
raw=$root/target/sdk-js-types-raw
rm -rf "$raw" && mkdir -p "$raw/wit"
cp "$root/wit/0.3.0/room.wit" "$raw/wit/"
# jco reads the WIT under its working directory.
(cd "$raw" && "$tools/node_modules/.bin/jco" guest-types wit --world-name room -o out >/dev/null)
node "$root/sdk-js/tools/fix-types.mjs" "$raw/out" "$raw/fixed"
if [ "${1:-}" = "--write" ]; then
    rm -rf "$root/sdk-js/types" && cp -r "$raw/fixed" "$root/sdk-js/types"
    echo "wrote sdk-js/types"
elif ! diff -r "$raw/fixed" "$root/sdk-js/types"; then
    echo "sdk-js/types is not what wit/0.3.0/room.wit gives: run sdk-js/tools/types.sh --write" >&2
    exit 1
fi
"$tools/node_modules/.bin/tsc" -p "$root/sdk-js/jsconfig.json"
echo "sdk-js fits the room world's types"
