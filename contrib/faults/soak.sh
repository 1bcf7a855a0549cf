#!/bin/sh
# The fault suite's long form: tests/integration/test_faults.py repeated ROUNDS times (default
# 20, about ten minutes): kill -9 of the worker, connections reset and stalled, leader changes,
# members killed and stopped, under load, with the history checks at the end.
#   EP_BUILDDIR=build contrib/faults/soak.sh [ROUNDS]
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
: "${EP_BUILDDIR:?set EP_BUILDDIR to a build directory (scripts/build.sh DIR)}"
EP_FAULT_ROUNDS=${1:-20} EP_SRCDIR=$top EP_BUILDDIR=$EP_BUILDDIR \
	exec /usr/bin/python3 "$top/tests/integration/test_faults.py"
