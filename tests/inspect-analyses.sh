#!/bin/sh
# tests/inspect-analyses.sh - the Section 7 analyses of lora-inspect
# (--spectrum, --compare/--svg, --amplification, --module) on adapters
# made by tests/mkfixture and by lora-rank-reduce: exit codes, JSON
# fields, values that follow from the definitions.
. "$TOP_SRCDIR/tests/lib.sh"
MK=$TOP_BUILDDIR/tests/mkfixture
[ -x "$MK" ] || { echo "SKIP: tests/mkfixture not built"; exit 77; }
"$MK" llama "$T/l" --rank 8 >/dev/null 2>&1 || { fail "mkfixture llama"; done_testing; }
"$MK" gpt2 "$T/g" --rank 4 >/dev/null 2>&1 || { fail "mkfixture gpt2"; done_testing; }
L=$T/l/adapter
# lt A B: A < B as numbers
lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 < b + 0) }'; }
# json_nums FIELD: every number after "FIELD": in $T/out, one a line
json_nums() { grep -o "\"$1\": *[-0-9.eE+]*" "$T/out" | sed 's/.*: *//'; }

# --- usage and input errors ---
expect 2 lora-inspect --svg "$T/x.svg" "$L"
expect_err "^lora-inspect: --svg needs --compare"
expect 2 lora-inspect --amplification "$L"
expect_err "needs --base"
expect 2 lora-inspect --spectrum --module no_such_proj "$L"
expect_err "no_such_proj: no such module"
expect 3 lora-inspect --compare "$T/nonexistent" "$L"
expect 3 lora-inspect --compare "$T/g/adapter" "$L"
expect_err "no module in common"
[ -e "$T/x.svg" ] && fail "--svg written on failure"

# --- spectrum ---
expect 0 lora-inspect --spectrum --json "$L"
expect_out '"spectrum": \['
expect_out '"rank90": [1-8],'
expect_out '"stable_rank": '
n=$(grep -c '"name"' "$T/out")
[ "$n" -eq 4 ] || fail "spectrum lists $n modules, expected 4"
expect 0 lora-inspect --spectrum --module layers.0.self_attn.q_proj "$L"
expect_out '^model\.layers\.0\.self_attn\.q_proj +8 '
grep -q 'v_proj' "$T/out" && fail "--module did not filter"
# stable rank lies in [1, r]
expect 0 lora-inspect --spectrum --json "$L"
for s in $(json_nums stable_rank); do
    lt "$s" 1 && fail "stable rank $s < 1"
    lt 8 "$s" && fail "stable rank $s > 8"
done

# the spectrum of a rank-2 reduction is the top 2 of the original
expect 0 lora-rank-reduce "$L" -o "$T/l2" --rank 2 -q
expect 0 lora-inspect --check "$T/l2"
expect 0 lora-inspect --spectrum --json --module model.layers.0.self_attn.q_proj "$L"
tr -d ' \n' < "$T/out" | grep -o '"singular_values":\[[^]]*' | sed 's/.*\[//' | tr ',' '\n' > "$T/s8"
expect 0 lora-inspect --spectrum --json --module model.layers.0.self_attn.q_proj "$T/l2"
tr -d ' \n' < "$T/out" | grep -o '"singular_values":\[[^]]*' | sed 's/.*\[//' | tr ',' '\n' > "$T/s2"
[ "$(wc -l < "$T/s8")" -eq 8 ] || fail "expected 8 singular values"
[ "$(wc -l < "$T/s2")" -eq 2 ] || fail "expected 2 singular values after --rank 2"
head -n 2 "$T/s8" | paste - "$T/s2" | awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > 1e-6 * $1) bad = 1 }
    END { exit bad }' || fail "reduced spectrum differs from the top 2"

# --- compare: an adapter with itself has φ(i, i) = 1 ---
expect 0 lora-inspect --compare "$L" --svg "$T/self.svg" "$L"
awk '/^model\./ { blk++ } /^ +[0-9]+ / && blk == 1 { i = $1; if ($(i + 1) != "1.000") bad = 1; rows++ }
     END { exit bad || rows != 8 }' "$T/out" || fail "phi(i, i) is not 1 for an adapter with itself"
expect 0 lora-inspect --compare "$L" --json "$L"
expect_out '"compare": \{'
expect_out '"r1": 8,'
head -c 5 "$T/self.svg" | grep -q '<?xml' || fail "svg has no XML declaration"
grep -q '<svg xmlns="http://www.w3.org/2000/svg"' "$T/self.svg" || fail "not an svg"
cells=$(grep -c '<title>i=' "$T/self.svg")
[ "$cells" -eq 256 ] || fail "svg has $cells cells, expected 4 modules x 8 x 8"
tail -n 1 "$T/self.svg" | grep -q '</svg>' || fail "svg not closed"
# one panel with --module; reduced vs original: 8 x 2
expect 0 lora-inspect --compare "$T/l2" --module model.layers.1.self_attn.v_proj --svg "$T/one.svg" "$L"
cells=$(grep -c '<title>i=' "$T/one.svg")
[ "$cells" -eq 16 ] || fail "svg has $cells cells, expected 8 x 2"
# the same inputs give the same bytes
expect 0 lora-inspect --compare "$T/l2" --module model.layers.1.self_attn.v_proj --svg "$T/two.svg" "$L"
cmp -s "$T/one.svg" "$T/two.svg" || fail "svg not deterministic"

# --- amplification (Table 7) ---
expect 0 lora-inspect --amplification --base "$T/l/base" --json "$L"
expect_out '"amplification": \['
expect_out '"proj_random": '
json_nums norm_dw > "$T/a"; json_nums proj_dw > "$T/b"; json_nums factor > "$T/c"
json_nums proj_w > "$T/d"
[ "$(wc -l < "$T/a")" -eq 4 ] || fail "amplification lists $(wc -l < "$T/a") modules"
paste "$T/a" "$T/b" "$T/c" "$T/d" | awk '{ f = $1 / $2; d = f - $3; if (d < 0) d = -d;
    if (d > 1e-9 * f) bad = 1; if ($2 > $4 * (1 + 1e-12)) bad = 1 } END { exit bad }' ||
    fail "factor is not norm_dw / proj_dw, or W's own directions capture less than dW's"
# GPT-2: Conv1D bases stored [in, out]
expect 0 lora-inspect --amplification --base "$T/g/base" "$T/g/adapter"
expect_out '^transformer\.h\.0\.attn\.c_attn +4 '
# wrong base
expect 3 lora-inspect --amplification --base "$T/g/base" "$L"
done_testing
