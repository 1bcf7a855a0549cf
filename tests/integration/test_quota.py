#!/usr/bin/python3
"""spec.quota in the native backend, against a real etcd with etcdctl and python3-etcd3:

  - maxKeys is exact at the boundary: the 5th key goes in, the 6th is refused with
    RESOURCE_EXHAUSTED "etcdproxy: quota: maxKeys 5 ...", a put over an existing key passes,
    and a full tenant can delete, after which a new key goes in;
  - maxBytes counts key plus value as the tenant sees them, exactly at the boundary, and a
    value that shrinks always passes;
  - a Txn is taken at the worse of its branches;
  - keys written around the worker (straight into the core etcd) and keys whose lease expires
    are counted by the watch;
  - usage is right after kill -9 of the worker (counted again at one revision);
  - 10 writers racing at the limit through one worker end at the limit, never past it (the
    documented bound for one worker is 0);
  - two workers of one tenant (two nodes) both see the writes of the other; racing across
    both, the overshoot stays within the documented bound: the other worker's writes in flight;
  - maxLeases refuses a grant beyond it, and a revoked lease frees its place;
  - when the connection to the core etcd is lost (a relay the test cuts), the watch ends and
    the worker counts again: keys written meanwhile straight into the core count;
  - etcdproxyctl show and the metrics carry usage against limits;
  - a reload that changes only spec.quota or spec.rateLimit reaches the running worker without
    a restart (same pid, an open watch goes on): a raised limit, a quota removed and added
    again, a rate limit added;
  - Puts of 256 KiB and more, which stream, are judged as small ones are, once all but their
    last byte went on: past maxBytes or maxKeys refused with nothing written, a value that
    grows counted by its growth, a lease after the value, and right after kill -9;
  - spec.quota on the etcd backend is refused."""

import os
import signal
import sys
import time
import urllib.request

sys.dont_write_bytecode = True  # nothing written into the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eptest  # noqa: E402
from eptest import wait_until  # noqa: E402


def put(port, key, value):
    return eptest.etcdctl(port, 'put', key, value)


def refused(r, what):
    text = r.stdout + r.stderr
    return r.returncode != 0 and 'ResourceExhausted' in text and \
        ('etcdproxy: quota: %s' % what) in text


def core_count(t, name):
    return len(t.core.kvs('/%s/' % name, '--prefix'))


def test_keys_boundary(s, t):
    port = t.ports['a']
    for i in range(5):
        r = put(port, 'k%d' % i, 'v')
        s.require_check(r.returncode == 0, 'key %d of 5 goes in' % (i + 1), r.stderr)
    r = put(port, 'k5', 'v')
    s.check(refused(r, 'maxKeys 5'), 'the 6th key is refused: RESOURCE_EXHAUSTED '
            '"etcdproxy: quota: maxKeys 5 ..."', r.stderr)
    s.check('the tenant has 5 keys' in r.stderr and 'adds up to 1' in r.stderr,
            'the message names the usage and what the request adds', r.stderr)
    s.eq(core_count(t, 'a'), 5, 'the core etcd holds exactly 5 keys of the tenant')
    r = put(port, 'k0', 'a longer value than before')
    s.check(r.returncode == 0, 'a put over an existing key passes at the limit', r.stderr)
    r = eptest.etcdctl(port, 'get', 'k0')
    s.check(r.returncode == 0 and 'a longer value' in r.stdout, 'reads pass', r.stderr)
    r = eptest.etcdctl(port, 'del', 'k1')
    s.check(r.returncode == 0 and r.stdout.strip() == '1', 'a full tenant can delete',
            r.stdout + r.stderr)
    r = put(port, 'k5', 'v')
    s.check(r.returncode == 0, 'and then a new key goes in (right after the delete)', r.stderr)
    r = put(port, 'k6', 'v')
    s.check(refused(r, 'maxKeys 5'), 'and the next one is refused again', r.stderr)
    r = eptest.etcdctl(port, 'del', '', '--prefix')
    s.check(r.returncode == 0 and r.stdout.strip() == '5', 'a delete of the whole range passes',
            r.stdout + r.stderr)
    r = put(port, 'again', 'v')
    s.check(r.returncode == 0, 'and the tenant is empty again', r.stderr)


