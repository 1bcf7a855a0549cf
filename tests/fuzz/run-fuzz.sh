#!/bin/bash
# Build a fuzz target of the native backend (libFuzzer + ASan + UBSan) and run it.
#
#   tests/fuzz/run-fuzz.sh [--target rewrite|h2server] [SECONDS]      default 60
#
# rewrite:  the message rewriter alone (fuzz-rewrite.c), seeded with doc/wire.md's examples;
# h2server: one client connection's bytes into the whole backend, against a scripted
#           upstream (fuzz-h2server.c), seeded with well-formed connections it writes itself.
#
# Needs clang (Debian: apt-get install -y clang); a test-time tool only.
# Environment:
#   FUZZ_WORKDIR  where the binary, corpus and crash artifacts go (default: a new
#                 temporary directory, removed after a clean run)
#   FUZZ_ARGS     extra libFuzzer flags, e.g. "-fork=2" or "-max_len=4096"
#   CC            the compiler (default clang)
#   EP_BUILDDIR   h2server: a configured build directory (for build-config.h)
# Exits non-zero when the fuzzer finds a crash, leak, sanitizer report or an
# invariant violation; the reproducer is left in FUZZ_WORKDIR.
set -euo pipefail

target=rewrite
if [ "${1:-}" = --target ]; then
	target=${2:-}
	shift 2 || true
fi
secs=${1:-60}
case $secs in
'' | *[!0-9]*) echo "usage: $0 [--target rewrite|h2server] [SECONDS]" >&2; exit 2 ;;
esac
case $target in
rewrite | h2server) ;;
*) echo "run-fuzz: unknown target \"$target\" (rewrite or h2server)" >&2; exit 2 ;;
esac

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
cc=${CC:-clang}
if ! command -v "$cc" >/dev/null 2>&1; then
	echo "run-fuzz: $cc not found (Debian: apt-get install -y clang)" >&2
	exit 2
fi

if [ -n "${FUZZ_WORKDIR:-}" ]; then
	work=$FUZZ_WORKDIR
	mkdir -p "$work"
	keep=1
else
	work=$(mktemp -d "${TMPDIR:-/tmp}/fuzz-$target.XXXXXX")
	keep=0
fi

fuzz_cflags=(-g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
	-fno-sanitize-recover=all -Wall -Wextra -Wno-unused-parameter -Werror
	-I"$top/plugins/backend-native" -I"$top/lib" -I"$top/include")

if [ "$target" = h2server ]; then
	nb=$top/plugins/backend-native
	# lib/util.c includes configure's build-config.h
	if [ ! -f "${EP_BUILDDIR:-}/build-config.h" ]; then
		echo "run-fuzz: h2server: set EP_BUILDDIR to a configured build directory" \
			"(scripts/build.sh DIR); make check does" >&2
		exit 2
	fi
	fuzz_cflags+=(-I"$EP_BUILDDIR")
	# shellcheck disable=SC2046
	"$cc" "${fuzz_cflags[@]}" -I"$top/tests/native" -o "$work/fuzz-h2server" \
		"$here/fuzz-h2server.c" "$top/tests/native/harness.c" "$top/lib/options.c" \
		"$top/lib/util.c" "$nb/native.c" "$nb/conn.c" "$nb/leases.c" "$nb/call.c" \
		"$nb/downstream.c" "$nb/upstream.c" "$nb/pool.c" "$nb/rewrite.c" "$nb/audit.c" \
		"$nb/ratelimit.c" "$nb/quota.c" "$nb/usage.c" \
		$(pkg-config --cflags --libs libnghttp2 libuv libcjson)
	mkdir -p "$work/corpus"
	echo "run-fuzz: fuzzing h2server for ${secs}s in $work"
	rc=0
	# shellcheck disable=SC2086
	H2_SEEDS="$work/corpus" "$work/fuzz-h2server" -max_total_time="$secs" -timeout=20 \
		-rss_limit_mb=2048 -max_len=16384 -artifact_prefix="$work/" -print_final_stats=1 \
		${FUZZ_ARGS:-} "$work/corpus" || rc=$?
	if [ "$rc" -ne 0 ]; then
		echo "run-fuzz: FAILED (exit $rc); reproducer and corpus kept in $work" >&2
		exit "$rc"
	fi
	echo "run-fuzz: clean after ${secs}s"
	[ "$keep" -eq 1 ] || rm -rf "$work"
	exit 0
fi

"$cc" "${fuzz_cflags[@]}" -o "$work/fuzz-rewrite" \
	"$here/fuzz-rewrite.c" "$top/plugins/backend-native/rewrite.c" \
	"$top/plugins/backend-native/usage.c"

