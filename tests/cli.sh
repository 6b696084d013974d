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
# ---- issue 19: one command-line surface ----
# 19.1: every tool that opens an adapter takes the same options
for tool in lora-inspect lora-merge lora-unmerge lora-rank-reduce lora-eval lora-convert; do
    "$tool" --help > "$T/h" 2>&1
    for o in --pubkey --no-verify --registry; do
        checks=$((checks + 1))
        grep -q -- "$o" "$T/h" || fail "$tool --help: no $o"
    done
done
# an archive with its key, in every tool that opens one
expect 0 lora-inspect "$T/a1.lora" -p "$T/k.pub" -q
expect 0 lora-rank-reduce "$T/a1.lora" -p "$T/k.pub" --rank 2 -o "$T/rr-key" -q
expect 0 lora-merge "$M/llama-base" -a "$T/a1.lora" -p "$T/k.pub" -o "$T/m-key" -q
expect 0 lora-unmerge "$T/m-key" -a "$T/a1.lora" -p "$T/k.pub" --receipt "$T/m-key.receipt" -o "$T/u-key" -q
expect 0 lora-convert "$T/a1.lora" -p "$T/k.pub" --base "$M/llama-base" -o "$T/cv-key.gguf" -q
expect 0 lora-eval --model "$M/llama-base" -a "$T/a1.lora" -p "$T/k.pub" --data "$M/data/classify.jsonl" --limit 3 -q
# no -p: the keys the registry trusts (--registry or $LORA_REGISTRY)
expect 0 lora-rank-reduce "$T/a1.lora" --registry "$R" --rank 2 -o "$T/rr-reg" -q
expect 0 lora-convert "$T/a1.lora" --registry "$R" --base "$M/llama-base" -o "$T/cv-reg.gguf" -q
expect 0 env LORA_REGISTRY="$R" lora-inspect "$T/a1.lora"
expect 0 env LORA_REGISTRY="$R" lora-merge "$M/llama-base" -a "$T/a1.lora" -o "$T/m-reg" -q
# neither a key nor a registry: a usage error naming both ways
expect 2 env LORA_REGISTRY="$T/none.db" lora-inspect "$T/a1.lora"
expect_err "^lora-inspect: .*-p KEY.pub.*registry.*--no-verify"
# an unreadable default registry is no registry; one named with --registry must be read
echo garbage > "$T/bad.db"
expect 2 env LORA_REGISTRY="$T/bad.db" lora-inspect "$T/a1.lora"
expect 3 lora-inspect --registry "$T/bad.db" "$T/a1.lora"
expect_err "^lora-inspect: trusted keys of .*bad.db"
# --no-verify warns with the tool's name
expect 0 env LORA_REGISTRY="$T/none.db" lora-rank-reduce "$T/a1.lora" --no-verify --rank 2 -o "$T/rr-nv" -q
expect_err "^lora-rank-reduce: warning: .*NOT verified"

# 19.2 and 19.4: on failure, --json prints one error object on stdout
# whose exit matches the status; usage errors are one line and a
# pointer to --help, never the whole help
while IFS='|' read -r want class args; do
    [ -n "$want" ] || continue
    eval "run $args --json"
    tool=${args%% *}
    checks=$((checks + 1))
    [ "$rc" = "$want" ] || fail "$args: exit $rc, not $want"
    checks=$((checks + 1))
    if command -v jq >/dev/null 2>&1; then
        got=$(jq -r '.error | "\(.exit) \(.class) \(.message | length > 0)"' "$T/out" 2>/dev/null)
        [ "$got" = "$want $class true" ] || fail "$args --json: error object '$got', not '$want $class': $(cat "$T/out")"
    else
        grep -q "\"exit\":$want,\"class\":\"$class\"" "$T/out" || fail "$args --json: $(cat "$T/out")"
    fi
    checks=$((checks + 1))
    grep -q "^$tool: " "$T/err" || fail "$args --json: no human message on stderr"
    checks=$((checks + 1))
    [ "$(wc -l < "$T/err")" -le 2 ] || fail "$args: $(wc -l < "$T/err") lines on stderr (whole help?)"
