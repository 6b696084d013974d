#!/bin/sh
# tests/inspect.sh - lora-inspect as a user runs it: human and --json
# output on generated and real adapters, --check exit codes for each
# kind of problem, bad input and usage errors.
. "$TOP_SRCDIR/tests/lib.sh"

MK="$TOP_BUILDDIR/tests/mkfixture"

# --- generated fixtures -------------------------------------------------
"$MK" llama "$T/l" --layers 2 --rank 4 --alpha 8 >/dev/null || fail "mkfixture llama"
"$MK" gpt2 "$T/g" --layers 2 --targets c_attn,c_proj >/dev/null || fail "mkfixture gpt2"

expect 0 lora-inspect "$T/l/adapter"
expect_out '^r / alpha +4 / 8, scale 2 '
expect_out '^modules +4 adapted'
expect_out '^  matched +q_proj: 2 modules'
expect_out '^problems +none'
expect_out '^dtypes +F32 \(8 tensors\)'

expect 0 lora-inspect --check --base "$T/l/base" "$T/l/adapter"
expect_out '^base +'
expect_out 'adapter/base'

# gpt2: bare c_proj matches attn.c_proj and mlp.c_proj; hub-style base without "transformer."
expect 0 lora-inspect -c -b "$T/g/base" "$T/g/adapter"
expect_out 'matched +c_proj: 4 modules'
expect_out '^modules +6 adapted'

# --json: required fields, valid JSON, same bytes twice
expect 0 lora-inspect --json --base "$T/l/base" "$T/l/adapter"
cp "$T/out" "$T/j1"
for f in '"r": 4' '"lora_alpha": 8' '"modules": 4' '"trainable_parameters": ' '"bytes": ' \
         '"dtypes": \[' '"problems": \[\]' '"parameter_ratio": '; do
    checks=$((checks + 1))
    grep -q -- "$f" "$T/j1" || fail "--json lacks $f"
done
# trainable parameters: 2 layers x (q: 4*64 + 64*4, v: 4*64 + 32*4)
expect_out '"trainable_parameters": 1792,'
expect 0 lora-inspect --json --base "$T/l/base" "$T/l/adapter"
checks=$((checks + 1))
cmp -s "$T/out" "$T/j1" || fail "--json output differs between two runs"
if command -v python3 >/dev/null 2>&1; then
    checks=$((checks + 1))
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["modules"]==4 and d["base"]["adapted_parameters"]==2*(64*64+32*64)' "$T/j1" ||
        fail "--json is not the expected JSON"
fi

expect 0 lora-inspect --tensors "$T/l/adapter"
expect_out 'base_model\.model\.model\.layers\.0\.self_attn\.q_proj\.lora_A\.weight F32 \[4, 64\] 1,024 bytes lora_A'
expect 0 lora-inspect --json --tensors "$T/l/adapter"
expect_out '"role": "lora_B"'

# mkfixture is deterministic: same seed, same bytes; another seed, other values
"$MK" llama "$T/l2" --layers 2 --rank 4 --alpha 8 >/dev/null || fail "mkfixture again"
"$MK" llama "$T/l3" --layers 2 --rank 4 --alpha 8 --seed 7 >/dev/null || fail "mkfixture seed 7"
for f in base/model.safetensors base/config.json adapter/adapter_model.safetensors adapter/adapter_config.json; do
    checks=$((checks + 1))
    cmp -s "$T/l/$f" "$T/l2/$f" || fail "mkfixture output $f differs between two runs"
done
checks=$((checks + 1))
cmp -s "$T/l/base/model.safetensors" "$T/l3/base/model.safetensors" && fail "--seed changes nothing"
# GPT2LMHeadModel spelling ("transformer." in the base) binds as well
"$MK" gpt2 "$T/gp" --prefixed --no-adapter >/dev/null || fail "mkfixture --prefixed"
expect 0 lora-inspect --check --json --base "$T/gp/base" "$T/g/adapter"
expect_out '"target": "transformer\.h\.0\.attn\.c_attn\.weight"'
expect_out '"transpose": true'

# --- --check exit codes ----------------------------------------------------
# missing module: the base has one layer, the adapter two
"$MK" llama "$T/short" --layers 1 --no-adapter >/dev/null || fail "mkfixture short base"
expect 0 lora-inspect --base "$T/short/base" "$T/l/adapter"
expect_out 'error +module model\.layers\.1\.self_attn\.q_proj: the base has no tensor'
expect 1 lora-inspect --check --base "$T/short/base" "$T/l/adapter"
expect_err 'check failed: 2 errors'

