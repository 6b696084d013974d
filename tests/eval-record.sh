# tests/eval-record.sh - lora-eval --record: a row per metric (mode, base name) in the
# registry's evals table (checked through lora-registry evals --json and
# an independent BLAKE2b-256 of the data file by b2sum), refusal of an
# unregistered adapter before any evaluation, recording below
# --min-accuracy, task:TASK recording the version it resolved, and the
# usage errors.  Uses the committed fixtures under tests/fixtures/models.
. "$TOP_SRCDIR/tests/lib.sh"

M="$TOP_SRCDIR/tests/fixtures/models"
[ -d "$M/gpt2-base" ] || { echo "FAIL: $M missing" >&2; exit 1; }
for t in jq b2sum; do
    command -v $t >/dev/null 2>&1 || { echo "SKIP: $t not installed"; exit 77; }
done

R="$T/reg.db"
REG="lora-registry --registry $R"
CLS="$M/data/classify.jsonl"
REV="$M/data/reverse.jsonl"
DS_CLS=$(b2sum -l 256 "$CLS" | cut -d' ' -f1)
DS_REV=$(b2sum -l 256 "$REV" | cut -d' ' -f1)

# jcheck FILE FILTER [jq args...]: FILTER must be true on FILE
jcheck() {
    f=$1; q=$2; shift 2
    checks=$((checks + 1))
    jq -e "$@" "$q" "$f" >/dev/null 2>&1 || { fail "$f: not ($q)"; head -c 2000 "$f" | sed 's/^/  /' >&2; }
}
# evals SPEC: the registry's eval rows of SPEC (NAME or NAME@VERSION) into $T/ev.json
evals() {
    $REG evals "$1" --json >"$T/ev.json" 2>"$T/ev.err" || fail "lora-registry evals $1: $(cat "$T/ev.err")"
}
nrows() { $REG evals --json 2>/dev/null | jq length; }

mkdir -p "$T/arc"
# pack ADAPTER NAME TASK VERSION: a signed archive $T/arc/NAME-VERSION.lora
pack() {
    expect 0 lora-pack create "$M/adapters/$1" -s "$T/k.sec" --name "$2" --task "$3" \
        --version "$4" --base "$M/gpt2-base" -o "$T/arc/$2-$4.lora" -q
}
expect 0 lora-pack keygen -W -s "$T/k.sec" -p "$T/k.pub" -q
pack gpt2-classify-cattn-r1 cls classify 1.0.0
pack gpt2-classify-cattn-r2 cls classify 2.0.0
pack gpt2-reverse-cattn-r4 rev reverse 1.0.0
pack gpt2-reverse-cattn-r2 rev reverse 1.1.0
expect 0 $REG trust "$T/k.pub"
for a in cls-1.0.0 rev-1.0.0 rev-1.1.0; do
    expect 0 $REG add "$T/arc/$a.lora"
done

# ---- (a) a registered archive: a row per metric, the values lora-eval printed ----
expect 0 lora-eval --model "$M/gpt2-base" -a "$T/arc/cls-1.0.0.lora" -p "$T/k.pub" \
    --data "$CLS" --record --registry "$R" --json
cp "$T/out" "$T/a.json"
jcheck "$T/a.json" '.recorded.adapter == "cls@1.0.0" and .recorded.rows == 3'
jcheck "$T/a.json" '.recorded.dataset_hash == $h and .recorded.registry == $r' \
    --arg h "$DS_CLS" --arg r "$R"
jcheck "$T/a.json" '.items == 100 and .accuracy > 0 and .accuracy < 1 and .mean_nll > 0'
$REG show cls@1.0.0 --json >"$T/show.json" 2>/dev/null || fail "lora-registry show cls@1.0.0"
BASE=$(jq -r .base_hash "$T/show.json")
evals cls@1.0.0
jcheck "$T/ev.json" 'length == 3 and ([.[].metric] | sort) == ["accuracy", "nll", "perplexity"]'
jcheck "$T/ev.json" 'all(.[]; .mode == "unmerged" and .base_name == "gpt2-base")'
jcheck "$T/ev.json" '. as $all | all(.[]; .adapter == "cls@1.0.0" and .items == 100
    and .dataset == "classify.jsonl" and .dataset_hash == $h and .base_hash == $b
    and .time == $all[0].time)' --arg h "$DS_CLS" --arg b "$BASE"
