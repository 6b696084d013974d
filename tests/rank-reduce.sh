#!/bin/sh
# tests/rank-reduce.sh - lora-rank-reduce as a tool, on real adapters
# from the shared fixtures: exit codes, messages, the human and --json
# reports, outputs that load again, combinations, and nothing left
# behind when it fails.
. "$TOP_SRCDIR/tests/lib.sh"
skip_unless_fixtures
R=$FIXTURES/real
Q=$R/qwen2.5-0.5b-qv      # r=6 with rank_pattern, F32
O=$R/opt125m-bf16         # BF16, r=16
G=$R/gpt2-seqcls-r2       # modules_to_save
for a in "$Q" "$O" "$G"; do [ -d "$a" ] || { echo "SKIP: $a missing"; exit 77; }; done

# json_num FIELD: the first number after "FIELD": in $T/out
json_num() { grep -o "\"$1\": *[-0-9.eE+]*" "$T/out" | head -n 1 | sed 's/.*: *//'; }
# lt A B: A < B as numbers
lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 < b + 0) }'; }

# --- usage errors (2) ---
expect 0 lora-rank-reduce --help
expect_out "Usage: lora-rank-reduce"
expect 2 lora-rank-reduce
expect_err "^lora-rank-reduce: no adapter given"
expect 2 lora-rank-reduce "$Q" --rank 2
expect_err "no output folder"
expect 2 lora-rank-reduce "$Q" -o "$T/x"
expect_err "exactly one of --rank, --energy, --sv-ratio"
expect 2 lora-rank-reduce "$Q" -o "$T/x" --rank 2 --energy 0.9
expect_err "exactly one of"
expect 2 lora-rank-reduce "$Q" -o "$T/x" --energy 1.5
expect_err "energy 1.5: must be a number in \(0, 1\]"
expect 2 lora-rank-reduce "$Q" -o "$T/x" --energy 0
expect 2 lora-rank-reduce "$Q" -o "$T/x" --rank -1
expect_err "not a non-negative integer"
expect 2 lora-rank-reduce "$Q" -o "$T/x" --rank 2x
expect 2 lora-rank-reduce "$Q" -o "$T/x" --sv-ratio 0.5
expect 2 lora-rank-reduce "$Q" -o "$T/x" --rank 2 --max-rank 0
expect 2 lora-rank-reduce "$Q" -o "$T/x" --rank 0 --max-rank 3
expect 2 lora-rank-reduce "$Q" -o "$T/x" --frobnicate
[ -e "$T/x" ] && fail "usage error created the output"

# --- bad input (3) ---
expect 3 lora-rank-reduce "$T/nonexistent" -o "$T/x" --rank 2
expect_err "^lora-rank-reduce: "
mkdir "$T/empty"
expect 3 lora-rank-reduce "$T/empty" -o "$T/x" --rank 2
expect 3 lora-rank-reduce -a "$G" -a "$G" -o "$T/x" --rank 2
expect_err "modules_to_save"
[ -e "$T/x" ] && fail "failed run created the output"
ls "$T" | grep -q 'tmp-' && fail "temporary folder left behind"

# --- a fixed rank, human report ---
expect 0 lora-rank-reduce "$Q" -o "$T/q2" --rank 2
expect_out "^module +old rank +new rank +rel error"
expect_out "model\.layers\.0\.self_attn\.q_proj +[0-9]+ +2 +[0-9.e+-]+"
expect_out "^48 modules, parameters [0-9]+ -> [0-9]+, largest relative error"
[ -f "$T/q2/adapter_config.json" ] && [ -f "$T/q2/adapter_model.safetensors" ] ||
    fail "output folder incomplete"
grep -q '"r": 2' "$T/q2/adapter_config.json" || fail "config r is not 2"
grep -q '"lora_alpha": 2' "$T/q2/adapter_config.json" || fail "config lora_alpha is not 2"
grep -q '"use_rslora": false' "$T/q2/adapter_config.json" || fail "rslora not off"
grep -q '"base_model_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"' "$T/q2/adapter_config.json" ||
    fail "base model not carried over"
