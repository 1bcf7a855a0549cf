#!/bin/sh
# make check: a short libFuzzer run of the message rewriter when clang is there.
# scripts/install-deps.sh installs clang, so CI always runs it; by hand, a
# machine without clang skips (77) rather than pretending to pass.
if ! command -v clang >/dev/null 2>&1; then
	echo "fuzz-smoke: clang is not installed: skipped"
	exit 77
fi
exec "$(dirname "$0")/run-fuzz.sh" "${EP_FUZZ_SECONDS:-20}"