def test_bytes_boundary(s, t):
    port = t.ports['b']
    # maxBytes 100: key plus value as the tenant sees them
    r = put(port, 'k1', 'x' * 48)
    s.require_check(r.returncode == 0, '50 bytes (2 + 48)', r.stderr)
    r = put(port, 'k2', 'y' * 48)
    s.check(r.returncode == 0, '100 bytes: exactly the limit', r.stderr)
    r = put(port, 'k3', '')
    s.check(refused(r, 'maxBytes 100'), 'one more key of 2 bytes is refused: "etcdproxy: quota: '
            'maxBytes 100 exceeded ..."', r.stderr)
    s.check('uses 100 bytes' in r.stderr and 'adds up to 2 bytes' in r.stderr,
            'naming the usage and the request\'s size', r.stderr)
    r = put(port, 'k1', 'x' * 49)
    s.check(refused(r, 'maxBytes'), 'a value that grows by 1 byte is refused', r.stderr)
    r = put(port, 'k1', 'x' * 10)
    s.check(r.returncode == 0, 'a value that shrinks passes', r.stderr)
    r = put(port, 'k3', 'z' * 36)
    s.check(r.returncode == 0, 'and the room it freed is there: 2 + 36 bytes go in', r.stderr)
    s.check(wait_until(lambda: t.sv.counters('b').get('quota_bytes') == 100, 15, 0.3),
            'etcdproxyctl show: quota_bytes 100 of quota_max_bytes 100', t.sv.counters('b'))


def test_txn(s, t):
    c = eptest.etcd3_client(t.ports['x'])
    try:
        # maxKeys 3: one key, then a txn whose success branch adds 1 and failure branch adds 3
        c.put('base', 'v')
        big = [c.transactions.put('f%d' % i, 'v') for i in range(3)]
        try:
            c.transaction(compare=[c.transactions.value('base') == 'v'],
                          success=[c.transactions.put('s1', 'v')], failure=big)
            s.check(False, 'a txn whose worse branch adds 3 keys to 1 of 3 is refused')
        except Exception as e:  # noqa: BLE001 - the error is what is checked
            s.check('etcdproxy: quota: maxKeys 3' in str(e) and 'adds up to 3' in str(e),
                    'a txn is taken at the worse of its branches (3 keys) and refused', str(e))
        ok, _ = c.transaction(compare=[c.transactions.value('base') == 'v'],
                              success=[c.transactions.put('s1', 'v')],
                              failure=[c.transactions.put('f1', 'v')])
        s.check(ok, 'a txn adding at most 1 key passes')
        ok, _ = c.transaction(compare=[], success=[c.transactions.put('s2', 'v'),
                                                   c.transactions.delete('base')],
                              failure=[])
        s.check(ok, 'a txn that puts one and deletes one at the limit\'s edge passes (3 of 3)')
        s.eq(sorted(k for k in t.core.kvs('/x/', '--prefix')), ['/x/s1', '/x/s2'],
             'the core etcd holds what the txns did')
    finally:
        c.close()


def test_outside_writes(s, t):
    port = t.ports['o']
    for i in range(3):
        t.core.put('/o/direct%d' % i, 'v')
    s.check(wait_until(lambda: t.sv.counters('o').get('quota_keys') == 3, 15, 0.3),
            'keys written straight into the core etcd under the prefix are counted',
            t.sv.counters('o'))
    r = put(port, 'p', 'v')
    s.check(refused(r, 'maxKeys 3'), 'so the tenant is full', r.stderr)
    g = eptest.etcdctl(port, 'lease', 'grant', '2')
    s.require_check(g.returncode == 0, 'a lease of 2 s', g.stderr)
    lease = g.stdout.split()[1]
    eptest.etcdctl(port, 'del', 'direct0')
    r = eptest.etcdctl(port, 'put', 'leased', 'v', '--lease=' + lease)
    s.check(r.returncode == 0, 'a key attached to the lease takes the freed place', r.stderr)
    s.check(wait_until(lambda: not t.core.kvs('/o/leased'), 15, 0.3),
            'the lease expires and its key goes')
    s.check(wait_until(lambda: t.sv.counters('o').get('quota_keys') == 2, 15, 0.3),
            'the expired key is no longer counted', t.sv.counters('o'))
    r = put(port, 'after', 'v')
    s.check(r.returncode == 0, 'and its place is free', r.stderr)


