#!/bin/sh
# merge-values.sh - never a wrong value in silence, on the cases of
# tests/cases (copies of ../shared/cases, each with its README):
#  - f16-merge-overflow: W0 + delta beyond F16, and --dtype F16 of an F32
#    1e5, refused (exit 3, tensor, count, first element, nothing written);
#    --allow-nonfinite writes +-inf, counts them, and the receipt still
#    restores W0;
#  - bf16-merge-drift: lora-unmerge without a receipt says exactness is
#    unknown and its may_differ bounds the true count (164 of 6144, the
#    value the case's numpy check gives) from above;
#  - a huge scale (lora_alpha 1e308, in alpha_pattern, with use_rslora):
#    lora-inspect --check fails, lora-merge refuses, nothing written;
#  - base identity: a same-shape base with one element changed is refused
#    by lora-merge, lora-unmerge, lora-eval, a task switch and
#    lora-inspect --check --base (exit 1, both identities, nothing
#    written); --any-base goes on with a warning; an unmerge without a
#    receipt that matches the recorded identity is exact and says so;
#    plain folders whose base name or config disagrees with the base's
#    config.json warn (and a FIFO named config.json does not hang).
. "$TOP_SRCDIR/tests/lib.sh"
C="$TOP_SRCDIR/tests/cases"
OV="$C/f16-merge-overflow"
DR="$C/bf16-merge-drift"

# u16 FILE INDEX: the INDEXth 16-bit element of the first tensor's data
# (little-endian, printed as 4 hex digits), reading the header length
u16() {
    n=$(od -An -tu8 -N8 "$1" | tr -d ' ')
    od -An -tx2 -j $((8 + n + 2 * $2)) -N2 "$1" | tr -d ' '
}

nothing_left() { # PREFIX: no file starting with it in $T
    checks=$((checks + 1))
    ls "$T" | grep -q "^$1" && fail "$1: something was written: $(ls "$T" | grep "^$1")"
}

# ---- overflow ------------------------------------------------------------
expect 3 lora-merge -q "$OV/base.safetensors" -a "$OV/adapter" -o "$T/ov.safetensors"
expect_err "model.layers.0.mlp.down_proj.weight: 2 value\(s\) not finite in F16"
expect_err "first: element 0 \[0, 0\]: 64992 \+ 1000"
expect_err "nothing written \(--allow-nonfinite"
nothing_left ov
# --dtype F16 from F32: 65000 + 1000 and the untouched 1e5 (d = 0) overflow
expect 3 lora-merge -q "$OV/base-f32.safetensors" -a "$OV/adapter" --dtype F16 -o "$T/ov16.safetensors"
expect_err "2 value\(s\) not finite in F16"
nothing_left ov16
# without the conversion the F32 merge is fine
expect 0 lora-merge -q "$OV/base-f32.safetensors" -a "$OV/adapter" -o "$T/ov32.safetensors"
# allowed: +-inf written and counted, the receipt restores the base
expect 0 lora-merge --json "$OV/base.safetensors" -a "$OV/adapter" -o "$T/ova.safetensors" --allow-nonfinite
expect_out '"nonfinite": 2'
[ "$(u16 "$T/ova.safetensors" 0)" = 7c00 ] || fail "allow-nonfinite: element 0 is $(u16 "$T/ova.safetensors" 0), not +inf"
[ "$(u16 "$T/ova.safetensors" 5)" = fc00 ] || fail "allow-nonfinite: element 5 is $(u16 "$T/ova.safetensors" 5), not -inf"
checks=$((checks + 2))
expect 0 lora-merge "$OV/base.safetensors" -a "$OV/adapter" -o "$T/ovb.safetensors" --allow-nonfinite
expect_err "WARNING: 2 value\(s\) written as \+-inf"
expect 0 lora-unmerge --check "$T/ova.safetensors" -a "$OV/adapter" --receipt "$T/ova.safetensors.receipt" --base "$OV/base.safetensors" --json
expect_out '"exact": true'
expect 0 lora-unmerge -q "$T/ova.safetensors" -a "$OV/adapter" --receipt "$T/ova.safetensors.receipt" -o "$T/ovr.safetensors"
cmp -s "$T/ovr.safetensors" "$OV/base.safetensors" || fail "restore through inf: not the base's bytes"
checks=$((checks + 1))

