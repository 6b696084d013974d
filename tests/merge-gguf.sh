#!/bin/sh
# merge-gguf.sh - lora-merge / lora-unmerge into an unquantized GGUF base
# (issue 17 item 4).  GGUF bases are made from tests/mkfixture checkpoints
# by tests/mkgguf as llama.cpp's converter makes them (names, llama's q/k
# row permutation, F32 norms, dtypes kept).  Checked: merging into the
# GGUF base gives the same tensors as merging into the safetensors base
# and then converting (F32, F16, BF16; mixed dtypes kept per tensor;
# general.alignment 64); the unmerge with the receipt gives the base
# file back byte for byte; a Q8_0 tensor the adapter does not change is
# copied byte for byte, an adapted one is refused naming its type with
# nothing written; --dtype is refused; the base identity of a GGUF base is
# that of its safetensors twin; lora-eval gives the same report on a llama
# GGUF model as on its twin (and refuses other architectures);
# @huggingface/gguf reads the merged file (tests/gguf-model-check.mjs, when
# node and the package are there).  With $FIXTURES: the same on the real
# llama.cpp file gguf-llama2-tiny-random.
. "$TOP_SRCDIR/tests/lib.sh"
MK="$TOP_BUILDDIR/tests/mkfixture"
GG="$TOP_BUILDDIR/tests/mkgguf"
ALL=q_proj,k_proj,v_proj,o_proj,gate_proj

NPM_DIR=${LORA_NODE_MODULES:-${XDG_CACHE_HOME:-$HOME/.cache}/lora-tools/npm}
node_ok=0
command -v node >/dev/null 2>&1 && [ -d "$NPM_DIR/node_modules/@huggingface/gguf" ] && node_ok=1
# node_check BASE MERGED ADAPTER: Hugging Face's parser and an independent s*B*A
node_check() {
    [ "$node_ok" -eq 1 ] || return 0
    run node "$TOP_SRCDIR/tests/gguf-model-check.mjs" "$NPM_DIR" "$1" "$2" "$3"
    checks=$((checks + 1))
    [ "$rc" -eq 0 ] || { fail "@huggingface/gguf check of $2"; sed 's/^/  /' "$T/err" "$T/out" | head -n 8 >&2; }
}

# no temporaries or outputs left in DIR beyond what was there (the base files)
no_leftovers() {
    checks=$((checks + 1))
    left=$(ls "$1" | grep -E '\.tmp-|^out' || true)
    [ -z "$left" ] || fail "left behind in $1: $left"
}

# roundtrip NAME [gpt2] MKFIXTURE-OPTIONS... -- MKGGUF-OPTIONS...
roundtrip() {
    name=$1; shift
    fam=llama
    [ "$1" = gpt2 ] && { fam=gpt2; shift; }
    d="$T/$name"
    mkf=""
    while [ "$1" != "--" ]; do mkf="$mkf $1"; shift; done
    shift
    # shellcheck disable=SC2086
    "$MK" $fam "$d" $mkf --seed 7 >/dev/null || { fail "$name: mkfixture"; return; }
    "$GG" from-st "$d/base/model.safetensors" "$d/base/config.json" "$d/base.gguf" "$@" ||
        { fail "$name: mkgguf"; return; }
    expect 0 lora-merge -q "$d/base.gguf" -a "$d/adapter" -o "$d/m.gguf" -j 2
    [ "$rc" -eq 0 ] || return
    [ -f "$d/m.gguf.receipt" ] || fail "$name: no receipt"
    # the reference: merge the safetensors base, then convert it the same way
    expect 0 lora-merge -q "$d/base" -a "$d/adapter" -o "$d/mst" --no-receipt
    "$GG" from-st "$d/mst/model.safetensors" "$d/base/config.json" "$d/ref.gguf" "$@" ||
        fail "$name: mkgguf ref"
    expect 0 "$GG" same "$d/m.gguf" "$d/ref.gguf"
    [ "$rc" -eq 0 ] || cat "$T/out" >&2
    run "$GG" same "$d/m.gguf" "$d/base.gguf"
    [ "$rc" -eq 1 ] || fail "$name: the merge changed nothing"
    "$GG" types "$d/base.gguf" > "$d/types.base"
    "$GG" types "$d/m.gguf" > "$d/types.m"
    checks=$((checks + 1))
    cmp -s "$d/types.base" "$d/types.m" || fail "$name: tensor types not kept"
    expect 0 lora-unmerge -q "$d/m.gguf" -a "$d/adapter" --receipt "$d/m.gguf.receipt" -o "$d/b.gguf"
    checks=$((checks + 1))
    cmp -s "$d/b.gguf" "$d/base.gguf" || fail "$name: unmerge with the receipt not byte for byte"
    expect 0 lora-unmerge --check "$d/m.gguf" -a "$d/adapter" --receipt "$d/m.gguf.receipt" --json
    expect_out '"all_exact": true'
    # (the independent check knows plain LoRA on llama)
    case "$fam$mkf" in gpt2*|*--dora*) ;; *) node_check "$d/base.gguf" "$d/m.gguf" "$d/adapter" ;; esac
}

