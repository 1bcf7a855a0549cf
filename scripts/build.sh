#!/bin/sh
# Configure and build into a build directory: scripts/build.sh DIR [configure options...]
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
dir=$1
shift
[ -x "$top/configure" ] || (cd "$top" && ./autogen.sh >/dev/null 2>&1) || (cd "$top" && ./autogen.sh)
mkdir -p "$dir"
cd "$dir"
if [ ! -f Makefile ] || [ "$top/configure" -nt Makefile ]; then
	"$top/configure" --enable-werror "$@" >configure.out 2>&1 || { cat configure.out >&2; exit 1; }
fi
make -j"$(nproc)" >make.out 2>&1 || { tail -50 make.out >&2; exit 1; }
echo "build: $dir"
