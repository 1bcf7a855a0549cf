#!/usr/bin/python3
"""The audit log (spec.audit, global audit), with real etcd and etcdctl:

  - a scripted sequence of etcdctl put, del --prefix, txn (both branches), lease grant, put
    with a lease (a small one, and one of 300 KiB that streams) and lease revoke gives exactly one line per call, with the method, the
    keys as the tenant sees them (no values), the lease IDs, the code and the revision
    etcdctl itself was told;
  - reads and watches write nothing; a failing write is written with its code;
  - a TLS client is named by its certificate's subject and serial;
  - files are rotated by size, keeping audit.files of them;
  - with the audit directory on a tiny full tmpfs, requests still succeed and the drop
    counter rises (etcdproxyctl show, /metrics), with a log line;
  - spec.audit on the etcd backend is refused; audit.default applies to native tenants
    only."""

import json
import os
import re
import subprocess
import sys
import time
import urllib.request

sys.dont_write_bytecode = True  # nothing written into the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eptest  # noqa: E402
from eptest import wait_until  # noqa: E402


def lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def ctl_json(port, *args, tls=None):
    r = eptest.etcdctl(port, '-w', 'json', *(tls or []), *args)
    if r.returncode != 0:
        raise eptest.Failure('etcdctl %s: %s' % (' '.join(args), r.stderr))
    return json.loads(r.stdout)


def strip(line):
    """A line without what changes from run to run (the time, the client's port)."""
    d = dict(line)
    d.pop('time', None)
    d.pop('client', None)
    return d


