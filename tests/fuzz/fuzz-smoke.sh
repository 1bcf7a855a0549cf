#!/bin/sh
# make check: a short libFuzzer run of each native backend target when clang is
# there: the message rewriter, then the HTTP/2 server path (tests/fuzz/run-fuzz.sh).
# scripts/install-deps.sh installs clang, so CI always runs them; by hand, a
# machine without clang skips (77) rather than pretending to pass.
if ! command -v clang >/dev/null 2>&1; then
	echo "fuzz-smoke: clang is not installed: skipped"
	exit 77
fi
here=$(dirname "$0")
"$here/run-fuzz.sh" --target rewrite "${EP_FUZZ_SECONDS:-20}" || exit $?
exec "$here/run-fuzz.sh" --target h2server "${EP_FUZZ_SECONDS:-20}"
