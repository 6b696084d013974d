# tests/eval.sh - lora-eval as a tool: accuracy and exit codes, merged
# against unmerged, --check-recovery, --json, and bad inputs (exit 2/3
# with a message naming the problem).  Uses the committed fixtures under
# tests/fixtures/models (made by make-models.py).
. "$TOP_SRCDIR/tests/lib.sh"

M="$TOP_SRCDIR/tests/fixtures/models"
[ -d "$M/gpt2-base" ] || { echo "FAIL: $M missing" >&2; exit 1; }

# the base cannot reverse; the adapter can
expect 0 lora-eval --model "$M/gpt2-base" --data "$M/data/reverse.jsonl"
expect_out '^exact match +0\.0[0-5]'
expect 1 lora-eval --model "$M/gpt2-base" --data "$M/data/reverse.jsonl" --min-accuracy 0.5
expect_err '^lora-eval: accuracy 0\.0[0-9]+ is below --min-accuracy 0\.5000'
expect 0 lora-eval --model "$M/gpt2-base" -a "$M/adapters/gpt2-reverse-cattn-r4" \
    --data "$M/data/reverse.jsonl" --min-accuracy 0.9
expect_out '^exact match +(0\.9[0-9]|1\.0)'
expect_out 'adapter .*2 weights adapted, unmerged'

# merged and unmerged agree (LLaMA, grouped KV heads, all four projections)
expect 0 lora-eval --model "$M/llama-base" -a "$M/adapters/llama-classify-qkvo-r4" \
    --data "$M/data/classify.jsonl" --mode both
expect_out 'every prediction agrees'
expect_out 'items +100 \(100 multiple choice, 0 generation\)'
expect 0 lora-eval --model "$M/llama-base-bf16" -a "$M/adapters/llama-reverse-qv-r2" \
    --data "$M/data/reverse.jsonl" --mode both --json -j 2
expect_out '"agree": true'
expect_out '"mode": "merged"'
expect_out '"against": "unmerged"'
expect_out '"generation_items": 100'
expect_out '"passed": true'

# --limit, stdin
expect 0 sh -c "lora-eval --model '$M/gpt2-base' --data - --limit 7 --json < '$M/data/classify.jsonl'"
expect_out '"items": 7,'

# token-id data: "id" and unknown keys kept, predictions as JSON lines
# (the generated ids in decimal are the text the metrics compare)
printf '{"id":"r1","prompt":[0,4,9,10,11,12,1],"target":[12,11,10,9],"note":"kept"}\n{"id":[1,2],"prompt":[0,5,8],"choices":[[8],[9]],"label":0}\n' > "$T/ids.jsonl"
expect 0 lora-eval --model "$M/gpt2-base" -a "$M/adapters/gpt2-reverse-cattn-r4" \
    --data "$T/ids.jsonl" --predictions "$T/p.jsonl" --json
expect_out '"exact_match": 1'
expect_out '"bleu": (null|0|1)'
checks=$((checks + 1))
grep -q '^{"id":"r1","line":1,"text":"12 11 10 9","ids":\[12,11,10,9\],"target":"12 11 10 9",.*"correct":true' \
    "$T/p.jsonl" || fail "prediction of line 1: $(head -n 1 "$T/p.jsonl")"
checks=$((checks + 1))
grep -q '^{"id":\[1,2\],"line":2,"predicted":[01],"label":0,"logprobs":\[-[0-9.e-]*,-[0-9.e-]*\],' \
    "$T/p.jsonl" || fail "prediction of line 2: $(sed -n 2p "$T/p.jsonl")"
# text with a model folder that has no tokenizer: the hint
printf '{"prompt":[1],"target":[2]}\n{"prompt":"Hello","target":" world"}\n' > "$T/text.jsonl"
expect 3 lora-eval --model "$M/gpt2-base" --data "$T/text.jsonl"
expect_err "text\.jsonl:2: text needs the model's tokenizer \(tokenizer\.json in "
expect 3 lora-eval --model "$M/gpt2-base" --text "$T/text.jsonl"
expect_err "text needs the model's tokenizer"

# exact recovery, F32 and BF16 bases
expect 0 lora-eval --check-recovery --model "$M/llama-base" -a "$M/adapters/llama-reverse-qkvo-r8"
expect_out '^total 24576/24576 elements exact over 8 tensors'
expect 0 lora-eval --check-recovery --model "$M/gpt2-base-bf16" \
    -a "$M/adapters/gpt2-classify-cattn-cproj-r1" --json
expect_out '"all_exact": true'