def test_sequence(s, t):
    log = os.path.join(t.audit_dir, 'a.log')
    p = t.port_a
    expected = []
    rev = ctl_json(p, 'put', 'k1', 'v1')['header']['revision']
    expected.append({'tenant': 'a', 'method': 'Put', 'ops': [{'op': 'put', 'key': 'k1'}],
                     'code': 'OK', 'revision': rev})
    ctl_json(p, 'put', 'k2', 'v2')
    expected.append({'tenant': 'a', 'method': 'Put', 'ops': [{'op': 'put', 'key': 'k2'}],
                     'code': 'OK', 'revision': rev + 1})
    ctl_json(p, 'get', 'k', '--prefix')  # a read: no line
    rev = ctl_json(p, 'del', '--prefix', 'k')['header']['revision']
    expected.append({'tenant': 'a', 'method': 'DeleteRange',
                     'ops': [{'op': 'delete', 'key': 'k', 'range_end': 'l'}],
                     'code': 'OK', 'revision': rev})
    # a txn whose compare holds, then one whose compare fails
    ctl_json(p, 'put', 'x', '1')
    expected.append({'tenant': 'a', 'method': 'Put', 'ops': [{'op': 'put', 'key': 'x'}],
                     'code': 'OK', 'revision': rev + 1})
    r = eptest.etcdctl(p, '-w', 'json', 'txn', input='value("x") = "1"\n\nput y 2\ndel z\n\n'
                       'put w 3\n\n')
    tx = json.loads(r.stdout)
    expected.append({'tenant': 'a', 'method': 'Txn', 'succeeded': True,
                     'ops': [{'op': 'put', 'key': 'y'}, {'op': 'delete', 'key': 'z'}],
                     'code': 'OK', 'revision': tx['header']['revision']})
    r = eptest.etcdctl(p, '-w', 'json', 'txn', input='value("x") = "2"\n\nput y 2\n\n'
                       'put w 3\ndel v --prefix\n\n')
    tx = json.loads(r.stdout)
    expected.append({'tenant': 'a', 'method': 'Txn', 'succeeded': False,
                     'ops': [{'op': 'put', 'key': 'w'},
                             {'op': 'delete', 'key': 'v', 'range_end': 'w'}],
                     'code': 'OK', 'revision': tx['header']['revision']})
    g = ctl_json(p, 'lease', 'grant', '60')
    lease = '%x' % g['ID']
    # etcdctl's JSON of a grant has the header's fields at the top
    expected.append({'tenant': 'a', 'method': 'LeaseGrant', 'ttl': 60, 'lease': lease,
                     'code': 'OK', 'revision': g['revision']})
    rev = ctl_json(p, 'put', 'lk', 'v', '--lease=' + lease)['header']['revision']
    expected.append({'tenant': 'a', 'method': 'Put',
                     'ops': [{'op': 'put', 'key': 'lk', 'lease': lease}],
                     'code': 'OK', 'revision': rev})
    # a Put above 256 KiB goes on as it arrives (doc/wire.md section 3c): its line still names
    # the lease that follows its value
    r = eptest.etcdctl(p, '-w', 'json', 'put', 'big', '--lease=' + lease, input='v' * (300 << 10))
    s.check(r.returncode == 0, 'etcdctl put of 300 KiB with the lease', r.stderr)
    expected.append({'tenant': 'a', 'method': 'Put',
                     'ops': [{'op': 'put', 'key': 'big', 'lease': lease}],
                     'code': 'OK', 'revision': json.loads(r.stdout or '{}').get(
                         'header', {}).get('revision')})
    r = eptest.etcdctl(p, 'lease', 'revoke', lease)
    s.check(r.returncode == 0, 'etcdctl lease revoke', r.stderr)
    # etcdctl prints no header for a revoke: the revision it left is the current one
    expected.append({'tenant': 'a', 'method': 'LeaseRevoke', 'lease': lease, 'code': 'OK',
                     'revision': ctl_json(p, 'get', 'x')['header']['revision']})
    # a write that fails: a lease that does not exist
    r = eptest.etcdctl(p, 'put', 'bad', 'v', '--lease=1234abcd')
    s.check(r.returncode != 0, 'a put with an unknown lease fails', r.stdout)
    expected.append({'tenant': 'a', 'method': 'Put',
                     'ops': [{'op': 'put', 'key': 'bad', 'lease': '1234abcd'}],
                     'code': 'NotFound'})
    r = eptest.etcdctl(p, 'put', 'bigbad', '--lease=1234abcd', input='v' * (300 << 10))
    s.check(r.returncode != 0, 'a put of 300 KiB with an unknown lease fails', r.stdout)
    expected.append({'tenant': 'a', 'method': 'Put',
                     'ops': [{'op': 'put', 'key': 'bigbad', 'lease': '1234abcd'}],
                     'code': 'NotFound'})
    # a key with bytes that are not text
    r = eptest.etcdctl(p, 'put', 'caf\xe9\x01', 'v')
    expected.append({'tenant': 'a', 'method': 'Put',
                     'ops': [{'op': 'put', 'key': 'caf\xc3\xa9\x01'}], 'code': 'OK',
                     'revision': (ctl_json(p, 'get', 'caf\xe9\x01')['header']['revision'])})

    s.check(wait_until(lambda: len(lines(log)) >= len(expected), 10, 0.2),
            'the audit log has a line per mutating call', lines(log))
    got = [strip(x) for x in lines(log)]
    for i, (g2, e) in enumerate(zip(got, expected)):
        s.eq(g2, e, 'line %d: %s' % (i + 1, e['method']))
    s.eq(len(got), len(expected), 'and no other line (reads write none)')
    all_lines = lines(log)
    s.check(all(re.match(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$', x['time']) and
                re.match(r'^127\.0\.0\.1:\d+$', x['client'].get('address', ''))
                for x in all_lines),
            'each line has the time (UTC, ms) and the client\'s address', all_lines[:2])
    text = open(log, 'rb').read()
    s.check(b'v1' not in text and b'"value"' not in text, 'no value is ever written')


def test_tls_client(s, t):
    d = os.path.join(t.s.tmp, 't-client')
    s.check(wait_until(lambda: os.path.exists(os.path.join(d, 'tls.crt')), 10),
            'the client certificate of the TLS tenant is there')
    tls = ['--cacert', os.path.join(d, 'ca.crt'), '--cert', os.path.join(d, 'tls.crt'),
           '--key', os.path.join(d, 'tls.key')]
    ctl_json(t.port_t, 'put', 'secure', 'v', tls=tls)
    x = subprocess.run(['openssl', 'x509', '-noout', '-serial', '-in',
                        os.path.join(d, 'tls.crt')], capture_output=True, text=True)
    serial = x.stdout.strip().split('=')[1].lower().lstrip('0')
    log = os.path.join(t.audit_dir, 't.log')
    s.check(wait_until(lambda: len(lines(log)) == 1, 10, 0.2), 'one line for the TLS tenant')
    c = (lines(log) or [{}])[0].get('client', {})
    s.check('CN=apiserver' in c.get('subject', '') and
            c.get('serial', '').lstrip('0') == serial and 'address' not in c,
            'the client is named by its certificate\'s subject and serial', (c, serial))


def test_rotation(s, t):
    sv = eptest.Supervisor(t.s, t.core, name='rot', extra={'audit': {
        'directory': os.path.join(t.s.tmp, 'rot-audit'), 'max_size': 4096, 'files': 2}})
    port = sv.add_tenant('r', backend='native', spec_extra={'audit': True})
    sv.start()
    sv.wait_ready('r')
    c = eptest.etcd3_client(port)
    base = os.path.join(t.s.tmp, 'rot-audit', 'r.log')
    try:
        # paced, then as fast as the client goes: batches of many lines, larger than max_size
        for i in range(300):
            c.put('key-%03d' % i, 'v')
            if i < 60 and i % 10 == 9:
                time.sleep(0.3)  # batches of about ten lines
    finally:
        c.close()
    s.check(wait_until(lambda: any(x['ops'][0]['key'] == 'key-299' for x in lines(base)), 10,
                       0.2), 'the last put is in the current file')
    s.check(os.path.exists(base + '.1') and os.path.exists(base + '.2') and
            not os.path.exists(base + '.3'),
            'rotated by size: r.log, r.log.1 and r.log.2 (audit.files 2), no r.log.3',
            sorted(os.listdir(os.path.dirname(base))))
    sizes = [os.path.getsize(f) for f in (base, base + '.1', base + '.2')]
    s.check(all(0 < sz <= 4096 for sz in sizes), 'no file above max_size, not even after a '
            'batch of lines larger than it', sizes)
    keys = [x['ops'][0]['key'] for f in (base + '.2', base + '.1', base) for x in lines(f)]
    s.check(keys == sorted(keys) and keys[-1] == 'key-299' and
            keys == ['key-%03d' % i for i in range(300 - len(keys), 300)],
            'the kept files hold the newest lines, in order, none lost between them',
            keys[:3] + keys[-3:])
    s.eq(sv.stop(), 0, 'etcdproxyd exits 0')


def test_full_disk(s, t):
    """The audit directory on a tiny tmpfs filled up, in a mount namespace of its own."""
    ad = os.path.join(t.s.tmp, 'full-audit')
    os.makedirs(ad, exist_ok=True)
    wrapper = os.path.join(t.s.tmp, 'etcdproxyd-full-disk')
    with open(wrapper, 'w') as f:
        f.write('#!/bin/sh\n# etcdproxyd with the audit directory on a full 16 KiB tmpfs\n'
                'exec unshare -m sh -c \'mount -t tmpfs -o size=16k tmpfs "%s" && '
                'dd if=/dev/zero of="%s/fill" bs=4k count=8 2>/dev/null; '
                'exec "$0" "$@"\' "%s" "$@"\n' % (ad, ad, eptest.ETCDPROXYD))
    os.chmod(wrapper, 0o755)
    probe = subprocess.run(['unshare', '-m', 'true'], capture_output=True)
    if probe.returncode != 0:
        # no mount namespace here: /dev/full fails every write the same way (ENOSPC)
        os.symlink('/dev/full', os.path.join(ad, 'f.log'))
        wrapper = eptest.ETCDPROXYD
        print('# no mount namespace (%s): the audit file is /dev/full' %
              probe.stderr.decode().strip())
    mport = eptest.free_port()
    sv = eptest.Supervisor(t.s, t.core, name='full', daemon=wrapper, extra={
        'audit': {'directory': ad}, 'metrics': {'listen': '127.0.0.1:%d' % mport}})
    port = sv.add_tenant('f', backend='native', spec_extra={'audit': True})
    sv.start()
    sv.wait_ready('f')
    ok = 0
    for i in range(40):
        ok += eptest.etcdctl(port, 'put', 'full-%d' % i, 'v' * 100).returncode == 0
    s.eq(ok, 40, 'with the audit disk full every put still succeeds')
    s.eq(eptest.etcd_get(t.core.port, '/f/full-39'), 'v' * 100, 'and is in the core etcd')
    s.check(wait_until(lambda: sv.counters('f').get('audit_dropped', 0) >= 40, 15, 0.5),
            'the drop counter rises: etcdproxyctl show counts the lost lines',
            sv.counters('f'))

    def dropped():
        with urllib.request.urlopen('http://127.0.0.1:%d/metrics' % mport, timeout=5) as r:
            m = re.search(r'^etcdproxy_audit_dropped_lines_total\{tenant="f"\} (\d+)',
                          r.read().decode(), re.M)
        return int(m.group(1)) if m else 0
    s.check(wait_until(lambda: dropped() >= 40, 15, 0.5),
            'and so does etcdproxy_audit_dropped_lines_total', dropped())
    log = open(sv.log).read()
    s.check(re.search(r'audit log .*f\.log: cannot write it: No space left on device; \d+ '
                      r'lines dropped so far \(requests go on\)', log) is not None,
            'a log line says why, how many, and that requests go on')
    s.eq(sv.stop(), 0, 'etcdproxyd exits 0')


def test_settings(s, t):
    sv = eptest.Supervisor(t.s, t.core, name='settings', extra={'audit': {
        'directory': os.path.join(t.s.tmp, 'default-audit'), 'default': True}})
    sv.add_tenant('bad', backend='etcd', spec_extra={'audit': True})
    pn = sv.add_tenant('n', backend='native')
    pe = sv.add_tenant('e', backend='etcd')
    po = sv.add_tenant('off', backend='native', spec_extra={'audit': False})
    sv.start()
    sv.wait_ready('n', 'e', 'off')
    st = sv.tenant('bad')
    s.check(st['state'] == 'failed' and 'spec.audit: written by the native backend only' in
            (st.get('last_error') or ''), 'spec.audit on the etcd backend is refused, saying why',
            st)
    for p in (pn, pe, po):
        eptest.etcdctl(p, 'put', 'k', 'v')
    d = os.path.join(t.s.tmp, 'default-audit')
    s.check(wait_until(lambda: len(lines(os.path.join(d, 'n.log'))) == 1, 10, 0.2),
            'audit.default true: a native tenant without spec.audit writes its log')
    time.sleep(0.5)
    s.check(not os.path.exists(os.path.join(d, 'e.log')) and
            not os.path.exists(os.path.join(d, 'off.log')),
            'an etcd-backend tenant does not, nor one with spec.audit false', os.listdir(d))
    s.eq(sv.stop(), 0, 'etcdproxyd exits 0')


class T:
    pass


def body(s):
    t = T()
    t.s = s
    t.core = eptest.CoreEtcd(s).start()
    t.audit_dir = os.path.join(s.tmp, 'audit')
    t.sv = eptest.Supervisor(s, t.core, extra={'audit': {'directory': t.audit_dir}})
    t.port_a = t.sv.add_tenant('a', backend='native', spec_extra={'audit': True})
    t.port_t = t.sv.add_tenant('t', backend='native', spec_extra={'audit': True}, tls={
        'source': 'ca', 'clientCertificates': [
            {'name': 'apiserver', 'outputDir': os.path.join(s.tmp, 't-client')}]})
    t.sv.start()
    t.sv.wait_ready('a', 't')
    for fn in (test_sequence, test_tls_client, test_rotation, test_full_disk, test_settings):
        s.run(fn, s, t)
    s.eq(t.sv.stop(), 0, 'etcdproxyd exits 0 on SIGTERM')


if __name__ == '__main__':
    s = eptest.Suite('audit', timeout=300)
    s.require(eptest.ETCD, eptest.ETCDCTL, eptest.ETCDPROXYD, eptest.ETCDPROXYCTL, eptest.WORKER)
    s.main(body)
