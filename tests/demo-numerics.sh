#!/bin/sh
# tests/demo-numerics.sh - the rank-reduction part of `make demo`
# (called by tests/demo.sh): the spectrum of a real adapter's ΔW, a
# reduction by energy with its error report, and how the reduced A
# matrices relate to the original ones.
# Arguments: the build folder and the source folder.
set -eu
B=$1
S=$2
D="$B/demo-out/numerics"
rm -rf "$D"
mkdir -p "$D"
R="$S/../shared/fixtures/real/qwen2.5-0.5b-qv"
if [ ! -d "$R" ]; then
    "$B/tests/mkfixture" llama "$D/gen" --layers 2 --rank 8 --no-base >/dev/null
    R="$D/gen/adapter"
fi
echo
echo "== lora-inspect --spectrum: singular values of dW = s*B*A (two modules of $(basename "$R"))"
"$B/lora-inspect" --spectrum --module model.layers.0.self_attn.q_proj \
    --module model.layers.0.self_attn.v_proj "$R"
echo
echo "== lora-rank-reduce --energy 0.9 --max-rank 4: per module, old and new rank and the error"
"$B/lora-rank-reduce" "$R" -o "$D/reduced" --energy 0.9 --max-rank 4 | tail -n 6
echo
echo "== lora-inspect --check on the reduced adapter"
"$B/lora-inspect" --check "$D/reduced" | grep -E '^(r / alpha|parameters|problems)'
echo
echo "== lora-inspect --compare: phi(i, j) between the original and the reduced A (one module)"
"$B/lora-inspect" --compare "$D/reduced" --module model.layers.0.self_attn.q_proj \
    --svg "$D/phi.svg" "$R"
echo "(heat map: $D/phi.svg)"
echo
echo "== combining: 0.5 x the adapter + 0.5 x itself at its own rank is the adapter again"
"$B/lora-rank-reduce" -a "$R:0.5" -a "$R:0.5" -o "$D/combined" --rank 8 | tail -n 2
echo
echo "== combination methods: two task adapters (reverse, classify; r=8) combined into one,"
echo "   accuracy on each task next to the inputs' (lora-eval, 100 items per task)"
M="$S/tests/fixtures/models"
acc() {  # accuracy of base $1 with adapter $2 on task $3
    "$B/lora-eval" --model "$M/$1-base" -a "$2" --data "$M/data/$3.jsonl" --json |
        sed -n 's/.*"accuracy": \([0-9.]*\).*/\1/p'
}
printf '%-6s %-42s %8s %8s\n' model adapter reverse classify
for arch in gpt2 llama; do
    [ $arch = gpt2 ] && set=cattn || set=qv
    R1="$M/adapters/$arch-reverse-$set-r8"
    R2="$M/adapters/$arch-classify-$set-r8"
    "$B/lora-rank-reduce" -q -a "$R1" -a "$R2" --rank 0 -o "$D/$arch-sum"
    "$B/lora-rank-reduce" -q -a "$R1" -a "$R2" --method ties --density 0.5 --rank 16 \
        -o "$D/$arch-ties"
    "$B/lora-rank-reduce" -q -a "$R1" -a "$R2" --method dare_ties --density 0.5 --seed 1 \
        --rank 16 -o "$D/$arch-dare"
    for row in "reverse (input 1):$R1" "classify (input 2):$R2" "sum, exact (rank 16):$D/$arch-sum" \
        "ties, density 0.5, rank 16:$D/$arch-ties" "dare_ties, density 0.5, seed 1, rank 16:$D/$arch-dare"; do
        a=${row#*:}
        printf '%-6s %-42s %8s %8s\n' $arch "${row%%:*}" "$(acc $arch "$a" reverse)" \
            "$(acc $arch "$a" classify)"
    done
done
echo "(on these tiny models the tasks interfere: no combination keeps both)"
