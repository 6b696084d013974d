# tests/convert.sh - lora-convert on the bundled adapters
# (tests/fixtures/models): PEFT -> GGUF -> PEFT -> GGUF gives the same
# GGUF bytes (so the round trip is exact), the report says what was
# permuted and folded, refusals exit with the documented codes and leave
# nothing under the output name, and lora-inspect reads the GGUF.
# The deltas themselves are checked in check_gguf (C) and, independently,
# by tests/gguf-check.mjs (convert-node.sh).
. "$TOP_SRCDIR/tests/lib.sh"

M="$TOP_SRCDIR/tests/fixtures/models"
LQ="$M/adapters/llama-classify-qkvo-r4"
G2="$M/adapters/gpt2-reverse-cattn-cproj-r2"

# ---- llama: q/k rows permuted, exact round trip ----
expect 0 lora-convert "$LQ" --to gguf --base "$M/llama-base" -o "$T/l.gguf"
expect_out 'blk\.0\.attn_q\.weight .* rows permuted'
expect_out '8 modules, architecture llama, alpha 8, f32, 0 with the scale folded'
checks=$((checks + 1))
[ "$(head -c 4 "$T/l.gguf")" = GGUF ] || fail "l.gguf has no GGUF magic"
expect 0 lora-convert "$T/l.gguf" -o "$T/l-peft"
expect_out '8 modules, architecture llama'
for f in adapter_config.json adapter_model.safetensors; do
    checks=$((checks + 1))
    [ -s "$T/l-peft/$f" ] || fail "l-peft/$f missing"
done
expect 0 lora-convert "$T/l-peft" --base "$M/llama-base" -o "$T/l2.gguf" -q
checks=$((checks + 1))
cmp -s "$T/l.gguf" "$T/l2.gguf" || fail "PEFT -> GGUF -> PEFT -> GGUF changed the bytes"
checks=$((checks + 1))
[ ! -s "$T/out" ] || fail "-q printed a report"

# same inputs, same bytes
expect 0 lora-convert "$LQ" --base "$M/llama-base" -o "$T/l3.gguf" -q
checks=$((checks + 1))
cmp -s "$T/l.gguf" "$T/l3.gguf" || fail "two conversions differ"

# --json
expect 0 lora-convert "$LQ" --base "$M/llama-base" -o "$T/l4.gguf" --outtype bf16 --json
expect_out '"to": "gguf"'
expect_out '"dtype": "bf16"'
expect_out '"permuted": true'
expect_out '"folded": 0'
checks=$((checks + 1))
[ "$(wc -c < "$T/l4.gguf")" -lt "$(wc -c < "$T/l.gguf")" ] || fail "bf16 file not smaller"

# ---- GPT-2 (Conv1D, fan_in_fan_out) ----
expect 0 lora-convert "$G2" --base "$M/gpt2-base" -o "$T/g.gguf" --outtype f16
expect_out 'transformer\.h\.0\.attn\.c_attn +blk\.0\.attn_qkv\.weight'
expect_out 'architecture gpt2'
expect 0 lora-convert "$T/g.gguf" --to peft -o "$T/g-peft" --json
expect_out '"to": "peft"'
checks=$((checks + 1))
grep -q '"fan_in_fan_out": true' "$T/g-peft/adapter_config.json" || fail "gpt2: fan_in_fan_out not set"

# ---- rsLoRA + alpha_pattern: folded into B ----
mkdir "$T/rs"
cp "$LQ/adapter_model.safetensors" "$T/rs/"
sed -e 's/"use_rslora": false/"use_rslora": true/' \
    -e 's/"alpha_pattern": {}/"alpha_pattern": {"v_proj": 3}/' \
    "$LQ/adapter_config.json" > "$T/rs/adapter_config.json"
expect 0 lora-convert "$T/rs" --base "$M/llama-base" -o "$T/rs.gguf" --json
expect_out '"folded": 2'
expect_out '"alpha": 16'
# back in PEFT: the scale llama.cpp applies, written as plain alpha / r
expect 0 lora-convert "$T/rs.gguf" -o "$T/rs-peft" -q
checks=$((checks + 1))
grep -q '"use_rslora": false' "$T/rs-peft/adapter_config.json" || fail "rs-peft: use_rslora"

# ---- lora-inspect on GGUF ----
expect 0 lora-inspect "$T/l.gguf"
expect_out '^architecture +llama'
expect_out '^alpha +8 '
expect_out 'r 4, scale 2: 8 modules'
expect 0 lora-inspect --json "$T/g.gguf"
expect_out '"architecture": "gpt2"'
expect_out '"type_a": "F16"'
expect 2 lora-inspect --base "$M/llama-base" "$T/l.gguf"
expect_err '^lora-inspect: .*a GGUF adapter'