done <<ROWS
3|input|lora-inspect /nonexistent
2|usage|lora-inspect
3|input|lora-merge /nonexistent -a "\$A" -o "\$T/x1"
2|usage|lora-merge
2|usage|lora-merge "\$M/llama-base" -a "\$A":1e400 -o "\$T/x2"
2|usage|lora-merge "\$M/llama-base" -a "\$A":nan -o "\$T/x2"
3|input|lora-unmerge /nonexistent -a "\$A" -o "\$T/x3"
2|usage|lora-unmerge
2|usage|lora-unmerge "\$T/m-key" -a "\$A":inf --receipt "\$T/m-key.receipt" -o "\$T/x3"
3|input|lora-rank-reduce /nonexistent --rank 2 -o "\$T/x4"
2|usage|lora-rank-reduce
2|usage|lora-rank-reduce -a "\$A":1e400 --rank 2 -o "\$T/x4"
3|input|lora-convert /nonexistent --base "\$M/llama-base" -o "\$T/x5.gguf"
2|usage|lora-convert
3|input|lora-eval --model /nonexistent --data "\$M/data/classify.jsonl"
3|input|lora-eval --model "\$M/llama-base/model.safetensors" --data "\$M/data/classify.jsonl"
2|usage|lora-eval
3|input|lora-pack list /nonexistent.lora
3|input|lora-registry -r "\$T/none.db" ls
2|usage|lora-registry
ROWS

# the short spelling of --json too
for args in "lora-inspect -cj /nonexistent" "lora-convert -j /nonexistent --base x -o x.gguf"; do
    run $args
    checks=$((checks + 1))
    grep -q '"error":{"exit":3,"class":"input"' "$T/out" || fail "$args: no JSON error: $(cat "$T/out")"
done
# a file where a folder is needed is bad input (3), not I/O (4)
expect 3 lora-pack create "$A/adapter_model.safetensors" -s "$T/k.sec" --name x --task x --version 1.0.0 -o "$T/x6.lora"
expect_err "^lora-pack: .*Not a directory"
# lora-pack verify --json reports the failure in its own report
expect 3 lora-pack verify /nonexistent.lora -p "$T/k.pub" --json
checks=$((checks + 1))
json_ok "$T/out" && grep -q '"ok": false' "$T/out" || fail "lora-pack verify --json: $(cat "$T/out")"

# 19.3: "-o OUT/" or an existing folder OUT with a one-file output
# writes the file inside it; an output that cannot be committed is
# refused before any work, with nothing written
expect 0 lora-merge "$M/llama-base/model.safetensors" -a "$A" -o "$T/fo/" -q
checks=$((checks + 1))
[ -f "$T/fo/model.safetensors" ] || fail "lora-merge FILE -o OUT/: no OUT/model.safetensors ($(ls -d "$T"/fo*))"
mkdir "$T/fe"
expect 0 lora-merge "$M/llama-base/model.safetensors" -a "$A" -o "$T/fe" -q
checks=$((checks + 1))
[ -f "$T/fe/model.safetensors" ] || fail "lora-merge FILE -o EXISTING-FOLDER: nothing inside"
expect 0 lora-unmerge "$T/fe/model.safetensors" -a "$A" --receipt "$T/fe/model.safetensors.receipt" -o "$T/fu/" -q
checks=$((checks + 1))
cmp -s "$T/fu/model.safetensors" "$M/llama-base/model.safetensors" || fail "lora-unmerge -o OUT/: not the base"
expect 0 lora-pack create "$A" -s "$T/k.sec" --name cli --task cli --version 1.0.3 -o "$T/fp/" -q
checks=$((checks + 1))
[ -f "$T/fp/cli-1.0.3.lora" ] || fail "lora-pack create -o OUT/: $(ls "$T/fp" 2>&1)"
expect 0 lora-convert "$A" --base "$M/llama-base" -o "$T/fg/" -q
checks=$((checks + 1))
[ -f "$T/fg/llama-classify-qv-r4.gguf" ] || fail "lora-convert -o OUT/: $(ls "$T/fg" 2>&1)"
: > "$T/plain"
while IFS='|' read -r want args; do
    [ -n "$want" ] || continue
    eval "expect $want $args"
    tool=${args%% *}
    expect_err "^$tool: .*(cannot write here|exists and is)"
    checks=$((checks + 1))
    ls "$T"/plain.tmp-* "$T"/nodir* >/dev/null 2>&1 && fail "$args: left files behind"
