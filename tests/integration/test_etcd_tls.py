#!/usr/bin/python3
"""TLS towards the clients with the etcd backend (the stock `etcd grpc-proxy`), material from
the "files" certificate source, certificates made with the openssl CLI.  etcdctl with a client
certificate puts and gets through the tenant, the key lands under /<name>/ in the core; without
a client certificate, with one of another CA, or without TLS: refused.  A renewed serving
certificate is served by the same grpc-proxy (it reads its certificate at each handshake); a
new client CA bundle restarts grpc-proxy (a new PID, same worker, no backoff), after which the
new CA's clients get in and the old CA's do not.  A changed core_etcd.ca_file restarts it too;
one that is incomplete does not; a missing one fails the tenant at start with a message naming
it.  Plaintext tenants are covered by test_namespacing.py and test_supervision.py."""

import os
import stat
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # nothing written into the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eptest  # noqa: E402
from eptest import wait_until  # noqa: E402

from eptls import CA, OPENSSL, etcdctl_tls, served_serial, serial_of  # noqa: E402


def text(path):
    with open(path) as f:
        return f.read()


def put_ok(port, ca, cert, key, k, v):
    r = etcdctl_tls(port, ca, cert, key, 'put', k, v)
    return r.returncode == 0 and r.stdout.strip() == 'OK'


def flag(pid, name):
    """The value of --name=VALUE on the command line of pid, or None."""
    for a in eptest.proc_cmdline(pid):
        if a.startswith('--%s=' % name):
            return a.split('=', 1)[1]
    return None


class World:
    pass


def setup(s):
    w = World()
    w.core = eptest.CoreEtcd(s).start()
    w.serving_ca = CA(s.tmp, 'serving-ca')
    w.clients1 = CA(s.tmp, 'clients-one')
    w.clients2 = CA(s.tmp, 'clients-two')
    w.client1 = w.clients1.issue('client-one', 'client')
    w.client2 = w.clients2.issue('client-two', 'client')
    w.server = w.serving_ca.issue('a', 'server')
    # the core etcd speaks http: grpc-proxy reads --cacert anyway, which is all this needs
    w.core_ca = os.path.join(s.tmp, 'core-ca.crt')
    eptest.write_text(w.core_ca, text(CA(s.tmp, 'core-ca-one').crt))

    w.op = os.path.join(s.tmp, 'operator')
    os.makedirs(w.op)
    w.files = {'certFile': os.path.join(w.op, 'tls.crt'), 'keyFile': os.path.join(w.op, 'tls.key'),
               'clientCAFile': os.path.join(w.op, 'client-ca.crt'),
               'caFile': os.path.join(w.op, 'ca.crt')}
    eptest.write_text(w.files['certFile'], text(w.server[0]))
    eptest.write_text(w.files['keyFile'], text(w.server[1]), 0o600)
    eptest.write_text(w.files['clientCAFile'], text(w.clients1.crt))
    eptest.write_text(w.files['caFile'], text(w.serving_ca.crt))
    w.ca = w.files['caFile']

    w.sv = eptest.Supervisor(s, w.core, backends={'etcd': {'binary': eptest.ETCD,
                                                            'health_interval': '1s'}})
    w.sv.config['core_etcd']['ca_file'] = w.core_ca
    w.sv.config['certs'] = {'files': {'poll_interval': '500ms'}}
    w.sv.write_config()
    w.port = w.sv.add_tenant('a', backend='etcd',
                             tls={'source': 'files', 'files': w.files})
    w.sv.start()
    return w


