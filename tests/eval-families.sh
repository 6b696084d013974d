#!/bin/sh
# tests/eval-families.sh - lora-eval end to end on the tiny model of every
# family (tests/fixtures/make-families.py) with its adapter on attention
# and MLP weights: merged and unmerged agree on every prediction, and a
# multiple-choice set past Mistral's sliding window runs (a window limits
# attention, not the sequence); an unknown architecture exits 3 naming it
# and the supported ones.
. "$TOP_SRCDIR/tests/lib.sh"
M="$TOP_SRCDIR/tests/fixtures/models"
cat > "$T/d.jsonl" <<'JSONL'
{"prompt":[0,1,9,14,20,11,7],"choices":[[9],[14],[20]],"label":0}
{"prompt":[0,2,12,8,23,17,7,17,23,8,12,0,3,9,9,31,2,18,24,5,6],"choices":[[8],[12]],"label":1}
{"prompt":[0,3,8,11,15],"target":[22,19,10]}
JSONL
for fam in qwen3-random mistral-window opt-random opt-postnorm phi-random neox-random \
    neox-sequential gemma2-random gemma3-random gemma3-cg phi3-random phi3-longrope; do
    expect 0 lora-eval --model "$M/$fam" -a "$M/adapters/$fam-lora" --data "$T/d.jsonl" \
        --mode both --json
    expect_out '"agree": true'
    expect_out '"items": 3,'
done
mkdir -p "$T/unknown"
printf '{"architectures":["MambaForCausalLM"]}\n' > "$T/unknown/config.json"
printf '\010\000\000\000\000\000\000\000{}      ' > "$T/unknown/model.safetensors"
expect 3 lora-eval --model "$T/unknown" --data "$T/d.jsonl"
expect_err 'architecture MambaForCausalLM is not supported \(GPT2LMHeadModel, .*GPTNeoXForCausalLM, .*Phi3ForCausalLM are\)'
done_testing