SMALL="--layers 2 --hidden 64 --heads 4 --kv-heads 2 --intermediate 192 --vocab 64 --rank 4"
roundtrip f32 $SMALL --targets $ALL -- 
roundtrip f16 $SMALL --dtype F16 --targets $ALL -- --f32-norms
roundtrip bf16 $SMALL --dtype BF16 --targets $ALL -- --f32-norms --alignment 64
# grouped heads 8/2, and the merged values rounded reversibly
roundtrip gqa --layers 1 --hidden 64 --heads 8 --kv-heads 2 --intermediate 64 --vocab 32 --rank 2 \
    --dtype F16 --targets q_proj,k_proj -- --f32-norms
# DoRA: B and the magnitudes permuted alike for q/k
roundtrip dora $SMALL --dtype F16 --targets q_proj,k_proj,v_proj --dora -- --f32-norms
# GPT-2: Conv1D weights are [out, in] in GGUF, the square c_proj included
roundtrip gpt2 gpt2 --layers 2 --hidden 32 --heads 2 --vocab 64 --rank 4 \
    --targets c_attn,c_proj,c_fc -- --f32-norms

# bad GGUF bases: truncated, an adapter, unknown to us: refused, nothing written
d="$T/bad"
mkdir "$d"
head -c 100000 "$T/f16/base.gguf" > "$d/cut.gguf"
expect 3 lora-merge -q "$d/cut.gguf" -a "$T/f16/adapter" -o "$d/out.gguf"
expect_err "cut.gguf"
expect 0 lora-convert "$T/f16/adapter" --base "$T/f16/base.gguf" -o "$d/ad.gguf" -q
expect 3 lora-merge -q "$d/ad.gguf" -a "$T/f16/adapter" -o "$d/out.gguf"
expect_err "general.type.*not a model"
no_leftovers "$d"

# a merge without the receipt, undone without it: the header comes back as it was
d="$T/f16"
expect 0 lora-unmerge -q "$d/m.gguf" -a "$d/adapter" -o "$d/plain.gguf"
checks=$((checks + 1))
n=$("$GG" dataoff "$d/base.gguf")
cmp -s -n "$n" "$d/plain.gguf" "$d/base.gguf" || fail "unmerge without receipt: header differs"

# quantized tensors: untouched ones copied byte for byte, adapted ones refused
d="$T/q8"
"$MK" llama "$d" $SMALL --dtype F16 --targets q_proj,v_proj --seed 9 >/dev/null || fail "mkfixture q8"
"$GG" from-st "$d/base/model.safetensors" "$d/base/config.json" "$d/base.gguf" --f32-norms \
    --q8 model.layers.1.mlp.up_proj.weight || fail "mkgguf --q8"
expect 0 lora-merge -q "$d/base.gguf" -a "$d/adapter" -o "$d/m.gguf"
expect 0 "$GG" same "$d/m.gguf" "$d/base.gguf" blk.1.ffn_up.weight token_embd.weight
"$GG" types "$d/m.gguf" | grep -q "blk.1.ffn_up.weight Q8_0" ||
    fail "q8: the Q8_0 tensor is not Q8_0 in the output"
