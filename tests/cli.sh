# tests/cli.sh - one behaviour across every tool, checked from one table
# (issue 8): --help and --version, unknown options are usage errors (2)
# with a "lora-TOOL: " message on stderr and nothing on stdout, every
# long option --help prints is documented in the tool's man page and
# offered by its bash, zsh and fish completions; the man pages of
# sections 5 and 7 render cleanly too.  A second table runs each tool
# once on small real inputs (tests/fixtures/models): --json output is
# valid JSON on stdout with nothing but "lora-TOOL: " messages on
# stderr, human output is not JSON, and with stderr not a terminal there
# is no progress ('\r') and no escape sequence anywhere; on a terminal
# (script(1)) -q silences progress and nothing is ever coloured
# (NO_COLOR or not).  '-' reads a stream where the man page says so.
. "$TOP_SRCDIR/tests/lib.sh"

[ -n "${LORA_TOOLS:-}" ] || { echo "SKIP: no tools built"; exit 77; }

for tool in $LORA_TOOLS; do
    bin="$TOP_BUILDDIR/$tool"
    [ -x "$bin" ] || { fail "$tool: not built"; continue; }

    expect 0 "$bin" --help
    expect_out "^(Usage|usage):? .*$tool"
    [ -s "$T/err" ] && fail "$tool --help wrote to stderr"

    expect 0 "$bin" --version
    expect_out "$tool .*[0-9]+\.[0-9]+\.[0-9]+"

    # usage errors: every stderr line is ours (no bare getopt message)
    for bad in --no-such-option-at-all; do
        expect 2 "$bin" $bad
        expect_err "^$tool: "
        [ -s "$T/out" ] && fail "$tool: usage error wrote to stdout"
        checks=$((checks + 1))
        other=$(grep -v -e "^$tool: " -e "^Try '$tool --help" "$T/err")
        [ -z "$other" ] || fail "$tool $bad: stderr line not prefixed '$tool: ': $other"
    done

    # every long option in --help: in the man page and the completions
    "$bin" --help | grep -oE -- '--[a-z][a-z0-9-]+' | sort -u > "$T/opts"
    [ -s "$T/opts" ] || fail "$tool --help lists no long options"
    man="$TOP_SRCDIR/man/$tool.1"
    bash_c="$TOP_SRCDIR/completions/bash/$tool"
    zsh_c="$TOP_SRCDIR/completions/zsh/_$tool"
    fish_c="$TOP_SRCDIR/completions/fish/$tool.fish"
    for f in "$man" "$bash_c" "$zsh_c" "$fish_c"; do
        [ -f "$f" ] || fail "$tool: missing $f"
    done
    while read -r opt; do
        checks=$((checks + 1))
        # roff escapes hyphens as \- ; accept both spellings
        esc=$(printf '%s' "$opt" | sed 's/-/\\-/g')
        { grep -qF -- "$opt" "$man" 2>/dev/null || grep -qF -- "$esc" "$man" 2>/dev/null; } ||
            fail "$tool: $opt not in man/$tool.1"
        grep -qF -- "$opt" "$bash_c" 2>/dev/null || fail "$tool: $opt not in bash completion"
        grep -qF -- "${opt#--}" "$zsh_c" 2>/dev/null || fail "$tool: $opt not in zsh completion"
        grep -qF -- "${opt#--}" "$fish_c" 2>/dev/null || fail "$tool: $opt not in fish completion"
    done < "$T/opts"

    # every subcommand --help lists (lora-pack, lora-registry): in the
    # man page and in every completion
    "$bin" --help | sed -n '/^Commands:/,/^$/p' | grep -oE '^  [a-z]+' | tr -d ' ' > "$T/cmds"
    while read -r sub; do
        for f in "$man" "$bash_c" "$zsh_c" "$fish_c"; do
            checks=$((checks + 1))
            grep -qw -- "$sub" "$f" 2>/dev/null || fail "$tool: command $sub not in ${f##*/}"
        done
    done < "$T/cmds"

    # the sections every tool page has (JSON OUTPUT when --help offers --json)
    for sec in SYNOPSIS OPTIONS "STANDARD INPUT AND OUTPUT" "EXIT STATUS" EXAMPLES "SEE ALSO"; do
        checks=$((checks + 1))
        grep -q "^\.SH \"\{0,1\}$sec" "$man" 2>/dev/null || fail "$tool.1: no $sec section"
    done
    if grep -qx -- --json "$T/opts"; then
        checks=$((checks + 1))
        grep -q '^\.SH JSON OUTPUT' "$man" || fail "$tool.1: --json but no JSON OUTPUT section"
    fi
    # every exit code of DESIGN.md under EXIT STATUS
    for code in 0 2 3 4; do
        checks=$((checks + 1))
        sed -n '/^\.SH EXIT STATUS/,/^\.SH /p' "$man" | grep -qE "(^|[^0-9])$code([^0-9]|$)" ||
            fail "$tool.1: exit status $code not described"
    done

    # the man page renders without warnings
    if command -v groff >/dev/null 2>&1 && [ -f "$man" ]; then
        checks=$((checks + 1))
        w=$(groff -ww -man -Tutf8 "$man" 2>&1 >/dev/null)
        [ -z "$w" ] || fail "$tool.1: groff warnings: $w"
    fi
