#!/bin/sh
# Builds the Python port of the default room into a wsroom:room component:
#   guest/python/build.sh [OUT]      (default OUT: target/python-room.wasm)
# Needs python3 with venv/pip and PyPI; installs componentize-py in a venv
# under target/ the first time.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$root/target/python-room.wasm}
venv=$root/target/componentize-py-venv
version=0.25.1
if [ ! -x "$venv/bin/componentize-py" ]; then
    python3 -m venv "$venv"
    if ! "$venv/bin/pip" install --quiet --retries 5 "componentize-py==$version"; then
        echo "cannot install componentize-py $version from PyPI" >&2
        exit 3
    fi
fi
mkdir -p "$(dirname "$out")"
# --stub-wasi: the room imports only the wsroom host interface.
"$venv/bin/componentize-py" -d "$root/wit/0.3.0" -w room componentize --stub-wasi \
    -p "$root/guest/python" app -o "$out"
echo "built $out"
