#!/bin/sh
# Run one unit test under valgrind (make check sets LOG_COMPILER to this).
#
# A definite or indirect leak, or any memory error, fails the test with exit
# code 99, which automake reports as a hard ERROR rather than a plain FAIL.
# EP_NO_VALGRIND=1 runs the test as it is (a quick run, or under a debugger).
# Python scripts, should they ever get here, run with python3: they start the
# real daemons themselves.

if [ $# -eq 0 ]; then
	echo "usage: $0 TEST [ARGS...]" >&2
	exit 99
fi

case "$1" in
*.py)
	exec /usr/bin/python3 "$@"
	;;
esac

if [ "${EP_NO_VALGRIND:-0}" = 1 ]; then
	exec "$@"
fi

# A program that libtool left as a wrapper script must run through
# "libtool --mode=execute", or valgrind would check /bin/sh instead of the test.
run_libtool=
if [ "$(head -c 2 "$1" 2>/dev/null)" = "#!" ] &&
	head -n 5 "$1" | grep -q 'wrapper script'; then
	if [ -x ./libtool ]; then
		run_libtool="./libtool --mode=execute"
	else
		run_libtool="libtool --mode=execute"
	fi
fi

# tests may leave out what takes minutes under valgrind and seconds without it
export EP_UNDER_VALGRIND=1
exec $run_libtool "${VALGRIND:-valgrind}" --quiet --leak-check=full \
	--show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect \
	--error-exitcode=99 "$@"
