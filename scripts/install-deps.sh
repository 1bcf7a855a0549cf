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
libyaml-dev python3-yaml openssl kubernetes-client python3-kubernetes
libmicrohttpd-dev prometheus
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
# The tests drive the Kubernetes stand-in with Debian's kubectl (kubernetes-client).  A
# kubectl from elsewhere (google-cloud-sdk's package "kubectl") owns /usr/bin/kubectl on
# some machines: divert that package's copy to /usr/bin/kubectl.foreign, for every
# package except kubernetes-client (a --local diversion would move Debian's too).
if [ -z "$(dpkg-divert --listpackage /usr/bin/kubectl)" ]; then
	owner=$(dpkg-query -S /usr/bin/kubectl 2>/dev/null | sed -n 's|: /usr/bin/kubectl$||p')
	if [ -n "$owner" ] && [ "$owner" != kubernetes-client ]; then
		echo "install-deps: /usr/bin/kubectl belongs to the package $owner, not to Debian's" \
			"kubernetes-client: diverting it to /usr/bin/kubectl.foreign"
		dpkg-divert --package kubernetes-client --rename --divert /usr/bin/kubectl.foreign \
			--add /usr/bin/kubectl
	fi
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
