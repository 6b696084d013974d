# tests/convert-real.sh - lora-convert and lora-inspect on files made by
# other people ($FIXTURES/real): the real GGUF model reads and is named
# as a model, not an adapter; real PEFT adapters (Qwen2.5 q/v with
# grouped KV heads, GPT-2 Conv1D) convert and come back byte-identical
# after a second conversion; a classifier's modules_to_save head is
# refused, or left out and listed with --skip-unsupported; truncated and
# foreign adapters are refused.  SKIPs (77) without the fixtures.
. "$TOP_SRCDIR/tests/lib.sh"
skip_unless_fixtures
R="$FIXTURES/real"

mkdir "$T/qbase" "$T/gbase"
printf '{"model_type": "qwen2", "num_attention_heads": 14, "num_key_value_heads": 2}\n' \
    > "$T/qbase/config.json"
printf '{"model_type": "gpt2", "n_head": 12}\n' > "$T/gbase/config.json"

# the real GGUF model: parsed, refused as an adapter with the reason
G="$R/gguf-llama2-tiny-random/llama-2-tiny-random.gguf"
expect 3 lora-inspect "$G"
expect_err 'a GGUF file, but not a LoRA adapter'
expect 3 lora-convert "$G" -o "$T/x"
expect_err 'not a LoRA adapter'
# the GGUF model as --base: the Qwen adapter does not fit it
expect 3 lora-convert "$R/qwen2.5-0.5b-qv" --base "$G" -o "$T/x.gguf"
expect_err 'does not fit the base.s blk\.0\.attn_q\.weight.*wrong base'

for spec in "qwen2.5-0.5b-qv qbase 48" "gpt2-tigrinya-lora gbase 36"; do
    set -- $spec
    expect 0 lora-convert "$R/$1" --to gguf --base "$T/$2" -o "$T/$1.gguf" --json
    expect_out "\"folded\": 0"
    checks=$((checks + 1))
    [ "$(grep -c '"from"' "$T/out")" -eq "$3" ] || fail "$1: not $3 modules"
    expect 0 lora-inspect "$T/$1.gguf"
    expect_out "^modules +$3 adapted"
    expect 0 lora-convert "$T/$1.gguf" --to peft -o "$T/$1-peft" -q
    expect 0 lora-inspect "$T/$1-peft"
    expect_out "^modules +$3 adapted"
    expect 0 lora-convert "$T/$1-peft" --to gguf --base "$T/$2" -o "$T/$1-2.gguf" -q
    checks=$((checks + 1))
    cmp -s "$T/$1.gguf" "$T/$1-2.gguf" || fail "$1: PEFT -> GGUF -> PEFT -> GGUF changed bytes"
done

# a modules_to_save classifier head: refused, or left out and listed
expect 3 lora-convert "$R/gpt2-seqcls-r2" --base "$T/gbase" -o "$T/cls.gguf"
expect_err 'score\.weight: a full tensor saved by modules_to_save.*--skip-unsupported'
checks=$((checks + 1))
[ ! -e "$T/cls.gguf" ] || fail "refused conversion wrote cls.gguf"
expect 0 lora-convert "$R/gpt2-seqcls-r2" --base "$T/gbase" -o "$T/cls.gguf" --skip-unsupported
expect_out '^skipped: score\.weight'
expect_out '12 modules, .* 1 skipped'

# an architecture llama.cpp's names are not known for here, a truncated adapter
printf '{"model_type": "opt", "num_attention_heads": 12}\n' > "$T/opt.json"
expect 3 lora-convert "$R/opt125m-bf16" --base "$T/opt.json" -o "$T/opt.gguf"
expect_err 'model_type "opt"'
expect 3 lora-convert "$R/x-qwen25vl-truncated" --base "$T/qbase" -o "$T/vl.gguf"
checks=$((checks + 1))
[ ! -e "$T/opt.gguf" ] && [ ! -e "$T/vl.gguf" ] || fail "a refused conversion left a file"
done_testing