def test_restart(s, t):
    port = t.ports['a']
    have = core_count(t, 'a')
    pid = t.sv.tenant('a')['pid']
    os.kill(pid, signal.SIGKILL)
    t.sv.wait_tenant('a', lambda x: x['pid'] not in (None, pid) and x['state'] == 'ready',
                     20, 'a new worker')
    s.check(wait_until(lambda: t.sv.counters('a').get('quota_keys') == have, 15, 0.3),
            'after kill -9 the new worker counts %d keys, as the core etcd has' % have,
            t.sv.counters('a'))
    for i in range(5 - have):
        r = put(port, 'r%d' % i, 'v')
        s.check(r.returncode == 0, 'a key up to the limit goes in', r.stderr)
    r = put(port, 'over', 'v')
    s.check(refused(r, 'maxKeys 5'), 'the limit holds after the restart', r.stderr)


def test_large_puts(s, t):
    """Puts of 256 KiB and more stream (doc/native-backend.md, "Large messages"): the quota
    judges them once all but their last byte went on, exactly as it judges small ones."""
    port = t.ports['g']
    c = eptest.etcd3_client(port)
    core = eptest.etcd3_client(t.core.port)
    streamed = t.sv.counters('g').get('puts_streamed', 0)
    kib = 1024

    def big(key, size, lease=None):
        v = os.urandom(size)
        try:
            c.put(key, v, lease=lease)
            return v, None
        except Exception as e:  # noqa: BLE001 - the error is what is checked
            return v, str(e)

    def in_core(key):
        return core.get('/g/' + key)[0]

    try:
        # maxKeys 3, maxBytes 2,500,000: key plus value as the tenant sees them
        v1, e = big('v1', 900 * kib)
        s.require_check(e is None and in_core('v1') == v1, 'a 900 KiB put goes in', e)
        v2, e = big('v2', 900 * kib)
        s.require_check(e is None and in_core('v2') == v2, 'a second one: 1,843,204 bytes', e)
        v, e = big('v3', 800 * kib)
        s.check(e is not None and 'etcdproxy: quota: maxBytes 2500000 exceeded' in e and
                'uses 1843204 bytes' in e and 'adds up to 819202 bytes' in e,
                'an 800 KiB put past maxBytes is refused: RESOURCE_EXHAUSTED, naming the usage '
                'and the request\'s size', e)
        s.check(in_core('v3') is None, 'and the core etcd does not have it')
        v3, e = big('v3', 300 * kib)
        s.check(e is None and in_core('v3') == v3, 'a 300 KiB one fits: 3 keys, 2,150,406 bytes',
                e)
        v, e = big('v4', 300 * kib)
        s.check(e is not None and 'etcdproxy: quota: maxKeys 3 reached' in e and
                'the tenant has 3 keys' in e, 'a 4th key of 300 KiB is refused: maxKeys 3', e)
        s.check(in_core('v4') is None, 'and the core etcd does not have it')
        v1, e = big('v1', 1100 * kib)
        s.check(e is None and in_core('v1') == v1,
                'a value that grows by 200 KiB within maxBytes goes in', e)
        v, e = big('v2', 1200 * kib)
        s.check(e is not None and 'maxBytes 2500000 exceeded' in e and
                'adds up to 307200 bytes' in e,
                'one that grows by 300 KiB past maxBytes is refused, counting its growth only', e)
        s.check(in_core('v2') == v2, 'and the core etcd keeps the old value')
        lease = c.lease(60)
        v3, e = big('v3', 300 * kib, lease=lease)
        s.check(e is None and in_core('v3') == v3, 'a put over an existing key with a lease (the '
                'lease comes after the value) goes in at the limit', e)
        meta = core.get('/g/v3')[1]
        s.eq(meta.lease_id if meta else None, lease.id, 'with the lease, in the core etcd')
        s.check(wait_until(lambda: t.sv.counters('g').get('puts_streamed', 0) - streamed == 8,
                           15, 0.3),
                'all 8 puts streamed (etcdproxyctl show: puts_streamed), refused ones too',
                t.sv.counters('g'))
        s.check(wait_until(lambda: (t.sv.counters('g').get('quota_keys'),
                                    t.sv.counters('g').get('quota_bytes')) ==
                           (3, 2 + 1100 * kib + 2 + 900 * kib + 2 + 300 * kib), 15, 0.3),
                'usage: 3 keys and 2,355,206 bytes', t.sv.counters('g'))
        # a new worker counts before it admits: a large put right after kill -9 waits for that
        pid = t.sv.tenant('g')['pid']
        os.kill(pid, signal.SIGKILL)
        c.close()
        c = eptest.etcd3_client(port)
        v, e = big('v5', 300 * kib)
        s.check(e is not None and 'maxKeys 3 reached' in e,
                'right after kill -9 of the worker, a 4th key of 300 KiB is still refused', e)
        v, e = big('v2', 1200 * kib)
        s.check(e is not None and 'maxBytes 2500000 exceeded' in e,
                'and so is a value past maxBytes', e)
        s.check(in_core('v5') is None and in_core('v2') == v2, 'the core etcd has neither')
    finally:
        c.close()
        core.close()


