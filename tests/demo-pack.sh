#!/bin/sh
# tests/demo-pack.sh - the archive part of `make demo`: make a key, pack
# an adapter, verify it (with lora-pack and, when installed, minisign),
# list it, and inspect the adapter straight from the archive.
# Arguments: the build folder and the source folder.
set -eu
B=$1
S=$2
D=$B/demo-out/pack
rm -rf "$D"
mkdir -p "$D"
PATH=$B:$PATH
echo
echo "== signed adapter archives (lora-pack)"
"$B/tests/mkfixture" gpt2 "$D/fx" --layers 2 --hidden 32 --heads 2 --vocab 64 --rank 4 >/dev/null
set -x
lora-pack keygen -W -s "$D/demo.sec" -p "$D/demo.pub"
lora-pack create "$D/fx/adapter" -s "$D/demo.sec" --name demo-gpt2 --task demo --version 1.0 \
    --base "$D/fx/base" -o "$D/demo.lora"
lora-pack verify "$D/demo.lora" -p "$D/demo.pub"
lora-pack list "$D/demo.lora"
lora-inspect "$D/demo.lora" -p "$D/demo.pub"
set +x
if command -v minisign >/dev/null 2>&1; then
    (cd "$D" && tar xf demo.lora lora.json lora.json.minisig)
    echo "+ minisign -Vm lora.json -x lora.json.minisig -p demo.pub"
    minisign -Vm "$D/lora.json" -x "$D/lora.json.minisig" -p "$D/demo.pub"
fi