def test_mutual_tls(s, w):
    t = w.sv.wait_ready('a', timeout=30)['a']
    s.eq(t['state'], 'ready', 'a TLS tenant with the etcd backend is ready')
    w.proxy = w.sv.grpc_proxy('a')
    w.worker = t['pid']
    cert, key, ca = flag(w.proxy, 'cert-file'), flag(w.proxy, 'key-file'), \
        flag(w.proxy, 'trusted-ca-file')
    s.check(cert and key and ca, 'grpc-proxy runs with --cert-file, --key-file and '
            '--trusted-ca-file', eptest.proc_cmdline(w.proxy))
    if cert and key and ca:
        s.check(all(os.path.dirname(p) == os.path.dirname(cert) for p in (key, ca)) and
                not cert.startswith(w.op),
                'they are the backend\'s own copies, in one directory', (cert, key, ca))
        s.eq(text(cert), text(w.server[0]), 'the certificate copy holds the operator\'s bytes')
        s.eq(oct(stat.S_IMODE(os.stat(key).st_mode)), oct(0o600), 'the key copy has mode 0600')
        w.copies = (cert, key, ca)

    s.require_check(put_ok(w.port, w.ca, *w.client1, 'k', 'v1'),
                    'etcdctl --cacert/--cert/--key put through a')
    r = etcdctl_tls(w.port, w.ca, *w.client1, 'get', '--print-value-only', 'k')
    s.eq(r.stdout.strip(), 'v1', 'etcdctl get over TLS reads it back')
    s.eq(w.core.get('/a/k'), 'v1', 'the core has the key under /a/')
    s.eq(w.core.get('k'), None, 'the core has no unprefixed key')

    r = etcdctl_tls(w.port, w.ca, None, None, 'get', 'k')
    s.check(r.returncode != 0, 'without a client certificate: refused (grpc-proxy requires one)',
            r.stdout + r.stderr)
    r = etcdctl_tls(w.port, w.ca, *w.client2, 'get', 'k')
    s.check(r.returncode != 0, 'a client certificate of another CA: refused', r.stdout + r.stderr)
    r = eptest.etcdctl(w.port, 'get', 'k')
    s.check(r.returncode != 0, 'plaintext etcdctl: refused', r.stdout + r.stderr)
    out = subprocess.run([OPENSSL, 's_client', '-tls1_2', '-connect', '127.0.0.1:%d' % w.port,
                          '-CAfile', w.ca], capture_output=True, text=True, timeout=10,
                         stdin=subprocess.DEVNULL)
    s.check('alert' in out.stderr and 'bad certificate' in out.stderr,
            'openssl s_client (TLS 1.2) without a certificate: the handshake fails with '
            '"bad certificate"', out.stderr[-600:])
    # health checks (metrics socket + TCP connect) keep working with TLS on
    mark = len(w.sv.log_text())
    time.sleep(3)
    s.eq(w.sv.tenant('a')['state'], 'ready', 'health checks keep the tenant ready')
    s.check('unhealthy' not in w.sv.log_text()[mark:], 'no unhealthy report',
            w.sv.log_text()[mark:][-1500:])


def test_leaf_renewal(s, w):
    new_crt, new_key = w.serving_ca.issue('a', 'server')
    mark = len(w.sv.log_text())
    eptest.write_text(w.files['keyFile'], text(new_key), 0o600)
    eptest.write_text(w.files['certFile'], text(new_crt))
    want = serial_of(new_crt)
    got = wait_until(lambda: served_serial(w.port, *w.client1) == want, 15, 0.3)
    s.check(got, 'a renewed serving certificate is served to new connections',
            (served_serial(w.port, *w.client1), want))
    s.check(s.procs.alive(w.proxy) and w.sv.grpc_proxy('a') == w.proxy,
            'by the same grpc-proxy (pid %d): no restart' % w.proxy)
    log = w.sv.log_text()[mark:]
    s.check('reads it at its next handshake' in log and 'restarting etcd grpc-proxy' not in log,
            'the worker logs that no restart is needed', log[-1500:])
    s.check(put_ok(w.port, w.ca, *w.client1, 'k2', 'v2'), 'put over TLS after the renewal')


def test_client_ca_change(s, w):
    mark = len(w.sv.log_text())
    old = w.proxy
    eptest.write_text(w.files['clientCAFile'], text(w.clients2.crt))
    new = w.sv.grpc_proxy('a', timeout=15, exclude=(old,))
    s.check(new != old, 'a new client CA bundle restarts grpc-proxy (%d -> %d)' % (old, new))
    s.check(wait_until(lambda: not s.procs.alive(old), 5), 'the old grpc-proxy is gone')
    t = w.sv.wait_state('a', 'ready', timeout=15)
    s.check(t['pid'] == w.worker and t['restarts'] == 0,
            'the same worker, no worker restart', t)
    s.check(wait_until(lambda: put_ok(w.port, w.ca, *w.client2, 'k3', 'v3'), 10, 0.3),
            'a client certificate of the new CA gets in')
    s.eq(w.core.get('/a/k3'), 'v3', 'its put lands under /a/')
    r = etcdctl_tls(w.port, w.ca, *w.client1, 'get', 'k')
    s.check(r.returncode != 0, 'a client certificate of the old CA is refused now',
            r.stdout + r.stderr)
    log = w.sv.log_text()[mark:]
    s.check('restarting etcd grpc-proxy: new client CA bundle' in log,
            'the worker logs the planned restart and why', log[-1500:])
    s.check('restarting it in' not in log and 'exited with code' not in log,
            'not counted as a crash (no backoff)', log[-1500:])
    w.proxy = new
    if getattr(w, 'copies', None):
        s.eq(flag(new, 'trusted-ca-file'), w.copies[2], 'the same copy path is given again')
        s.eq(text(w.copies[2]), text(w.clients2.crt), 'the copy holds the new bundle')