# ---- refusals: exit codes, nothing written ----
expect 2 lora-convert "$LQ" -o "$T/x.gguf"
expect_err '^lora-convert: .*--base'
expect 2 lora-convert "$LQ" --base "$M/llama-base" -o "$T/l.gguf"
expect_err 'exists'
expect 2 lora-convert "$LQ" --base "$M/llama-base" -o -
expect 2 lora-convert "$LQ" --base "$M/llama-base" --to onnx -o "$T/x"
expect 2 lora-convert "$LQ" --base "$M/llama-base" --outtype q8_0 -o "$T/x"
expect 2 lora-convert "$T/l.gguf" --to gguf --base "$M/llama-base" -o "$T/x"
expect 2 lora-convert "$LQ" --to peft -o "$T/x"
expect 2 lora-convert "$T/l.gguf" -o "$T/l-peft"
expect 0 lora-convert "$T/l.gguf" -o "$T/l-peft" --force -q
# a base the converter does not know, modules it cannot name
printf '{"model_type": "opt", "num_attention_heads": 4}\n' > "$T/opt.json"
expect 3 lora-convert "$LQ" --base "$T/opt.json" -o "$T/x.gguf"
expect_err 'model_type "opt"'
printf '{"model_type": "phi3", "num_attention_heads": 4}\n' > "$T/phi3.json"
expect 3 lora-convert "$LQ" --base "$T/phi3.json" -o "$T/x.gguf"
expect_err 'model\.layers\.0\.self_attn\.k_proj: no GGUF tensor .*phi3.*--skip-unsupported'
# tied embeddings: lm_head has no output tensor (gemma2 ties by default)
printf '{"model_type": "gemma2", "num_attention_heads": 4}\n' > "$T/gemma2.json"
expect 0 lora-convert "$LQ" --base "$T/gemma2.json" -o "$T/gemma.gguf" -q
# an activated LoRA: its invocation tokens would be lost, so refused
variant_dir="$T/alora"
mkdir "$variant_dir" && cp "$LQ/adapter_model.safetensors" "$variant_dir/"
sed 's/"use_rslora": false/"use_rslora": false, "alora_invocation_tokens": [1, 2]/' \
    "$LQ/adapter_config.json" > "$variant_dir/adapter_config.json"
expect 3 lora-convert "$variant_dir" --base "$M/llama-base" -o "$T/alora.gguf"
expect_err 'activated LoRA'
# corrupted and truncated GGUF inputs
head -c 1000 "$T/l.gguf" > "$T/trunc.gguf"
expect 3 lora-convert "$T/trunc.gguf" -o "$T/x"
expect_err 'not a valid GGUF file: .*(truncated|cannot fit|past the end)'
expect 3 lora-inspect "$T/trunc.gguf"
expect_err 'not a valid GGUF file'
{ printf 'GGUF\003\000\000\000'; head -c 16 /dev/zero; } > "$T/empty.gguf"
expect 3 lora-convert "$T/empty.gguf" -o "$T/x"
expect_err 'not a LoRA adapter'
{ printf 'GGUF\000\000\000\003'; head -c 16 /dev/zero; } > "$T/be.gguf"
expect 3 lora-convert "$T/be.gguf" -o "$T/x"
expect_err 'big-endian'
checks=$((checks + 1))
[ ! -e "$T/x" ] && [ ! -e "$T/x.gguf" ] || fail "a refused conversion left an output"
checks=$((checks + 1))
ls "$T" | grep -q 'tmp-' && fail "temporaries left behind: $(ls "$T" | grep tmp-)"

# ---- disk full (ulimit -f; SIGXFSZ ignored so write() fails): exit 4,
# nothing under the final name, no temporary left ----
mkdir "$T/full"
run sh -c "trap '' XFSZ; ulimit -f 8; exec lora-convert '$LQ' --base '$M/llama-base' -o '$T/full/f.gguf'"
checks=$((checks + 1))
[ "$rc" -eq 4 ] || fail "disk full (GGUF): exit $rc, not 4"
expect_err '^lora-convert: .*(File too large|write)'
run sh -c "trap '' XFSZ; ulimit -f 8; exec lora-convert '$T/l.gguf' -o '$T/full/p'"
checks=$((checks + 1))
[ "$rc" -eq 4 ] || fail "disk full (PEFT): exit $rc, not 4"
checks=$((checks + 1))
[ -z "$(ls -A "$T/full")" ] || fail "disk full left: $(ls -A "$T/full")"

done_testing
