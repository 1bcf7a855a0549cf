#!/bin/sh
# Build etcd's own load generator, tools/benchmark of etcd 3.4.23, from Debian packages only,
# and cache it.  Prints the path of the binary as the last line of stdout; everything else goes
# to stderr.  Exit 0: the binary is ready.  Exit 1: it cannot be had on this machine (why is on
# stderr), and run.sh falls back to h2load.
#
#   build-benchmark.sh [--force] [--no-install]
#
# How (issue 5): the tool is in no binary package, but its source is in Debian's `etcd` source
# package and every library it imports is in golang-etcd-server-dev (and the golang-*-dev
# packages that one depends on) under /usr/share/gocode.  So:
#   1. apt-get install golang-go golang-etcd-server-dev dpkg-dev      (root, only if missing)
#   2. apt-get source etcd=<the version of golang-etcd-server-dev>, from a deb-src entry derived
#      from the machine's own apt sources, with a PRIVATE apt directory: own source parts, own
#      lists, own cache, all in a temporary directory.  /etc/apt and /var/lib/apt are only read.
#   3. go build in GOPATH mode (GO111MODULE=off, GOPROXY=off), GOPATH = the private copy of
#      tools/benchmark first, then /usr/share/gocode: no network, no module download.
#   4. Copy the binary to the cache, with benchmark.info beside it saying what it was built from.
#
# The cache: $ETCDPROXY_BENCH_CACHE, else ${XDG_CACHE_HOME:-$HOME/.cache}/etcdproxy-bench.
# A cached binary that runs is used as it is (no network, no root); --force rebuilds it.
# ETCD_SOURCE_DIR=/path/to/etcd-3.4.23 skips step 2 (an already unpacked source tree).
# ETCDPROXY_BENCH_DEBSRC="deb-src [signed-by=KEYRING] URI SUITE main" replaces the derived entry.
set -eu

WANT_UPSTREAM=3.4.23
cache=${ETCDPROXY_BENCH_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/etcdproxy-bench}
bin=$cache/benchmark
force=0
install=1
for a in "$@"; do
	case $a in
	--force) force=1 ;;
	--no-install) install=0 ;;
	-h | --help) sed -n '2,/^set -eu/p' "$0" | sed 's/^# \{0,1\}//; /^set -eu/d'; exit 0 ;;
	*) echo "build-benchmark: unknown option $a" >&2; exit 2 ;;
	esac
done

say() { echo "build-benchmark: $*" >&2; }
die() { say "$*"; exit 1; }

# ---- 0. the cache ------------------------------------------------------------------------
if [ $force = 0 ] && [ -x "$bin" ] && "$bin" --help >/dev/null 2>&1; then
	say "using the cached $bin ($(sed -n 's/^source=//p' "$cache/benchmark.info" 2>/dev/null))"
	echo "$bin"
	exit 0
fi

# ---- 1. packages -------------------------------------------------------------------------
missing=""
for p in golang-go golang-etcd-server-dev dpkg-dev; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
		missing="$missing $p"
done
if [ -n "$missing" ]; then
	[ $install = 1 ] || die "missing packages:$missing (and --no-install)"
	[ "$(id -u)" = 0 ] || die "missing packages:$missing; run as root to install them"
	say "installing$missing"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >&2 || die "apt-get update failed"
	# shellcheck disable=SC2086
	apt-get install -y -qq --no-install-recommends $missing >/dev/null ||
		die "apt-get install$missing failed"
fi
libver=$(dpkg-query -W -f='${Version}' golang-etcd-server-dev)
case $libver in
"$WANT_UPSTREAM"-*) ;;
*) say "warning: golang-etcd-server-dev is $libver, not $WANT_UPSTREAM; building against it anyway" ;;
esac
GO=$(command -v go) || die "golang-go is installed but there is no go in PATH"

work=$(mktemp -d "${TMPDIR:-/tmp}/etcdproxy-bench-build.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
chmod 755 "$work" # apt's download sandbox (user _apt) must be able to write here

# ---- 2. the source, through a private apt directory ----------------------------------------
# deb822 stanzas (one per "deb" source of the machine whose suite is the release's codename, i.e.
# the main archive that holds etcd) become "deb-src" stanzas in our own source parts directory.
apt_etc=${ETCDPROXY_BENCH_APT_ETC:-/etc/apt} # another directory only to test this function
derive_debsrc() {
	# shellcheck source=/dev/null
	codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
	[ -n "$codename" ] || return 0
	{
		# one-line format: "deb [options] URI SUITE COMPONENTS..."
		for f in "$apt_etc/sources.list" "$apt_etc"/sources.list.d/*.list; do
			[ -f "$f" ] || continue
			sed -n 's/^[[:space:]]*deb[[:space:]]\{1,\}/deb-src /p' "$f" |
				awk -v c="$codename" '{ i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
					if ($(i + 1) == c) print }'
		done
	} >"$work/apt/sources.d/derived.list"
	for f in "$apt_etc"/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		# a stanza ends at a blank line; continuation lines (leading space) stay with their field
		awk -v c="$codename" '
			function flush() {
				if (types ~ /(^|[ \t])deb([ \t]|$)/ && enabled !~ /^[ \t]*no/ && (" " suites " ") ~ (" " c " ")) {
					printf "Types: deb-src\n%s\n", body
				}
				types = ""; suites = ""; enabled = ""; body = ""
			}
			/^#/ { next }
			/^[ \t]*$/ { flush(); next }
			/^[A-Za-z-]+:/ {
				field = tolower($1); val = $0; sub(/^[^:]*:[ \t]*/, "", val)
				if (field == "types:") { types = val; next }
				if (field == "suites:") { suites = val; gsub(/[ \t]+/, " ", suites) }
				if (field == "enabled:") enabled = val
			}
			{ body = body (body == "" ? "" : "\n") $0 }
			END { flush() }' "$f" | awk 'BEGIN { RS = ""; ORS = "\n\n" } { print }'
	done >"$work/apt/sources.d/derived.sources"
}