# an adapter from a signed .lora archive (lora-pack), verified on open
if [ -x "$TOP_BUILDDIR/lora-pack" ]; then
    expect 0 lora-pack keygen -W -s "$T/k.sec" -p "$T/k.pub"
    expect 0 lora-pack create "$M/adapters/gpt2-classify-cattn-r4" -s "$T/k.sec" --name cls \
        --task classify --version 1.0.0 -o "$T/cls.lora"
    expect 0 lora-eval --model "$M/gpt2-base" -a "$T/cls.lora" -p "$T/k.pub" \
        --data "$M/data/classify.jsonl" --mode both --min-accuracy 0.9
    expect_out 'every prediction agrees'
    expect 0 lora-pack keygen -W -s "$T/o.sec" -p "$T/o.pub"
    expect 1 lora-eval --model "$M/gpt2-base" -a "$T/cls.lora" -p "$T/o.pub" \
        --data "$M/data/classify.jsonl"
    expect_err '^lora-eval: '
fi

# bad inputs: exit 3 naming the problem
printf '{"prompt":[1],"target":[2]}\n{"prompt":[1],"target":[32]}\n' > "$T/bad.jsonl"
expect 3 lora-eval --model "$M/gpt2-base" --data "$T/bad.jsonl"
expect_err '^lora-eval: .*bad\.jsonl:2: target\[0\] = 32 is outside the vocabulary \(0\.\.31\)'
printf '{"prompt":[1],"target":[2]}\n{"prompt":[1],"choices":[[1]],"label":3}\n' > "$T/bad.jsonl"
expect 3 lora-eval --model "$M/gpt2-base" --data "$T/bad.jsonl"
expect_err 'bad\.jsonl:2: "label" 3 is not a choice index'
printf '{"prompt":[1],"target":[2]' > "$T/bad.jsonl"
expect 3 lora-eval --model "$M/gpt2-base" --data "$T/bad.jsonl"
expect_err 'bad\.jsonl:1: not JSON'
# longer than the model's 32 positions
printf '{"prompt":[%s1],"target":[2]}\n' "$(yes 1, | head -n 40 | tr -d '\n')" > "$T/long.jsonl"
expect 3 lora-eval --model "$M/gpt2-base" --data "$T/long.jsonl"
expect_err 'line 1: 42 tokens, more than the model.s 32 positions'
mkdir "$T/bert"
printf '{"architectures":["BertForMaskedLM"],"model_type":"bert"}\n' > "$T/bert/config.json"
cp "$M/gpt2-base/model.safetensors" "$T/bert/"
expect 3 lora-eval --model "$T/bert" --data "$M/data/reverse.jsonl"
expect_err 'architecture BertForMaskedLM is not supported'
expect 3 lora-eval --model "$M/gpt2-base" -a "$M/adapters/llama-reverse-qv-r1" \
    --data "$M/data/reverse.jsonl"
expect_err '^lora-eval: '
expect 3 lora-eval --model "$T/nonexistent" --data "$M/data/reverse.jsonl"

# usage errors
expect 2 lora-eval --data "$M/data/reverse.jsonl"
expect_err 'model DIR is required'
expect 2 lora-eval --model "$M/gpt2-base"
expect 2 lora-eval --model "$M/gpt2-base" --data "$M/data/reverse.jsonl" --mode both
expect_err 'needs an adapter'
expect 2 lora-eval --model "$M/gpt2-base" -a x --data "$M/data/reverse.jsonl" --mode sideways
expect 2 lora-eval --model "$M/gpt2-base" --data "$M/data/reverse.jsonl" --min-accuracy 2
expect 2 lora-eval --model "$M/gpt2-base" --data "$M/data/reverse.jsonl" --limit 0
expect 2 lora-eval --model "$M/gpt2-base" --data "$M/data/reverse.jsonl" -j 0
expect 2 lora-eval --check-recovery --model "$M/gpt2-base"
expect 2 lora-eval --model "$M/gpt2-base" --data "$M/data/reverse.jsonl" extra
expect 2 lora-eval --model "$M/gpt2-base" --data "$M/data/reverse.jsonl" --context 8
expect 2 lora-eval --model "$M/gpt2-base" --text "$M/data/reverse.jsonl" --limit 3
expect 2 lora-eval --model "$M/gpt2-base" --data "$M/data/reverse.jsonl" --max-new-tokens x
expect 2 lora-eval --model "$M/gpt2-base" --data "$M/data/reverse.jsonl" --predictions - --json
expect_err 'both write standard output'
done_testing