# ---- unmerge without a receipt: exactness unknown, an upper bound ----------
expect 0 lora-merge -q "$DR/base.safetensors" -a "$DR/adapter" -o "$T/dm.safetensors"
expect 0 lora-unmerge "$T/dm.safetensors" -a "$DR/adapter" -o "$T/du.safetensors"
expect_err "exactness unknown; at most [0-9]+ of 6144 elements may differ"
expect 0 lora-unmerge -q "$T/dm.safetensors" -a "$DR/adapter" -o "$T/du2.safetensors" --json
expect_out '"exact": null'
may=$(sed -n 's/^  "may_differ": \([0-9]*\),*$/\1/p' "$T/out")
# the true count, element by element against the base: the case's value
expect 1 lora-unmerge --check "$T/dm.safetensors" -a "$DR/adapter" --base "$DR/base.safetensors" --json
expect_out '"exact": false'
expect_out '"differ": 164,'
wrong=$(sed -n 's/^  "differ": \([0-9]*\),*$/\1/p' "$T/out")
checks=$((checks + 2))
[ -n "$may" ] && [ -n "$wrong" ] || fail "no may_differ ($may) or differ ($wrong) in the JSON"
[ "${may:-0}" -ge "${wrong:-1}" ] || fail "may_differ $may < the true count $wrong"
[ "${may:-0}" -lt 6144 ] || fail "may_differ $may says nothing"
# with the receipt: exact, and says so
expect 0 lora-unmerge -q "$T/dm.safetensors" -a "$DR/adapter" --receipt "$T/dm.safetensors.receipt" -o "$T/dr.safetensors" --json
expect_out '"exact": true'
expect_out '"may_differ": 0'

# ---- huge scale --------------------------------------------------------------
huge() { # NAME SED-EXPRESSION: a copy of the drift adapter with its config edited
    mkdir -p "$T/$1"
    cp "$DR/adapter/adapter_model.safetensors" "$T/$1/"
    sed "$2" "$DR/adapter/adapter_config.json" > "$T/$1/adapter_config.json"
    cmp -s "$T/$1/adapter_config.json" "$DR/adapter/adapter_config.json" && fail "$1: config unchanged"
}
huge alpha 's/"lora_alpha": 16/"lora_alpha": 1e308/'
huge pattern 's/"alpha_pattern": {}/"alpha_pattern": {"down_proj": 1e308}/'
huge rslora 's/"use_rslora": false/"use_rslora": true/; s/"lora_alpha": 16/"lora_alpha": 1e308/'
for a in alpha pattern rslora; do
    expect 1 lora-inspect --check "$T/$a"
    expect_out "delta values are not finite"
    expect 1 lora-inspect --check --base "$DR/base.safetensors" "$T/$a"
    expect_out "6144 of 6144 delta values are not finite in BF16"
    expect 3 lora-merge -q "$DR/base.safetensors" -a "$T/$a" -o "$T/h$a.safetensors"
    expect_err "not finite in BF16.*check the adapter's scale"
    nothing_left "h$a"
done
expect 0 lora-inspect --check --base "$DR/base.safetensors" "$DR/adapter"

# ---- base identity -------------------------------------------------------------
lora-pack keygen -W -s "$T/k.sec" -p "$T/k.pub" -q >/dev/null 2>&1 || fail "keygen"
expect 0 lora-pack create "$DR/adapter" -s "$T/k.sec" --name drift --task t --version 1.0.0 \
    --base "$DR/base.safetensors" -o "$T/a.lora" -q
