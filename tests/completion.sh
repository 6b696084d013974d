# tests/completion.sh - the bash completions at work (issue 8): each is
# sourced into bash with COMP_LINE / COMP_WORDS set as bash sets them,
# against a temporary registry ($LORA_REGISTRY) holding two tasks: task:
# arguments complete to the registry's task names (also after the ':'
# bash splits words at), adapter arguments to folders and .lora
# archives, checkpoints to folders and .safetensors, options and
# subcommands to their names; `lora-registry tasks` lists the tasks.
# zsh and fish are not installed here; cli.sh checks their option lists.
. "$TOP_SRCDIR/tests/lib.sh"

command -v bash >/dev/null 2>&1 || { echo "SKIP: no bash"; exit 77; }
C="$TOP_SRCDIR/completions/bash"

# ---- a registry: task sql (sql-a untrusted: signed by a key the
# registry does not trust, sql-b trusted), task summarise (untrusted) ----
export LORA_REGISTRY="$T/reg/registry.db"
mkdir -p "$T/ad"
printf '%s\n' '{"peft_type": "LORA", "r": 1, "lora_alpha": 2, "target_modules": ["q"], "base_model_name_or_path": "tiny-base"}' \
    > "$T/ad/adapter_config.json"
# one r=1 module: lora_A [1,2] and lora_B [1,1], F32 zeros
h='{"base_model.model.l.q.lora_A.weight":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]},"base_model.model.l.q.lora_B.weight":{"dtype":"F32","shape":[1,1],"data_offsets":[8,12]}}'
while [ $((${#h} % 8)) -ne 0 ]; do h="$h "; done
{
    printf "\\$(printf %03o ${#h})\\0\\0\\0\\0\\0\\0\\0"
    printf '%s' "$h"
    head -c 12 /dev/zero
} > "$T/ad/adapter_model.safetensors"
lora-pack keygen -W -s "$T/k.sec" -p "$T/k.pub" -q >/dev/null 2>&1 || fail "keygen"
lora-pack keygen -W -s "$T/u.sec" -p "$T/u.pub" -q >/dev/null 2>&1 || fail "keygen u"
lora-pack create "$T/ad" -s "$T/u.sec" --name sql-a --task sql --version 1.0.0 -o "$T/sql.lora" -q ||
    fail "pack sql"
lora-pack create "$T/ad" -s "$T/u.sec" --name sum-a --task summarise --version 1.0.0 \
    -o "$T/sum.lora" -q || fail "pack summarise"

expect 0 lora-registry init -q
expect 0 lora-registry tasks
[ -s "$T/out" ] && fail "tasks of an empty registry printed something"
expect 0 lora-registry trust "$T/k.pub" -q
expect 0 lora-registry add "$T/sql.lora" -q --allow-untrusted
expect 0 lora-registry add "$T/sum.lora" -q --allow-untrusted
lora-pack create "$T/ad" -s "$T/k.sec" --name sql-b --task sql --version 2.0.0 -o "$T/sql2.lora" -q ||
    fail "pack sql 2"
expect 0 lora-registry add "$T/sql2.lora" -q

# ---- lora-registry tasks: human, -q, --json, --base ----
expect 0 lora-registry tasks -q
printf 'sql\nsummarise\n' | cmp -s - "$T/out" || fail "tasks -q: $(cat "$T/out")"
expect 0 lora-registry tasks
expect_out '^TASK +ADAPTERS +TRUSTED$'
expect_out '^sql +2 +1$'
expect_out '^summarise +1 +0$'
expect 0 lora-registry tasks --json
expect_out '"task": "summarise"'
if command -v jq >/dev/null 2>&1; then
    checks=$((checks + 1))
    [ "$(jq -c 'map([.task, .adapters, .trusted])' "$T/out")" = '[["sql",2,1],["summarise",1,0]]' ] ||
        fail "tasks --json: $(cat "$T/out")"
fi
expect 0 lora-registry tasks -q --base no-such-base
[ -s "$T/out" ] && fail "tasks --base no-such-base listed tasks"
expect 0 lora-registry tasks -q --base tiny-base
expect_out '^summarise$'
expect 2 lora-registry tasks extra-argument
expect_err '^lora-registry: '
expect 2 lora-registry tasks --task sql
expect 3 lora-registry --registry "$T/none.db" tasks -q
[ -s "$T/out" ] && fail "tasks of a missing registry wrote to stdout"

# ---- bash completion driver: FILE FUNCTION LINE -> replies, one a line ----
cat > "$T/comp.bash" <<'DRIVER'
source "$1" || exit 99
COMP_LINE=$3
COMP_POINT=${#COMP_LINE}
# words as bash splits them: at blanks, and around ':' (COMP_WORDBREAKS)
read -ra COMP_WORDS <<< "${COMP_LINE//:/ : }"
[[ $COMP_LINE == *[[:space:]] ]] && COMP_WORDS+=("")
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
"$2"
printf '%s\n' "${COMPREPLY[@]}" | sort
DRIVER

# complete TOOL LINE: the replies in $T/out
complete_line() {
    f=$(printf '%s' "$1" | tr - _)
    run bash "$T/comp.bash" "$C/$1" "_$f" "$2"
    [ "$rc" -eq 0 ] || fail "$1: completion of '$2' failed ($rc): $(cat "$T/err")"
}
# want LINE...: $T/out holds exactly these lines
want() {
    checks=$((checks + 1))
    printf '%s\n' "$@" | sort | cmp -s - "$T/out" ||
        fail "completion: wanted [$*], got [$(tr '\n' ' ' < "$T/out")]"
}
# has LINE: $T/out holds this line
has() {
    checks=$((checks + 1))
    grep -qxF -- "$1" "$T/out" || fail "completion: no '$1' in [$(tr '\n' ' ' < "$T/out")]"
}

mkdir -p "$T/w/adapter-dir" "$T/w/base"
: > "$T/w/a.lora"
: > "$T/w/model.safetensors"
: > "$T/w/notes.txt"
cd "$T/w" || exit 99

for spec in "lora-eval -a" "lora-eval --adapter" "lora-merge base/ -a" "lora-merge base/ --unmerge" \
    "lora-unmerge merged/ -a" "lora-rank-reduce -a" "lora-rank-reduce" "lora-inspect" \
    "lora-inspect --compare"; do
    tool=${spec%% *}
    # after the ':' bash replaces only what follows it: the task names
    complete_line "$tool" "$spec task:"
    want sql summarise
    complete_line "$tool" "$spec task:su"
    want summarise
    # before it, the whole word
    complete_line "$tool" "$spec ta"
    want task:sql task:summarise
    # an empty word: tasks, folders, archives, no other files
    complete_line "$tool" "$spec "
    has task:sql
    has adapter-dir
    has a.lora
    grep -qx notes.txt "$T/out" && fail "$spec: offers notes.txt for an adapter"
done
# a weight after the task name is the user's to type
complete_line lora-merge "lora-merge base/ -a task:sql:"
want

# checkpoints: folders and .safetensors, not archives
complete_line lora-merge "lora-merge "
has base
has model.safetensors
grep -qx a.lora "$T/out" && fail "lora-merge BASE offers a.lora"
complete_line lora-unmerge "lora-unmerge m"
want model.safetensors
complete_line lora-inspect "lora-inspect --base mo"
want model.safetensors

# options, values, subcommands
complete_line lora-eval "lora-eval --da"
want --data
complete_line lora-eval "lora-eval --mode "
want unmerged merged both
complete_line lora-merge "lora-merge --dt"
want --dtype
complete_line lora-rank-reduce "lora-rank-reduce --en"
want --energy
complete_line lora-unmerge "lora-unmerge --rec"
want --receipt --receipt-key
complete_line lora-merge "lora-merge --sig"
want --sign-receipt
complete_line lora-inspect "lora-inspect --sp"
want --spectrum
complete_line lora-registry "lora-registry ta"
want tasks
complete_line lora-registry "lora-registry ls --task "
want sql summarise
complete_line lora-registry "lora-registry resolve s"
want sql summarise
complete_line lora-registry "lora-registry tasks --b"
want --base
complete_line lora-pack "lora-pack ver"
want verify

# no registry: task: completes to nothing, quietly
LORA_REGISTRY="$T/none.db" complete_line lora-eval "lora-eval -a task:"
want
[ -s "$T/err" ] && fail "completion without a registry wrote to stderr: $(cat "$T/err")"
cd / || exit 99
done_testing
