#!/bin/sh
# tests/demo.sh - `make demo`: the main job of the suite on bundled data,
# printed for a person to read.  Not a test; the tests are `make check`.
# Arguments: the build folder and the source folder.
set -eu
B=$1
S=$2
echo "lora-tools demo (build: $B)"
[ -f "$S/tests/demo-pack.sh" ] && sh "$S/tests/demo-pack.sh" "$B" "$S"
