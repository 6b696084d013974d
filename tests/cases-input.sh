#!/bin/sh
# tests/cases-input.sh - the cases of ../shared/cases about inputs, as
# tests with their right results (copies in tests/fixtures/cases/):
#  - gguf-input: a folder holding only a GGUF file, GGUF bytes under
#    adapter_model.safetensors and a PyTorch zip are named as what they
#    are (exit 3), never "header length 14064895815"; a GGUF model, now a
#    base, is merged into a .gguf only, and one without head counts is
#    refused saying so;
#  - mts-head-not-in-base: a saved head the base lacks is refused naming
#    it, nothing written; with a head in the base, the saved one replaces it;
#  - tied-lm-head: an lm_head update on a GPT-2 with tied embeddings is
#    evaluated (the head alone, merged and unmerged agreeing); --check
#    against that base says that the head is tied; lora-merge of a folder
#    unties it (lm_head.weight, tie_word_embeddings false) with a note,
#    of a single file refuses;
#  - issue 20.11: a config.json declaring fewer layers than the
#    checkpoint holds is refused by lora-eval naming both counts.
. "$TOP_SRCDIR/tests/lib.sh"
C=$TOP_SRCDIR/tests/fixtures/cases
M=$TOP_SRCDIR/tests/fixtures/models

# --- gguf-input ---------------------------------------------------------
G=$C/gguf-input
# a GGUF model is a base now (issue 17): merged into a .gguf file only, and
# this one, without head counts, cannot have its q rows permuted: said so
expect 2 lora-merge "$G/model.gguf" -a "$G/adapter" -o "$T/m.safetensors"
expect_err '^lora-merge: .*m\.safetensors: the input is a GGUF model, and so is the output'
expect 3 lora-merge "$G/model.gguf" -a "$G/adapter" -o "$T/m.gguf"
expect_err 'model\.gguf has no usable llama\.attention\.head_count'
checks=$((checks + 1))
[ ! -e "$T/m.safetensors" ] && [ ! -e "$T/m.gguf" ] || fail "gguf-input: an output was written"
expect 3 lora-merge "$G/base" -a "$G/adapter" -o "$T/m.safetensors"
expect_err 'it holds model\.gguf, a GGUF file'
expect 3 lora-merge "$G/pytorch_model.bin" -a "$G/adapter" -o "$T/m.safetensors"
expect_err 'this is a PyTorch checkpoint .*convert it to safetensors'
expect 3 lora-inspect "$G/gguf-adapter"
expect_err 'adapter_model\.safetensors: not a safetensors file: this is a GGUF file'
checks=$((checks + 1))
grep -q 'header length' "$T/err" && fail "gguf-input: a header length is reported"
expect 3 lora-eval --model "$G/base" --data "$M/data/reverse.jsonl"
expect_err 'GGUF'

# --- mts-head-not-in-base -----------------------------------------------
H=$C/mts-head-not-in-base
expect 3 lora-merge "$H/base.safetensors" -a "$H/adapter" -o "$T/h.safetensors"
expect_err 'saved tensor score\.weight \[5, 8\] \(modules_to_save\): the base has no such tensor'
expect_err 'use a base that has score\.weight'
checks=$((checks + 1))
[ ! -e "$T/h.safetensors" ] || fail "mts-head-not-in-base: an output was written"
expect 1 lora-inspect --check --base "$H/base.safetensors" "$H/adapter"
expect_out 'would drop what the adapter trained'
expect 0 lora-merge --no-receipt "$H/base-with-score.safetensors" -a "$H/adapter" -o "$T/h.safetensors"
# (that the saved head replaces the base's, value for value, is checked
# by check_adapter's test_seqcls_implicit)
expect 0 lora-inspect --check --base "$T/h.safetensors" "$H/adapter"

# --- tied-lm-head -------------------------------------------------------
A=$C/tied-lm-head/adapter
expect 0 lora-eval --model "$M/gpt2-base" -a "$A" --data "$M/data/reverse.jsonl" --mode both --json
expect_err 'head is tied to its input embeddings; the update is applied to the head alone'
expect_out '"disagreements": 0'
cp "$T/out" "$T/tied.json"
expect 0 lora-eval --model "$M/gpt2-base" --data "$M/data/reverse.jsonl" --json
checks=$((checks + 1))
a=$(sed -n 's/.*"mean_nll": \([0-9.e+-]*\).*/\1/p' "$T/tied.json" | head -n 1)
b=$(sed -n 's/.*"mean_nll": \([0-9.e+-]*\).*/\1/p' "$T/out" | head -n 1)
[ -n "$a" ] && [ "$a" != "$b" ] || fail "tied-lm-head: the adapter changes nothing ($a, $b)"
expect 1 lora-inspect --check --base "$M/gpt2-base" "$A"
expect_out 'lm_head\.weight: its output head is tied to the input embeddings \(wte\.weight'
# a merge unties: lm_head.weight = wte + ΔW beside the untouched wte, and
# config.json says tie_word_embeddings false (else transformers would tie
# the head back on load); the merged folder's NLL is the in-memory merge's
expect 0 lora-merge --no-receipt "$M/gpt2-base" -a "$A" -o "$T/tm"
expect_err 'note: the base.s head was tied to its input embeddings'
checks=$((checks + 1))
grep -q '"tie_word_embeddings": false' "$T/tm/config.json" || fail "tied-lm-head: config.json still tied"
expect 0 lora-eval --model "$M/gpt2-base" -a "$A" --data "$M/data/reverse.jsonl" --mode merged --json
a=$(sed -n 's/.*"mean_nll": \([0-9.e+-]*\).*/\1/p' "$T/out" | head -n 1)
expect 0 lora-eval --model "$T/tm" --data "$M/data/reverse.jsonl" --json
b=$(sed -n 's/.*"mean_nll": \([0-9.e+-]*\).*/\1/p' "$T/out" | head -n 1)
checks=$((checks + 1))
[ -n "$a" ] && [ "$a" = "$b" ] || fail "tied-lm-head: merged folder NLL $b, in-memory merge $a"
# with its receipt, the untied output cannot be restored yet (the base's
# kept layout has no lm_head.weight): refused, nothing written
expect 0 lora-merge "$M/gpt2-base" -a "$A" -o "$T/tr"
expect 3 lora-unmerge "$T/tr" -a "$A" -r "$T/tr.receipt" -o "$T/back"
checks=$((checks + 1))
[ ! -e "$T/back" ] || fail "tied-lm-head: an unmerge output was written"
# a single file has no config.json to untie: refused, nothing written
expect 3 lora-merge "$M/gpt2-base/model.safetensors" -a "$A" -o "$T/tm.safetensors"
expect_err 'tied to the input embeddings \(wte\.weight\); merging the update unties the head'
checks=$((checks + 1))
[ ! -e "$T/tm.safetensors" ] || fail "tied-lm-head: a single-file output was written"

# --- issue 20.11: fewer layers declared than held -------------------------
mkdir "$T/short"
cp "$M/llama-base/model.safetensors" "$T/short/"
sed 's/"num_hidden_layers": 2/"num_hidden_layers": 1/' "$M/llama-base/config.json" >"$T/short/config.json"
expect 3 lora-eval --model "$T/short" --data "$M/data/reverse.jsonl"
expect_err 'config\.json declares 1 layers \(num_hidden_layers\) but the checkpoint holds 2'
done_testing
