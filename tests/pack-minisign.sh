#!/bin/sh
# tests/pack-minisign.sh - interoperability with minisign 0.11 (issue 4
# part 6): minisign verifies the signature inside our archives, and our
# verify accepts archives signed with keys made by `minisign -G -W`.
# SKIP (77) when $MINISIGN is empty, never a pass.
. "$TOP_SRCDIR/tests/lib.sh"

if [ -z "${MINISIGN:-}" ] || [ ! -x "$MINISIGN" ]; then
    echo "SKIP: minisign not found (MINISIGN=${MINISIGN:-})"; exit 77
fi

"$TOP_BUILDDIR/tests/mkfixture" gpt2 "$T/fx" --layers 1 --hidden 16 --heads 2 --vocab 32 \
    --positions 8 --rank 2 >/dev/null || { echo "mkfixture failed"; exit 99; }
ln -s "$T/fx/adapter" "$T/ad"

# 1. minisign verifies what we sign (unencrypted and encrypted keys)
expect 0 lora-pack keygen -W -s "$T/k.sec" -p "$T/k.pub"
expect 0 lora-pack create "$T/ad" -s "$T/k.sec" --name mini --task t --version 1.0.0 -o "$T/a.lora"
mkdir "$T/x"
(cd "$T/x" && tar xf "$T/a.lora" lora.json lora.json.minisig) || fail "tar cannot read the archive"
expect 0 "$MINISIGN" -Vm "$T/x/lora.json" -x "$T/x/lora.json.minisig" -p "$T/k.pub"
expect_out "Trusted comment: lora-archive	name:mini	version:1.0.0	manifest:[0-9a-f]{64}"
expect 0 "$MINISIGN" -Vm "$T/x/lora.json" -x "$T/x/lora.json.minisig" -P "$(sed -n 2p "$T/k.pub")"
# and refuses a tampered manifest, as we do
printf ' ' >> "$T/x/lora.json"
expect 1 "$MINISIGN" -Vm "$T/x/lora.json" -x "$T/x/lora.json.minisig" -p "$T/k.pub"

printf 'pw\n' > "$T/pw"
LORA_PASSWORD_FILE="$T/pw" expect 0 lora-pack keygen --kdf-memlimit 16777216 -s "$T/e.sec" -p "$T/e.pub"
LORA_PASSWORD_FILE="$T/pw" expect 0 lora-pack create "$T/ad" -s "$T/e.sec" --name mini --task t --version 2.0.0 -o "$T/e.lora"
mkdir "$T/y"
(cd "$T/y" && tar xf "$T/e.lora" lora.json lora.json.minisig) || fail "tar cannot read the archive"
expect 0 "$MINISIGN" -Vm "$T/y/lora.json" -x "$T/y/lora.json.minisig" -p "$T/e.pub"
# minisign signs with our encrypted key too (password on stdin)
printf 'hello\n' > "$T/msg"
run sh -c "printf 'pw\n' | '$MINISIGN' -S -s '$T/e.sec' -m '$T/msg'"
checks=$((checks + 1)); [ "$rc" -eq 0 ] || fail "minisign cannot sign with our encrypted key: $(cat "$T/err")"
expect 0 "$MINISIGN" -Vm "$T/msg" -p "$T/e.pub"

# 2. keys made by minisign -G -W sign archives we verify
expect 0 "$MINISIGN" -G -W -p "$T/m.pub" -s "$T/m.key"
expect 0 lora-pack create "$T/ad" -s "$T/m.key" --name mini --task t --version 3.0.0 -o "$T/m.lora"
expect 0 lora-pack verify "$T/m.lora" -p "$T/m.pub"
expect_out "OK: mini 3"
id=$(sed -n 1p "$T/m.pub" | sed 's/.*public key //')
expect_out "signed by key $id\$"
expect 1 lora-pack verify "$T/m.lora" -p "$T/k.pub"

done_testing
