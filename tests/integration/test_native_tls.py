#!/usr/bin/python3
"""The native backend with TLS on both sides, certificates made here with the openssl CLI.

Towards the clients (spec.tls from the "files" source): etcdctl and python3-etcd3 with a
client certificate work and write under /<name>/ in the core; no client certificate, one
from another CA, an expired one, a client without ALPN h2 and a plaintext h2c client are
refused, each with one log line saying why, and the worker goes on serving; new files
while an etcdctl watch is open: new connections get the new serial, the watch keeps its
TCP connection and its events; the counters count handshakes and failures.

Towards the core etcd (an etcd with --client-cert-auth on https): a plaintext tenant is
served through it; core_etcd's ca/cert/key replaced by a set from a new CA are reloaded,
which the core etcd restarted with that CA proves; a broken key file is refused with a
warning and the previous credentials stay in use; broken files at start fail the tenant
with the file and the reason."""

import os
import signal
import subprocess
import sys

sys.dont_write_bytecode = True  # nothing written into the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eptest  # noqa: E402
from eptest import ETCD, ETCDCTL, Failure, free_port, wait_until  # noqa: E402

import eptls  # noqa: E402
from eptls import CA, OPENSSL, etcdctl_tls, serial_of  # noqa: E402


def read(path):
    with open(path) as f:
        return f.read()


def put_file(path, text, mode=0o644):
    eptest.write_text(path, text, mode)  # a rename, as a careful tool does