def race(ports, writers, tries, prefix):
    """writers putting `tries` new keys each through ports: {'ok', 'refused', 'other'}."""
    r = eptest.put_flood(ports, writers, tries=tries, prefix=prefix)
    quota = [e for e in r['errors'] if 'etcdproxy: quota' in e]
    return {'ok': r['ok'], 'refused': len(quota),
            'other': [e for e in r['errors'] if e not in quota]}


def test_race_one_worker(s, t):
    r = race([t.ports['r']], 10, 10, 'race')
    n = core_count(t, 'r')
    s.check(not r['other'], 'no error but the quota\'s', r['other'])
    s.check(n <= 50, '10 writers racing at maxKeys 50 through one worker: %d keys, no overshoot '
            '(the bound for one worker is 0)' % n)
    s.eq(r['ok'], n, 'every acknowledged put is there')
    s.check(n >= 45, 'and the limit was reached, give or take writes that were settling (%d)' % n)


def test_two_workers(s, t):
    p1, p2 = t.ports['m'], t.ports2['m']
    r = put(p1, 'one', 'v')
    s.check(r.returncode == 0, 'a key through the first node\'s worker', r.stderr)
    s.check(wait_until(lambda: t.sv2.counters('m').get('quota_keys') == 1, 15, 0.3),
            'the second node\'s worker counts it', t.sv2.counters('m'))
    writers = 10
    r = race([p1, p2], writers, 10, 'two')
    n = core_count(t, 'm')
    bound = writers // 2  # each worker sees the other's writes only once they are done
    s.check(not r['other'], 'no error but the quota\'s', r['other'])
    s.check(n <= 30 + bound, '10 writers racing at maxKeys 30 across two workers: %d keys, at '
            'most the limit plus the other worker\'s writes in flight (%d)' % (n, 30 + bound))
    s.eq(r['ok'] + 1, n, 'every acknowledged put is there')
    s.check(wait_until(lambda: t.sv.counters('m').get('quota_keys') == n and
                       t.sv2.counters('m').get('quota_keys') == n, 15, 0.3),
            'both workers count the %d keys' % n, (t.sv.counters('m'), t.sv2.counters('m')))
    for port in (p1, p2):
        r = put(port, 'late', 'v')
        s.check(refused(r, 'maxKeys 30'), 'and both refuse the next key', r.stderr)


def test_leases(s, t):
    port = t.ports['l']
    ids = []
    for i in range(2):
        g = eptest.etcdctl(port, 'lease', 'grant', '60')
        s.require_check(g.returncode == 0, 'lease %d of maxLeases 2' % (i + 1), g.stderr)
        ids.append(g.stdout.split()[1])
    g = eptest.etcdctl(port, 'lease', 'grant', '60')
    s.check(refused(g, 'maxLeases 2'), 'a third lease is refused: "etcdproxy: quota: maxLeases '
            '2 ..."', g.stderr)
    r = eptest.etcdctl(port, 'lease', 'revoke', ids[0])
    s.check(r.returncode == 0, 'a lease is revoked', r.stderr)
    g = eptest.etcdctl(port, 'lease', 'grant', '60')
    s.check(g.returncode == 0, 'and its place is free', g.stderr)