if [ -n "${ETCD_SOURCE_DIR:-}" ]; then
	src=$ETCD_SOURCE_DIR
	[ -d "$src/tools/benchmark" ] || die "ETCD_SOURCE_DIR=$src has no tools/benchmark"
	origin="etcd source tree $src (ETCD_SOURCE_DIR)"
else
	mkdir -p "$work/apt/sources.d" "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/src"
	if [ -n "${ETCDPROXY_BENCH_DEBSRC:-}" ]; then
		echo "$ETCDPROXY_BENCH_DEBSRC" >"$work/apt/sources.d/override.list"
		whence="from ETCDPROXY_BENCH_DEBSRC"
	else
		derive_debsrc
		whence="derived from the machine's apt sources"
	fi
	if ! grep -qs -e '^deb-src' -e '^Types: deb-src' "$work"/apt/sources.d/*; then
		die "no deb-src entry could be derived from /etc/apt/sources.list{,.d/*.sources,.d/*.list}; set ETCDPROXY_BENCH_DEBSRC"
	fi
	say "private deb-src entries ($whence):"
	cat "$work"/apt/sources.d/* | sed 's/^/    /' >&2
	# Everything apt writes goes to $work/apt; the system's sources, lists and cache are not used.
	APT_PRIVATE="-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts=$work/apt/sources.d
		-o Dir::State::Lists=$work/apt/lists -o Dir::Cache=$work/apt/cache
		-o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= -o Acquire::Languages=none"
	say "apt-get update (private lists)"
	# shellcheck disable=SC2086
	apt-get $APT_PRIVATE -q update >"$work/apt-update.log" 2>&1 || {
		sed 's/^/    /' "$work/apt-update.log" >&2
		die "apt-get update of the private deb-src lists failed (no network to the Debian archive?)"
	}
	# the source version that matches the installed libraries, else any 3.4.23
	srcver=$libver
	# shellcheck disable=SC2086
	if ! apt-cache $APT_PRIVATE showsrc "etcd=$srcver" 2>/dev/null | grep -q '^Package: etcd$'; then
		# shellcheck disable=SC2086
		srcver=$(apt-cache $APT_PRIVATE showsrc etcd 2>/dev/null | sed -n 's/^Version: //p' |
			grep "^$WANT_UPSTREAM-" | head -1)
		if [ -z "$srcver" ]; then
			grep -E '^(E|W|Err):' "$work/apt-update.log" | sed 's/^/    /' >&2
			die "the private deb-src lists have no etcd $WANT_UPSTREAM source package"
		fi
	fi
	say "apt-get source etcd=$srcver"
	# shellcheck disable=SC2086
	(cd "$work/src" && apt-get $APT_PRIVATE -q source "etcd=$srcver") >"$work/apt-source.log" 2>&1 || {
		sed 's/^/    /' "$work/apt-source.log" >&2
		die "apt-get source etcd=$srcver failed"
	}
	src=$(find "$work/src" -mindepth 1 -maxdepth 1 -type d -name 'etcd-*' | head -1)
	if [ -z "$src" ] || [ ! -d "$src/tools/benchmark" ]; then
		die "the etcd source package has no tools/benchmark"
	fi
	origin="Debian source package etcd $srcver (apt-get source)"
fi

# ---- 3. go build, GOPATH mode, offline ----------------------------------------------------
gopath=$work/gopath
mkdir -p "$gopath/src/go.etcd.io/etcd/tools"
cp -a "$src/tools/benchmark" "$gopath/src/go.etcd.io/etcd/tools/"
say "go build (GO111MODULE=off, GOPATH=$gopath:/usr/share/gocode)"
if ! (cd "$gopath/src/go.etcd.io/etcd/tools/benchmark" &&
	env GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOCACHE="$work/gocache" \
		GOPROXY=off GOFLAGS= CGO_ENABLED=0 HOME="$work" \
		"$GO" build -o "$work/benchmark" go.etcd.io/etcd/tools/benchmark) >"$work/go-build.log" 2>&1; then
	sed 's/^/    /' "$work/go-build.log" >&2
	die "go build of tools/benchmark failed"
fi
"$work/benchmark" --help >/dev/null 2>&1 || die "the built benchmark does not run"

# ---- 4. the cache --------------------------------------------------------------------------
mkdir -p "$cache"
cp "$work/benchmark" "$bin.tmp.$$" && mv -f "$bin.tmp.$$" "$bin"
{
	echo "source=$origin"
	echo "libraries=golang-etcd-server-dev $libver (/usr/share/gocode)"
	echo "go=$("$GO" version | sed 's/^go version //')"
	echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "sha256=$(sha256sum "$bin" | cut -d' ' -f1)"
} >"$cache/benchmark.info"
say "built $bin from $origin"
echo "$bin"
