#!/bin/sh
# Install every Debian package etcdproxy needs to build, test and run.
# Nothing comes from anywhere but the Debian archive.  Run as root.
set -eu

PACKAGES="
build-essential autoconf automake libtool pkg-config
libuv1-dev libssl-dev libcjson-dev libcurl4-openssl-dev libltdl-dev libcmocka-dev libnghttp2-dev
etcd-server etcd-client python3 python3-etcd3
valgrind procps iproute2 clang libclang-rt-dev
nghttp2-client gnuplot-nox golang-go golang-etcd-server-dev dpkg-dev
"

missing=""
for p in $PACKAGES; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing="$missing $p"
	fi
done
if [ -z "$missing" ]; then
	echo "install-deps: every package is already installed"
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "install-deps: missing packages:$missing; run this script as root" >&2
	exit 1
fi
echo "install-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