done <<ROWS
3|lora-merge "\$M/llama-base/model.safetensors" -a "\$A" -o "\$T/plain/x" -q
4|lora-merge "\$M/llama-base/model.safetensors" -a "\$A" -o "\$T/nodir/x" -q
2|lora-merge "\$M/llama-base" -a "\$A" -o "\$T/plain" -q
2|lora-rank-reduce "\$A" --rank 2 -o "\$T/plain" -q
4|lora-rank-reduce "\$A" --rank 2 -o "\$T/nodir/x" -q
3|lora-convert "\$A" --base "\$M/llama-base" -o "\$T/plain/x.gguf" -q
3|lora-pack create "\$A" -s "\$T/k.sec" --name x --task x --version 1.0.0 -o "\$T/plain/x.lora" -q
3|lora-unmerge "\$T/fe/model.safetensors" -a "\$A" --receipt "\$T/fe/model.safetensors.receipt" -o "\$T/plain/x" -q
ROWS

# 19.3: an output folder that exists but may not be written is refused
# before any work (4).  chmod a-w does not stop root, so as root the
# folder is made immutable (chattr +i), which stops root too; where
# chattr is refused (no CAP_LINUX_IMMUTABLE, a filesystem without
# attributes) these rows SKIP with the reason.
mkdir "$T/ro"
ro=
if [ "$(id -u)" != 0 ]; then
    chmod a-w "$T/ro" && ro=chmod
elif chattr +i "$T/ro" 2>/dev/null; then
    ro=chattr
    trap 'chattr -i "$T/ro" 2>/dev/null; rm -rf "$T"' EXIT
else
    echo "SKIP: output not writable: running as root and 'chattr +i' is refused here"
fi
[ -n "$ro" ] && while IFS='|' read -r want args; do
    [ -n "$want" ] || continue
    eval "expect $want $args"
    tool=${args%% *}
    expect_err "^$tool: .*/ro/x.*: cannot write here: .*/ro: (Permission denied|Operation not permitted)"
    checks=$((checks + 1))
    [ -z "$(ls -A "$T/ro")" ] || fail "$args: wrote into the read-only folder"
done <<ROWS
4|lora-merge "\$M/llama-base/model.safetensors" -a "\$A" -o "\$T/ro/x" -q
4|lora-merge "\$M/llama-base" -a "\$A" -o "\$T/ro/x" -q
4|lora-unmerge "\$T/fe/model.safetensors" -a "\$A" --receipt "\$T/fe/model.safetensors.receipt" -o "\$T/ro/x" -q
4|lora-rank-reduce "\$A" --rank 2 -o "\$T/ro/x" -q
4|lora-convert "\$A" --base "\$M/llama-base" -o "\$T/ro/x.gguf" -q
4|lora-pack create "\$A" -s "\$T/k.sec" --name x --task x --version 1.0.0 -o "\$T/ro/x.lora" -q
ROWS
case $ro in
chmod) chmod u+w "$T/ro" ;;
chattr) chattr -i "$T/ro" ;;
esac

