#!/bin/sh
# tests/hostile.sh - every file of tests/hostile/ (listed in its TABLE)
# put where a tool reads it: the tool must exit with the code the table
# gives and say what is wrong (stderr matches the table's pattern), never
# crash or hang.  Files the table does not list fail the test, so that
# a new hostile input cannot be forgotten.
. "$TOP_SRCDIR/tests/lib.sh"
H=$TOP_SRCDIR/tests/hostile
tab=$(printf '\t')

"$TOP_BUILDDIR/tests/mkfixture" llama "$T/g" --layers 1 --hidden 16 --intermediate 32 \
    --vocab 32 >/dev/null || { echo "mkfixture failed" >&2; exit 99; }

for f in "$H"/*; do
    b=$(basename "$f")
    [ "$b" = TABLE ] && continue
    grep -q "^$b$tab" "$H/TABLE" || fail "$b is not in tests/hostile/TABLE"
done

grep -v '^#' "$H/TABLE" | while IFS="$tab" read -r file code pat opts; do
    [ -n "$file" ] || continue
    rm -rf "$T/a" "$T/b"
    cp -r "$T/g/adapter" "$T/a"
    base=
    case $file in
    st-*) cp "$H/$file" "$T/a/adapter_model.safetensors" ;;
    cfg-*) cp "$H/$file" "$T/a/adapter_config.json" ;;
    idx-*) mkdir "$T/b"
           cp "$T/g/base/model.safetensors" "$T/b/model-00001-of-00001.safetensors"
           cp "$H/$file" "$T/b/model.safetensors.index.json"
           base="--base=$T/b" ;;
    *) fail "$file: no rule for this kind of file"; continue ;;
    esac
    # shellcheck disable=SC2086 # opts and base are word lists
    expect "$code" timeout 60 lora-inspect $opts $base "$T/a"
    # the message names the problem: on stderr, or for a --check finding
    # in the report on stdout (stderr then says the check failed)
    checks=$((checks + 1))
    grep -q '^lora-inspect: ' "$T/err" || fail "$file: no lora-inspect: message on stderr"
    cat "$T/err" "$T/out" | grep -Eq -- "$pat" || {
        fail "$file: output lacks /$pat/"; sed 's/^/  stderr: /' "$T/err" | head -n 5 >&2; }
    echo "$checks $failures" >"$T/tally"
done
# the loop ran in a subshell (pipe): take its tally
read -r checks failures <"$T/tally"
done_testing
