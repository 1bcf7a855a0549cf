#!/usr/bin/python3
"""The "files" certificate source (certs-files.so): PEM files kept by the operator, made here
with the openssl CLI.  A valid set serves TLS (etcdctl with a client certificate, the serial
seen by openssl s_client); a key that does not match, an expired serving certificate, a chain
out of order or not verified by caFile, a client CA bundle holding a leaf: the tenant fails
with a message naming the file; files replaced while running: a broken set leaves the
previous certificate in use with a warning, a valid one is served to new connections,
kubelet-style ..data symlink swaps included; etcdproxyctl rotate re-reads the files;
certs.files options are checked."""

import os
import shutil
import stat
import sys

sys.dont_write_bytecode = True  # nothing written into the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eptest  # noqa: E402
from eptest import Failure, wait_until  # noqa: E402

import eptls  # noqa: E402
from eptls import CA, OPENSSL, etcdctl_tls, new_key  # noqa: E402


def norm(serial):
    """A hex serial in one spelling: lower case, no leading zeros (None stays None)."""
    return None if serial is None else serial.lower().lstrip('0') or '0'


def serial_of(path):
    return norm(eptls.serial_of(path))


def serving_serial(sv, name):
    """The serial of the serving certificate `etcdproxyctl show` says is in use, or None."""
    serving = by_role(certs_of(sv, name), 'serving')
    return norm(serving[0].get('serial')) if serving else None


def cat(*paths):
    return ''.join(open(p).read() for p in paths)


def put_file(path, text, mode=0o644):
    """Replace path atomically, as a careful tool does (a rename)."""
    eptest.write_text(path, text, mode)


class Set:
    """An operator's directory with tls.crt, tls.key, client-ca.crt and ca.crt."""

    def __init__(self, tmp, name):
        self.dir = os.path.join(tmp, 'operator', name)
        os.makedirs(self.dir)
        self.crt = os.path.join(self.dir, 'tls.crt')
        self.key = os.path.join(self.dir, 'tls.key')
        self.client_ca = os.path.join(self.dir, 'client-ca.crt')
        self.ca = os.path.join(self.dir, 'ca.crt')

    def write(self, crt_text, key_text, client_ca_text, ca_text=None):
        put_file(self.crt, crt_text)
        put_file(self.key, key_text, 0o600)
        put_file(self.client_ca, client_ca_text)
        if ca_text is not None:
            put_file(self.ca, ca_text)
        return self

    def spec(self, with_ca=True):
        files = {'certFile': self.crt, 'keyFile': self.key, 'clientCAFile': self.client_ca}
        if with_ca:
            files['caFile'] = self.ca
        return {'source': 'files', 'files': files}


# ---- TLS clients ------------------------------------------------------------------------------

def served_serial(port, cert, key):
    """The serial of the certificate a new TLS connection gets (ALPN h2), or None."""
    return norm(eptls.served_serial(port, cert, key, '-alpn', 'h2'))


# ---- helpers on the daemon ----------------------------------------------------------------------

def show(sv, name):
    rc, out, err, data = sv.ctl('show', name)
    if rc != 0 or data is None:
        raise Failure('etcdproxyctl show %s -o json: rc %d: %s' % (name, rc, err.strip()))
    return data['tenant']


def certs_of(sv, name):
    return show(sv, name).get('certificates') or []


def by_role(certs, role):
    return [c for c in certs if c.get('role') == role]


def worker_log_since(sv, mark):
    return sv.log_text()[mark:]


def state_dir_of(sv, name):
    cfg = show(sv, name).get('config') or {}
    return cfg.get('state_dir') or os.path.join(sv.state, name)


# ---- the scenarios ------------------------------------------------------------------------------

class World:
    pass


