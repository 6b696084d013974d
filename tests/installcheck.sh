# tests/installcheck.sh - run by `make installcheck` (and so by `make
# distcheck`): install into a temporary DESTDIR, check that every file is
# where it belongs (tools, liblora shared and static, lora.h, lora.pc,
# man pages by section, bash/zsh/fish completions), that a small C
# program builds against the installed lora.pc (shared, and static with
# lora.pc's private libraries) and runs, that the installed tools run, and that
# `make uninstall` leaves no file behind.
#
# Environment (set by the installcheck-local rule in mk/suite.am): MAKE,
# CC, PKG_CONFIG, VERSION, bindir, libdir, includedir, pkgconfigdir,
# mandir, bashcompletiondir, zshcompletiondir, fishcompletiondir (as
# make expands them), PROGRAMS, MANS, BASH_C, ZSH_C, FISH_C (lists).
set -u
failures=0
checks=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
check_file() { # PATH: a regular file (or symlink to one) in DESTDIR
    checks=$((checks + 1))
    [ -f "$D$1" ] || fail "not installed: $1"
}

D=$(mktemp -d "${TMPDIR:-/tmp}/lora-installcheck-XXXXXX") || exit 99
trap 'chmod -R u+w "$D" 2>/dev/null; rm -rf "$D"' EXIT

$MAKE install DESTDIR="$D" >"$D.log" 2>&1 || { cat "$D.log" >&2; rm -f "$D.log"; echo "FAIL: make install DESTDIR=$D"; exit 1; }
rm -f "$D.log"

for p in $PROGRAMS; do
    check_file "$bindir/$p"
    checks=$((checks + 1))
    [ -x "$D$bindir/$p" ] || fail "$bindir/$p is not executable"
done
check_file "$libdir/liblora.a"
check_file "$libdir/liblora.so"
checks=$((checks + 1))
ls "$D$libdir"/liblora.so.[0-9]* >/dev/null 2>&1 || fail "no versioned liblora.so.N in $libdir"
check_file "$includedir/lora.h"
check_file "$pkgconfigdir/lora.pc"
for m in $MANS; do
    b=${m##*/}
    check_file "$mandir/man${b##*.}/$b"
done
for f in $BASH_C; do check_file "$bashcompletiondir/${f##*/}"; done
for f in $ZSH_C; do check_file "$zshcompletiondir/${f##*/}"; done
for f in $FISH_C; do check_file "$fishcompletiondir/${f##*/}"; done
checks=$((checks + 1))
case $zshcompletiondir in */site-functions) ;; *) fail "zsh completions not in a site-functions folder: $zshcompletiondir" ;; esac
checks=$((checks + 1))
case $fishcompletiondir in */vendor_completions.d) ;; *) fail "fish completions not in vendor_completions.d: $fishcompletiondir" ;; esac

# the installed tools run, finding the installed liblora
for p in $PROGRAMS; do
    checks=$((checks + 1))
    out=$(LD_LIBRARY_PATH="$D$libdir" "$D$bindir/$p" --version 2>&1) || fail "installed $p --version: $out"
    case $out in *"$VERSION"*) ;; *) fail "installed $p --version says '$out', not $VERSION" ;; esac
done

# a program built against the installed lora.pc
cat > "$D/prog.c" <<'PROG'
#include <lora.h>
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv)
{
    lora_error e;
    lora_error_clear(&e);
    if (argc < 2 || lora_init(&e) != LORA_OK)
        return 1;
    if (strcmp(lora_version(), argv[1]) != 0) {
        fprintf(stderr, "version %s, expected %s\n", lora_version(), argv[1]);
        return 1;
    }
    printf("liblora %s, registry schema %d\n", lora_version(), lora_registry_schema_latest());
    return lora_registry_schema_latest() > 0 ? 0 : 1;
}
PROG
PKG_CONFIG_PATH="$D$pkgconfigdir"
PKG_CONFIG_SYSROOT_DIR="$D"
export PKG_CONFIG_PATH PKG_CONFIG_SYSROOT_DIR
checks=$((checks + 1))
if cflags=$($PKG_CONFIG --cflags lora) && libs=$($PKG_CONFIG --libs lora); then
    case $cflags in *"-I$D$includedir"*) ;; *) fail "pkg-config --cflags lora: '$cflags' lacks -I$D$includedir" ;; esac
    checks=$((checks + 1))
    if $CC $cflags -o "$D/prog" "$D/prog.c" $libs 2>"$D/cc.err"; then
        checks=$((checks + 1))
        out=$(LD_LIBRARY_PATH="$D$libdir" "$D/prog" "$VERSION" 2>&1) || fail "program linked with lora.pc: $out"
    else
        fail "cc against lora.pc: $(cat "$D/cc.err")"
    fi
else
    fail "pkg-config does not find the installed lora.pc"
fi
# static: all of liblora.a (--whole-archive: every object must link, not
# only those prog.c needs) plus what lora.pc declares private (Requires.private,
# linked as those libraries' own pkg-config says, and Libs.private).
# Not `pkg-config --static`: that also asks for the static dependencies
# of libarchive & co. (-lacl, -lzstd ...), a property of this machine.
checks=$((checks + 1))
if req=$($PKG_CONFIG --print-requires-private lora) &&
    rlibs=$($PKG_CONFIG --libs $(printf '%s\n' "$req" | awk '{print $1}')); then
    plibs=$(sed -n 's/^Libs\.private://p' "$D$pkgconfigdir/lora.pc")
    checks=$((checks + 1))
    if $CC $cflags -o "$D/prog-static" "$D/prog.c" -Wl,--whole-archive "$D$libdir/liblora.a" -Wl,--no-whole-archive $rlibs $plibs 2>"$D/cc.err"; then
        checks=$((checks + 1))
        out=$("$D/prog-static" "$VERSION" 2>&1) || fail "program linked with liblora.a: $out"
    else
        fail "cc with liblora.a and lora.pc's private libraries: $(cat "$D/cc.err")"
    fi
else
    fail "pkg-config: lora.pc's Requires.private not found"
fi
rm -f "$D/prog" "$D/prog-static" "$D/prog.c" "$D/cc.err"

# uninstall leaves nothing
$MAKE uninstall DESTDIR="$D" >/dev/null 2>&1 || fail "make uninstall DESTDIR=$D"
checks=$((checks + 1))
left=$(cd "$D" && find . ! -type d)
[ -z "$left" ] || fail "left after make uninstall: $left"

echo "installcheck: $checks checks, $failures failed"
[ "$failures" -eq 0 ]
