#!/usr/bin/python3
"""The built-in per-tenant CA (certs-ca) with the native backend, over mutual TLS.

etcdctl and python3-etcd3 with the client certificate etcdproxy issued; no
certificate, another tenant's, an expired one: refused; the serving
certificate verifies against the published bundle for the listen address;
issue-client-cert and rotate from etcdproxyctl; rotation under load with
zero failed requests through several complete CA and leaf rotations; a
worker killed in the middle of a rotation comes back with a consistent set."""
import os
import signal
import subprocess
import threading
import time

import eptest

GRACE = '1s'


def tls_args(port, d, cert=True):
    args = ['--endpoints=https://127.0.0.1:%d' % port, '--cacert=%s/ca.crt' % d]
    if cert:
        args += ['--cert=%s/tls.crt' % d, '--key=%s/tls.key' % d]
    return args


def etcdctl_tls(port, d, *args, cert=True, cert_dir=None, timeout=15):
    cmd = [eptest.ETCDCTL, '--dial-timeout=3s', '--command-timeout=5s'] + \
        tls_args(port, d, cert=False)
    if cert:
        c = cert_dir or d
        cmd += ['--cert=%s/tls.crt' % c, '--key=%s/tls.key' % c]
    cmd += [str(a) for a in args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, ETCDCTL_API='3'), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(cmd, -1, '', 'timed out: %s' % e)


def openssl(*args, input=None):
    # s_client prints what the server sends after the handshake: HTTP/2 frames, not text
    return subprocess.run(['openssl'] + list(args), capture_output=True, text=True, input=input,
                          errors='replace', timeout=15)


def serial_of(path):
    r = openssl('x509', '-noout', '-serial', '-in', path)
    return r.stdout.strip().split('=')[-1].lower().lstrip('0')


def key_matches(crt, key):
    a = openssl('x509', '-noout', '-pubkey', '-in', crt).stdout
    b = openssl('pkey', '-pubout', '-in', key).stdout
    return a != '' and a == b


def tls_spec(out_dir, **extra):
    spec = {'clientCertificates': [{'name': 'apiserver', 'outputDir': out_dir}]}
    spec.update(extra)
    return spec


def test_mtls(s, sv, core, ports, outs):
    a, b = ports['a'], ports['b']
    r = etcdctl_tls(a, outs['a'], 'put', 'k', 'v')
    s.check(r.returncode == 0 and r.stdout.strip() == 'OK',
            'etcdctl over mutual TLS with the issued client certificate', r.stderr)
    s.eq(core.get('/a/k'), 'v', 'the key landed under /a/ in the core etcd')
    r = etcdctl_tls(a, outs['a'], 'get', 'k', '--print-value-only')
    s.eq(r.stdout.strip(), 'v', 'and reads back')

    r = etcdctl_tls(a, outs['a'], 'get', 'k', cert=False)
    s.check(r.returncode != 0, 'no client certificate: refused', r.stdout)
    r = etcdctl_tls(a, outs['a'], 'get', 'k', cert_dir=outs['b'])
    s.check(r.returncode != 0, 'a client certificate of another tenant\'s CA: refused', r.stdout)
    s.check(etcdctl_tls(b, outs['b'], 'put', 'kb', 'vb').returncode == 0,
            'that certificate works on its own tenant')
    s.eq(core.get('/b/kb'), 'vb', 'and tenant b writes under /b/')
    # plaintext towards a TLS tenant gets nowhere
    r = eptest.etcdctl(a, 'get', 'k', timeout=10)
    s.check(r.returncode != 0, 'plaintext h2c towards a TLS tenant: refused')

    # the serving certificate verifies against the published bundle for the listen address
    r = openssl('s_client', '-connect', '127.0.0.1:%d' % a, '-CAfile', outs['a'] + '/ca.crt',
                '-verify_return_error', '-verify_ip', '127.0.0.1', '-alpn', 'h2',
                '-cert', outs['a'] + '/tls.crt', '-key', outs['a'] + '/tls.key', input='')
    s.check('Verify return code: 0 (ok)' in r.stdout,
            'the serving certificate verifies against ca.crt for 127.0.0.1',
            r.stdout[-400:] + r.stderr[-400:])
    s.check('ALPN protocol: h2' in r.stdout, 'ALPN h2 is negotiated')
    r = openssl('s_client', '-connect', '127.0.0.1:%d' % a, '-CAfile', outs['b'] + '/ca.crt',
                '-verify_return_error', '-alpn', 'h2', '-cert', outs['a'] + '/tls.crt', '-key',
                outs['a'] + '/tls.key', input='')
    s.check('Verify return code: 0 (ok)' not in r.stdout,
            'and does not verify against another tenant\'s bundle')

    # python3-etcd3, an independent client
    import etcd3
    c = etcd3.client(host='127.0.0.1', port=a, ca_cert=outs['a'] + '/ca.crt',
                     cert_cert=outs['a'] + '/tls.crt', cert_key=outs['a'] + '/tls.key',
                     timeout=5)
    c.put('py', 'thon')
    s.eq(c.get('py')[0], b'thon', 'python3-etcd3 over mutual TLS')
    c.close()
    s.eq(core.get('/a/py'), 'thon', 'its key is under /a/ too')