# the same shapes, one byte of the adapted tensor changed
cp "$DR/base.safetensors" "$T/wrong.safetensors"
chmod u+w "$T/wrong.safetensors"
n=$(od -An -tu8 -N8 "$T/wrong.safetensors" | tr -d ' ')
printf '\125' | dd of="$T/wrong.safetensors" bs=1 seek=$((8 + n + 1001)) conv=notrunc 2>/dev/null
checks=$((checks + 1))
cmp -s "$T/wrong.safetensors" "$DR/base.safetensors" && fail "the wrong base is the base"
expect 0 lora-merge -q "$DR/base.safetensors" -a "$T/a.lora" -p "$T/k.pub" -o "$T/ok.safetensors"
expect 1 lora-merge -q "$T/wrong.safetensors" -a "$T/a.lora" -p "$T/k.pub" -o "$T/wb.safetensors"
expect_err "wrong base: the adapter was made for base tiny-test-base \(identity [0-9a-f]{64}\), this base's identity is [0-9a-f]{64}"
nothing_left wb
expect 0 lora-merge -q "$T/wrong.safetensors" -a "$T/a.lora" -p "$T/k.pub" -o "$T/wa.safetensors" --any-base
expect_err "WARNING: --any-base"
[ -f "$T/wa.safetensors" ] || fail "--any-base wrote nothing"
checks=$((checks + 1))
expect 1 lora-inspect --check --base "$T/wrong.safetensors" -p "$T/k.pub" "$T/a.lora"
expect_out "wrong base"
expect 0 lora-inspect --check --base "$DR/base.safetensors" -p "$T/k.pub" "$T/a.lora"
# unmerge: --check --base with the wrong base; a restore (exact, with the
# receipt) of a merge made into the wrong base
expect 1 lora-unmerge --check "$T/ok.safetensors" -a "$T/a.lora" -p "$T/k.pub" --base "$T/wrong.safetensors"
expect_err "wrong base"
expect 0 lora-unmerge -q "$T/ok.safetensors" -a "$T/a.lora" -p "$T/k.pub" --receipt "$T/ok.safetensors.receipt" -o "$T/okr.safetensors"
expect 1 lora-unmerge -q "$T/wa.safetensors" -a "$T/a.lora" -p "$T/k.pub" --receipt "$T/wa.safetensors.receipt" -o "$T/war.safetensors"
expect_err "not the adapter's base"
nothing_left war
expect 0 lora-unmerge -q "$T/wa.safetensors" -a "$T/a.lora" -p "$T/k.pub" --receipt "$T/wa.safetensors.receipt" -o "$T/war.safetensors" --any-base
# without a receipt, a restore that matches the recorded identity is exact
# and says so (an untrained adapter: B = 0 changes nothing)
"$TOP_BUILDDIR/tests/mkfixture" llama "$T/un" --dtype BF16 --targets q_proj --untrained >/dev/null || fail "mkfixture"
expect 0 lora-pack create "$T/un/adapter" -s "$T/k.sec" --name u --task t --version 1.0.0 --base "$T/un/base" -o "$T/un.lora" -q
expect 0 lora-merge -q "$T/un/base" -a "$T/un.lora" -p "$T/k.pub" -o "$T/unm" --no-receipt
expect 0 lora-unmerge "$T/unm" -a "$T/un.lora" -p "$T/k.pub" -o "$T/unr" --json
expect_out '"exact": true'
expect_out '"may_differ": 0'
expect 0 lora-unmerge "$T/unm" -a "$T/un.lora" -p "$T/k.pub" -o "$T/unr2"
expect_err "restored exactly: they match the base identity"
# lora-eval: an archive packed against a base whose q_proj differs by one
# byte is refused on the real base, before any item is scored
M="$TOP_SRCDIR/tests/fixtures/models"
cp -r "$M/llama-base" "$T/lb"
chmod -R u+w "$T/lb"
f="$T/lb/model.safetensors"
n=$(od -An -tu8 -N8 "$f" | tr -d ' ')
q=$(dd if="$f" bs=1 skip=8 count="$n" 2>/dev/null |
    grep -o '"model.layers.0.self_attn.q_proj.weight":{[^}]*}' |
    sed 's/.*"data_offsets":\[\([0-9]*\),.*/\1/')
checks=$((checks + 1))
if [ -z "$q" ]; then
    fail "no q_proj offset in the llama fixture"
else
    printf '\125\125' | dd of="$f" bs=1 seek=$((8 + n + q + 6)) conv=notrunc 2>/dev/null
    expect 0 lora-pack create "$M/adapters/llama-classify-qv-r1" -s "$T/k.sec" --name c --task t \
        --version 1.0.0 --base "$T/lb" -o "$T/lb.lora" -q
    expect 1 lora-eval --model "$M/llama-base" -a "$T/lb.lora" -p "$T/k.pub" --data "$M/data/classify.jsonl" --limit 2
    expect_err "wrong base"
    expect 0 lora-eval --model "$M/llama-base" -a "$T/lb.lora" -p "$T/k.pub" --data "$M/data/classify.jsonl" --limit 2 --any-base
    expect_err "WARNING: --any-base"
    expect 0 lora-eval --model "$T/lb" -a "$T/lb.lora" -p "$T/k.pub" --data "$M/data/classify.jsonl" --limit 2