done

# sections 5 and 7 render without warnings too
if command -v groff >/dev/null 2>&1; then
    for man in "$TOP_SRCDIR"/man/*.5 "$TOP_SRCDIR"/man/*.7; do
        checks=$((checks + 1))
        w=$(groff -ww -man -Tutf8 "$man" 2>&1 >/dev/null)
        [ -z "$w" ] || fail "${man##*/}: groff warnings: $w"
    done
fi

# lora.7: the environment and files every tool shares
for word in LORA_REGISTRY XDG_DATA_HOME NO_COLOR OPENBLAS_NUM_THREADS LORA_PASSWORD_FILE; do
    checks=$((checks + 1))
    sed -n '/^\.SH ENVIRONMENT/,/^\.SH /p' "$TOP_SRCDIR/man/lora.7" | grep -q "^\.B $word" ||
        fail "lora.7: $word not under ENVIRONMENT"
done
for sec in FILES "EXIT STATUS" "SEE ALSO"; do
    checks=$((checks + 1))
    grep -q "^\.SH $sec" "$TOP_SRCDIR/man/lora.7" || fail "lora.7: no $sec section"
done

# ---- each tool on small real inputs ----
M="$TOP_SRCDIR/tests/fixtures/models"
A="$M/adapters/llama-classify-qv-r4"
R="$T/registry.db"
if command -v jq >/dev/null 2>&1; then
    json_ok() { jq -e . "$1" >/dev/null 2>&1; }
elif [ -n "${PYTHON3:-}" ] || command -v python3 >/dev/null 2>&1; then
    json_ok() { python3 -m json.tool "$1" >/dev/null 2>&1; }
else
    json_ok() { return 0; }
    echo "note: no jq or python3: --json output not parsed"
fi
lora-pack keygen -W -s "$T/k.sec" -p "$T/k.pub" -q >/dev/null 2>&1 || fail "lora-pack keygen"
lora-registry -r "$R" trust "$T/k.pub" -q || fail "lora-registry trust"

# One row per command: the tool, "json" if it takes --json, then its
# arguments (eval'd; each row runs twice, $S = 1 with --json and $S = 2
# without, so that outputs do not collide).
# Later rows use the outputs of earlier ones.
while IFS='|' read -r tool hasjson args; do
    [ -n "$tool" ] || continue
    for S in 1 2; do
        if [ $S = 1 ] && [ "$hasjson" = json ]; then j=--json; else j=; fi
        eval "run $tool $args $j"
        checks=$((checks + 1))
        if [ "$rc" -ne 0 ]; then
            fail "$tool $args $j: exit $rc"
            sed 's/^/  stderr: /' "$T/err" | head -n 5 >&2
            continue
        fi
        # stderr: messages only, each "lora-TOOL: ...", no progress, no escapes
        checks=$((checks + 1))
        bad=$(grep -v "^$tool: " "$T/err" | head -n 3)
        [ -z "$bad" ] || fail "$tool $j: stderr line not a '$tool: ' message: $bad"
        checks=$((checks + 1))
        if od -An -c "$T/err" "$T/out" | grep -qE '\\r|033'; then
            fail "$tool $j: progress or an escape sequence with stderr not a terminal"
        fi
        checks=$((checks + 1))
        if [ -n "$j" ]; then
            json_ok "$T/out" || fail "$tool --json: stdout is not JSON: $(head -c 200 "$T/out")"
        else
            ! json_ok "$T/out" || [ ! -s "$T/out" ] || fail "$tool without --json printed JSON"
        fi
    done