expect 0 lora-unmerge -q "$d/m.gguf" -a "$d/adapter" --receipt "$d/m.gguf.receipt" -o "$d/b.gguf"
checks=$((checks + 1))
cmp -s "$d/b.gguf" "$d/base.gguf" || fail "q8: unmerge not byte for byte"
mkdir "$d/refuse"
"$GG" from-st "$d/base/model.safetensors" "$d/base/config.json" "$d/refuse/base.gguf" --f32-norms \
    --q8 model.layers.0.self_attn.v_proj.weight || fail "mkgguf --q8 v"
expect 3 lora-merge -q "$d/refuse/base.gguf" -a "$d/adapter" -o "$d/refuse/out.gguf"
expect_err "model.layers.0.self_attn.v_proj.weight is Q8_0"
no_leftovers "$d/refuse"
[ -e "$d/refuse/out.gguf.receipt" ] && fail "q8: a receipt was written"

# the output's kind is the input's
expect 2 lora-unmerge -q "$T/f16/m.gguf" -a "$T/f16/adapter" -o "$T/f16/out.safetensors"
expect_err "the input is a GGUF model, and so is the output"
expect 2 lora-merge -q "$T/f16/base" -a "$T/f16/adapter" -o "$T/f16/out.gguf"
expect_err "a .gguf output needs a GGUF base"

# --dtype cannot change a GGUF tensor's type
expect 2 lora-merge -q "$T/f16/base.gguf" -a "$T/f16/adapter" -o "$T/f16/out-dt.gguf" --dtype F32
expect_err "keeps each tensor's type"
no_leftovers "$T/f16"

# the base identity (lora-pack --base) of a GGUF base is its safetensors twin's
d="$T/f16"
expect 0 lora-pack keygen -W -s "$T/k.sec" -p "$T/k.pub"
expect 0 lora-pack create "$d/adapter" -o "$d/a.lora" -s "$T/k.sec" --name t --version 1.0.0 \
    --task t --base "$d/base"
expect 0 lora-merge -q "$d/base.gguf" -a "$d/a.lora" -p "$T/k.pub" -o "$d/out-id.gguf"
# a task switch on the GGUF file: the restored base's identity (q/k rows in
# Hugging Face order) is checked for the new adapter; the result is the
# bytes of a merge of the new adapter into the base
"$MK" llama "$T/f16b" $SMALL --dtype F16 --targets $ALL --seed 8 --no-base >/dev/null ||
    fail "mkfixture f16b"
expect 0 lora-pack create "$T/f16b/adapter" -o "$d/b.lora" -s "$T/k.sec" --name u --version 1.0.0 \
    --task u --base "$d/base"
expect 0 lora-merge -q "$d/out-id.gguf" --unmerge "$d/a.lora" --receipt "$d/out-id.gguf.receipt" \
    -a "$d/b.lora" -p "$T/k.pub" -o "$d/sw.gguf"
expect 0 lora-merge -q "$d/base.gguf" -a "$d/b.lora" -p "$T/k.pub" -o "$d/direct.gguf"
checks=$((checks + 1))
cmp -s "$d/sw.gguf" "$d/direct.gguf" || fail "task switch: not the bytes of a direct merge"
# ... and a GGUF base with other weights is refused, nothing written
expect 1 lora-merge -q "$T/bf16/base.gguf" -a "$d/a.lora" -p "$T/k.pub" -o "$d/out-wrong.gguf"
expect_err "wrong base"
[ -e "$d/out-wrong.gguf" ] && fail "wrong base: written"

# lora-eval on a GGUF model of the llama family: config from its key/values,
# q/k rows put back: the same report as on the safetensors twin, merged,
# unmerged, and the exact-recovery check (an RMS epsilon exact in F32, as
# GGUF stores it)
d="$T/ev"
"$MK" llama "$d" --layers 2 --hidden 64 --heads 4 --kv-heads 2 --intermediate 128 --vocab 64 \
    --rank 4 --targets q_proj,k_proj,v_proj,o_proj --seed 4 >/dev/null || fail "mkfixture ev"
sed 's/"rms_norm_eps": [0-9.e-]*/"rms_norm_eps": 9.5367431640625e-07/' "$d/base/config.json" > "$d/c" &&
    mv "$d/c" "$d/base/config.json"