fi
# a plain folder: base_model_name_or_path against the base's config.json
mkdir "$T/named"
cp "$DR/base.safetensors" "$T/named/model.safetensors"
echo '{"_name_or_path": "someone/other-model", "architectures": ["LlamaForCausalLM"]}' > "$T/named/config.json"
expect 0 lora-merge -q "$T/named" -a "$DR/adapter" -o "$T/nm"
expect_err "trained on tiny-test-base, but the base's config.json names someone/other-model"
expect 0 lora-inspect --check --base "$T/named" "$DR/adapter"
expect_out "warning .*someone/other-model"
for same in /models/tiny-test-base/ org/tiny-test-base \
    /cache/hub/models--org--tiny-test-base/snapshots/0123abcd; do
    echo "{\"_name_or_path\": \"$same\"}" > "$T/named/config.json"
    rm -rf "$T/nm2"
    expect 0 lora-merge -q "$T/named" -a "$DR/adapter" -o "$T/nm2"
    checks=$((checks + 1))
    grep -q "warning" "$T/err" && fail "$same: a matching base name warned: $(cat "$T/err")"
done
echo '{"_name_or_path": "org/tiny-test-base-Instruct"}' > "$T/named/config.json"
expect 0 lora-merge -q "$T/named" -a "$DR/adapter" -o "$T/nm3"
expect_err "config.json names org/tiny-test-base-Instruct"
# a base name that is a local folder: its config.json against the base's
mkdir -p "$T/trained/ad"
echo '{"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "vocab_size": 32000}' > "$T/trained/config.json"
cp "$DR/adapter/adapter_model.safetensors" "$T/trained/ad/"
sed "s|\"tiny-test-base\"|\"$T/trained\"|" "$DR/adapter/adapter_config.json" > "$T/trained/ad/adapter_config.json"
echo '{"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "vocab_size": 32001}' > "$T/named/config.json"
expect 0 lora-merge -q "$T/named" -a "$T/trained/ad" -o "$T/nt"
expect_err "config.json differs from the base's \(vocab_size 32000 and 32001\)"
echo '{"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "vocab_size": 32000, "_name_or_path": "x"}' > "$T/named/config.json"
expect 0 lora-merge -q "$T/named" -a "$T/trained/ad" -o "$T/nt2"
checks=$((checks + 1))
grep -q "warning" "$T/err" && fail "the same config warned: $(cat "$T/err")"
# a base name that points at a FIFO named config.json: no hang, no warning
mkdir -p "$T/fifo/ad"
mkfifo "$T/fifo/config.json"
cp "$DR/adapter/adapter_model.safetensors" "$T/fifo/ad/"
sed "s|\"tiny-test-base\"|\"$T/fifo\"|" "$DR/adapter/adapter_config.json" > "$T/fifo/ad/adapter_config.json"
expect 0 timeout 60 lora-merge -q "$T/named" -a "$T/fifo/ad" -o "$T/nf"
# adapters made for different bases, combined
mkdir "$T/other"
cp "$DR/adapter/adapter_model.safetensors" "$T/other/"
sed 's/"tiny-test-base"/"another-base"/' "$DR/adapter/adapter_config.json" > "$T/other/adapter_config.json"
expect 0 lora-merge -q --force "$DR/base.safetensors" -a "$DR/adapter:0.5" -a "$T/other:0.5" -o "$T/two.safetensors"
expect_err "adapters made for different bases are combined"
# a task switch checks the new adapter against the base it restores
expect 0 lora-merge -q "$DR/base.safetensors" -a "$T/other" -o "$T/s1.safetensors"
expect 0 lora-merge -q "$T/s1.safetensors" --unmerge "$T/other" --receipt "$T/s1.safetensors.receipt" \
    -a "$T/a.lora" -p "$T/k.pub" -o "$T/s1b.safetensors"
expect 0 lora-merge -q "$T/wrong.safetensors" -a "$T/other" -o "$T/s2.safetensors"
expect 1 lora-merge -q "$T/s2.safetensors" --unmerge "$T/other" --receipt "$T/s2.safetensors.receipt" \
    -a "$T/a.lora" -p "$T/k.pub" -o "$T/s2b.safetensors"
expect_err "wrong base: .*the base this task switch restores has identity [0-9a-f]{64}"
nothing_left s2b
expect 0 lora-merge -q "$T/s2.safetensors" --unmerge "$T/other" --receipt "$T/s2.safetensors.receipt" \
    -a "$T/a.lora" -p "$T/k.pub" -o "$T/s2b.safetensors" --any-base
expect_err "WARNING: --any-base"

done_testing