def s_client(port, *args):
    """openssl s_client against the proxy: (returncode, stdout+stderr)."""
    try:
        r = subprocess.run([OPENSSL, 's_client', '-connect', '127.0.0.1:%d' % port] +
                           list(args), capture_output=True, timeout=10,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return -1, ''
    return r.returncode, (r.stdout + r.stderr).decode(errors='replace')


def served_serial(port, cert, key):
    """The serial of the certificate a new TLS connection gets (ALPN h2), or None."""
    return eptls.served_serial(port, cert, key, '-alpn', 'h2', '-showcerts')


def socket_inodes(pid):
    """The sockets a process holds, as a set of inode numbers."""
    out = set()
    try:
        for fd in os.listdir('/proc/%d/fd' % pid):
            try:
                link = os.readlink('/proc/%d/fd/%s' % (pid, fd))
            except OSError:
                continue
            if link.startswith('socket:['):
                out.add(link)
    except OSError:
        pass
    return out


def log_since(sv, mark):
    return sv.log_text()[mark:]


def line_with(text, *words):
    return next((ln for ln in text.splitlines() if all(w in ln for w in words)), None)


class World:
    pass


# ---- TLS towards the clients ----------------------------------------------------------------

def test_etcdctl(s, w):
    r = etcdctl_tls(w.port, w.ca.crt, w.client_crt, w.client_key, 'put', 'k', 'v1')
    s.check(r.returncode == 0 and r.stdout.strip() == 'OK',
            'etcdctl --cacert/--cert/--key put through the TLS endpoint', r.stdout + r.stderr)
    r = etcdctl_tls(w.port, w.ca.crt, w.client_crt, w.client_key, 'get', '--print-value-only',
                    'k')
    s.eq(r.stdout.strip(), 'v1', 'etcdctl get over TLS reads it back')
    s.eq(w.core.get('/a/k'), 'v1', 'the key landed under /a/ in the core etcd')
    s.eq(w.core.get('k'), None, 'and not unprefixed')
    r = etcdctl_tls(w.port, w.ca.crt, w.client_crt, w.client_key, 'member', 'list')
    s.check(r.returncode == 0 and 'https://127.0.0.1:%d' % w.port in r.stdout,
            'member list names the proxy with an https:// URL', r.stdout + r.stderr)
    text = w.sv.log_text()
    s.check(line_with(text, 'TLS material generation 1 in use'),
            'the worker logs "TLS material generation 1 in use"')


def test_refused(s, w):
    sv, port = w.sv, w.port
    cases = [
        ('no client certificate', (w.ca.crt, None, None),
         'TLS handshake with client 127.0.0.1:', 'certificate'),
        ('a client certificate from another CA', (w.ca.crt, w.stranger_crt, w.stranger_key),
         'TLS handshake with client 127.0.0.1:', 'unable to get local issuer certificate'),
        ('an expired client certificate', (w.ca.crt, w.expired_crt, w.expired_key),
         'TLS handshake with client 127.0.0.1:', 'certificate has expired'),
    ]
    for what, creds, *want in cases:
        mark = len(sv.log_text())
        r = etcdctl_tls(port, *creds, 'get', 'k', timeout=10, quick=True)
        s.check(r.returncode != 0 and 'v1' not in r.stdout, '%s: etcdctl fails' % what,
                r.stdout + r.stderr)
        got = wait_until(lambda: line_with(log_since(sv, mark), *want), 5)
        s.check(got, '%s: one log line "TLS handshake with client ...: failed: <reason>" '
                'with %r' % (what, want[-1]), log_since(sv, mark)[-1500:])

    mark = len(sv.log_text())
    rc, out = s_client(port, '-CAfile', w.ca.crt, '-cert', w.client_crt, '-key', w.client_key,
                       '-alpn', 'http/1.1')
    s.check(rc != 0 or 'no application protocol' in out, 'a client offering only ALPN '
            'http/1.1 gets the no_application_protocol alert', out[-800:])
    got = wait_until(lambda: line_with(log_since(sv, mark), 'did not offer ALPN h2'), 5)
    s.check(got, 'the log says the client did not offer ALPN h2', log_since(sv, mark)[-800:])
    mark = len(sv.log_text())
    s_client(port, '-CAfile', w.ca.crt, '-cert', w.client_crt, '-key', w.client_key)
    got = wait_until(lambda: line_with(log_since(sv, mark), 'no ALPN at all'), 5)
    s.check(got, 'a client without ALPN: refused, "no ALPN at all" in the log',
            log_since(sv, mark)[-800:])

    r = etcdctl_tls(port, None, None, None, 'get', 'k', timeout=10, quick=True, scheme='http')
    s.check(r.returncode != 0 and 'v1' not in r.stdout, 'a plaintext h2c client gets nothing',
            r.stdout + r.stderr)

    r = etcdctl_tls(port, w.ca.crt, w.client_crt, w.client_key, 'get', '--print-value-only', 'k')
    s.eq(r.stdout.strip(), 'v1', 'after all that, a good client is still served')
    s.eq(sv.tenant('a')['state'], 'ready', 'the tenant is still ready')


def test_python_etcd3(s, w):
    import etcd3
    c = etcd3.client(host='127.0.0.1', port=w.port, ca_cert=w.ca.crt, cert_key=w.client_key,
                     cert_cert=w.client_crt, timeout=5)
    try:
        c.put('py', 'pv')
        value, _ = c.get('py')
        s.eq(value, b'pv', 'python3-etcd3 with ca_cert/cert_key/cert_cert: put and get')
        s.eq(w.core.get('/a/py'), 'pv', 'its key is /a/py in the core etcd')
    finally:
        c.close()


def test_reload_keeps_connections(s, w):
    sv, port = w.sv, w.port
    old_serial = served_serial(port, w.client_crt, w.client_key)
    s.eq(old_serial, serial_of(w.server_crt), 'a new connection gets the first serving serial')

    watch_log = os.path.join(s.tmp, 'watch.log')
    cmd = [ETCDCTL, '--endpoints=https://127.0.0.1:%d' % port, '--cacert', w.ca.crt, '--cert',
           w.client_crt, '--key', w.client_key, 'watch', 'w/', '--prefix']
    watch = s.popen(cmd, log=watch_log, label='etcdctl watch', log_lines=10,
                    env=dict(os.environ, ETCDCTL_API='3'))
    ok = wait_until(lambda: etcdctl_tls(port, w.ca.crt, w.client_crt, w.client_key, 'put',
                                        'w/1', 'one').returncode == 0 and
                    'one' in eptest.read_text(watch_log), 10, 0.3)
    s.require_check(ok, 'an etcdctl watch over TLS sees w/1', eptest.read_text(watch_log))
    sockets = socket_inodes(watch.pid)

    mark = len(sv.log_text())
    new_crt, new_key = w.ca.issue('server')
    put_file(w.set_crt, read(new_crt))
    put_file(w.set_key, read(new_key), 0o600)
    new_serial = serial_of(new_crt)
    got = wait_until(lambda: line_with(log_since(sv, mark), 'TLS material generation 2 in use'),
                     10)
    s.check(got, 'new files: the worker logs "TLS material generation 2 in use"',
            log_since(sv, mark)[-1500:])
    s.check(new_serial != old_serial, 'the new serving certificate has a new serial')
    s.eq(served_serial(port, w.client_crt, w.client_key), new_serial,
         'openssl s_client -showcerts: a new connection gets the new serial')
    r = etcdctl_tls(port, w.ca.crt, w.client_crt, w.client_key, 'put', 'w/2', 'two')
    s.check(r.returncode == 0, 'a new etcdctl connection puts w/2', r.stderr)
    ok = wait_until(lambda: 'two' in eptest.read_text(watch_log), 10)
    s.check(ok and watch.poll() is None, 'the watch opened before the reload gets w/2',
            eptest.read_text(watch_log))
    s.eq(socket_inodes(watch.pid), sockets,
         'the watch still has the very sockets it had (no reconnect)')
    watch.send_signal(signal.SIGTERM)
    watch.wait(5)


def test_counters(s, w):
    # the worker reports every 5 s
    k = wait_until(lambda: (lambda c: c if c.get('tls_handshake_failures', 0) >= 5 else None)(
        w.sv.counters('a')), 12, 0.5)
    s.check(k and k.get('tls_handshakes', 0) >= 5,
            'counters: tls_handshakes and tls_handshake_failures (5 refusals above)',
            w.sv.counters('a'))


def setup_clients(s, w):
    w.core = eptest.CoreEtcd(s).start()
    w.ca = CA(s.tmp, 'ca-one')
    w.other_ca = CA(s.tmp, 'ca-two')
    w.server_crt, w.server_key = w.ca.issue('server')
    w.client_crt, w.client_key = w.ca.issue('client', ext='client')
    w.stranger_crt, w.stranger_key = w.other_ca.issue('stranger', ext='client')
    w.expired_crt, w.expired_key = w.ca.issue('old-client', ext='client',
                                              start='20200101000000Z', end='20200201000000Z')
    d = os.path.join(s.tmp, 'operator')
    os.makedirs(d)
    w.set_crt, w.set_key = os.path.join(d, 'tls.crt'), os.path.join(d, 'tls.key')
    w.set_client_ca, w.set_ca = os.path.join(d, 'client-ca.crt'), os.path.join(d, 'ca.crt')
    put_file(w.set_crt, read(w.server_crt))
    put_file(w.set_key, read(w.server_key), 0o600)
    put_file(w.set_client_ca, read(w.ca.crt))
    put_file(w.set_ca, read(w.ca.crt))
    w.sv = eptest.Supervisor(s, w.core, extra={'certs': {'files': {'poll_interval': '300ms'}}})
    w.port = w.sv.add_tenant('a', backend='native', tls={
        'source': 'files', 'files': {'certFile': w.set_crt, 'keyFile': w.set_key,
                                     'clientCAFile': w.set_client_ca, 'caFile': w.set_ca}})
    w.sv.start()
    w.sv.wait_ready('a')


def mapped_files(pid):
    """The basenames of the files a process maps."""
    names = set()
    with open('/proc/%d/maps' % pid) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6:
                names.add(os.path.basename(parts[5]))
    return names


def test_openssl_only_with_tls(s, w):
    """OpenSSL is a module of its own (native-tls.so): a plaintext worker does not map it."""
    maps = mapped_files(int(w.sv.tenant('a')['pid']))
    s.check('native-tls.so' in maps and 'libssl.so.3' in maps,
            'a TLS tenant\'s worker has loaded native-tls.so (and libssl)',
            sorted(m for m in maps if m.endswith('.so') or '.so.' in m))
    sv = eptest.Supervisor(s, w.core, name='plain')
    port = sv.add_tenant('p', backend='native')  # tls None: {"enabled": false}
    sv.start()
    try:
        sv.wait_ready('p')
        s.check(eptest.serves(port), 'a plaintext native tenant serves')
        maps = mapped_files(int(sv.tenant('p')['pid']))
        s.check(not any(m.startswith(('libssl', 'libcrypto', 'native-tls')) for m in maps),
                'its worker maps neither native-tls.so nor libssl nor libcrypto',
                sorted(m for m in maps if '.so' in m))
    finally:
        sv.stop()
    # a plugin directory without the module: a TLS tenant fails and says what is missing
    d = os.path.join(s.tmp, 'plugins-without-tls')
    os.makedirs(d)
    for f in os.listdir(eptest.PLUGIN_DIR):
        if f.endswith('.so') and f != 'native-tls.so':
            os.symlink(os.path.join(eptest.PLUGIN_DIR, f), os.path.join(d, f))
    sv = eptest.Supervisor(s, w.core, name='notls', plugin_dir=d)
    sv.add_tenant('t', backend='native', tls={
        'source': 'files', 'files': {'certFile': w.set_crt, 'keyFile': w.set_key,
                                     'clientCAFile': w.set_client_ca}})
    sv.start()
    try:
        t = sv.wait_state('t', 'failed', timeout=20)
        err = t.get('last_error') or ''
        s.check('cannot load the TLS module' in err and
                os.path.join(d, 'native-tls.so') in err,
                'without native-tls.so a TLS tenant fails, naming the module\'s path', err)
    finally:
        sv.stop()


# ---- TLS towards the core etcd --------------------------------------------------------------

class TlsEtcd:
    """An etcd on https with --client-cert-auth; restartable with other certificates."""

    def __init__(self, suite, name='tls-core'):
        self.suite = suite
        self.name = name
        self.dir = os.path.join(suite.tmp, name)
        self.log = os.path.join(suite.tmp, '%s.log' % name)
        self.port, self.peer = free_port(), free_port()
        self.proc = None

    @property
    def url(self):
        return 'https://127.0.0.1:%d' % self.port

    def start(self, ca, crt, key, client_crt, client_key):
        purl = 'http://127.0.0.1:%d' % self.peer
        self.creds = (ca, client_crt, client_key)
        self.proc = self.suite.popen(
            [ETCD, '--name', self.name, '--data-dir', self.dir,
             '--listen-client-urls', self.url, '--advertise-client-urls', self.url,
             '--listen-peer-urls', purl, '--initial-advertise-peer-urls', purl,
             '--initial-cluster', '%s=%s' % (self.name, purl),
             '--cert-file', crt, '--key-file', key, '--trusted-ca-file', ca,
             '--client-cert-auth', '--logger', 'zap', '--log-outputs', 'stderr'],
            log=self.log, label='etcd %s' % self.name, log_lines=6)
        ok = wait_until(lambda: self.proc.poll() is not None or
                        self.ctl('endpoint', 'health').returncode == 0, 20, 0.2)
        if not ok or self.proc.poll() is not None:
            raise Failure('the TLS etcd does not start: see %s' % self.log)
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def ctl(self, *args):
        return etcdctl_tls(self.port, *self.creds, *args, timeout=10)

    def get(self, key):
        r = self.ctl('get', '--print-value-only', key)
        return r.stdout.strip() if r.returncode == 0 else None


def test_upstream_tls(s, w):
    port = w.up_port
    s.check(eptest.wait_serves(port, 15), 'a plaintext tenant served through a core etcd on '
            'https with a required client certificate')
    s.check(eptest.etcd_put(port, 'u', 'one'), 'put u through the proxy')
    s.eq(w.tls_core.get('/u/u'), 'one', 'the TLS core etcd holds /u/u')


def test_upstream_reload(s, w):
    sv, port = w.up_sv, w.up_port
    # a whole new set from a new CA: only the new files can talk to the restarted core
    ca2 = CA(s.tmp, 'core-ca-2')
    srv_crt, srv_key = ca2.issue('etcd')
    cl_crt, cl_key = ca2.issue('etcdproxy', ext='client')
    mark = len(sv.log_text())
    put_file(w.core_ca, read(ca2.crt))
    put_file(w.core_crt, read(cl_crt))
    put_file(w.core_key, read(cl_key), 0o600)
    got = wait_until(lambda: line_with(log_since(sv, mark), 'core etcd credentials were '
                                       'reloaded'), 10)
    s.check(got, 'replaced core_etcd files: "the core etcd credentials were reloaded"',
            log_since(sv, mark)[-1500:])
    s.check(not line_with(log_since(sv, mark), 'cannot be used'),
            'no warning while the three files were replaced', log_since(sv, mark)[-1500:])
    w.tls_core.stop()
    w.tls_core.start(ca2.crt, srv_crt, srv_key, cl_crt, cl_key)
    s.check(eptest.wait_serves(port, 15, key='after-rotation'),
            'the core etcd restarted with the new CA: served again (new upstream connections '
            'use the reloaded credentials)')
    s.eq(w.tls_core.get('/u/after-rotation') is not None, True,
         'the write is in the restarted core etcd')

    # a broken key: refused, the previous credentials stay
    mark = len(sv.log_text())
    put_file(w.core_key, '-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n',
             0o600)
    got = wait_until(lambda: line_with(log_since(sv, mark), 'cannot be used'), 10)
    s.check(got and w.core_key in got and 'previous ones stay in use' in got,
            'a broken key file: a warning naming it, the previous credentials stay in use',
            got or log_since(sv, mark)[-1500:])
    w.tls_core.stop()
    w.tls_core.start(ca2.crt, srv_crt, srv_key, cl_crt, cl_key)
    s.check(eptest.wait_serves(port, 15, key='after-broken'),
            'after another restart of the core etcd: still served with the kept credentials')


def test_upstream_start_errors(s, w):
    ca = w.core_ca_obj
    cl_crt, cl_key = ca.issue('etcdproxy', ext='client')
    _, other_key = ca.issue('other', ext='client')
    old_crt, old_key = ca.issue('old', ext='client', start='20200101000000Z',
                                end='20200201000000Z')
    d = os.path.join(s.tmp, 'bad-creds')
    os.makedirs(d)
    notpem = os.path.join(d, 'not-pem.crt')
    put_file(notpem, 'this is not PEM\n')
    cases = [
        ('a key that is not the certificate\'s', ca.crt, cl_crt, other_key,
         [other_key, 'does not match', cl_crt]),
        ('an expired client certificate', ca.crt, old_crt, old_key,
         ['core_etcd.cert_file', old_crt, 'expired on 2020-02-01']),
        ('a ca_file that is not PEM', notpem, cl_crt, cl_key,
         ['core_etcd.ca_file', notpem, 'no PEM certificate']),
    ]
    for i, (what, ca_file, crt, key, want) in enumerate(cases):
        sv = eptest.Supervisor(s, None, name='bad%d' % i)
        sv.config['core_etcd'] = {'endpoints': [w.tls_core.url], 'ca_file': ca_file,
                                  'cert_file': crt, 'key_file': key}
        sv.write_config()
        sv.add_tenant('x', backend='native')
        sv.start()
        try:
            t = sv.wait_state('x', 'failed', timeout=15)
            err = t.get('last_error') or ''
            s.check(all(x in err for x in want), '%s: the tenant fails, saying %s' % (
                what, ' and '.join(repr(x) for x in want)), err)
        finally:
            sv.stop()


def test_options(s, w):
    sv = eptest.Supervisor(s, None, name='opt', backends={
        'native': {'credentials_poll_interval': '1s', 'bogus': 1}})
    sv.add_tenant('x', backend='native')
    sv.start()
    try:
        t = sv.wait_state('x', 'failed', timeout=15)
        err = t.get('last_error') or ''
        s.check('credentials_poll_interval' in err,
                'backends.native with an unknown key fails, naming credentials_poll_interval '
                'among the known ones', err)
    finally:
        sv.stop()


def setup_upstream(s, w):
    ca = w.core_ca_obj = CA(s.tmp, 'core-ca-1')
    srv_crt, srv_key = ca.issue('etcd')
    cl_crt, cl_key = ca.issue('etcdproxy', ext='client')
    w.tls_core = TlsEtcd(s).start(ca.crt, srv_crt, srv_key, cl_crt, cl_key)
    s.cleanups.append(w.tls_core.stop)
    d = os.path.join(s.tmp, 'core-creds')
    os.makedirs(d)
    w.core_ca, w.core_crt, w.core_key = (os.path.join(d, n) for n in ('ca.crt', 'client.crt',
                                                                       'client.key'))
    put_file(w.core_ca, read(ca.crt))
    put_file(w.core_crt, read(cl_crt))
    put_file(w.core_key, read(cl_key), 0o600)
    w.up_sv = eptest.Supervisor(s, None, name='up', backends={
        'native': {'credentials_poll_interval': '300ms'}})
    w.up_sv.config['core_etcd'] = {'endpoints': [w.tls_core.url], 'ca_file': w.core_ca,
                                   'cert_file': w.core_crt, 'key_file': w.core_key}
    w.up_sv.write_config()
    w.up_port = w.up_sv.add_tenant('u', backend='native')
    w.up_sv.start()
    w.up_sv.wait_ready('u')


def main(s):
    s.require(ETCD, ETCDCTL, OPENSSL, eptest.ETCDPROXYD, eptest.WORKER,
              os.path.join(eptest.PLUGIN_DIR, 'certs-files.so'))
    w = World()
    setup_clients(s, w)
    s.run(test_etcdctl, s, w)
    s.run(test_refused, s, w)
    s.run(test_python_etcd3, s, w)
    s.run(test_reload_keeps_connections, s, w)
    s.run(test_openssl_only_with_tls, s, w)
    setup_upstream(s, w)
    s.run(test_upstream_tls, s, w)
    s.run(test_upstream_reload, s, w)
    s.run(test_upstream_start_errors, s, w)
    s.run(test_options, s, w)
    s.run(test_counters, s, w)


if __name__ == '__main__':
    eptest.Suite('native-tls', timeout=150).main(main)