def test_valid_set(s, w):
    sv, port = w.sv, w.ports['good']
    t = sv.wait_ready('good', timeout=20)['good']
    s.eq(t['state'], 'ready', 'a valid set of files: the tenant is ready')
    # the worker reports its certificates with its STATUS messages
    certs = wait_until(lambda: certs_of(sv, 'good'), 10) or []
    serving = by_role(certs, 'serving')
    s.check(len(serving) == 1 and norm(serving[0].get('serial')) == serial_of(w.good_crt) and
            serving[0].get('file') == w.good.crt and serving[0].get('subject') == 'CN=good' and
            serving[0].get('issuer') == 'CN=ca-one',
            'show: the serving certificate with its serial, subject, issuer and file', certs)
    s.check(all(c.get('not_before', '').endswith('Z') and len(c.get('not_after', '')) == 20
                for c in serving), 'show: not_before/not_after as RFC 3339 UTC', serving)
    s.check(len(by_role(certs, 'client-ca')) == 1 and
            by_role(certs, 'client-ca')[0].get('file') == w.good.client_ca,
            'show: the client CA with its file', certs)
    s.check(len(by_role(certs, 'ca')) == 1, 'show: the caFile CA', certs)
    s.check(not by_role(certs, 'error'), 'show: no error entry', certs)

    gen = os.path.join(state_dir_of(sv, 'good'), 'files', 'gen-1')
    st_dir = os.stat(gen) if os.path.isdir(gen) else None
    s.check(st_dir is not None and stat.S_IMODE(st_dir.st_mode) == 0o700,
            'the published copy is in STATE_DIR/files/gen-1, mode 0700', gen)
    if st_dir is not None:
        s.eq(sorted(os.listdir(gen)), ['ca.crt', 'client-ca.crt', 'tls.crt', 'tls.key'],
             'gen-1 holds tls.crt, tls.key, client-ca.crt, ca.crt')
        s.eq(oct(stat.S_IMODE(os.stat(os.path.join(gen, 'tls.key')).st_mode)), oct(0o600),
             'the copied key has mode 0600')
        s.eq(open(os.path.join(gen, 'tls.crt')).read(), open(w.good.crt).read(),
             'the copied tls.crt is the operator\'s bytes')

    r = etcdctl_tls(port, w.good.ca, w.client_crt, w.client_key, 'put', 'k', 'v1')
    s.check(r.returncode == 0 and r.stdout.strip() == 'OK',
            'etcdctl --cacert/--cert/--key put over TLS', r.stdout + r.stderr)
    r = etcdctl_tls(port, w.good.ca, w.client_crt, w.client_key, 'get', '--print-value-only', 'k')
    s.eq(r.stdout.strip(), 'v1', 'etcdctl get over TLS reads it back')
    s.eq(w.core.get('/good/k'), 'v1', 'the core has /good/k')
    s.eq(served_serial(port, w.client_crt, w.client_key), serial_of(w.good_crt),
         'openssl s_client gets the serving certificate\'s serial')
    r = etcdctl_tls(port, w.good.ca, w.stranger_crt, w.stranger_key, 'get', 'k')
    s.check(r.returncode != 0, 'a client certificate from another CA is refused', r.stdout)


def test_start_errors(s, w):
    sv = w.sv
    for name, want in w.failing.items():
        try:
            t = sv.wait_state(name, 'failed', timeout=15)
        except Failure as e:
            s.check(False, '%s: the tenant fails' % name, str(e))
            continue
        err = t.get('last_error') or ''
        s.check(all(x in err for x in want), '%s: failed, the message says %s' % (
            name, ' and '.join(repr(x) for x in want)), err)
        s.eq(t['restarts'], 0, '%s: a configuration error, not retried' % name)


def test_expired_client_ca_in_bundle(s, w):
    sv = w.sv
    t = sv.wait_ready('oldca', timeout=20)['oldca']
    s.eq(t['state'], 'ready', 'a client CA bundle with an expired CA besides a valid one: ready')
    cas = wait_until(lambda: by_role(certs_of(sv, 'oldca'), 'client-ca'), 10) or []
    s.check(len(cas) == 2 and sum(1 for c in cas if c.get('state') == 'expired') == 1,
            'show: both client CAs, the old one marked expired', cas)
    s.check('old-ca' in sv.log_text() and 'expired on' in sv.log_text(),
            'a warning names the expired CA in the bundle')