jcheck "$T/ev.json" '.[] | select(.metric == "accuracy") | .value == $e[0].accuracy' \
    --slurpfile e "$T/a.json"
# lora-eval prints 10 significant digits, the registry all 17
jcheck "$T/ev.json" '.[] | select(.metric == "nll")
    | ((.value - $e[0].mean_nll) | fabs) <= 1e-9 * $e[0].mean_nll' --slurpfile e "$T/a.json"
jcheck "$T/ev.json" '.[] | select(.metric == "perplexity")
    | ((.value - $e[0].perplexity) | fabs) <= 1e-9 * $e[0].perplexity' --slurpfile e "$T/a.json"
# the human form says the same
expect 0 lora-eval --model "$M/gpt2-base" -a "$T/arc/cls-1.0.0.lora" -p "$T/k.pub" \
    --data "$CLS" --limit 10 --record --registry "$R"
expect_out "^recorded +3 results for cls@1\.0\.0 in $R\$"
evals cls@1.0.0
jcheck "$T/ev.json" 'length == 6 and ([.[] | select(.items == 10)] | length) == 3'
# without --record: nothing written, "recorded": null
n=$(nrows)
expect 0 lora-eval --model "$M/gpt2-base" -a "$T/arc/cls-1.0.0.lora" -p "$T/k.pub" \
    --data "$CLS" --registry "$R" --json
jcheck "$T/out" '.recorded == null'
[ "$(nrows)" = "$n" ] || fail "an evaluation without --record wrote eval rows"

# ---- (b) not registered: refused before evaluating, nothing written ----
refused() {
    checks=$((checks + 1))
    # with --json, the one error object of lora(7) and nothing else
    grep -qv '^{"error":{"exit":[0-9],"class":' "$T/out" &&
        fail "evaluation output despite the refusal: $(head -n 3 "$T/out")"
    [ "$(nrows)" = "$n" ] || fail "a refused --record wrote eval rows"
}
expect 3 lora-eval --model "$M/gpt2-base" -a "$M/adapters/gpt2-classify-cattn-r1" \
    --data "$CLS" --record --registry "$R" --json
expect_err "^lora-eval: --record: .*gpt2-classify-cattn-r1 is not in the registry $R"
refused
expect 3 lora-eval --model "$M/gpt2-base" -a "$T/arc/cls-2.0.0.lora" -p "$T/k.pub" \
    --data "$CLS" --record --registry "$R"
expect_err "^lora-eval: --record: .*cls-2\.0\.0\.lora is not in the registry $R"
refused
expect 3 lora-eval --model "$M/gpt2-base" -a reg:cls@2.0.0 --data "$CLS" --record --registry "$R"
expect_err "^lora-eval: --record: .*cls@2\.0\.0.*$R"
refused
expect 3 lora-eval --model "$M/gpt2-base" -a task:nosuchtask --data "$CLS" --record \
    --registry "$R"
expect_err "^lora-eval: --record: "
refused
# no registry at all: refused, and none is created
expect 3 lora-eval --model "$M/gpt2-base" -a "$T/arc/cls-1.0.0.lora" -p "$T/k.pub" \
    --data "$CLS" --record --registry "$T/none/reg.db"
expect_err "^lora-eval: --record: "
refused
[ -e "$T/none/reg.db" ] && fail "--record created a registry"

# ---- (c) below --min-accuracy: exit 1, still recorded ----
expect 1 lora-eval --model "$M/gpt2-base" -a reg:cls@1.0.0 --data "$CLS" --min-accuracy 1 \
    --record --registry "$R" --json
expect_err "below --min-accuracy"
cp "$T/out" "$T/c.json"
jcheck "$T/c.json" '.passed == false and .accuracy < 1 and .recorded.rows == 3'
[ "$(nrows)" -eq $((n + 3)) ] || fail "below --min-accuracy: expected $((n + 3)) rows, have $(nrows)"
evals cls@1.0.0
jcheck "$T/ev.json" '.[-1].metric == "perplexity" and .[-2].metric == "nll"
    and .[-3].metric == "accuracy" and .[-3].value == $e[0].accuracy and .[-3].items == 100' \
    --slurpfile e "$T/c.json"

