#!/usr/bin/python3
"""The external backend: a real `etcd grpc-proxy --namespace` that the test runs itself,
outside etcdproxyd, with the certificates etcdproxyd publishes for it:

  - before the proxy runs, the tenant is not ready, and show says why;
  - with the proxy started on the published tls.crt, tls.key and client-ca.crt, the tenant
    turns ready, and etcdctl (with a client certificate of the tenant) writes through the
    proxy into the tenant's prefix of the core etcd;
  - killing the proxy turns the tenant not ready with the reason within two health
    intervals; starting it again brings the tenant back;
  - a rotation (etcdproxyctl rotate) reaches the proxy's files;
  - spec.quota on the external backend is refused: it carries no traffic."""

import os
import signal
import sys
import time

sys.dont_write_bytecode = True  # nothing written into the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eptest  # noqa: E402
from eptest import wait_until  # noqa: E402

INTERVAL = 2  # seconds, spec.external.interval


def read(path):
    with open(path, 'rb') as f:
        return f.read()


def start_proxy(t):
    d = t.certs
    t.proxy = t.s.popen([eptest.ETCD, 'grpc-proxy', 'start', '--endpoints', t.core.url,
                         '--listen-addr', '127.0.0.1:%d' % t.port, '--namespace', '/ext/',
                         '--cert-file', os.path.join(d, 'tls.crt'),
                         '--key-file', os.path.join(d, 'tls.key'),
                         '--trusted-ca-file', os.path.join(d, 'client-ca.crt'),
                         '--metrics-addr', 'http://127.0.0.1:%d' % eptest.free_port(),
                         '--data-dir', os.path.join(t.s.tmp, 'proxy-data')],
                        log=os.path.join(t.s.tmp, 'proxy.log'), label='etcd grpc-proxy')


def etcdctl_tls(t, *args):
    c = t.client
    return eptest.etcdctl(t.port, '--cacert', os.path.join(c, 'ca.crt'), '--cert',
                          os.path.join(c, 'tls.crt'), '--key', os.path.join(c, 'tls.key'),
                          *args)


def test_not_ready_without_proxy(s, t):
    st = t.sv.wait_tenant('ext', lambda x: 'does not answer' in
                          (t.sv.counters('ext').get('proxy_reason') or ''), 20,
                          'a failed health check')
    s.check(st['state'] != 'ready', 'without its proxy the tenant is not ready (%s)' % st['state'])
    s.check(all(os.path.exists(os.path.join(t.certs, f))
                for f in ('tls.crt', 'tls.key', 'client-ca.crt', 'ca.crt')),
            'the proxy\'s tls.crt, tls.key, client-ca.crt and ca.crt are published')
    s.eq(oct(os.stat(os.path.join(t.certs, 'tls.key')).st_mode & 0o777), '0o600',
         'the key is readable by its owner only')


def test_ready_with_proxy(s, t):
    start_proxy(t)
    st = t.sv.wait_state('ext', 'ready', 30)
    s.check(st['state'] == 'ready' and st.get('listen') == '127.0.0.1:%d' % t.port,
            'with the proxy running on the published certificates the tenant is ready', st)
    r = etcdctl_tls(t, 'put', 'through', 'the-proxy')
    s.check(r.returncode == 0, 'etcdctl with the tenant\'s client certificate writes through it',
            r.stderr)
    s.eq(t.core.get('/ext/through'), 'the-proxy', 'into the tenant\'s prefix of the core etcd')
    s.check(wait_until(lambda: t.sv.counters('ext').get('proxy_healthy') is True and
                       t.sv.counters('ext').get('health_checks', 0) > 0, 15, 0.5),
            'show counts the health checks (at the next report)', t.sv.counters('ext'))


def test_proxy_killed(s, t):
    t.proxy.send_signal(signal.SIGKILL)
    t.proxy.wait(10)
    start = time.monotonic()
    st = t.sv.wait_state('ext', ('unhealthy', 'starting'), 4 * INTERVAL)
    took = time.monotonic() - start
    s.check(took <= 2 * INTERVAL + 1, 'the proxy killed, the tenant is not ready within two '
            'health intervals (%.1f s, interval %d s)' % (took, INTERVAL))
    s.check('does not answer' in (st.get('last_error') or st.get('health_reason') or '') or
            'does not answer' in (t.sv.counters('ext').get('proxy_reason') or ''),
            'with the reason', st)
    start_proxy(t)
    t.sv.wait_state('ext', 'ready', 30)
    s.check(etcdctl_tls(t, 'get', 'through').returncode == 0,
            'the proxy started again, the tenant is ready again and serves')


def test_rotation(s, t):
    before = {f: read(os.path.join(t.certs, f)) for f in ('tls.crt', 'client-ca.crt')}
    rc, out, err, _ = t.sv.ctl('rotate', 'ext')
    s.eq(rc, 0, 'etcdproxyctl rotate ext')
    s.check(wait_until(lambda: read(os.path.join(t.certs, 'client-ca.crt')) !=
                       before['client-ca.crt'], 20, 0.3),
            'the new client CA reaches the proxy\'s client-ca.crt at once')
    s.check(wait_until(lambda: read(os.path.join(t.certs, 'tls.crt')) != before['tls.crt'], 30,
                       0.3), 'and after the grace period the new serving certificate its tls.crt')


def test_refused(s, t):
    st = t.sv.tenant('bad')
    s.check(st['state'] == 'failed' and 'spec.quota: enforced by the native backend only'
            in (st.get('last_error') or ''), 'spec.quota on the external backend is refused', st)


class T:
    pass


def body(s):
    t = T()
    t.s = s
    t.core = eptest.CoreEtcd(s).start()
    t.sv = eptest.Supervisor(s, t.core, extra={'certs': {'ca': {'grace': '2s'}}})
    t.certs = os.path.join(s.tmp, 'proxy-certs')
    t.client = os.path.join(s.tmp, 'health-client')
    t.port = t.sv.add_tenant('ext', backend='external', tls={
        'source': 'ca', 'clientCertificates': [{'name': 'health', 'outputDir': t.client}]},
        spec_extra={'external': {'certificatesDir': t.certs, 'clientCertificateDir': t.client,
                                 'interval': '%ds' % INTERVAL, 'timeout': '1s'}})
    t.sv.add_tenant('bad', backend='external', tls={'enabled': False},
                    spec_extra={'quota': {'maxKeys': 3}})
    t.sv.start()
    for fn in (test_not_ready_without_proxy, test_ready_with_proxy, test_proxy_killed,
               test_rotation, test_refused):
        s.run(fn, s, t)
    s.eq(t.sv.stop(), 0, 'etcdproxyd exits 0 on SIGTERM')


if __name__ == '__main__':
    s = eptest.Suite('external', timeout=300)
    s.require(eptest.ETCD, eptest.ETCDCTL, eptest.ETCDPROXYD, eptest.ETCDPROXYCTL, eptest.WORKER)
    s.main(body)
