# tests/eval-real.sh - lora-eval on a real Hugging Face checkpoint from
# the shared fixtures: the tiny trained GPT-2 (vocab 50257, keys with
# "transformer.", tied head) loads and runs; skipped without fixtures.
. "$TOP_SRCDIR/tests/lib.sh"
skip_unless_fixtures
G="$FIXTURES/real/base-tiny-gpt2-e16"
[ -d "$G" ] || { echo "SKIP: $G absent"; exit 77; }
cat > "$T/d.jsonl" <<'JSONL'
{"prompt":[464,3290,318],"choices":[[257],[50256]],"label":0}
{"prompt":[15496,11,995],"target":[13,198]}
{"prompt":[50256],"choices":[[1169,318],[464]],"label":1}
JSONL
expect 0 lora-eval --model "$G" --data "$T/d.jsonl" --json
expect_out '"architecture": "GPT2LMHeadModel"'
expect_out '"items": 3,'
expect_out '"tokens": [1-9]'
grep -q '"mean_nll": [0-9]' "$T/out" || fail "no finite mean_nll"
checks=$((checks + 1))
printf '{"prompt":[50257],"target":[1]}\n' > "$T/bad.jsonl"
expect 3 lora-eval --model "$G" --data "$T/bad.jsonl"
expect_err 'outside the vocabulary \(0\.\.50256\)'
done_testing