# the same again: OUT exists (2), unchanged; --force replaces it with the same bytes
cp "$T/q2/adapter_model.safetensors" "$T/q2.st"
expect 2 lora-rank-reduce "$Q" -o "$T/q2" --rank 2
expect_err "already exists"
expect 0 lora-rank-reduce "$Q" -o "$T/q2" --rank 2 --force -q
[ -s "$T/out" ] && fail "-q printed a report"
cmp -s "$T/q2.st" "$T/q2/adapter_model.safetensors" || fail "same inputs, different bytes"

# the output is an adapter: lora-inspect finds nothing wrong with it
expect 0 lora-inspect --check --strict "$T/q2"
# it loads and reduces again, exactly at its own rank
expect 0 lora-rank-reduce "$T/q2" -o "$T/q2b" --rank 2 --json
e=$(json_num max_rel_error)
lt "$e" 1e-6 || fail "re-reducing a rank-2 adapter to rank 2 lost $e"

# --- energy: F = 1 keeps everything (error ~ 0), ranks per module in patterns ---
expect 0 lora-rank-reduce "$O" -o "$T/o1" --energy 1 --json
expect_out '"rule": "energy"'
e=$(json_num max_rel_error)
lt "$e" 1e-6 || fail "--energy 1 lost $e"
expect 0 lora-rank-reduce "$O" -o "$T/o9" --energy 0.9 --max-rank 5 --json
expect_out '"new_rank": [1-5],'
grep -q '"new_rank": [6-9]' "$T/out" && fail "--max-rank 5 exceeded"
e=$(json_num max_rel_error)
lt 0 "$e" || fail "--energy 0.9 reported no error"
expect 0 lora-inspect --check --strict --json "$T/o9"
# BF16 in, BF16 out
grep -q '"dtype":"BF16"' "$T/o9/adapter_model.safetensors" || fail "dtype not kept"

# --- sv-ratio ---
expect 0 lora-rank-reduce "$Q" -o "$T/qr" --sv-ratio 1 --json
expect_out '"rule": "sv-ratio"'
expect_out '"new_rank": 1,'

# --- combination: 0.5·X + 0.5·X = X; at X's rank the result is exact ---
expect 0 lora-rank-reduce -a "$O:0.5" -a "$O:0.5" -o "$T/oo" --rank 16 --json
expect_out '"old_rank": 32,'
expect_out '"sources": 2'
e=$(json_num max_rel_error)
lt "$e" 1e-6 || fail "0.5·X + 0.5·X at rank 16 lost $e"
# exact concatenation (--rank 0): rank is the sum
expect 0 lora-rank-reduce -a "$O" -a "$O:-1" -o "$T/cat" --rank 0 --json
expect_out '"rule": "exact"'
expect_out '"new_rank": 32,'
# modules only one input adapts: disjoint adapters are united
expect 0 lora-rank-reduce -a "$Q" -a "$O" -o "$T/union" --rank 0 --json
expect_out '"name": "model.decoder.layers.0.self_attn.q_proj"'
expect_out '"name": "model.layers.0.self_attn.q_proj"'
expect_out '"sources": 1'
grep -q '"sources": 2' "$T/out" && fail "disjoint adapters share a module"
expect 0 lora-inspect --check --strict "$T/union"
expect 0 lora-inspect --check --strict "$T/oo"