"$GG" from-st "$d/base/model.safetensors" "$d/base/config.json" "$d/base.gguf" || fail "mkgguf ev"
cat > "$d/set.jsonl" <<'EOF2'
{"prompt": [3, 17, 40, 2, 9], "choices": [[5], [60, 3]], "label": 0}
{"prompt": [1, 2, 3, 4], "choices": [[7], [8]], "label": 1}
{"prompt": [30, 31, 7], "choices": [[1, 2], [33]], "label": 1}
{"prompt": [1, 2, 3], "target": [4, 5, 6]}
EOF2
report() { sed -e '/"seconds"/d' -e '/tokens_per_second/d' -e '/"model"/d' "$T/out"; }
for mode in unmerged merged both; do
    expect 0 lora-eval --model "$d/base" -a "$d/adapter" --data "$d/set.jsonl" --mode $mode --json
    report > "$d/st.$mode"
    expect 0 lora-eval --model "$d/base.gguf" -a "$d/adapter" --data "$d/set.jsonl" --mode $mode --json
    report > "$d/gg.$mode"
    checks=$((checks + 1))
    cmp -s "$d/st.$mode" "$d/gg.$mode" || { fail "eval $mode: GGUF and safetensors differ";
        diff "$d/st.$mode" "$d/gg.$mode" | head -n 6 >&2; }
done
grep -q '"nll": [0-9]' "$d/gg.unmerged" || fail "eval: no NLL in the report"
expect 0 lora-eval --check-recovery --model "$d/base" -a "$d/adapter" --json
report > "$d/st.rec"
expect 0 lora-eval --check-recovery --model "$d/base.gguf" -a "$d/adapter" --json
report > "$d/gg.rec"
checks=$((checks + 1))
cmp -s "$d/st.rec" "$d/gg.rec" || fail "check-recovery: GGUF and safetensors differ"
# other architectures are not evaluated from GGUF: said so
expect 3 lora-eval --model "$T/gpt2/base.gguf" --data "$d/set.jsonl"
expect_err "llama family only"

if [ -n "${FIXTURES:-}" ] && [ -f "$FIXTURES/real/gguf-llama2-tiny-random/llama-2-tiny-random.gguf" ]; then
    R="$FIXTURES/real/gguf-llama2-tiny-random/llama-2-tiny-random.gguf"
    d="$T/real"
    # an adapter of the file's shapes: hidden 8, 2 heads, ffn 32, vocab 32000, one block
    "$MK" llama "$d" --layers 1 --hidden 8 --heads 2 --kv-heads 2 --intermediate 32 --vocab 32000 \
        --rank 2 --targets $ALL,up_proj,down_proj --no-base --seed 5 >/dev/null || fail "mkfixture real"
    expect 0 lora-merge -q "$R" -a "$d/adapter" -o "$d/m.gguf"
    "$GG" types "$R" > "$d/t1"; "$GG" types "$d/m.gguf" > "$d/t2"
    checks=$((checks + 1))
    cmp -s "$d/t1" "$d/t2" || fail "real: types not kept (F16 and F32)"
    expect 0 lora-unmerge -q "$d/m.gguf" -a "$d/adapter" --receipt "$d/m.gguf.receipt" -o "$d/b.gguf"
    checks=$((checks + 1))
    cmp -s "$d/b.gguf" "$R" || fail "real: unmerge not byte for byte"
    # the safetensors twin of the real file, merged, converted back
    mkdir "$d/st"
    expect 0 "$GG" to-st "$R" "$d/st"
    expect 0 "$GG" from-st "$d/st/model.safetensors" "$d/st/config.json" "$d/twin.gguf"
    expect 0 "$GG" same "$d/twin.gguf" "$R"
    expect 0 lora-merge -q "$d/st" -a "$d/adapter" -o "$d/mst" --no-receipt
    expect 0 "$GG" from-st "$d/mst/model.safetensors" "$d/st/config.json" "$d/ref.gguf"
    expect 0 "$GG" same "$d/m.gguf" "$d/ref.gguf"
    node_check "$R" "$d/m.gguf" "$d/adapter"
    # the real file evaluated: merged and unmerged agree
    expect 0 lora-eval --model "$R" -a "$d/adapter" --data "$T/ev/set.jsonl" --mode both --json
    expect_out '"agree": true' 
else
    echo "note: FIXTURES not set: the real llama.cpp GGUF file not merged"
fi
[ "$node_ok" -eq 1 ] || echo "note: node or @huggingface/gguf missing: merged files not read independently"
done_testing