def test_expired(s, sv, ports, outs, tmp):
    """Tenant "short" renews its client certificate every few seconds: keep one, let it expire."""
    port, d = ports['short'], outs['short']
    keep = os.path.join(tmp, 'expired')
    os.makedirs(keep)
    for f in ('tls.crt', 'tls.key', 'ca.crt'):
        with open(os.path.join(d, f)) as src, open(os.path.join(keep, f), 'w') as dst:
            dst.write(src.read())
    s.check(etcdctl_tls(port, d, 'put', 'x', '1').returncode == 0,
            'the short-lived client certificate works while valid')
    end = openssl('x509', '-noout', '-enddate', '-in', keep + '/tls.crt').stdout
    s.require_check(eptest.wait_until(
        lambda: openssl('x509', '-noout', '-checkend', '0', '-in', keep + '/tls.crt').returncode
        != 0, 15), 'the kept client certificate expires (%s)' % end.strip())
    r = etcdctl_tls(port, d, 'get', 'x', cert_dir=keep)
    s.check(r.returncode != 0, 'an expired client certificate: refused', r.stdout)
    r = etcdctl_tls(port, d, 'get', 'x', '--print-value-only')
    s.eq(r.stdout.strip(), '1', 'while the renewed one in the output directory works')


def test_issue_and_show(s, sv, ports, outs, tmp):
    out = os.path.join(tmp, 'extra-cert')
    r = subprocess.run([eptest.ETCDPROXYCTL, '-s', sv.sock, 'issue-client-cert', 'a', '--cn',
                        'operator', '--out', out], capture_output=True, text=True, timeout=30)
    s.check(r.returncode == 0 and 'issued' in r.stdout, 'etcdproxyctl issue-client-cert',
            r.stdout + r.stderr)
    s.check(key_matches(out + '/tls.crt', out + '/tls.key'), 'its key matches its certificate')
    subj = openssl('x509', '-noout', '-subject', '-in', out + '/tls.crt').stdout
    s.check('CN = operator' in subj, 'with the common name asked for', subj)
    s.check(etcdctl_tls(ports['a'], out, 'get', 'k').returncode == 0,
            'the extra client certificate works')
    r = subprocess.run([eptest.ETCDPROXYCTL, '-s', sv.sock, 'issue-client-cert', 'a', '--cn', 'x'],
                       capture_output=True, text=True, timeout=30)
    s.eq(r.returncode, 2, 'issue-client-cert without --out is a usage error')
    r = subprocess.run([eptest.ETCDPROXYCTL, '-s', sv.sock, 'issue-client-cert', 'nosuch', '--cn',
                        'x', '--out', out], capture_output=True, text=True, timeout=30)
    s.check(r.returncode == 1 and 'no tenant named' in r.stderr, 'an unknown tenant: refused',
            r.stderr)

    r = subprocess.run([eptest.ETCDPROXYCTL, '-s', sv.sock, 'issue-client-cert', 'a', '--cn',
                        'x', '--out', os.path.join(sv.state, 'a', 'mine')],
                       capture_output=True, text=True, timeout=30)
    s.check(r.returncode == 1 and 'inside state_dir' in r.stderr,
            'an --out inside state_dir: refused', r.stderr)

    t = sv.ctl('show', 'a')[3]['tenant']
    certs = t.get('certificates') or []
    roles = sorted(c['role'] for c in certs)
    for role in ('serving-ca', 'client-ca', 'serving', 'client'):
        s.check(role in roles, 'show lists the %s certificate' % role, roles)
    serving = [c for c in certs if c['role'] == 'serving'][0]
    s.eq(serving['serial'], serial_of(os.path.join(sv.state, 'a/ca/current/serving.crt')),
         'show gives the serving certificate\'s serial')
    s.check(serving['issuer'].startswith('CN=etcdproxy a serving CA'),
            'and what signed it', serving['issuer'])
    s.check(all(c.get('not_after', '').endswith('Z') for c in certs), 'and every not-after')
    r = subprocess.run([eptest.ETCDPROXYCTL, '-s', sv.sock, 'show', 'a'], capture_output=True,
                       text=True, timeout=30)
    s.check('certificates:' in r.stdout and 'signed by' in r.stdout,
            'the table form shows them too', r.stdout)


