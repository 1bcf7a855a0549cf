#!/bin/sh
# The whole test suite, from a fresh Debian bookworm as root:
#   1. install the Debian packages, build with -Werror, make check
#      (cmocka unit tests under valgrind, integration tests against a real etcd);
#   2. the same under AddressSanitizer and UndefinedBehaviorSanitizer;
#   3. make distcheck (the tarball builds, tests and installs on its own).
# Set EP_QUICK=1 to run step 1 only.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
"$top/scripts/install-deps.sh"

passed=0
failed=0
count() { # add up the checks of one run: cmocka's and the integration scripts' summaries
	dir=$1
	for log in $(find "$dir/tests" -name '*.log'); do
		p=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p; s/^\([0-9]*\) passed, [0-9]* failed$/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
		f=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p; s/^[0-9]* passed, \([0-9]*\) failed$/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
		passed=$((passed + p))
		failed=$((failed + f))
	done
	# a test program that crashed before its summary still counts as a failure
	e=$(sed -n 's/^# ERROR: *//p' "$dir/test-suite.log" | head -1)
	failed=$((failed + ${e:-0}))
}
run_check() { # run_check NAME BUILDDIR [configure options]
	name=$1 dir=$2
	shift 2
	echo "== $name"
	"$top/scripts/build.sh" "$dir" "$@"
	status=0
	make -C "$dir" -j2 check >"$dir/check.out" 2>&1 || status=$?
	grep -E '^(PASS|FAIL|ERROR|SKIP|XFAIL|XPASS):' "$dir/check.out" || true
	count "$dir"
	if [ $status -ne 0 ]; then
		cat "$dir/test-suite.log"
		echo "$name: make check failed"
		echo "tests: $passed passed, $failed failed"
		exit 1
	fi
}

run_check "make check (valgrind on unit tests)" "$top/build/check"
if [ "${EP_QUICK:-0}" != 1 ]; then
	run_check "make check with ASan and UBSan" "$top/build/sanitizers" --enable-sanitizers
	echo "== make distcheck"
	# -j2 as above: run one after the other, its tests took half of the whole run (15 of 29 min)
	if ! make -C "$top/build/check" -j2 distcheck >"$top/build/check/distcheck.out" 2>&1; then
		tail -80 "$top/build/check/distcheck.out"
		echo "make distcheck failed"
		echo "tests: $passed passed, $((failed + 1)) failed"
		exit 1
	fi
	grep -A1 'archives ready' "$top/build/check/distcheck.out" | head -2
fi
echo "tests: $passed passed, $failed failed"
[ "$failed" = 0 ]
