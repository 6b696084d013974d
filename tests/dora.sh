#!/bin/sh
# tests/dora.sh - DoRA adapters (issue 16.1) through the tools: lora-inspect
# shows the DoRA modules and the range of their magnitude vectors (human and
# --json); every tool that would apply the adapter (merge, unmerge, eval,
# convert, rank-reduce) refuses it with one clear message and writes nothing.
. "$TOP_SRCDIR/tests/lib.sh"
MKF="$TOP_BUILDDIR/tests/mkfixture"
"$MKF" gpt2 "$T/g" --layers 2 --hidden 32 --heads 2 --vocab 64 --rank 4 --dora >/dev/null ||
    fail "mkfixture --dora"
A=$T/g/adapter
grep -q '"use_dora": true' "$A/adapter_config.json" || fail "fixture is not DoRA"

expect 0 lora-inspect "$A"
expect_out '^DoRA +2 of 2 modules, lora_magnitude_vector in \[0\.9[0-9]*, 1\.[01][0-9]*\]'
expect_out '^ +transformer\.h\.0\.attn\.c_attn: \['
expect_out 'DoRA magnitudes 192'
expect 0 lora-inspect --check --strict --base "$T/g/base" "$A"
expect 0 lora-inspect --json --tensors "$A"
expect_out '"use_dora": true'
expect_out '"dora_modules": 2'
expect_out '"magnitude_range": \['
expect_out '"role": "lora_magnitude_vector"'
# a plain adapter says nothing about DoRA
"$MKF" gpt2 "$T/p" --layers 2 --hidden 32 --heads 2 --vocab 64 --rank 4 --no-base >/dev/null
expect 0 lora-inspect "$T/p/adapter"
grep -q '^DoRA' "$T/out" && fail "plain adapter shown as DoRA"
expect 0 lora-inspect --json "$T/p/adapter"
expect_out '"magnitude_range": null'

# refusals: exit 3, the module and the reason named, nothing written
expect 3 lora-merge "$T/g/base" -a "$A" -o "$T/merged"
expect_err "^lora-merge: .*c_attn: a DoRA module \(lora_magnitude_vector\): merging or applying DoRA.*not implemented"
[ -e "$T/merged" ] && fail "merge wrote output"
expect 3 lora-unmerge "$T/g/base" -a "$A" -o "$T/unmerged"
expect_err "a DoRA module"
[ -e "$T/unmerged" ] && fail "unmerge wrote output"
expect 3 lora-eval --model "$T/g/base" -a "$A" --data "$TOP_SRCDIR/tests/fixtures/models/data/classify.jsonl"
expect_err "a DoRA module"
expect 3 lora-rank-reduce "$A" -o "$T/reduced" --rank 2
expect_err "a DoRA adapter \(use_dora\)"
[ -e "$T/reduced" ] && fail "rank-reduce wrote output"
expect 3 lora-convert "$A" --to gguf --base "$T/g/base" -o "$T/a.gguf"
expect_err "DoRA"
[ -e "$T/a.gguf" ] && fail "convert wrote output"
ls "$T" | grep -q 'tmp' && fail "temporary file left behind"

# real-shaped: a DoRA adapter on c_attn and both c_proj of the real tiny
# GPT-2 (Conv1D, stored [in, out]): the magnitudes are [out] and bind to it
if [ -n "${FIXTURES:-}" ] && [ -d "$FIXTURES/real/base-tiny-gpt2-e16" ]; then
    RB=$FIXTURES/real/base-tiny-gpt2-e16
    "$MKF" gpt2 "$T/r" --layers 1 --hidden 16 --heads 1 --vocab 50257 --positions 256 --rank 4 \
        --targets c_attn,c_proj --dora --no-base >/dev/null || fail "mkfixture (real shape)"
    expect 0 lora-inspect --check --strict --base "$RB" "$T/r/adapter"
    expect_out '^DoRA +3 of 3 modules'
    expect_out '^problems +none'
    expect 3 lora-merge "$RB" -a "$T/r/adapter" -o "$T/rm"
    expect_err "transformer\.h\.0\.attn\.c_attn: a DoRA module"
    [ -e "$T/rm" ] && fail "merge wrote output"
else
    echo "note: FIXTURES not set: the real-shaped GPT-2 DoRA case not checked"
fi

done_testing
