# tests/convert-node.sh - an independent reading of every kind of GGUF
# file lora-convert writes: Hugging Face's GGUF parser (npm
# @huggingface/gguf) parses it, and tests/gguf-check.mjs (no code shared
# with liblora) recomputes llama.cpp's (alpha/r)·lora_b·lora_a and PEFT's
# s·B·A from the source adapter and compares them module by module:
# plain, rsLoRA + alpha_pattern, rank_pattern (lora-rank-reduce --energy),
# F16 / BF16 output, GPT-2 Conv1D, and, with $FIXTURES, real adapters
# (Qwen2.5 q/v with grouped KV heads, GPT-2) and an rsLoRA variant of one.
# SKIPs (77) when node or the package is missing: the package is looked
# for in $LORA_NODE_MODULES (default ~/.cache/lora-tools/npm, where
# ./bootstrap puts it) and installed there with npm when npm can.
. "$TOP_SRCDIR/tests/lib.sh"

command -v node >/dev/null 2>&1 || { echo "SKIP: node not found"; exit 77; }
NPM_DIR=${LORA_NODE_MODULES:-${XDG_CACHE_HOME:-$HOME/.cache}/lora-tools/npm}
if [ ! -d "$NPM_DIR/node_modules/@huggingface/gguf" ]; then
    command -v npm >/dev/null 2>&1 || { echo "SKIP: @huggingface/gguf missing and no npm"; exit 77; }
    mkdir -p "$NPM_DIR" &&
        timeout 180 npm install --prefix "$NPM_DIR" --no-audit --no-fund --silent \
            '@huggingface/gguf@^0.4' >/dev/null 2>&1 ||
        { echo "SKIP: npm could not install @huggingface/gguf into $NPM_DIR"; exit 77; }
fi
CHECK="$TOP_SRCDIR/tests/gguf-check.mjs"

M="$TOP_SRCDIR/tests/fixtures/models"
LQ="$M/adapters/llama-classify-qkvo-r8"

# check NAME PEFT_DIR BASE TOL [lora-convert options]
check() {
    name=$1 peft=$2 base=$3 tol=$4; shift 4
    expect 0 lora-convert "$peft" --base "$base" -o "$T/$name.gguf" -q "$@"
    [ "$rc" -eq 0 ] || return 0
    run node "$CHECK" "$NPM_DIR" "$T/$name.gguf" "$peft" "$tol"
    checks=$((checks + 1))
    if [ "$rc" -eq 77 ]; then
        cat "$T/out"; exit 77
    elif [ "$rc" -ne 0 ]; then
        fail "$name: @huggingface/gguf reading or deltas"
        sed 's/^/  /' "$T/err" "$T/out" | head -n 10 >&2
    else
        cat "$T/out"
    fi
}

variant() { # variant DIR SRC SED-EXPR...: a copy of SRC with its config edited
    dir=$1 src=$2; shift 2
    mkdir "$dir" && cp "$src/adapter_model.safetensors" "$dir/"
    sed "$@" "$src/adapter_config.json" > "$dir/adapter_config.json"
}

check llama "$LQ" "$M/llama-base" 1e-6
check llama-bf16 "$LQ" "$M/llama-base" 1.6e-2 --outtype bf16
check llama-f16 "$LQ" "$M/llama-base" 2e-3 --outtype f16
check gpt2 "$M/adapters/gpt2-classify-cattn-cproj-r4" "$M/gpt2-base" 1e-6
check gpt2-f16 "$M/adapters/gpt2-classify-cattn-cproj-r4" "$M/gpt2-base" 2e-3 --outtype f16
variant "$T/rs" "$LQ" -e 's/"use_rslora": false/"use_rslora": true/' \
    -e 's/"alpha_pattern": {}/"alpha_pattern": {"model.layers.1.self_attn.v_proj": 3, "o_proj": 5}/'
check rslora "$T/rs" "$M/llama-base" 1e-6
check rslora-f16 "$T/rs" "$M/llama-base" 2e-3 --outtype f16
# per-module ranks: rank_pattern and alpha_pattern written by lora-rank-reduce
expect 0 lora-rank-reduce "$LQ" --energy 0.99 -o "$T/rp" -q
checks=$((checks + 1))
grep -q '"rank_pattern": {}' "$T/rp/adapter_config.json" && fail "rank-reduce gave one rank only"
check rank-pattern "$T/rp" "$M/llama-base" 1e-6

if [ -n "${FIXTURES:-}" ] && [ -d "$FIXTURES/real" ]; then
    R="$FIXTURES/real"
    mkdir "$T/qbase" "$T/gbase"
    printf '{"model_type": "qwen2", "num_attention_heads": 14, "num_key_value_heads": 2}\n' \
        > "$T/qbase/config.json"
    printf '{"model_type": "gpt2", "n_head": 12}\n' > "$T/gbase/config.json"
    check qwen "$R/qwen2.5-0.5b-qv" "$T/qbase" 1e-6
    variant "$T/qrs" "$R/qwen2.5-0.5b-qv" -e 's/"use_rslora": false/"use_rslora": true/' \
        -e 's/"alpha_pattern": {}/"alpha_pattern": {"v_proj": 4}/'
    check qwen-rslora "$T/qrs" "$T/qbase" 1e-6
    check qwen-rslora-bf16 "$T/qrs" "$T/qbase" 1.6e-2 --outtype bf16
    check tigrinya "$R/gpt2-tigrinya-lora" "$T/gbase" 1e-6
else
    echo "note: FIXTURES not set: real adapters not checked"
fi
done_testing