done <<ROWS
lora-inspect|json|"\$A"
lora-merge|json|"\$M/llama-base" -a "\$A" -o "\$T/merged\$S"
lora-unmerge|json|"\$T/merged\$S" -a "\$A" --receipt "\$T/merged\$S.receipt" -o "\$T/base\$S"
lora-unmerge|json|--check "\$T/merged\$S" -a "\$A" --receipt "\$T/merged\$S.receipt"
lora-rank-reduce|json|"\$A" --rank 2 -o "\$T/rr\$S"
lora-convert|json|"\$A" --base "\$M/llama-base" -o "\$T/cv\$S.gguf"
lora-pack|-|create "\$A" -s "\$T/k.sec" --name cli --task cli --version 1.0.\$S -o "\$T/a\$S.lora" -q
lora-pack|json|verify "\$T/a\$S.lora" -p "\$T/k.pub"
lora-registry|json|-r "\$R" add "\$T/a\$S.lora"
lora-registry|json|-r "\$R" tasks
lora-eval|json|--model "\$M/llama-base" -a task:cli --registry "\$R" --data - --limit 5 < "\$M/data/classify.jsonl"
ROWS

# '-' is standard input where a stream makes sense: lora-eval --data -
expect 0 sh -c "lora-eval --model '$M/llama-base' --data - --limit 3 --json < '$M/data/classify.jsonl'"
expect_out '"items": 3,'
checks=$((checks + 1))
grep -q -- '--data -\|\\fB\\-\\fR.*standard input\|standard input' "$TOP_SRCDIR/man/lora-eval.1" ||
    fail "lora-eval.1 does not document --data -"

# '-' where the output is a file committed by rename: a usage error
# naming the reason, and no file called '-' left behind
mkdir -p "$T/dash" && cd "$T/dash" || exit 99
while IFS='|' read -r tool args; do
    [ -n "$tool" ] || continue
    eval "expect 2 $tool $args"
    expect_err "^$tool: .*not (a stream|streams|streamed)"
    checks=$((checks + 1))
    [ -z "$(ls -A)" ] || { fail "$tool $args left: $(ls -A)"; rm -rf ./-*; }
done <<ROWS
lora-merge|"\$M/llama-base" -a "\$A" -o -
lora-merge|"\$M/llama-base" -a "\$A" -o out --receipt -
lora-unmerge|"\$T/merged1" -a "\$A" --receipt "\$T/merged1.receipt" -o -
lora-rank-reduce|"\$A" --rank 2 -o -
lora-convert|"\$A" --base "\$M/llama-base" -o -
lora-pack|create "\$A" -s "\$T/k.sec" --name x --task x --version 1.0.0 -o -
lora-pack|keygen -W -s - -p -
ROWS
cd "$T" || exit 99

# "-o OUT/" is OUT: the receipt goes beside it as OUT.receipt (README)
expect 0 lora-merge "$M/llama-base/" -a "$A" -o "$T/slash/" -q
checks=$((checks + 1))
[ -f "$T/slash.receipt" ] || fail "lora-merge -o OUT/: no OUT.receipt ($(ls "$T" | tr '\n' ' '))"
expect 0 lora-unmerge "$T/slash/" -a "$A" --receipt "$T/slash.receipt" -o "$T/slash-base/" -q
checks=$((checks + 1))
cmp -s "$T/slash-base/model.safetensors" "$M/llama-base/model.safetensors" ||
    fail "lora-unmerge -o OUT/: not the base bit for bit"

# on a terminal: -q silences progress, no colour with or without NO_COLOR
if command -v script >/dev/null 2>&1 && script -qec true /dev/null </dev/null >/dev/null 2>&1; then
    for q in -q ""; do
        for nc in "NO_COLOR=1" "NO_COLOR="; do
            checks=$((checks + 1))
            script -qec "env $nc lora-merge '$M/llama-base' -a '$A' -o '$T/tty$q' --no-receipt $q" \
                /dev/null </dev/null >"$T/ttylog" 2>&1 || fail "lora-merge on a terminal failed: $(cat "$T/ttylog")"
            rm -rf "$T/tty$q"
            checks=$((checks + 1))
            od -An -c "$T/ttylog" | grep -q '033' && fail "lora-merge $q $nc: escape sequence on a terminal"
            if [ -n "$q" ]; then
                checks=$((checks + 1))
                grep -q '%' "$T/ttylog" && fail "lora-merge -q: progress on a terminal: $(cat "$T/ttylog")"
            fi
            checks=$((checks + 1))
            script -qec "env $nc lora-eval --model '$M/llama-base' -a '$A' --data '$M/data/classify.jsonl' --limit 5 $q" \
                /dev/null </dev/null >"$T/ttylog" 2>&1 || fail "lora-eval on a terminal failed: $(cat "$T/ttylog")"
            checks=$((checks + 1))
            od -An -c "$T/ttylog" | grep -q '033' && fail "lora-eval $q $nc: escape sequence on a terminal"
            if [ -n "$q" ]; then
                checks=$((checks + 1))
                grep -q '/5 items' "$T/ttylog" && fail "lora-eval -q: progress on a terminal"
            fi
        done
    done
else
    echo "note: no script(1): terminal rows not run"
fi
done_testing