def test_broken_key_while_running(s, w):
    sv, port = w.sv, w.ports['good']
    mark = len(sv.log_text())
    put_file(w.good.key, open(w.other_key).read(), 0o600)
    want = 'keeping the previous certificate'
    got = wait_until(lambda: want in worker_log_since(sv, mark), 10)
    text = worker_log_since(sv, mark)
    line = next((ln for ln in text.splitlines() if want in ln), '')
    s.check(got and w.good.key in line and 'does not match' in line,
            'a key that does not match: a warning "keeping the previous certificate" naming the '
            'key file', line or text[-1000:])
    errors = by_role(certs_of(sv, 'good'), 'error')
    s.check(len(errors) == 1 and w.good.key in errors[0].get('error', ''),
            'show: an error entry says why the files on disk are not in use', errors)
    s.eq(sv.tenant('good')['state'], 'ready', 'the tenant stays ready')
    s.eq(serving_serial(sv, 'good'), serial_of(w.good_crt),
         'show: the previous serving certificate is still the one in use')
    r = etcdctl_tls(port, w.good.ca, w.client_crt, w.client_key, 'get', '--print-value-only', 'k')
    s.eq(r.stdout.strip(), 'v1', 'new TLS connections still work with the previous material')
    s.eq(served_serial(port, w.client_crt, w.client_key), serial_of(w.good_crt),
         'new connections get the previous serial')
    rc, out, err, _ = sv.ctl('rotate', 'good')
    s.check(rc != 0 and w.good.key in err + out, 'etcdproxyctl rotate re-reads the files and '
            'reports why they cannot be used', (rc, out, err))


def test_new_cert_while_running(s, w):
    sv, port = w.sv, w.ports['good']
    mark = len(sv.log_text())
    new_crt, new_key_path = w.ca.issue('good', start=None)
    # the certificate first, then the key, as a careless tool does: read together
    put_file(w.good.crt, open(new_crt).read())
    put_file(w.good.key, open(new_key_path).read(), 0o600)
    new_serial = serial_of(new_crt)
    ok = wait_until(lambda: serving_serial(sv, 'good') == new_serial, 10)
    s.check(ok, 'show: the new serving certificate is in use', certs_of(sv, 'good'))
    text = worker_log_since(sv, mark)
    s.check('generation 2 in use' in text and new_serial in text.lower() and 'not after' in text,
            'the log says what changed (generation, new serial, not after)', text[-1500:])
    s.check(not by_role(certs_of(sv, 'good'), 'error'), 'show: the error entry is gone')
    s.eq(served_serial(port, w.client_crt, w.client_key), new_serial,
         'new connections get the new serial')
    r = etcdctl_tls(port, w.good.ca, w.client_crt, w.client_key, 'get', '--print-value-only', 'k')
    s.eq(r.stdout.strip(), 'v1', 'etcdctl works with the new certificate')
    files = os.path.join(state_dir_of(sv, 'good'), 'files')
    s.eq(sorted(os.listdir(files)) if os.path.isdir(files) else None, ['gen-2'],
         'only the generation in use is kept')
    rc, out, err, _ = sv.ctl('rotate', 'good')
    s.eq(rc, 0, 'etcdproxyctl rotate on valid, unchanged files: exit 0')
    s.eq(sorted(os.listdir(files)), ['gen-2'], 'rotate on unchanged files publishes nothing')