# shape mismatch: a base of another hidden size
"$MK" llama "$T/wide" --hidden 128 --no-adapter >/dev/null || fail "mkfixture wide base"
expect 1 lora-inspect --check --base "$T/wide/base" "$T/l/adapter"
expect_out 'model\.layers\.0\.self_attn\.q_proj: .*\[64, 64\].*\[128, 128\]'

# NaN in B
"$MK" llama "$T/nan" --nan --no-base >/dev/null || fail "mkfixture --nan"
expect 1 lora-inspect --check "$T/nan/adapter"
expect_out 'NaN/Inf values in .*lora_B'
expect 0 lora-inspect "$T/nan/adapter"
expect 1 lora-inspect --json --check "$T/nan/adapter"
expect_out '"severity": "error"'

# untrained (zero B): a warning, an error with --strict
"$MK" llama "$T/zero" --untrained --no-base >/dev/null || fail "mkfixture --untrained"
expect 0 lora-inspect --check "$T/zero/adapter"
expect_out 'warning +every lora_B is all zeros'
expect 1 lora-inspect --check --strict "$T/zero/adapter"
expect 1 lora-inspect --strict "$T/zero/adapter"

# rank not matching the config: loads, --check fails
mkdir "$T/rk" && cp "$T/l/adapter/adapter_model.safetensors" "$T/rk/" &&
    sed 's/"r": 4/"r": 8/' "$T/l/adapter/adapter_config.json" >"$T/rk/adapter_config.json"
expect 1 lora-inspect --check "$T/rk"
expect_out 'rank 4 but the config gives r=8'

# --- bad input: 3; I/O and usage ---------------------------------------------
mkdir "$T/bin" && cp "$T/l/adapter/adapter_config.json" "$T/bin/" && echo x >"$T/bin/adapter_model.bin"
expect 3 lora-inspect "$T/bin"
expect_err '^lora-inspect: .*convert it to safetensors'
mkdir "$T/dora" && cp "$T/l/adapter/adapter_model.safetensors" "$T/dora/" &&
    sed 's/"use_dora": false/"use_dora": true/' "$T/l/adapter/adapter_config.json" >"$T/dora/adapter_config.json"
expect 3 lora-inspect "$T/dora"
expect_err 'DoRA'
mkdir "$T/cut" && cp "$T/l/adapter/adapter_config.json" "$T/cut/" &&
    head -c 3000 "$T/l/adapter/adapter_model.safetensors" >"$T/cut/adapter_model.safetensors"
expect 3 lora-inspect "$T/cut"
expect 3 lora-inspect "$T/nonexistent"
expect 3 lora-inspect --base "$T/nonexistent" "$T/l/adapter"
expect 2 lora-inspect
expect_err 'missing ADAPTER'
expect 2 lora-inspect --bogus "$T/l/adapter"
expect 2 lora-inspect "$T/l/adapter" "$T/g/adapter"
expect 0 lora-inspect --help
expect_out '^Usage: lora-inspect'
expect 0 lora-inspect --version
expect_out '^lora-inspect \(lora-tools\) '
if [ -w /dev/full ]; then
    expect 4 sh -c 'lora-inspect "$1" >/dev/full' sh "$T/l/adapter"
fi

# --- real adapters -------------------------------------------------------------
if [ -n "${FIXTURES:-}" ] && [ -d "$FIXTURES/real" ]; then
    R=$FIXTURES/real
    expect 0 lora-inspect --check "$R/gpt2-tigrinya-lora"
    expect_out '^r / alpha +8 / 32, scale 4 '
    expect_out 'matched +c_proj: 24 modules'
    expect_out '^modules +36 adapted'
    expect 0 lora-inspect --check "$R/qwen2.5-0.5b-qv"
    expect_out '^modules +48 adapted'
    expect_out '^base model +Qwen/Qwen2\.5-0\.5B-Instruct'
    expect 0 lora-inspect --json "$R/opt125m-bf16"
    expect_out '"dtypes": \['
    expect_out '"BF16"'
    expect_out '"peft_version": "0\.18\.1"'
    expect 0 lora-inspect "$R/gpt2-seqcls-r2"
    expect_out 'score\.weight \[4, 768\] F32'
    expect 3 lora-inspect "$R/x-qwen25vl-truncated"
    expect_err '^lora-inspect: .*truncated'
    # a real base: the tiny GPT-2 is not the adapters' base, so --check fails
    expect 1 lora-inspect --check --base "$R/base-tiny-gpt2-e16" "$R/gpt2-tigrinya-lora"
    expect_out 'base tensor transformer\.h\.0\.attn\.c_attn\.weight is \[16, 48\]'
else
    echo "note: shared fixtures absent, real-adapter checks skipped"
fi

done_testing