# Seeds: doc/wire.md section 8 (examples A to G), prefix "/t/" (selector bits 5-6 = 0).
# Selector = kind | 0x10 for responses | 0x80 for lease hooks.
# Kinds: 1 Range 2 Put 3 DeleteRange 4 Txn 5 Compact 6 Watch 7 LeaseGrant
#        8 LeaseRevoke 9 LeaseKeepAlive 10 LeaseTimeToLive 11 LeaseLeases 12 Status 13 Alarm
corpus=$work/corpus
mkdir -p "$corpus"
seed() { # name hex...
	local name=$1 hex out="" i
	shift
	hex=$(echo "$*" | tr -d ' |')
	for ((i = 0; i < ${#hex}; i += 2)); do
		out+="\\x${hex:i:2}"
	done
	printf "$out" >"$corpus/$name"
}
H="0a1a 08b298eaf4988386fccd01 10e88ca4c28ff6c1dd9a01 1803 2002"
seed a-range        01 "0a 03 666f6f"
seed b-prefix       01 "0a 03 666f6f 12 03 666f70"
seed c-fromkey      01 "0a03666f6f 12 01 00"
seed c-all          01 "0a0100 120100 4001"
seed b-delete       03 "0a 03 666f6f 12 03 666f70 1801"
seed put            82 "0a03666f6f 1203626172 1807 2001"
seed d-watch        06 "0a 05 0a 03 666f6f"
seed d-watch-prefix 06 "0a 0a 0a03666f6f 1203666f70"
seed d-watch-prevkv 06 "0a 07 0a03666f6f 3001"
seed d-cancel       06 "12 00"
seed d-progress     06 "1a 00"
seed e-watch-put    16 "$H 5a 2a 12 13 0a062f742f666f6f 1002 1803 2002 2a03 62617a 1a 13 0a062f742f666f6f 1002 1802 2001 2a03 626172"
seed e-watch-del    16 "5a 23 0801 12 0b 0a072f742f666f6f32 1805 1a 12 0a072f742f666f6f32 1004 1804 2001 2a0178"
seed f-txn          84 "0a0b 0801 1002 1a03666f6f 3000 120f 120d 0a03666f6f 120674786e76616c 1a07 0a05 0a03666f6f"
seed f-txn-range    04 "0a0b 0801 1a01 61 2000 8204 01 7a 1207 0a05 0a03 666f6f"
seed f-txn-nested   84 "1210 220e 1a0c 120a 0a0161 1201 76 1807 2001"
seed f-txn-reply    14 "0a04180d2002 1001 1a20 0a1e 0a02180d 1216 0a062f742f666f6f 1002 1803 2002 2a0674786e76616c 2001"
seed range-reply    11 "0a02180d 12 0b 0a042f742f61 2a0178 3007 1801 2005"
seed put-reply      12 "0a02180d 12 0b 0a042f742f61 2a0178 3007"
seed delete-reply   13 "0a02180d 1002 1a 06 0a042f742f61 1a 06 0a042f742f62"
seed g-ttl-reply    1a "0a02180d 1007 183b 203c 2a05 2f742f6c6b 2a04 2f782f62"
seed ttl            8a "0807 1001"
seed revoke         88 "0807"
seed keepalive      89 "0807"
seed grant          07 "083c"
seed grant-reply    97 "0a02180d 10e807 183c"
seed leases-reply   9b "0a02180d 1202 0801 1202 0802 1205 0803 f80101"
seed alarm          0d ""
seed alarm-activate 0d "0801 1801"
seed status-reply   1c "0a02180d 1205 332e342e32 1880 01"
seed compact        05 "0864 1001"
seed long-prefix    61 "0a 03 666f6f 12 01 00"
seed ff-prefix      21 "0a 03 666f6f 12 01 00"
seed txn-depth-16    84 "12432241123f223d123b22391237223512332231122f222d122b22291227222512232221121f221d121b22191217221512132211120f220d120b2209120712050a01611809"
seed txn-depth-17    84 "1247224512432241123f223d123b22391237223512332231122f222d122b22291227222512232221121f221d121b22191217221512132211120f220d120b2209120712050a01611809"
seed txn-reply-16    14 "1a4622441a4222401a3e223c1a3a22381a3622341a3222301a2e222c1a2a22281a2622241a2222201a1e221c1a1a22181a1622141a1222101a0e220c1a0a0a0812060a042f742f61"
seed txn-reply-17    14 "1a4a22481a4622441a4222401a3e223c1a3a22381a3622341a3222301a2e222c1a2a22281a2622241a2222201a1e221c1a1a22181a1622141a1222101a0e220c1a0a0a0812060a042f742f61"
seed unknown-fields 01 "75 01020304 0a03666f6f 79 0102030405060708 a201 03 787878 f8ffffff0f 05"

cat >"$work/rewrite.dict" <<'EOF'
"\x0a"
"\x12"
"\x1a"
"\x22"
"\x2a"
"\x5a"
"\x82\x04"
"\x00"
"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"
"\x80\x01"
"\x7f"
"/t/"
"/t0"
"a\xff"
EOF

echo "run-fuzz: fuzzing for ${secs}s in $work"
rc=0
# shellcheck disable=SC2086
"$work/fuzz-rewrite" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
	-dict="$work/rewrite.dict" -artifact_prefix="$work/" -print_final_stats=1 \
	${FUZZ_ARGS:-} "$corpus" || rc=$?

if [ "$rc" -ne 0 ]; then
	echo "run-fuzz: FAILED (exit $rc); reproducer and corpus kept in $work" >&2
	exit "$rc"
fi
echo "run-fuzz: clean after ${secs}s"
if [ "$keep" -eq 0 ]; then
	rm -rf "$work"
fi
