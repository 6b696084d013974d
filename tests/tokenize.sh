# tests/tokenize.sh - lora-eval --tokenize / --detokenize on the real
# tokenizers of the shared fixtures (ids as Hugging Face tokenizers gives
# them, llama.cpp's test vectors) and on the committed synthetic ones:
# options, standard input, echoed keys, refusals and exit codes.
. "$TOP_SRCDIR/tests/lib.sh"
skip_unless_fixtures
TK="$FIXTURES/tokenizers"
[ -d "$TK/gpt2" ] || { echo "SKIP: $TK absent"; exit 77; }
S="$TOP_SRCDIR/tests/fixtures/tokenizers"

# every case, from a file and from standard input, --tokenizer and --model
for t in gpt2 llama3; do
    expect 0 lora-eval --tokenize --no-special --tokenizer "$TK/$t" --data "$TK/$t/cases.jsonl"
    jq -c .ids "$TK/$t/cases.jsonl" > "$T/want"
    jq -c .ids "$T/out" > "$T/got"
    checks=$((checks + 1))
    cmp -s "$T/want" "$T/got" || fail "$t: ids differ from cases.jsonl"
    [ "$(wc -l < "$T/got")" -eq 46 ] || fail "$t: not 46 lines"
    expect 0 sh -c "lora-eval --tokenize --no-special --model '$TK/$t' --data - < '$TK/$t/cases.jsonl'"
    jq -c .ids "$T/out" | cmp -s - "$T/want" || fail "$t: stdin differs"
done
jq -c '{text}' "$S/qwen2-cases.jsonl" > "$T/q.jsonl"
expect 0 lora-eval --tokenize --tokenizer "$TK/qwen2/tokenizer.json" --data "$T/q.jsonl"
jq -c .ids "$S/qwen2-cases.jsonl" > "$T/want"
jq -c .ids "$T/out" | cmp -s - "$T/want" || fail "qwen2: ids differ"
checks=$((checks + 1))

# special tokens: Llama 3 adds <|begin_of_text|>, --no-special does not;
# other keys are echoed, "text" is replaced
printf '{"id":"x1","text":"Hello world","n":[1,2]}\n' > "$T/h.jsonl"
expect 0 lora-eval --tokenize --tokenizer "$TK/llama3" --data "$T/h.jsonl"
expect_out '^\{"ids":\[128000,9906,1917\],"id":"x1","n":\[1,2\]\}$'
expect 0 lora-eval --tokenize --no-special --tokenizer "$TK/llama3" --data "$T/h.jsonl"
expect_out '^\{"ids":\[9906,1917\],"id":"x1","n":\[1,2\]\}$'

# detokenize: back to the text; --no-special drops <|begin_of_text|>
printf '{"ids":[128000,9906,1917],"id":7}\n' > "$T/i.jsonl"
expect 0 lora-eval --detokenize --tokenizer "$TK/llama3" --data "$T/i.jsonl"
expect_out '^\{"text":"<\|begin_of_text\|>Hello world","id":7\}$'
expect 0 lora-eval --detokenize --no-special --tokenizer "$TK/llama3" --data "$T/i.jsonl"
expect_out '^\{"text":"Hello world","id":7\}$'
# round trip of every gpt2 case
expect 0 sh -c "lora-eval --tokenize --no-special --tokenizer '$TK/gpt2' --data '$TK/gpt2/cases.jsonl' |
    lora-eval --detokenize --tokenizer '$TK/gpt2' --data -"
jq -c .text "$T/out" > "$T/got"
jq -c .text "$TK/gpt2/cases.jsonl" | cmp -s - "$T/got" || fail "gpt2 round trip"
checks=$((checks + 1))

# a synthetic SentencePiece-style tokenizer: BOS from the template
printf '{"text":"the fox"}\n' > "$T/f.jsonl"
expect 0 lora-eval --tokenize --tokenizer "$S/synth-sp" --data "$T/f.jsonl"
expect_out '^\{"ids":\[1,'

# refusals: usage (2), bad input (3) with nothing on stdout
expect 2 lora-eval --tokenize --data "$T/h.jsonl"
expect_err 'need --tokenizer PATH or --model DIR'
expect 2 lora-eval --tokenize --detokenize --tokenizer "$TK/gpt2"
expect 2 lora-eval --tokenize --tokenizer "$TK/gpt2" --limit 3
expect 3 lora-eval --tokenize --tokenizer "$T/nonexistent" --data "$T/h.jsonl"
printf '{"text":"ok"}\n{"text":"bad \377"}\n' > "$T/bad.jsonl"
expect 3 lora-eval --tokenize --tokenizer "$TK/gpt2" --data "$T/bad.jsonl"
expect_err 'bad.jsonl:2: .*(UTF-8|byte 0xff)'
checks=$((checks + 1)); [ ! -s "$T/out" ] || fail "output written for a bad input"
printf '{"ids":[50257]}\n' > "$T/badid.jsonl"
expect 3 lora-eval --detokenize --tokenizer "$TK/gpt2" --data "$T/badid.jsonl"
expect_err 'ids\[0\] is not a token id of this tokenizer \(0\.\.50256\)'
mkdir "$T/wp"
jq '.model.type = "WordPiece"' "$S/synth-sp/tokenizer.json" > "$T/wp/tokenizer.json"
expect 3 lora-eval --tokenize --tokenizer "$T/wp" --data "$T/h.jsonl"
expect_err 'model WordPiece is not supported'
jq '.pre_tokenizer = {"type": "BertPreTokenizer"}' "$S/synth-sp/tokenizer.json" > "$T/wp/tokenizer.json"
expect 3 lora-eval --tokenize --tokenizer "$T/wp" --data "$T/h.jsonl"
expect_err 'pre-tokenizer BertPreTokenizer is not supported'
head -c 5000 "$S/synth-sp/tokenizer.json" > "$T/wp/tokenizer.json"
expect 3 lora-eval --tokenize --tokenizer "$T/wp" --data "$T/h.jsonl"
expect_err 'tokenizer.json: line'
done_testing
