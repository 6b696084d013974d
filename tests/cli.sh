# tests/cli.sh - one behaviour across every tool, checked from one table
# (issue 8): --help and --version, unknown options are usage errors (2)
# with a "lora-TOOL: " message on stderr and nothing on stdout, every
# long option --help prints is documented in the tool's man page and
# offered by its bash, zsh and fish completions.
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

    expect 2 "$bin" --no-such-option-at-all
    expect_err "^$tool: "
    [ -s "$T/out" ] && fail "$tool: usage error wrote to stdout"

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

    # the man page renders without warnings
    if command -v groff >/dev/null 2>&1 && [ -f "$man" ]; then
        checks=$((checks + 1))
        w=$(groff -ww -man -Tutf8 "$man" 2>&1 >/dev/null)
        [ -z "$w" ] || fail "$tool.1: groff warnings: $w"
    fi
done
done_testing