# --- combination methods (issue 16.5) ---
expect 2 lora-rank-reduce -a "$Q" -a "$Q" -o "$T/x" --rank 2 --method bogus
expect_err "method bogus: not one of sum, ties, dare_linear, dare_ties, magnitude_prune"
expect 2 lora-rank-reduce -a "$Q" -a "$Q" -o "$T/x" --rank 2 --method ties
expect_err "method ties needs --density"
expect 2 lora-rank-reduce -a "$Q" -a "$Q" -o "$T/x" --rank 2 --density 0.5
expect_err "density needs --method"
expect 2 lora-rank-reduce -a "$Q" -o "$T/x" --rank 2 --method ties --density 0
expect_err "density 0: must be a number > 0"
expect 2 lora-rank-reduce -a "$Q" -o "$T/x" --rank 2 --method dare_linear --density 0.5 \
    --majority-sign total
expect_err "majority-sign applies to"
expect 2 lora-rank-reduce -a "$Q" -o "$T/x" --rank 2 --method ties --density 0.5 --seed 3
expect_err "seed applies to"
expect 2 lora-rank-reduce -a "$Q" -o "$T/x" --rank 2 --method ties --density 0.5 \
    --majority-sign most
expect_err "not total or frequency"
[ -e "$T/x" ] && fail "usage error created the output"

# small generated adapters (the dense SVD costs out*in*min(out,in) per module)
"$TOP_BUILDDIR/tests/mkfixture" llama "$T/g1" --hidden 32 --intermediate 48 --rank 4 \
    --seed 11 --no-base >/dev/null || fail "mkfixture"
"$TOP_BUILDDIR/tests/mkfixture" llama "$T/g2" --hidden 32 --intermediate 48 --rank 4 \
    --seed 12 --no-base >/dev/null || fail "mkfixture"
G1=$T/g1/adapter G2=$T/g2/adapter
expect 0 lora-rank-reduce -a "$G1" -a "$G2:0.5" --method ties --density 0.3 -o "$T/ties" \
    --rank 4 --json
expect_out '"method": "ties"'
expect_out '"density": 0\.(3|2999)'
expect_out '"majority_sign": "total"'
expect_out '"old_rank": 8,'
expect_out '"new_rank": 4,'
e=$(json_num max_rel_error)
lt 0 "$e" || fail "a pruned combination truncated to rank 4 reported no error"
expect 0 lora-inspect --check --strict "$T/ties"
# no truncation (--rank 0): every singular value of the dense update
expect 0 lora-rank-reduce -a "$G1" -a "$G2" --method magnitude_prune --density 0.5 \
    -o "$T/mp" --rank 0 --json
expect_out '"rule": "exact"'
expect_out '"new_rank": 32,'
e=$(json_num max_rel_error)
lt "$e" 1e-12 || fail "--rank 0 lost $e"
# DARE: the same seed gives the same bytes, another seed other bytes
expect 0 lora-rank-reduce -a "$G1" -a "$G2" --method dare_ties --density 0.5 --seed 7 \
    --majority-sign frequency -o "$T/d7" --rank 4 --json
expect_out '"seed": 7'
expect_out '"majority_sign": "frequency"'
expect 0 lora-rank-reduce -a "$G1" -a "$G2" --method dare_ties --density 0.5 --seed 7 \
    --majority-sign frequency -o "$T/d7b" --rank 4 -q
cmp -s "$T/d7/adapter_model.safetensors" "$T/d7b/adapter_model.safetensors" ||
    fail "same seed, different bytes"
expect 0 lora-rank-reduce -a "$G1" -a "$G2" --method dare_ties --density 0.5 --seed 8 \
    --majority-sign frequency -o "$T/d8" --rank 4 -q
cmp -s "$T/d7/adapter_model.safetensors" "$T/d8/adapter_model.safetensors" &&
    fail "another seed, same bytes"
# D >= 1 prunes nothing: dare_linear is then the exact sum
expect 0 lora-rank-reduce -a "$G1" -a "$G2" --method dare_linear --density 1 -o "$T/dl1" \
    --rank 8 --json
e=$(json_num max_rel_error)
lt "$e" 1e-12 || fail "dare_linear with D = 1 at the summed rank lost $e"
ls "$T" | grep -q 'tmp-' && fail "temporary folder left behind"

done_testing