# ---- (d) task:TASK records the version it resolved (and evaluated) ----
$REG resolve reverse --json >"$T/res.json" 2>/dev/null || fail "lora-registry resolve reverse"
WANT=$(jq -r '.name + "@" + .version' "$T/res.json")
[ "$WANT" = rev@1.1.0 ] || fail "resolve reverse gave $WANT, this test expects rev@1.1.0"
expect 0 lora-eval --model "$M/gpt2-base" -a task:reverse --data "$REV" --record \
    --registry "$R" --json
# generation only: no accuracy row (never a 0 for a metric without items)
jcheck "$T/out" '.recorded.adapter == $w and .recorded.rows == 7 and .accuracy == null' --arg w "$WANT"
cp "$T/out" "$T/d.json"
evals "$WANT"
jcheck "$T/ev.json" 'length == 7 and all(.[]; .dataset_hash == $h and .base_hash == $b)
    and ([.[].metric] | sort) == ["bleu", "exact_match", "nll", "perplexity", "rouge1", "rouge2", "rougeL"]
    and all(.[]; .metric as $k | .value == $e[0][$k] or $k == "nll" or $k == "perplexity")' \
    --arg h "$DS_REV" --arg b "$(jq -r .base_hash "$T/res.json")" --slurpfile e "$T/d.json"
evals rev@1.0.0
jcheck "$T/ev.json" 'length == 0'

# ---- (e) a data set through a pipe (process substitution): the hash of the bytes read ----
mkfifo "$T/fifo"
cat "$CLS" >"$T/fifo" &
expect 0 lora-eval --model "$M/gpt2-base" -a reg:cls@1.0.0 --data "$T/fifo" --limit 5 --record \
    --registry "$R" --json
wait
jcheck "$T/out" '.recorded.dataset_hash == $h and .items == 5' --arg h "$DS_CLS"

# ---- (f) a registry of schema 1 (before mode and base_name): read as it
# is (mode and base_name null), migrated by the first writer ----
if command -v sqlite3 >/dev/null 2>&1; then
    sqlite3 "$T/old.db" < "$TOP_SRCDIR/registry/0001-initial.sql" && sqlite3 "$T/old.db" 'PRAGMA user_version = 1'
    sqlite3 "$T/old.db" "INSERT INTO adapters (id, name, version, v_major, v_minor, v_patch,
        v_release, task, base_model, base_hash, r, alpha, hash, size, signer, trusted, added)
        VALUES (1, 'x', '1.0.0', 1, 0, 0, 1, 't', NULL, 'b', 1, 1.0, 'h', 1, 'k', 1, 0);
        INSERT INTO evals (adapter_id, base_hash, dataset_hash, dataset, metric, value, items,
        time, tool_version) VALUES (1, 'b', 'd', 'ds', 'accuracy', 0.5, 10, 0, '0.1.0')" ||
        fail "sqlite3 could not fill a schema-1 registry"
    expect 0 lora-registry --registry "$T/old.db" evals --json
    jcheck "$T/out" 'length == 1 and .[0].mode == null and .[0].base_name == null and .[0].value == 0.5'
    expect 0 lora-registry --registry "$T/old.db" trust "$T/k.pub"
    checks=$((checks + 1))
    [ "$(sqlite3 "$T/old.db" "PRAGMA user_version")" -ge 2 ] || fail "schema 1 was not migrated"
    checks=$((checks + 1))
    sqlite3 "$T/old.db" 'SELECT mode, base_name FROM evals' >/dev/null 2>&1 ||
        fail "no mode and base_name columns after the migration"
fi

# ---- (g) reg:NAME without @VERSION: the newest version, the one loaded ----
n=$(nrows)
expect 0 lora-eval --model "$M/gpt2-base" -a reg:rev --data "$CLS" --limit 5 --record \
    --registry "$R" --json
jcheck "$T/out" '.recorded.adapter == "rev@1.1.0" and .recorded.rows > 0'
checks=$((checks + 1))
[ "$(nrows)" -gt "$n" ] || fail "reg:rev recorded no row"

# ---- (h) usage errors ----
expect 2 sh -c "lora-eval --model '$M/gpt2-base' -a reg:cls@1.0.0 --data - --record \
    --registry '$R' < '$CLS'"
expect_err 'not stdin'
expect 2 lora-eval --model "$M/gpt2-base" --data "$CLS" --record --registry "$R"
expect_err 'needs an adapter'
expect 2 lora-eval --check-recovery --model "$M/gpt2-base" -a reg:cls@1.0.0 --record \
    --registry "$R"
done_testing
