# tests/registry.sh - lora-registry end to end, with real signed archives
# made by lora-pack from a tiny adapter built here: trust and untrust,
# untrusted archives refused unless --allow-untrusted, semantic version
# order in resolve, 8 concurrent writers adding 16 archives each, a
# corrupted blob found by verify and refused by resolve, a registry from
# a newer schema refused, add killed midway (kill -9), rm/gc, --json.
. "$TOP_SRCDIR/tests/lib.sh"

R="$T/reg/registry.db"
export LORA_REGISTRY="$R"
REG=lora-registry

# mkad DIR NFLOATS: a PEFT folder with one r=1 module whose lora_A holds
# NFLOATS zeros (a large NFLOATS makes a large archive).
mkad() {
    mkdir -p "$1"
    printf '%s\n' '{"peft_type": "LORA", "r": 1, "lora_alpha": 2, "target_modules": ["q"], "base_model_name_or_path": "tiny-base"}' \
        > "$1/adapter_config.json"
    n=$2
    bytes=$((n * 4))
    h="{\"base_model.model.l.q.lora_A.weight\":{\"dtype\":\"F32\",\"shape\":[1,$n],\"data_offsets\":[0,$bytes]},\"base_model.model.l.q.lora_B.weight\":{\"dtype\":\"F32\",\"shape\":[1,1],\"data_offsets\":[$bytes,$((bytes + 4))]}}"
    while [ $((${#h} % 8)) -ne 0 ]; do h="$h "; done
    len=${#h}
    {
        printf "\\$(printf %03o $((len % 256)))\\$(printf %03o $((len / 256)))\\0\\0\\0\\0\\0\\0"
        printf '%s' "$h"
        head -c $((bytes + 4)) /dev/zero
    } > "$1/adapter_model.safetensors"
}

# pack KEY NAME TASK VERSION [DIR]: prints the archive path
pack() {
    out="$T/arc/$2-$4.lora"
    lora-pack create "${5:-$T/ad}" -s "$T/$1.sec" --name "$2" --task "$3" --version "$4" \
        -o "$out" -q 2>"$T/pack.err" || { fail "lora-pack create $2@$4: $(cat "$T/pack.err")"; }
    printf '%s\n' "$out"
}

mkdir -p "$T/arc"
mkad "$T/ad" 2
lora-pack keygen -W -s "$T/alice.sec" -p "$T/alice.pub" -q >/dev/null 2>&1 || fail "keygen alice"
lora-pack keygen -W -s "$T/mallory.sec" -p "$T/mallory.pub" -q >/dev/null 2>&1 || fail "keygen mallory"
ALICE=$(sed -n 's/.*public key //p' "$T/alice.pub")

# ---- no registry yet: read commands say so, nothing is created ----
expect 3 $REG ls
expect_err "no registry at $R"
[ -e "$R" ] && fail "ls created the registry"
# the latest schema: one version per migration in registry/
NMIG=$(ls "$TOP_SRCDIR"/registry/[0-9]*.sql | wc -l | tr -d ' ')
expect 0 $REG init
expect_out "schema version $NMIG"
expect 0 $REG --registry "$T/other/r.db" init --json
expect_out "\"schema_version\": $NMIG"

# ---- keys ----
expect 0 $REG trust "$T/alice.pub" --name alice
expect_out "trusted key $ALICE alice"
expect 0 $REG keys --json
expect_out "\"key_id\": \"$ALICE\""
expect_out '"name": "alice"'
expect 3 $REG trust "$T/nonexistent.pub"

# ---- add, twice, untrusted ----
A1=$(pack alice sql-a sql 1.9.0)
expect 0 $REG add "$A1"
expect_out "^added sql-a@1.9.0 \(task sql\)"
expect 0 $REG add "$A1"
expect_out "already present"
M1=$(pack mallory evil sql 9.0.0)
expect 1 $REG add "$M1"
expect_err "^lora-registry: "
expect 0 $REG ls --task sql
expect_out "sql-a"
grep -q evil "$T/out" && fail "refused archive was registered"
expect 0 $REG add "$M1" --allow-untrusted
expect_err "warning: evil@9.0.0 registered as UNTRUSTED"
# the reason in the registry's terms, naming the archive, never the temporary
expect_err "evil-9.0.0.lora: not signed by any of the registry's 1 trusted keys"
checks=$((checks + 1))
grep -q "incoming.tmp" "$T/err" && fail "the warning names a temporary: $(cat "$T/err")"
expect 0 $REG ls --json
expect_out '"trusted": false'

# a corrupted archive never enters, even with --allow-untrusted
cp "$A1" "$T/bad.lora"
printf 'X' | dd of="$T/bad.lora" bs=1 seek=3000 conv=notrunc 2>/dev/null
run $REG add "$T/bad.lora" --allow-untrusted
checks=$((checks + 1))
case $rc in 1|3) ;; *) fail "add of a damaged archive: exit $rc, want 1 or 3" ;; esac
expect_err "bad.lora"
expect 0 $REG ls
grep -q "sql-a .*1.9.0" "$T/out" || fail "ls lost sql-a@1.9.0"
[ "$(grep -c sql-a "$T/out")" -eq 1 ] || fail "a damaged archive was registered"
expect 3 $REG add "$T/nonexistent.lora"

# ---- semantic version order ----
A2=$(pack alice sql-a sql 1.10.0)
A3=$(pack alice sql-a sql 1.10.0-rc.1)
A4=$(pack alice sql-b sql 1.2.0)
for a in "$A2" "$A3" "$A4"; do expect 0 $REG add "$a" -q; done
expect 0 $REG resolve sql
want=$($REG show sql-a@1.10.0 --json | sed -n 's/.*"path": "\(.*\)".*/\1/p')
[ "$(cat "$T/out")" = "$want" ] || fail "resolve sql gave $(cat "$T/out"), want sql-a@1.10.0 ($want)"
cmp -s "$want" "$A2" || fail "blob of sql-a@1.10.0 differs from its archive"
expect 0 $REG resolve task:sql --version 1.10.0-rc.1 --json
expect_out '"version": "1.10.0-rc.1"'
expect 0 $REG resolve sql --base tiny-base --version 1.9.0
expect_out "\.lora$"
expect 3 $REG resolve sql --base other-base
expect_err "no trusted adapter for task sql on base other-base"
expect 3 $REG resolve nosuchtask
expect 0 $REG show sql-a
expect_out "version: +1.10.0$"

# other tools take task:TASK and reg:NAME@VERSION (source.c)
if [ -x "$TOP_BUILDDIR/lora-inspect" ]; then
    expect 0 lora-inspect task:sql
    expect_out "reg:sql-a@1.10.0"
    expect 0 lora-inspect reg:sql-a@1.9.0
    # reg:NAME without @VERSION: the newest, as show takes it
    expect 0 lora-inspect reg:sql-a
    expect_out "reg:sql-a@1.10.0"
    expect 1 lora-inspect reg:evil@9.0.0
    expect_err "untrusted in the registry"
    expect 3 lora-inspect task:nosuchtask
fi

# ---- 8 writers x 16 archives (contention, not volume) at once ----
mkdir -p "$T/conc"
# the archives first (8 packers at once: lora-pack mostly waits on fsync)
for p in 1 2 3 4 5 6 7 8; do
    (
        i=0
        while [ $i -lt 16 ]; do
            out="$T/arc/w$p-1.$i.0.lora"
            lora-pack create "$T/ad" -s "$T/alice.sec" --name "w$p" --task conc \
                --version "1.$i.0" -o "$out" -q 2>>"$T/conc/packerr$p" || exit 1
            echo "$out" >> "$T/conc/list$p"
            i=$((i + 1))
        done
    ) &
done
wait
checks=$((checks + 1))
[ "$(cat "$T"/conc/list* | wc -l)" -eq 128 ] || fail "lora-pack create failed: $(cat "$T"/conc/packerr* | head -n 3)"
for p in 1 2 3 4 5 6 7 8; do
    (
        rc=0
        while read -r a; do
            $REG add "$a" -q 2>>"$T/conc/err$p" || rc=1
        done < "$T/conc/list$p"
        exit $rc
    ) &
    eval "pid$p=\$!"
done
for p in 1 2 3 4 5 6 7 8; do
    checks=$((checks + 1))
    eval "wait \$pid$p" || fail "writer $p: an add failed: $(head -n 3 "$T/conc/err$p")"
done
checks=$((checks + 1))
cat "$T"/conc/err* | grep -q "locked" && fail "database is locked: $(grep -m1 locked "$T"/conc/err*)"
expect 0 $REG ls --task conc -q
n=$(grep -c ' conc ' "$T/out")
checks=$((checks + 1))
[ "$n" -eq 128 ] || fail "ls --task conc: $n rows, want 128"
expect 0 $REG verify
expect_out "every blob intact"

# ---- a blob corrupted on disk ----
expect 0 $REG resolve sql
blob=$(cat "$T/out")
chmod u+w "$blob"
printf 'X' | dd of="$blob" bs=1 seek=2000 conv=notrunc 2>/dev/null
expect 1 $REG verify
expect_err "sql-a@1.10.0: blob .* is corrupted"
expect 1 $REG verify --json
expect_out '"ok": false'
expect 1 $REG resolve sql
expect_err "corrupted"
[ -s "$T/out" ] && fail "resolve printed a path for a corrupted blob"
# served to a tool: the message comes from the bytes read, not a re-read
if [ -x "$TOP_BUILDDIR/lora-inspect" ]; then
    expect 1 lora-inspect reg:sql-a@1.10.0
    expect_err "sql-a@1.10.0: blob .* is corrupted \\([0-9]+ bytes, BLAKE2b-256"
fi
# re-adding the archive repairs it
expect 0 $REG add "$A2"
expect 0 $REG verify

# ---- untrust ----
expect 0 $REG untrust "$ALICE"
expect_out "no longer trusted"
expect 3 $REG resolve sql
expect_err "only untrusted"
expect 0 $REG ls --task sql
expect_out "UNTRUSTED"
expect 3 $REG untrust "$ALICE"
# trusting the key again restores its adapters, without re-adding them
expect 0 $REG trust "$T/alice.pub"
expect 0 $REG resolve sql
expect 0 $REG show sql-a@1.9.0
expect_out "trusted: +yes"

# ---- rm, gc ----
expect 0 $REG rm sql-b@1.2.0
expect 3 $REG rm sql-b@1.2.0
expect 2 $REG rm sql-b
expect 0 $REG gc --json
expect_out '"removed_files": 1'
expect 0 $REG gc
expect_out "removed 0 files"

# ---- evals (none recorded by this test) ----
expect 0 $REG evals sql-a --json
expect_out '^\[\]$'
expect 3 $REG evals nosuch
expect_err "no adapter nosuch"
expect 3 $REG evals sql-a@9.9.9

# ---- lora-pack create checks the version the registry will want ----
expect 2 lora-pack create "$T/ad" -s "$T/alice.sec" --name x --task y --version v2 -o "$T/v2.lora"
expect_err "v2 is not a semantic version"
checks=$((checks + 1))
[ -e "$T/v2.lora" ] && fail "an archive with version v2 was written"

# ---- kill -9 of add midway ----
mkad "$T/bigad" 4000000
BIG=$(pack alice big big 1.0.0 "$T/bigad")
for delay in 0.01 0.03 0.06 0.1 0.2; do
    touch "$T/stamp"
    $REG add "$BIG" -q 2>/dev/null &
    pid=$!
    sleep $delay
    kill -9 $pid 2>/dev/null
    wait $pid 2>/dev/null
    expect 0 $REG verify -q
    # no partial blob under a final name
    find "$(dirname "$R")/blobs" -name '*.lora' -newer "$T/stamp" > "$T/new"
    while read -r f; do
        h=$(b2sum -l 256 "$f" | cut -d' ' -f1)
        checks=$((checks + 1))
        [ "$(basename "$f" .lora)" = "$h" ] || fail "partial blob under its final name: $f"
    done < "$T/new"
    $REG rm big@1.0.0 -q 2>/dev/null
    $REG gc -q
done

# ---- serving what is checked: a blob swapped with another trusted archive ----
# mkbase FILE W0 W1: a one-tensor base for $T/ad (l.q.weight, F32 [1,2]);
# W0, W1 as printf octal escapes of the little-endian floats.
mkbase() {
    h='{"l.q.weight":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]}}'
    while [ $((${#h} % 8)) -ne 0 ]; do h="$h "; done
    { printf "\\$(printf %03o ${#h})\\0\\0\\0\\0\\0\\0\\0"; printf '%s' "$h"; printf "$2$3"; } > "$1"
}
mkbase "$T/b1.safetensors" '\0\0\200\77' '\0\0\0\100'
mkbase "$T/b2.safetensors" '\0\0\100\100' '\0\0\200\100'
# swap-b changes the weights (A and B all ones), swap-a does not (zeros):
# a merge of the wrong one shows in the output
mkdir -p "$T/ad2"
cp "$T/ad/adapter_config.json" "$T/ad2/"
head -c -12 "$T/ad/adapter_model.safetensors" > "$T/ad2/adapter_model.safetensors"
printf '\0\0\200\77\0\0\200\77\0\0\200\77' >> "$T/ad2/adapter_model.safetensors"
SW_A=$(pack alice swap-a swap 1.0.0)
SW_B=$(pack alice swap-b other 1.0.0 "$T/ad2")
expect 0 $REG add "$SW_A" -q
expect 0 $REG add "$SW_B" -q
expect 0 lora-merge "$T/b1.safetensors" -a task:swap -o "$T/m1.safetensors" --no-receipt -q
expect 0 lora-merge "$T/b1.safetensors" -a task:other -o "$T/mb.safetensors" --no-receipt -q
checks=$((checks + 1))
cmp -s "$T/m1.safetensors" "$T/mb.safetensors" && fail "swap-a and swap-b merge alike: the swap tests would see nothing"
blob_a=$($REG resolve swap)
blob_b=$($REG resolve other)
cp "$blob_a" "$T/blob_a.saved"
chmod u+w "$blob_a"
cp "$blob_b" "$blob_a"
expect 1 lora-merge "$T/b1.safetensors" -a task:swap -o "$T/m2.safetensors" --no-receipt -q
expect_err "swap-a@1.0.0: blob .* holds swap-b@1.0.0"
checks=$((checks + 1))
[ -e "$T/m2.safetensors" ] && fail "lora-merge wrote an output from a swapped blob"
expect 1 $REG verify
expect_err "swap-a@1.0.0"
expect 0 $REG add "$SW_A" -q # repairs the blob
expect 0 lora-merge "$T/b1.safetensors" -a task:swap -o "$T/m2.safetensors" --no-receipt -q
checks=$((checks + 1))
cmp -s "$T/m1.safetensors" "$T/m2.safetensors" || fail "merge after repair differs"

# the swap racing the merges (by rename and by rewriting in place): every
# run merges swap-a exactly or refuses, none merges swap-b
cp "$blob_a" "$T/good_a"
cp "$blob_b" "$T/good_b"
rm -f "$T/stop"
(
    while [ ! -e "$T/stop" ]; do
        cp "$T/good_b" "$blob_a.x" && mv -f "$blob_a.x" "$blob_a"
        cp "$T/good_a" "$blob_a.x" && mv -f "$blob_a.x" "$blob_a"
        cat "$T/good_b" > "$blob_a"
        cat "$T/good_a" > "$blob_a"
    done
) &
swapper=$!
i=0 merged=0 refused=0
while [ $i -lt 40 ]; do
    out="$T/race$i.safetensors"
    run lora-merge "$T/b1.safetensors" -a task:swap -o "$out" --no-receipt -q
    checks=$((checks + 1))
    if [ "$rc" -eq 0 ]; then
        merged=$((merged + 1))
        cmp -s "$T/m1.safetensors" "$out" || fail "race run $i: exit 0 with another adapter merged"
    elif [ "$rc" -eq 1 ]; then
        refused=$((refused + 1))
        [ -e "$out" ] && fail "race run $i: refused but wrote $out"
    else
        fail "race run $i: exit $rc: $(head -n 1 "$T/err")"
    fi
    rm -f "$out"
    i=$((i + 1))
done
touch "$T/stop"
wait $swapper
echo "swap race: $merged merged swap-a, $refused refused"
cp "$T/good_a" "$blob_a"

# ---- task: prefers the adapter registered for the base merged into ----
for v in 1 2; do
    lora-pack create "$T/ad" -s "$T/alice.sec" --name "for-b$v" --task based --version "$v.0.0" \
        --base "$T/b$v.safetensors" -o "$T/arc/for-b$v.lora" -q || fail "pack for-b$v"
    expect 0 $REG add "$T/arc/for-b$v.lora" -q
done
expect 0 lora-merge "$T/b1.safetensors" -a task:based -o "$T/mb1.safetensors" --no-receipt -q
expect_err "task:based: for-b1@1.0.0, the newest registered for base .*b1.safetensors \(newer for-b2@2.0.0"
expect 0 lora-merge "$T/b2.safetensors" -a task:based -o "$T/mb2.safetensors" --no-receipt -q
checks=$((checks + 1))
[ -s "$T/err" ] && fail "task:based on its own base: unexpected message $(cat "$T/err")"

# ---- read-only use: a user who cannot write the registry ----
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null 2>&1; then
    NOBODY="setpriv --reuid=65534 --regid=65534 --clear-groups"
    chmod 755 "$T" "$T/reg" "$T/reg/blobs"
    mkdir -p "$T/roout" && chown 65534 "$T/roout"
    for cmd in ls keys "show sql-a" "resolve sql" verify "evals sql-a" tasks; do
        # shellcheck disable=SC2086
        expect 0 $NOBODY lora-registry $cmd
    done
    expect 0 $NOBODY lora-merge "$T/b1.safetensors" -a task:swap -o "$T/roout/m.safetensors" \
        --no-receipt -q
    checks=$((checks + 1))
    cmp -s "$T/m1.safetensors" "$T/roout/m.safetensors" || fail "read-only merge differs"
    run $NOBODY lora-registry rm sql-a@1.9.0
    checks=$((checks + 1))
    [ "$rc" -ne 0 ] || fail "nobody removed a row from root's registry"
    checks=$((checks + 1))
    find "$T/reg" -newer "$T/m1.safetensors" -name 'registry.db-*' | grep -q . &&
        fail "a reader left files in the registry folder"
else
    echo "SKIP: read-only rows (need root and setpriv)"
fi

# ---- read commands on a full disk ----
# A registry with two adapters copied into a private tmpfs, which is then
# filled: SQLite cannot make its -shm file there, and reads still work.
SMALL="$T/small/registry.db"
expect 0 $REG -r "$SMALL" trust "$T/alice.pub" -q
expect 0 $REG -r "$SMALL" add "$SW_A" -q
expect 0 $REG -r "$SMALL" add "$SW_B" -q
mkdir -p "$T/full"
if unshare -rm sh -c 'mount -t tmpfs -o size=512k tmpfs "$1"' sh "$T/full" 2>/dev/null; then
    unshare -rm sh -c '
        T=$1
        mount -t tmpfs -o size=512k tmpfs "$T/full" || exit 90
        cp -a "$T/small" "$T/full/" || exit 91
        dd if=/dev/zero of="$T/full/fill" bs=4k 2>/dev/null
        export LORA_REGISTRY="$T/full/small/registry.db"
        for cmd in ls verify "resolve swap" "show swap-a" "evals swap-a"; do
            lora-registry $cmd >/dev/null 2>>"$T/full.err" || echo "$cmd" >> "$T/full.failed"
        done
        lora-merge "$T/b1.safetensors" -a task:swap -o "$T/fullm.safetensors" --no-receipt -q \
            2>>"$T/full.err" || echo "lora-merge -a task:swap" >> "$T/full.failed"
        exit 0' sh "$T"
    checks=$((checks + 1))
    [ -s "$T/full.failed" ] && fail "on a full disk: $(tr '\n' ',' < "$T/full.failed") failed: $(head -n 2 "$T/full.err")"
    checks=$((checks + 1))
    cmp -s "$T/m1.safetensors" "$T/fullm.safetensors" || fail "merge from a full-disk registry differs"
else
    echo "SKIP: full-disk reads (no private tmpfs: unshare -rm failed)"
fi

# ---- a damaged database: verify says so ----
cp "$R" "$T/reg/dmg.db"
size=$(wc -c < "$T/reg/dmg.db")
head -c 1024 /dev/urandom > "$T/junk"
for back in 1 2 3; do
    dd if="$T/junk" of="$T/reg/dmg.db" bs=1 seek=$((size - back * 4096 + 16)) conv=notrunc 2>/dev/null
done
expect 1 $REG -r "$T/reg/dmg.db" verify
expect_err "database damaged"
checks=$((checks + 1))
grep -q "intact" "$T/out" && fail "verify said intact on a damaged database"

# ---- a registry made by a newer schema ----
if command -v sqlite3 >/dev/null 2>&1; then
    sqlite3 "$R" "PRAGMA user_version = 99"
    expect 3 $REG ls
    expect_err "made by a newer lora-tools \(registry schema version 99"
fi

# ---- usage ----
expect 2 $REG
expect 2 $REG frobnicate
expect 2 $REG ls --version 1.0.0
expect 2 $REG resolve
expect 2 $REG resolve sql --task x
expect 0 $REG --version
expect_out "^lora-registry .*[0-9]+\.[0-9]+\.[0-9]+"

done_testing