def test_core_ca_change(s, w):
    old = w.proxy
    mark = len(w.sv.log_text())
    # not a complete PEM certificate (a file caught while being written): no restart
    eptest.write_text(w.core_ca, text(w.core_ca)[:200])
    s.check(wait_until(lambda: 'holds no complete PEM certificate' in
                       w.sv.log_text()[mark:], 10),
            'an incomplete core_etcd.ca_file: a warning', w.sv.log_text()[mark:][-1500:])
    s.check(s.procs.alive(old), 'and grpc-proxy goes on (pid %d)' % old)
    eptest.write_text(w.core_ca, text(CA(s.tmp, 'core-ca-two').crt))
    new = w.sv.grpc_proxy('a', timeout=15, exclude=(old,))
    s.check(new != old, 'a new core_etcd.ca_file restarts grpc-proxy (%d -> %d)' % (old, new))
    t = w.sv.wait_state('a', 'ready', timeout=15)
    s.eq(t['pid'], w.worker, 'the same worker')
    s.check('restarting etcd grpc-proxy: core_etcd.ca_file changed' in w.sv.log_text()[mark:],
            'the worker logs why')
    s.check(wait_until(lambda: put_ok(w.port, w.ca, *w.client2, 'k4', 'v4'), 10, 0.3),
            'the tenant serves over TLS after the restart')
    w.proxy = new


def test_missing_core_ca(s, w):
    # etcdproxyd checks the file when it reads its configuration; the backend checks it again
    # when a worker starts (a file removed since, a worker restarted)
    sv = eptest.Supervisor(s, w.core, name='missing')
    ca = os.path.join(s.tmp, 'missing-core-ca.crt')
    eptest.write_text(ca, text(w.serving_ca.crt))
    sv.config['core_etcd']['ca_file'] = ca
    sv.write_config()
    sv.add_tenant('m', backend='etcd')
    sv.start()
    sv.wait_ready('m', timeout=20)
    os.unlink(ca)
    rc, out, err, _ = sv.ctl('restart', 'm')
    s.eq(rc, 0, 'etcdproxyctl restart m')
    t = sv.wait_state('m', 'failed', timeout=15)
    err = t.get('last_error') or ''
    s.check('core_etcd.ca_file' in err and ca in err and 'No such file' in err,
            'core_etcd.ca_file gone: the new worker fails, the message names the setting, the '
            'file and the reason', err)
    s.check(not any('open %s' % ca in line for line in sv.log_text().splitlines()
                    if 'etcdproxy-worker' not in line and 'etcdproxyd' not in line),
            'no grpc-proxy was started to fail on it')
    s.eq(sv.stop(), 0, 'that etcdproxyd exits 0 on SIGTERM')


def body(s):
    w = setup(s)
    s.run(test_mutual_tls, s, w)
    s.run(test_leaf_renewal, s, w)
    s.run(test_client_ca_change, s, w)
    s.run(test_core_ca_change, s, w)
    s.run(test_missing_core_ca, s, w)
    s.eq(w.sv.stop(), 0, 'etcdproxyd exits 0 on SIGTERM')
    if getattr(w, 'copies', None):
        s.check(not any(os.path.exists(p) for p in w.copies),
                'the backend\'s copies (the key above all) are removed at stop', w.copies)


if __name__ == '__main__':
    s = eptest.Suite('etcd-tls', timeout=150)
    s.require(eptest.ETCD, eptest.ETCDCTL, eptest.ETCDPROXYD, eptest.ETCDPROXYCTL, eptest.WORKER,
              OPENSSL)
    if not os.path.exists(os.path.join(eptest.PLUGIN_DIR, 'certs-files.so')):
        s.require(os.path.join(eptest.PLUGIN_DIR, 'certs-files.so'))
    s.main(body)