def test_visible(s, t):
    s.check(wait_until(lambda: t.sv.counters('a').get('quota_max_keys') == 5 and
                       'quota_keys' in t.sv.counters('a'), 10, 0.3),
            'etcdproxyctl show: usage against the limits', t.sv.counters('a'))
    s.check(t.sv.counters('a').get('quota_refused', 0) > 0 or os.environ.get('EP_ONLY'),
            'and the refusals of the tests before', t.sv.counters('a'))
    rc, out, err, _ = t.sv.ctl('show', 'a', json_out=False)
    line = [x for x in out.splitlines() if x.startswith('quota:')]
    s.check(rc == 0 and line and ' of 5 keys (' in line[0] and 'counted' in line[0],
            'etcdproxyctl show (text): a "quota:" line with keys of the limit', out)
    s.check(wait_until(lambda: ' of 2 leases' in t.sv.ctl('show', 'l', json_out=False)[1], 10,
                       0.3), 'and the leases of maxLeases, counted when the worker started')
    with urllib.request.urlopen('http://%s/metrics' % t.metrics, timeout=10) as r:
        text = r.read().decode()
    for name in ('etcdproxy_quota_keys{tenant="a"}', 'etcdproxy_quota_max_keys{tenant="a"} 5',
                 'etcdproxy_quota_bytes{tenant="b"}', 'etcdproxy_quota_max_bytes{tenant="b"} 100',
                 'etcdproxy_quota_refused_requests_total{tenant="a"}'):
        s.check(name in text, 'the metrics have %s' % name)


def test_reload_live(s, t):
    port = t.ports['v']
    for i in range(2):
        s.require_check(put(port, 'k%d' % i, 'v').returncode == 0, 'key %d of 2' % (i + 1))
    s.check(refused(put(port, 'k2', 'v'), 'maxKeys 2'), 'the tenant is full at maxKeys 2')
    pid = t.sv.tenant('v')['pid']
    c = eptest.etcd3_client(port)
    w = eptest.Watch(c, 'w', range_end='x')
    try:
        def respec(quota=None, rate=None):
            extra = {}
            if quota:
                extra['quota'] = quota
            if rate:
                extra['rateLimit'] = rate
            t.sv.add_tenant('v', port=port, backend='native', spec_extra=extra)
            rc, out, err, data = t.sv.ctl('reload')
            s.check(rc == 0 and 'v' in ((data or {}).get('changed') or []),
                    'etcdproxyctl reload reports the tenant changed', (out, err))

        respec({'maxKeys': 4})
        s.check(wait_until(lambda: t.sv.counters('v').get('quota_max_keys') == 4, 10, 0.2),
                'the raised limit is in force (show: quota_max_keys 4)', t.sv.counters('v'))
        s.eq(t.sv.tenant('v')['pid'], pid, 'without a restart: the same worker')
        for i in range(2, 4):
            r = put(port, 'k%d' % i, 'v')
            s.check(r.returncode == 0, 'key %d of 4 goes in' % (i + 1), r.stderr)
        s.check(refused(put(port, 'k4', 'v'), 'maxKeys 4'), 'and the 5th is refused')
        respec()
        s.check(wait_until(lambda: 'quota_max_keys' not in t.sv.counters('v'), 10, 0.2),
                'the quota removed: show has no limit', t.sv.counters('v'))
        r = put(port, 'k4', 'v')
        s.check(r.returncode == 0, 'and a 5th key goes in', r.stderr)
        respec({'maxKeys': 5}, {'requestsPerSecond': 1, 'burst': 1, 'maxQueue': 0})
        s.check(wait_until(lambda: t.sv.counters('v').get('quota_keys') == 5 and
                           'rate_limited' in t.sv.counters('v'), 10, 0.2),
                'the quota added again counts the 5 keys, and the rate limit is there',
                t.sv.counters('v'))
        r = put(port, 'k5', 'v')
        s.check(refused(r, 'maxKeys 5') or 'etcdproxy: rate limit' in r.stderr,
                'a new key is refused again', r.stderr)
        rs = [eptest.etcdctl(port, 'get', 'k0') for _ in range(3)]
        s.check(any('etcdproxy: rate limit' in x.stderr for x in rs),
                'and calls beyond 1 per second are refused by the new rate limit',
                [x.stderr for x in rs])
        s.eq(t.sv.tenant('v')['pid'], pid, 'still the same worker')
        t.core.put('/v/w1', 'seen')
        s.check(wait_until(lambda: ('PUT', 'w1', 'seen') in w.events, 10, 0.1),
                'a watch opened before the reloads still delivers events', w.events)
    finally:
        c.close()


def test_refused_on_etcd(s, t):
    st = t.sv.tenant('e')
    s.check(st['state'] == 'failed' and 'spec.quota: enforced by the native backend only'
            in (st.get('last_error') or ''), 'spec.quota on the etcd backend is refused', st)