def test_kubelet_symlink_swap(s, w):
    sv, port = w.sv, w.ports['kube']
    sv.wait_ready('kube', timeout=20)
    wait_until(lambda: serving_serial(sv, 'kube'), 10)
    first = serial_of(os.path.join(w.kube_dir, '..data', 'tls.crt'))
    s.eq(serving_serial(sv, 'kube'), first,
         'a kubelet-style secret volume (..data symlinks): in use')
    crt, key = w.ca.issue('kube')
    v2 = os.path.join(w.kube_dir, '..v2')
    os.mkdir(v2)
    shutil.copy(crt, os.path.join(v2, 'tls.crt'))
    shutil.copy(key, os.path.join(v2, 'tls.key'))
    shutil.copy(w.ca.crt, os.path.join(v2, 'ca.crt'))
    tmp_link = os.path.join(w.kube_dir, '..data_tmp')
    os.symlink('..v2', tmp_link)
    os.rename(tmp_link, os.path.join(w.kube_dir, '..data'))
    second = serial_of(crt)
    ok = wait_until(lambda: serving_serial(sv, 'kube') == second, 10)
    s.check(ok, 'a ..data symlink swap is seen: the new serial is in use',
            certs_of(sv, 'kube'))
    s.eq(served_serial(port, w.client_crt, w.client_key), second,
         'new connections get the swapped-in serial')


def test_options(s, w):
    sv2 = eptest.Supervisor(s, w.core, name='sv2', extra={
        'certs': {'files': {'poll_interval': '1s', 'bogus': True}}})
    sv2.add_tenant('opt', backend='native', tls=w.good.spec())
    sv2.start()
    t = sv2.wait_state('opt', 'failed', timeout=15)
    err = t.get('last_error') or ''
    s.check('bogus' in err and 'poll_interval' in err,
            'certs.files with an unknown option: the tenant fails, naming it and the known one',
            err)
    sv2.stop()


