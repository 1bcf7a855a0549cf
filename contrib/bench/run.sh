#!/bin/sh
# The etcdproxy benchmark in one command (issue 5); see contrib/bench/README.md.
#
#   contrib/bench/run.sh [--smoke] [--tool benchmark|h2load] [bench.py options...]
#
#   --smoke           tiny totals: every part runs once or twice, in seconds
#   --tool h2load     use the h2load fallback even when etcd's benchmark tool can be had
#   --tool benchmark  etcd's benchmark tool or nothing: fail instead of falling back
#   other options go to bench.py (--rounds N, --tenants 10,100,500, --results-dir DIR,
#   --skip-kv, --skip-watches, --skip-payload, --skip-tenants); bench.py --help lists them.
#
# Steps: install the Debian packages (scripts/install-deps.sh, then nghttp2-client and
# gnuplot-nox: needs root when one is missing), build the project unless EP_BUILDDIR names a
# build (default build dir: <top>/build/bench), get the load generator (build-benchmark.sh:
# cached after the first build; else the h2load fallback, said so in the output), then run
# bench.py.  Results: contrib/bench/results/<UTC timestamp>/ (results.md, results.json, PNGs,
# logs/); a full run also copies results.md to contrib/bench/results/latest.md.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
command="${EP_BUILDDIR:+EP_BUILDDIR=$EP_BUILDDIR }contrib/bench/run.sh${*:+ $*}"

tool=auto
smoke=0
for a in "$@"; do
	case $a in
	--smoke) smoke=1 ;;
	--tool=*) tool=${a#--tool=} ;;
	-h | --help) sed -n '2,/^set -eu/p' "$0" | sed 's/^# \{0,1\}//; /^set -eu/d'; exit 0 ;;
	esac
done
# --tool VALUE (two words) is taken out of the arguments here; the rest goes to bench.py
n=$#
i=0
while [ $i -lt $n ]; do
	a=$1
	shift
	i=$((i + 1))
	case $a in
	--tool) tool=$1; shift; i=$((i + 1)) ;;
	--tool=*) ;;
	*) set -- "$@" "$a" ;;
	esac
done
case $tool in auto | benchmark | h2load) ;; *) echo "run.sh: --tool benchmark or h2load" >&2; exit 2 ;; esac

say() { echo "run.sh: $*" >&2; }

# ---- 1. packages -------------------------------------------------------------------------
if [ "${EP_BENCH_NO_INSTALL:-0}" != 1 ]; then
	"$top/scripts/install-deps.sh" >&2
	missing=""
	for p in nghttp2-client gnuplot-nox; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
			missing="$missing $p"
	done
	if [ -n "$missing" ]; then
		if [ "$(id -u)" = 0 ]; then
			say "installing$missing"
			export DEBIAN_FRONTEND=noninteractive
			# shellcheck disable=SC2086 # one word per package
			{ apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing >/dev/null; } >&2 ||
				say "warning: could not install$missing (no h2load fallback / no plots without them)"
		else
			say "warning: missing$missing; run as root to install them"
		fi
	fi
fi

# ---- 2. the project ----------------------------------------------------------------------
if [ -n "${EP_BUILDDIR:-}" ]; then
	build=$EP_BUILDDIR
else
	build=$top/build/bench
	"$top/scripts/build.sh" "$build" >&2
fi
for f in supervisor/etcdproxyd ctl/etcdproxyctl worker/etcdproxy-worker plugins/.libs/backend-native.so \
	plugins/.libs/backend-etcd.so; do
	[ -e "$build/$f" ] || { say "no $build/$f: build the project first"; exit 1; }
done

# ---- 3. the load generator ----------------------------------------------------------------
toolpath=""
note="forced with --tool h2load"
if [ "$tool" != h2load ]; then
	install_opt=""
	[ "${EP_BENCH_NO_INSTALL:-0}" = 1 ] && install_opt=--no-install
	if toolpath=$("$here/build-benchmark.sh" $install_opt | tail -1) && [ -x "$toolpath" ]; then
		tool=benchmark
	elif [ "$tool" = benchmark ]; then
		say "etcd's benchmark tool cannot be built here (see above) and --tool benchmark forbids the fallback"
		exit 1
	else
		toolpath=""
		tool=h2load
		note="etcd's benchmark tool could not be built on this machine"
		say "FALLBACK: etcd's benchmark tool cannot be built here (see above); measuring with h2load"
		say "FALLBACK: sending raw gRPC frames (no watch figures in this mode)"
	fi
fi
if [ "$tool" = h2load ]; then
	toolpath=$(command -v h2load) || {
		say "no load generator: neither etcd's benchmark tool nor h2load (package nghttp2-client)"
		exit 1
	}
fi

# ---- 4. the benchmark ----------------------------------------------------------------------
latest=""
[ $smoke = 1 ] || latest="--latest=$here/results/latest.md"
# shellcheck disable=SC2086 # $latest is no word or one
exec /usr/bin/python3 "$here/bench.py" --builddir "$build" --tool "$tool" --tool-path "$toolpath" \
	--tool-note "$note" --command "$command" $latest "$@"
