#!/bin/sh
# tests/eval-table.sh - for `make demo`: a table like Table 6 of the LoRA
# paper for the bundled fixtures: accuracy of the tiny GPT-2 and LLaMA
# bases and of their adapters by rank r and by the set of weights
# adapted, each adapter merged and unmerged (they must agree).
# Usage: tests/eval-table.sh [BUILD_DIR] [SOURCE_DIR]
set -eu
B=${1:-.}
S=${2:-$(cd "$(dirname "$0")/.." && pwd)}
M="$S/tests/fixtures/models"
EVAL="$B/lora-eval"
acc() {  # accuracy (exact match for generation), marked with ! when merged and unmerged disagree
    out=$("$EVAL" "$@" --json) || [ $? -eq 1 ]
    a=$(printf '%s\n' "$out" | sed -n 's/.*"accuracy": \([0-9.][0-9.]*\).*/\1/p')
    [ -n "$a" ] || a=$(printf '%s\n' "$out" | sed -n 's/.*"exact_match": \([0-9.][0-9.]*\).*/\1/p')
    ag=$(printf '%s\n' "$out" | sed -n 's/.*"agree": \(true\|false\).*/\1/p')
    printf '%.2f%s' "$a" "$([ "$ag" = false ] && echo '!' || echo ' ')"
}
echo "Accuracy on the fixture tasks (100 items each; reverse: greedy generation"
echo "must match exactly; classify: 2-way multiple choice, chance 0.50)."
echo "Adapters evaluated merged and compared with unmerged ('!' = disagreement)."
echo
printf '%-6s %-9s %-22s %6s %6s %6s %6s %6s\n' model task "weights adapted" base r=1 r=2 r=4 r=8
for arch in gpt2 llama; do
    if [ $arch = gpt2 ]; then sets="cattn cattn-cproj"; else sets="qv qkvo"; fi
    for task in reverse classify; do
        base=$(acc --model "$M/$arch-base" --data "$M/data/$task.jsonl")
        for set in $sets; do
            case $set in
                cattn) w="c_attn (Wq,Wk,Wv)" ;;
                cattn-cproj) w="c_attn+c_proj (+Wo)" ;;
                qv) w="Wq,Wv" ;;
                qkvo) w="Wq,Wk,Wv,Wo" ;;
            esac
            line=$(printf '%-6s %-9s %-22s %6s' $arch $task "$w" "$base")
            for r in 1 2 4 8; do
                line="$line $(printf '%6s' "$(acc --model "$M/$arch-base" \
                    -a "$M/adapters/$arch-$task-$set-r$r" --data "$M/data/$task.jsonl" --mode both)")"
            done
            echo "$line"
        done
    done
done