def load_loop(port, d, stop, results):
    """A new process, a new connection and a new handshake per request, reading the files anew
    as doc/architecture.md says a client reads one generation: ..data resolved once."""
    i = 0
    while not stop.is_set():
        r = etcdctl_tls(port, os.path.realpath(os.path.join(d, '..data')), 'put', 'load', str(i),
                        timeout=20)
        results.append(True if r.returncode == 0 else (r.stderr.strip() or r.stdout.strip()))
        i += 1


def test_rotation_under_load(s, sv, core, ports, outs):
    port, d = ports['rot'], outs['rot']
    first = sv.ctl('show', 'rot')[3]['tenant']['certificates']
    first_cas = {c['serial'] for c in first if c['role'] in ('serving-ca', 'client-ca')}
    first_serving = [c['serial'] for c in first if c['role'] == 'serving'][0]

    import etcd3
    c = etcd3.client(host='127.0.0.1', port=port, ca_cert=d + '/ca.crt', cert_cert=d + '/tls.crt',
                     cert_key=d + '/tls.key', timeout=5)
    stop, results, long_errors, long_count = threading.Event(), [], [], [0]
    threads = [threading.Thread(target=load_loop, args=(port, d, stop, results))
               for _ in range(2)]

    def long_lived():
        while not stop.is_set():
            try:
                c.put('long', str(long_count[0]))
                long_count[0] += 1
            except Exception as e:  # noqa: BLE001 - every failure counts
                long_errors.append(repr(e))
            time.sleep(0.01)
    threads.append(threading.Thread(target=long_lived))
    for t in threads:
        t.start()

    # two complete CA rotations: CAs of 12 s are renewed at 8 s
    def rotated_twice():
        certs = sv.ctl('show', 'rot')[3]['tenant'].get('certificates') or []
        cas = {x['serial'] for x in certs if x['role'] in ('serving-ca', 'client-ca')}
        seen.update(cas)
        return len(seen - first_cas) >= 4 and not (cas & first_cas)
    seen = set()
    ok = eptest.wait_until(rotated_twice, 40, 0.5)
    stop.set()
    for t in threads:
        t.join(30)
    c.close()
    failures = [r for r in results if r is not True]
    s.check(ok, 'two complete CA rotations happened under load (%d CAs seen)'
            % len(seen - first_cas))
    s.check(len(results) > 40, 'new connections kept coming during the rotations (%d)'
            % len(results))
    s.eq(failures[:3], [], 'zero failed requests on new connections through the rotations')
    s.check(long_count[0] > 100, 'a long-lived connection kept issuing requests (%d)'
            % long_count[0])
    s.eq(long_errors[:3], [], 'zero failed requests on the long-lived connection')
    now = sv.ctl('show', 'rot')[3]['tenant']['certificates']
    s.check(first_serving not in {x['serial'] for x in now}, 'the serving certificate changed')
    with open(d + '/ca.crt') as f:
        bundle = f.read()
    s.check(bundle.count('BEGIN CERTIFICATE') <= 2, 'the published bundle was pruned (%d CAs)'
            % bundle.count('BEGIN CERTIFICATE'))
    cas_now = {x['serial'] for x in now if x['role'] in ('serving-ca', 'client-ca')}
    s.eq(cas_now & first_cas, set(), 'the first CAs are gone from the bundles')
    s.check(etcdctl_tls(port, d, 'get', 'load').returncode == 0, 'and the tenant serves')
    gens = sorted(x for x in os.listdir(d) if x.startswith('..') and not x.startswith('..data'))
    s.check(len(gens) == 2 and os.path.realpath(os.path.join(d, '..data')) ==
            os.path.join(os.path.realpath(d), gens[1]), 'the output directory keeps the current '
            'generation and the one before it, no older one', gens)


