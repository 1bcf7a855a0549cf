#!/bin/sh
# Install, build, and run the main job: a local etcd (the "core etcd") and
# etcdproxyd serving one example tenant through it, in the foreground until ^C.
#   scripts/demo.sh           run until interrupted
#   scripts/demo.sh --smoke   start, write and read one key through the tenant, stop
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
smoke=0
[ "${1:-}" = --smoke ] && smoke=1

"$top/scripts/install-deps.sh"
"$top/scripts/build.sh" "$top/build/demo" >/dev/null
b="$top/build/demo"

ETCD_PORT=${ETCD_PORT:-32379}
TENANT_PORT=${TENANT_PORT:-23790}
d="$top/.run/demo"
rm -rf "$d"
mkdir -p "$d/storages.d"

cat >"$d/etcdproxyd.json" <<JSON
{
  // written by scripts/demo.sh: everything lives under $d
  "storages_dir": "$d/storages.d",
  "state_dir": "$d/state",
  "runtime_dir": "$d/run",
  "plugin_dir": "$b/plugins/.libs",
  "worker": "$b/worker/etcdproxy-worker",
  "core_etcd": {
    // the local etcd this script starts; a real node uses kubeadm's https endpoint and certificates
    "endpoints": ["http://127.0.0.1:$ETCD_PORT"],
    "ca_file": null, "cert_file": null, "key_file": null
  }
}
JSON
cat >"$d/storages.d/sample-apiserver.json" <<JSON
{
  "apiVersion": "etcd.xmudrii.com/v1alpha1",
  "kind": "EtcdStorage",
  "metadata": { "name": "sample-apiserver" },
  "spec": {
    "backend": "native",
    "listen": "127.0.0.1:$TENANT_PORT",
    "signingCertificateValidity": "8760h",
    "servingCertificateValidity": "8760h",
    "clientCertificateValidity": "8760h",
    // mutual TLS from the built-in CA; the API server's client certificate goes here
    "tls": {
      "clientCertificates": [ { "name": "sample-apiserver", "outputDir": "$d/client" } ]
    }
  }
}
JSON

etcd_pid="" sv_pid=""
cleanup() {
	[ -n "$sv_pid" ] && kill -TERM "$sv_pid" 2>/dev/null && wait "$sv_pid" 2>/dev/null || true
	[ -n "$etcd_pid" ] && kill -TERM "$etcd_pid" 2>/dev/null && wait "$etcd_pid" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 0' INT TERM

etcd --name demo --data-dir "$d/etcd" \
	--listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
	--advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
	--listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
	--initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
	--initial-cluster "demo=http://127.0.0.1:$((ETCD_PORT + 1))" >"$d/etcd.log" 2>&1 &
etcd_pid=$!
i=0
until ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$ETCD_PORT" endpoint health >/dev/null 2>&1; do
	i=$((i + 1))
	if [ $i -gt 100 ] || ! kill -0 $etcd_pid 2>/dev/null; then
		tail -20 "$d/etcd.log"
		echo "demo: etcd did not start (is port $ETCD_PORT taken? set ETCD_PORT=...)" >&2
		exit 1
	fi
	sleep 0.1
done

"$b/supervisor/etcdproxyd" -f -c "$d/etcdproxyd.json" 2>"$d/etcdproxyd.log" &
sv_pid=$!
ctl="$b/ctl/etcdproxyctl -s $d/run/etcdproxyd.sock"
i=0
until $ctl status >/dev/null 2>&1; do
	i=$((i + 1))
	if [ $i -gt 150 ] || ! kill -0 $sv_pid 2>/dev/null; then
		tail -20 "$d/etcdproxyd.log"
		$ctl status || true
		echo "demo: the tenant did not become ready (is port $TENANT_PORT taken? set TENANT_PORT=...)" >&2
		exit 1
	fi
	sleep 0.1
done
$ctl status

tenant="--endpoints https://127.0.0.1:$TENANT_PORT --cacert $d/client/ca.crt --cert $d/client/tls.crt --key $d/client/tls.key"
if [ $smoke = 1 ]; then
	# shellcheck disable=SC2086
	ETCDCTL_API=3 etcdctl $tenant put hello world >/dev/null
	got=$(ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$ETCD_PORT" get /sample-apiserver/hello --print-value-only)
	[ "$got" = world ] || { echo "demo: expected /sample-apiserver/hello=world in the core etcd, got '$got'" >&2; exit 1; }
	echo "demo: smoke OK: a key written through the tenant is /sample-apiserver/hello in the core etcd"
	exit 0
fi

cat <<TXT

etcdproxyd is serving the tenant "sample-apiserver" on https://127.0.0.1:$TENANT_PORT
(mutual TLS, certificates from its own CA), namespaced under /sample-apiserver/
of the local etcd on 127.0.0.1:$ETCD_PORT.  The client certificate, its key and
the CA bundle are in $d/client/.

Talk to the tenant as if it were etcd:
  ETCDCTL_API=3 etcdctl $tenant put greeting hello
  ETCDCTL_API=3 etcdctl $tenant get --prefix ""
See where it went in the core etcd:
  ETCDCTL_API=3 etcdctl --endpoints 127.0.0.1:$ETCD_PORT get --prefix /
Manage it:
  $ctl status
  $ctl show sample-apiserver           (its certificates too)
  $ctl rotate sample-apiserver         (a CA and certificate rotation now)
  edit $d/storages.d/*.json, then: $ctl reload
Logs: $d/etcdproxyd.log    Press ^C to stop everything.
TXT
wait $sv_pid