def test_connection_lost(s, t):
    port = t.ports3['c']
    for i in range(2):
        s.require_check(put(port, 'k%d' % i, 'v').returncode == 0, 'key %d through the relay'
                        % (i + 1))
    s.check(wait_until(lambda: t.sv3.counters('c').get('quota_keys') == 2, 15, 0.3),
            'counted: 2 keys', t.sv3.counters('c'))
    t.relay.cut()
    for i in range(3):
        t.core.put('/c/direct%d' % i, 'v')
    time.sleep(1)
    r = put(port, 'while-cut', 'v')
    s.check(r.returncode != 0, 'a write while the core etcd is unreachable fails', r.stderr)
    t.relay.mend()
    s.check(wait_until(lambda: t.sv3.counters('c').get('quota_keys') == 5 and
                       t.sv3.counters('c').get('quota_state') == 'counted', 30, 0.3),
            'the connection back, the worker counted again: the 3 keys written meanwhile count',
            t.sv3.counters('c'))
    r = put(port, 'k5', 'v')
    s.check(refused(r, 'maxKeys 5'), 'so the tenant is full at maxKeys 5', r.stderr)


class T:
    pass


def body(s):
    t = T()
    t.s = s
    t.core = eptest.CoreEtcd(s).start()
    t.metrics = '127.0.0.1:%d' % eptest.free_port()
    t.sv = eptest.Supervisor(s, t.core, extra={'metrics': {'listen': t.metrics}})
    t.sv2 = eptest.Supervisor(s, t.core, name='sv2')
    t.ports = {
        'a': t.sv.add_tenant('a', backend='native', spec_extra={'quota': {'maxKeys': 5}}),
        'b': t.sv.add_tenant('b', backend='native', spec_extra={'quota': {'maxBytes': 100}}),
        'x': t.sv.add_tenant('x', backend='native', spec_extra={'quota': {'maxKeys': 3}}),
        'o': t.sv.add_tenant('o', backend='native', spec_extra={'quota': {'maxKeys': 3}}),
        'r': t.sv.add_tenant('r', backend='native', spec_extra={'quota': {'maxKeys': 50}}),
        'm': t.sv.add_tenant('m', backend='native', spec_extra={'quota': {'maxKeys': 30}}),
        'l': t.sv.add_tenant('l', backend='native', spec_extra={'quota': {'maxLeases': 2}}),
        'v': t.sv.add_tenant('v', backend='native', spec_extra={'quota': {'maxKeys': 2}}),
        'g': t.sv.add_tenant('g', backend='native',
                             spec_extra={'quota': {'maxKeys': 3, 'maxBytes': 2500000}}),
    }
    t.ports2 = {'m': t.sv2.add_tenant('m', backend='native',
                                      spec_extra={'quota': {'maxKeys': 30}})}
    t.sv.add_tenant('e', backend='etcd', spec_extra={'quota': {'maxKeys': 5}})
    t.relay = eptest.Relay(t.core.port)
    s.cleanups.append(t.relay.close)
    t.sv3 = eptest.Supervisor(s, t.core, name='sv3')
    t.sv3.config['core_etcd']['endpoints'] = ['http://127.0.0.1:%d' % t.relay.port]
    t.sv3.write_config()
    t.ports3 = {'c': t.sv3.add_tenant('c', backend='native',
                                      spec_extra={'quota': {'maxKeys': 5}})}
    t.sv.start()
    t.sv2.start()
    t.sv3.start()
    t.sv3.wait_ready('c')
    t.sv.wait_ready('a', 'b', 'x', 'o', 'r', 'm', 'l', 'v', 'g')
    t.sv2.wait_ready('m')
    for fn in (test_keys_boundary, test_bytes_boundary, test_txn, test_outside_writes,
               test_restart, test_large_puts, test_race_one_worker, test_two_workers, test_leases, test_visible,
               test_reload_live, test_connection_lost, test_refused_on_etcd):
        s.run(fn, s, t)
    s.eq(t.sv3.stop(), 0, 'the third etcdproxyd exits 0 on SIGTERM')
    s.eq(t.sv2.stop(), 0, 'the second etcdproxyd exits 0 on SIGTERM')
    s.eq(t.sv.stop(), 0, 'etcdproxyd exits 0 on SIGTERM')


if __name__ == '__main__':
    s = eptest.Suite('quota', timeout=300)
    s.require(eptest.ETCD, eptest.ETCDCTL, eptest.ETCDPROXYD, eptest.ETCDPROXYCTL, eptest.WORKER)
    s.main(body)