def test_crash_mid_rotation(s, core, tmp):
    pause = os.path.join(tmp, 'ca-pause')
    os.environ['EP_TEST_CA_PAUSE'] = pause
    try:
        sv = eptest.Supervisor(s, core, name='crash',
                               extra={'certs': {'ca': {'grace': '1s'}}})
        out = os.path.join(tmp, 'crash-out')
        port = sv.add_tenant('c', backend='native', tls=tls_spec(out),
                             spec_extra={'servingCertificateValidity': '3s',
                                         'clientCertificateValidity': '3s',
                                         'signingCertificateValidity': '60s'})
        sv.start()
    finally:
        del os.environ['EP_TEST_CA_PAUSE']
    sv.wait_ready('c')
    s.require_check(eptest.wait_until(lambda: os.path.exists(pause), 15),
                    'the worker paused in the middle of a rotation (test hook)')
    pid = sv.tenant('c')['pid']
    gens = sorted(x for x in os.listdir(os.path.join(sv.state, 'c/ca')) if x.startswith('gen-'))
    s.check(len(gens) >= 2, 'a new generation was written beside the current one', gens)
    os.kill(pid, signal.SIGKILL)
    with open(pause, 'w') as f:
        f.write('killed')
    sv.wait_tenant('c', lambda x: x['pid'] not in (None, pid) and x['state'] == 'ready',
                   what='a new worker')
    cur = os.path.join(sv.state, 'c/ca/current')
    s.check(key_matches(cur + '/serving.crt', cur + '/serving.key'),
            'after the crash: the serving key matches its certificate')
    r = openssl('verify', '-CAfile', cur + '/serving-ca-bundle.crt', cur + '/serving.crt')
    s.eq(r.returncode, 0, 'the serving certificate verifies against the bundle')
    s.check(key_matches(out + '/tls.crt', out + '/tls.key'),
            'the published client key matches its certificate')
    r = openssl('verify', '-CAfile', cur + '/client-ca-bundle.crt', out + '/tls.crt')
    s.eq(r.returncode, 0, 'the published client certificate is trusted by the proxy')
    s.check(etcdctl_tls(port, out, 'put', 'after', 'crash').returncode == 0,
            'and the tenant serves over mutual TLS')
    s.eq(sv.stop(), 0, 'etcdproxyd exits 0')


def body(s):
    core = eptest.CoreEtcd(s).start()
    sv = eptest.Supervisor(s, core, extra={'certs': {'ca': {'grace': GRACE}}})
    outs = {n: os.path.join(s.tmp, 'out-%s' % n) for n in ('a', 'b', 'short', 'rot')}
    ports = {}
    ports['a'] = sv.add_tenant('a', backend='native', tls=tls_spec(outs['a']))
    ports['b'] = sv.add_tenant('b', backend='native', tls=tls_spec(outs['b']))
    ports['short'] = sv.add_tenant('short', backend='native', tls=tls_spec(outs['short']),
                                   spec_extra={'clientCertificateValidity': '4s'})
    ports['rot'] = sv.add_tenant('rot', backend='native', tls=tls_spec(outs['rot']),
                                 spec_extra={'signingCertificateValidity': '12s',
                                             'servingCertificateValidity': '3s',
                                             'clientCertificateValidity': '3s'})
    sv.start()
    sv.wait_ready('a', 'b', 'short', 'rot')
    s.run(test_mtls, s, sv, core, ports, outs)
    s.run(test_issue_and_show, s, sv, ports, outs, s.tmp)
    s.run(test_expired, s, sv, ports, outs, s.tmp)
    s.run(test_rotation_under_load, s, sv, core, ports, outs)
    s.eq(sv.stop(), 0, 'etcdproxyd exits 0 on SIGTERM')
    s.run(test_crash_mid_rotation, s, core, s.tmp)


if __name__ == '__main__':
    s = eptest.Suite('certs-ca', timeout=200)
    s.require(eptest.ETCD, eptest.ETCDCTL, eptest.ETCDPROXYD, eptest.ETCDPROXYCTL, eptest.WORKER)
    s.main(body)