# 19.7: --dtype --convert-all converts the whole checkpoint (untouched
# tensors and config.json's torch_dtype too); narrowing F32 to BF16 loses
# bits, so the receipt keeps the originals and the unmerge gives back the
# original base byte for byte, config.json included; without the receipt
# the unmerge refuses (3) rather than return a converted base
expect 2 lora-merge "$M/llama-base" -a "$A" --convert-all -o "$T/cv0" -q
expect_err "^lora-merge: --convert-all needs --dtype"
expect 0 lora-merge "$M/llama-base" -a "$A" --dtype BF16 --convert-all -o "$T/cv" --json
checks=$((checks + 1))
grep -q '"converted_tensors": [1-9]' "$T/out" || fail "--convert-all: no converted_tensors: $(cat "$T/out")"
checks=$((checks + 1))
head -c 4096 "$T/cv/model.safetensors" | grep -aq '"dtype":"F32"' && fail "--convert-all: an F32 tensor is left"
checks=$((checks + 1))
grep -q '"torch_dtype": "bfloat16"' "$T/cv/config.json" || fail "--convert-all: $(grep dtype "$T/cv/config.json")"
expect 0 lora-unmerge "$T/cv" -a "$A" --receipt "$T/cv.receipt" -o "$T/cvu" -q
for f in model.safetensors config.json; do
    checks=$((checks + 1))
    cmp -s "$T/cvu/$f" "$M/llama-base/$f" || fail "unmerge after --convert-all: $f is not the base's"