def setup(s):
    w = World()
    w.core = eptest.CoreEtcd(s).start()
    w.ca = CA(s.tmp, 'ca-one')
    w.other_ca = CA(s.tmp, 'ca-two')
    ca_text = open(w.ca.crt).read()

    w.client_crt, w.client_key = w.ca.issue('client', ext='client')
    w.stranger_crt, w.stranger_key = w.other_ca.issue('stranger', ext='client')
    w.other_key = new_key(os.path.join(s.tmp, 'pki', 'other.key'))

    w.sv = sv = eptest.Supervisor(s, w.core, extra={'certs': {'files': {'poll_interval': '300ms'}}})
    w.ports = {}
    w.failing = {}

    def tenant(name, tls_spec):
        w.ports[name] = sv.add_tenant(name, backend='native', tls=tls_spec)

    # a valid set
    w.good_crt, w.good_key = w.ca.issue('good')
    w.good = Set(s.tmp, 'good').write(open(w.good_crt).read(), open(w.good_key).read(),
                                      ca_text, ca_text)
    tenant('good', w.good.spec())

    # a key that is not the certificate's
    crt, _ = w.ca.issue('badkey')
    st = Set(s.tmp, 'badkey').write(open(crt).read(), open(w.other_key).read(), ca_text, ca_text)
    tenant('badkey', st.spec())
    w.failing['badkey'] = [st.key, 'does not match', st.crt]

    # an expired serving certificate
    crt, key = w.ca.issue('expired', start='20200101000000Z', end='20200201000000Z')
    st = Set(s.tmp, 'expired').write(open(crt).read(), open(key).read(), ca_text, ca_text)
    tenant('expired', st.spec())
    w.failing['expired'] = [st.crt, 'expired on 2020-02-01']

    # a serving certificate that is not valid yet
    crt, key = w.ca.issue('future', start='20990101000000Z', end='20990201000000Z')
    st = Set(s.tmp, 'future').write(open(crt).read(), open(key).read(), ca_text, ca_text)
    tenant('future', st.spec())
    w.failing['future'] = [st.crt, 'not valid before 2099-01-01']

    # caFile from another CA: the chain does not verify against it
    crt, key = w.ca.issue('wrongca')
    st = Set(s.tmp, 'wrongca').write(open(crt).read(), open(key).read(), ca_text,
                                     open(w.other_ca.crt).read())
    tenant('wrongca', st.spec())
    w.failing['wrongca'] = [st.crt, 'does not verify', st.ca]

    # no caFile: certFile must be a chain in order; here the leaf is followed by a stranger
    crt, key = w.ca.issue('badchain')
    st = Set(s.tmp, 'badchain').write(cat(crt, w.other_ca.crt), open(key).read(), ca_text)
    tenant('badchain', st.spec(with_ca=False))
    w.failing['badchain'] = [st.crt, 'is not issued by']

    # a leaf in the client CA bundle
    crt, key = w.ca.issue('leafca')
    st = Set(s.tmp, 'leafca').write(open(crt).read(), open(key).read(),
                                    cat(w.ca.crt, w.client_crt), ca_text)
    tenant('leafca', st.spec())
    w.failing['leafca'] = [st.client_ca, 'is not a CA certificate']

    # a file that is not there
    st = Set(s.tmp, 'missing')
    st.write(open(w.good_crt).read(), open(w.good_key).read(), ca_text)
    os.unlink(st.client_ca)
    tenant('missing', st.spec(with_ca=False))
    w.failing['missing'] = [st.client_ca, 'No such file']

    # an expired CA next to a valid one in the client CA bundle: accepted with a warning
    old_ca, _ = w.ca.issue('old-ca', ext='v3_ca', start='20200101000000Z',
                           end='20200201000000Z')
    crt, key = w.ca.issue('oldca')
    st = Set(s.tmp, 'oldca').write(open(crt).read(), open(key).read(), cat(old_ca, w.ca.crt),
                                   ca_text)
    tenant('oldca', st.spec())

    # a kubelet-style secret volume: NAME -> ..data/NAME, ..data -> ..v1
    w.kube_dir = os.path.join(s.tmp, 'operator', 'kube')
    v1 = os.path.join(w.kube_dir, '..v1')
    os.makedirs(v1)
    crt, key = w.ca.issue('kube')
    shutil.copy(crt, os.path.join(v1, 'tls.crt'))
    shutil.copy(key, os.path.join(v1, 'tls.key'))
    shutil.copy(w.ca.crt, os.path.join(v1, 'ca.crt'))
    os.symlink('..v1', os.path.join(w.kube_dir, '..data'))
    for n in ('tls.crt', 'tls.key', 'ca.crt'):
        os.symlink('..data/%s' % n, os.path.join(w.kube_dir, n))
    p = lambda n: os.path.join(w.kube_dir, n)  # noqa: E731
    tenant('kube', {'source': 'files', 'files': {
        'certFile': p('tls.crt'), 'keyFile': p('tls.key'), 'clientCAFile': p('ca.crt'),
        'caFile': p('ca.crt')}})
    sv.start()
    return w


def body(s):
    w = setup(s)
    s.run(test_valid_set, s, w)
    s.run(test_start_errors, s, w)
    s.run(test_expired_client_ca_in_bundle, s, w)
    s.run(test_broken_key_while_running, s, w)
    s.run(test_new_cert_while_running, s, w)
    s.run(test_kubelet_symlink_swap, s, w)
    s.run(test_options, s, w)
    s.eq(w.sv.stop(), 0, 'etcdproxyd exits 0 on SIGTERM')


if __name__ == '__main__':
    s = eptest.Suite('certs-files', timeout=150)
    s.require(eptest.ETCD, eptest.ETCDCTL, eptest.ETCDPROXYD, eptest.ETCDPROXYCTL, eptest.WORKER,
              OPENSSL)
    if not os.path.exists(os.path.join(eptest.PLUGIN_DIR, 'certs-files.so')):
        s.require(os.path.join(eptest.PLUGIN_DIR, 'certs-files.so'))
    s.main(body)
