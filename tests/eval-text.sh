# tests/eval-text.sh - lora-eval on text: the committed text data set
# (tests/fixtures/text-eval) on the real tiny GPT-2 with the GPT-2
# tokenizer, --predictions (ids echoed, every key, atomic), the metrics
# in --json (null, never 0, without items) and the human report, --data
# from a pipe, --tokenizer, the hint for text without a tokenizer,
# --text perplexity (base and adapted), --max-new-tokens, and refusals.
# Values themselves are checked against PyTorch in check_eval_text and
# check_metrics; skipped without the shared fixtures.
. "$TOP_SRCDIR/tests/lib.sh"
skip_unless_fixtures
G="$FIXTURES/real/base-tiny-gpt2-e16"
TK="$FIXTURES/tokenizers/gpt2"
[ -d "$G" ] && [ -d "$TK" ] || { echo "SKIP: $G or $TK absent"; exit 77; }
command -v jq >/dev/null 2>&1 || { echo "SKIP: jq not installed"; exit 77; }
D="$TOP_SRCDIR/tests/fixtures/text-eval/data.jsonl"
jcheck() {
    f=$1; q=$2; shift 2
    checks=$((checks + 1))
    jq -e "$@" "$q" "$f" >/dev/null 2>&1 || { fail "$f: not ($q)"; head -c 2000 "$f" | sed 's/^/  /' >&2; }
}
# a model folder with its tokenizer, as the Hub ships it
mkdir "$T/gpt2"
cp "$G"/* "$TK"/tokenizer.json "$TK"/tokenizer_config.json "$T/gpt2/"

expect 0 lora-eval --model "$T/gpt2" --data "$D" --predictions "$T/p.jsonl" --json
cp "$T/out" "$T/r.json"
jcheck "$T/r.json" '.items == 12 and .choice_items == 7 and .generation_items == 5'
jcheck "$T/r.json" '[.accuracy, .exact_match, .bleu, .rouge1, .rouge2, .rougeL]
    | all(type == "number" and . >= 0 and . <= 1)'
jcheck "$T/r.json" '.nll > 0 and ((.perplexity - (.nll | exp)) | fabs) < 1e-6 * .perplexity'
checks=$((checks + 1))
[ "$(wc -l < "$T/p.jsonl")" -eq 12 ] || fail "predictions: $(wc -l < "$T/p.jsonl") lines, want 12"
jq -s . "$T/p.jsonl" > "$T/p.json" || fail "predictions are not JSON lines"
jcheck "$T/p.json" '[.[].id] == ["capital", 2, "sentiment", "straddle", "unicode", "mnli", "sum",
    "e2e", "sql", "short", "ids-prompt", "ids"]'
jcheck "$T/p.json" '[.[].line] == [range(1; 13)]'
jcheck "$T/p.json" 'all(.[] | select(.logprobs); (.predicted | type) == "number"
    and (.logprobs | length) >= 2 and (.correct | type) == "boolean" and .nll > 0)'
jcheck "$T/p.json" 'all(.[] | select(.text); (.ids | type) == "array" and (.target | type) == "string"
    and .nll_tokens > 0)'
# the report's accuracy and exact match are the predictions' own
jcheck "$T/p.json" '(([.[] | select(.logprobs) | select(.correct)] | length) / 7 - $r[0].accuracy | fabs) < 1e-9
    and (([.[] | select(.text) | select(.correct)] | length) / 5 - $r[0].exact_match | fabs) < 1e-9
    and ([.[] | select(.text) | .rouge1] | add / 5 - $r[0].rouge1 | fabs) < 1e-9' --slurpfile r "$T/r.json"
# --max-new-tokens 0: generation stops at the target's length
expect 0 lora-eval --model "$T/gpt2" --data "$D" --predictions "$T/p0.jsonl" --max-new-tokens 0 -q
jq -s . "$T/p0.jsonl" > "$T/p0.json"
jcheck "$T/p0.json" 'all(.[] | select(.text); (.ids | length) <= .nll_tokens)'

# human report: every metric named
expect 0 lora-eval --model "$T/gpt2" --data "$D"
for k in '^accuracy +0\.[0-9]{4} \([0-9]+/7\)' '^exact match +0\.[0-9]{4} \([0-9]+/5\)' '^BLEU ' \
    '^ROUGE-1 ' '^ROUGE-2 ' '^ROUGE-L ' '^mean NLL .*perplexity'; do
    expect_out "$k"
done
# multiple choice only: the generation metrics are null / "-"
head -n 6 "$D" > "$T/mc.jsonl"
expect 0 lora-eval --model "$T/gpt2" --data "$T/mc.jsonl" --json
jcheck "$T/out" '.exact_match == null and .bleu == null and .rouge1 == null and .rougeL == null
    and (.accuracy | type) == "number"'
expect 0 lora-eval --model "$T/gpt2" --data "$T/mc.jsonl"
expect_out '^BLEU +-$'

# --data from a pipe and a FIFO; --tokenizer with a model folder without one
expect 0 sh -c "cat '$D' | lora-eval --model '$G' --tokenizer '$TK' --data - --json"
jcheck "$T/out" '.items == 12 and .accuracy == $r[0].accuracy and .nll == $r[0].nll' --slurpfile r "$T/r.json"
mkfifo "$T/fifo"
cat "$D" > "$T/fifo" &
expect 0 lora-eval --model "$G" --tokenizer "$TK/tokenizer.json" --data "$T/fifo" --limit 3 --json
wait
jcheck "$T/out" '.items == 3'
# --predictions - writes to standard output
expect 0 lora-eval --model "$T/gpt2" --data "$T/mc.jsonl" --predictions - -q
checks=$((checks + 1))
[ "$(grep -c '"logprobs"' "$T/out")" -eq 6 ] || fail "--predictions - did not print 6 lines"

# text without a tokenizer: the hint names the line and what to do
expect 3 lora-eval --model "$G" --data "$D"
expect_err "data\.jsonl:1: text needs the model's tokenizer \(tokenizer\.json in .*, or --tokenizer PATH\)"
expect 3 lora-eval --model "$G" --tokenizer "$T/none" --data "$D"
expect_err '^lora-eval: '
# another model's tokenizer
LT="$FIXTURES/tokenizers/llama3"
if [ -d "$LT" ]; then
    expect 3 lora-eval --model "$G" --tokenizer "$LT" --data "$D"
    expect_err 'the tokenizer has 128256 ids, the model only 50257: it is not this model.s tokenizer'
    expect 3 lora-eval --model "$G" --tokenizer "$LT" --text "$TOP_SRCDIR/tests/fixtures/text-eval/text.txt"
    expect_err 'not this model.s tokenizer'
fi
# a bad line still fails with its number, and no predictions file appears
{ head -n 2 "$D"; printf '{"prompt":"x","choices":["a"],"label":1}\n'; } > "$T/bad.jsonl"
expect 3 lora-eval --model "$T/gpt2" --data "$T/bad.jsonl" --predictions "$T/bad-p.jsonl"
expect_err 'bad\.jsonl:3: "label" 1 is not a choice index'
checks=$((checks + 1))
[ -e "$T/bad-p.jsonl" ] && fail "a failed run wrote predictions"
# predictions into a folder that does not exist: I/O error, nothing left
expect 4 lora-eval --model "$T/gpt2" --data "$T/mc.jsonl" --predictions "$T/no/such/p.jsonl"
expect_err -- '--predictions'

# --text: perplexity, base and adapted
T2="$TOP_SRCDIR/tests/fixtures/text-eval/text.txt"
expect 0 lora-eval --model "$T/gpt2" --text "$T2" --context 64 --stride 16 --json
jcheck "$T/out" '.tokens == 165 and .scored_tokens == 164 and .context == 64 and .stride == 16
    and ((.base.nll - 10.832625913300062) | fabs) < 1e-4 and .adapted == null'
expect 0 sh -c "lora-eval --model '$T/gpt2' --text - < '$T2'"
expect_out '^base +NLL [0-9.]+ per token, perplexity [0-9.]+'
expect_out 'scored in [0-9]+ windows of 256 \(stride 128\)'
AD="$TOP_SRCDIR/tests/fixtures/text-eval/adapter"
expect 0 lora-eval --model "$T/gpt2" -a "$AD" --text "$T2" --context 64 --stride 16 --json
jcheck "$T/out" '((.base.nll - 10.832625913300062) | fabs) < 1e-4
    and ((.adapted.nll - 10.825117946638558) | fabs) < 1e-4'
# merged and unmerged agree on a text data set
expect 0 lora-eval --model "$T/gpt2" -a "$AD" --data "$D" --mode both --json
jcheck "$T/out" '.compare.agree == true and .items == 12'
printf 'x' > "$T/one.txt"
expect 3 lora-eval --model "$T/gpt2" --text "$T/one.txt"
expect_err 'nothing to score'
expect 2 lora-eval --model "$T/gpt2" --text "$T2" --context 64 --stride 65
expect_err 'stride'
expect 2 lora-eval --model "$T/gpt2" --text "$T2" --context 300
expect_err 'context 300 is not between 2 and the model.s 256 positions'
expect 2 lora-eval --model "$T/gpt2" --text "$T2" --data "$D"
expect 2 lora-eval --model "$T/gpt2" --data "$D" --stride 4
expect_err 'go with --text'
expect 2 lora-eval --model "$T/gpt2" --data "$D" --max-new-tokens -1
done_testing