done
expect 3 lora-unmerge "$T/cv" -a "$A" -o "$T/cvn" -q
expect_err "^lora-unmerge: .*--convert-all.*--receipt"
checks=$((checks + 1))
[ -e "$T/cvn" ] && fail "unmerge of a converted checkpoint without its receipt wrote $T/cvn"
# a value no adapter touches beyond F16 (1e5 in model.norm.weight) is
# refused as a merged one is: exit 3 naming the tensor, nothing written
h='{"model.layers.0.mlp.down_proj.weight":{"dtype":"F32","shape":[4,4],"data_offsets":[0,64]},"model.norm.weight":{"dtype":"F32","shape":[1],"data_offsets":[64,68]}}'
while [ $((${#h} % 8)) -ne 0 ]; do h="$h "; done
{
    printf "\\$(printf %03o $((${#h} % 256)))\\$(printf %03o $((${#h} / 256)))\\0\\0\\0\\0\\0\\0"
    printf '%s' "$h"
    head -c 64 /dev/zero
    printf '\000\120\303\107' # 1e5, F32 little-endian
} > "$T/big.safetensors"
expect 3 lora-merge "$T/big.safetensors" -a "$TOP_SRCDIR/tests/cases/f16-merge-overflow/adapter" \
    --dtype F16 --convert-all -o "$T/big16.safetensors" -q
expect_err "^lora-merge: model.norm.weight: value\(s\) not finite in F16.*first: element 0: 100000"
checks=$((checks + 1))
ls "$T"/big16* >/dev/null 2>&1 && fail "--convert-all overflow: something was written"
expect 0 lora-merge "$T/big.safetensors" -a "$TOP_SRCDIR/tests/cases/f16-merge-overflow/adapter" \
    --dtype F16 -o "$T/big16b.safetensors" -q

# 19.5: provenance names NAME@VERSION (archive, registry) or the folder's
# own name, with the BLAKE2b, never a local path
expect 0 lora-merge "$M/llama-base" -a "$T/a1.lora":0.5 -a "$A/" -p "$T/k.pub" --force -o "$T/prov" -q
for f in "$T/prov/model.safetensors" "$T/prov.receipt"; do
    checks=$((checks + 1))
    grep -aqF -- "$T" "$f" && fail "${f##*/}: a local path in the provenance"
    checks=$((checks + 1))
    grep -aqF '"cli@1.0.1"' "$f" || grep -aqF 'cli@1.0.1' "$f" || fail "${f##*/}: no cli@1.0.1"
done
checks=$((checks + 1))
grep -aqE 'blake2b\\":\\"[0-9a-f]{64}\\",\\"weight\\":1(\.0)?,\\"adapter\\":\\"llama-classify-qv-r4\\"' "$T/prov/model.safetensors" ||
    fail "merged metadata: no folder name with its BLAKE2b"

# 19.7: layers listed numerically (2 before 10), in the module and tensor lists
"$TOP_BUILDDIR/tests/mkfixture" llama "$T/l12" --layers 12 --hidden 16 --heads 2 --intermediate 32 \
    --vocab 32 --rank 2 --no-base >/dev/null || fail "mkfixture"
expect 0 lora-inspect -t "$T/l12/adapter"
checks=$((checks + 1))
order=$(grep -oE 'layers\.[0-9]+\.self_attn\.q_proj\.lora_A' "$T/out" | grep -oE '[0-9]+' | tr '\n' ' ')
[ "$order" = "0 1 2 3 4 5 6 7 8 9 10 11 " ] || fail "lora-inspect -t: layers in order '$order'"
# real values in rewritten configs in their shortest form (0.05, not 0.050000000000000003)
cp -r "$A" "$T/drop"
sed 's/"lora_dropout": 0.0/"lora_dropout": 0.05/' "$A/adapter_config.json" > "$T/drop/adapter_config.json"
expect 0 lora-rank-reduce "$T/drop" --rank 2 -o "$T/drop-rr" -q
checks=$((checks + 1))
grep -q '"lora_dropout": 0.05,' "$T/drop-rr/adapter_config.json" ||
    fail "lora-rank-reduce: $(grep dropout "$T/drop-rr/adapter_config.json")"
# one prefix per message: no "lora-pack: extract: lora-pack: usage:"
expect 2 lora-pack extract "$T/a1.lora" -C "$T/ex"
checks=$((checks + 1))
[ "$(grep -o 'lora-pack:' "$T/err" | wc -l)" = 1 ] || fail "lora-pack extract without a key: $(cat "$T/err")"

# 19.7: one of two merged adapters out: lora-unmerge refuses naming the
# way, and that way (lora-unmerge(1)) is the direct merge bit for bit
B2="$M/adapters/llama-reverse-qv-r4"
expect 0 lora-merge "$M/llama-base" -a "$A" -a "$B2" -o "$T/two" -q
expect 3 lora-unmerge "$T/two" -a "$A" --receipt "$T/two.receipt" -o "$T/two-a"
expect_err "^lora-unmerge: to take out only some .*lora-merge MERGED .*--unmerge"
expect 0 lora-merge "$T/two" --receipt "$T/two.receipt" --unmerge "$A" --unmerge "$B2" -a "$B2" -o "$T/two-b" -q
expect 0 lora-merge "$M/llama-base" -a "$B2" -o "$T/b-only" -q
checks=$((checks + 1))
cmp -s "$T/two-b/model.safetensors" "$T/b-only/model.safetensors" || fail "task switch to one of two: not the direct merge"
checks=$((checks + 1))
grep -qF -- '\-\-unmerge adapters/sql' "$TOP_SRCDIR/man/lora-unmerge.1" || fail "lora-unmerge.1: no way to take one adapter out"

# 19.4: a missing argument or value is a usage error (2): one line and
# a pointer to --help, never the whole help
while read -r args; do
    [ -n "$args" ] || continue
    eval "run $args"
    checks=$((checks + 1))
    [ "$rc" = 2 ] || fail "$args: exit $rc, not 2"
    checks=$((checks + 1))
    [ "$(wc -l < "$T/err")" -le 2 ] && grep -q -- '--help' "$T/err" ||
        fail "$args: not one line and --help: $(head -n 3 "$T/err")"
    checks=$((checks + 1))
    [ -s "$T/out" ] && fail "$args: wrote to stdout"
done <<ROWS
lora-inspect
lora-inspect --base
lora-merge
lora-merge -a
lora-merge "\$M/llama-base" -o "\$T/x"
lora-unmerge
lora-unmerge -a
lora-rank-reduce
lora-rank-reduce --rank
lora-rank-reduce "\$A" -o "\$T/x"
lora-convert
lora-convert -o
lora-eval
lora-eval --model
lora-pack
lora-pack create
lora-pack keygen
lora-pack verify
lora-pack extract "\$T/a1.lora"
lora-registry
lora-registry add
lora-registry trust
lora-registry -r
ROWS

# 19.7: lora-inspect -q is silent, the exit status tells
expect 0 lora-inspect -q "$A"
checks=$((checks + 1))
[ -s "$T/out" ] && fail "lora-inspect -q printed: $(head -c 200 "$T/out")"

done_testing
