#!/usr/bin/python3
"""The native backend through etcdctl: every etcdctl command that makes sense for a
tenant, each checked against what the core etcd holds (read directly on the core's
port). get (prefix, from-key, limit, sort, rev, keys-only, print-value-only), del
(prefix, prev-kv, from-key), txn, watch (prefix, rev, prev-kv), leases (scoped to
the tenant, surviving a worker restart), the compaction policy (ignore, deny, allow),
endpoint health/status, member list, the refused cluster-wide commands, and etcd's
errors passed on verbatim."""

import base64
import json
import os
import re
import signal
import subprocess
import sys

sys.dont_write_bytecode = True  # nothing written into the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eptest  # noqa: E402
from eptest import etcdctl, wait_until  # noqa: E402

# keys written straight into the core that tenant a must never see or touch
OUTSIDE = {'/zz': 'zz', '/a-other/g/1': 'other', '/b/g/1': 'bx', '/': 'root', '/a': 'a-noslash',
           '/a0': 'a-prefix-end', '/A/g/1': 'upper', '/g/1': 'unprefixed', '/ag/1': 'ag'}


class T:
    """What the test functions share."""


def code_of(r):
    """The gRPC status code name etcdctl's client logged ("code = OutOfRange"), or None."""
    m = re.search(r'code = (\w+)', r.stderr)
    return m.group(1) if m else None


def b64(s):
    return base64.b64decode(s).decode(errors='replace')


def jget(port, *args):
    """`etcdctl get ARGS -w json` parsed, or raise Failure."""
    r = etcdctl(port, 'get', *args, '-w', 'json')
    if r.returncode != 0:
        raise eptest.Failure('etcdctl get %s on %d: %s' % (args, port, r.stderr.strip()[-300:]))
    return json.loads(r.stdout)


def revision(port):
    return jget(port, 'no-such-key-just-for-the-revision')['header']['revision']


def unprefixed_core(t, *args):
    """The core's answer to `get ARGS` (core keys), as [(key without /a/, value)] in order;
    raises Failure if a key is outside /a/."""
    out = []
    for kv in jget(t.core.port, *args).get('kvs', []):
        k = b64(kv['key'])
        if not k.startswith('/a/'):
            raise eptest.Failure('the core range %s holds %s, outside /a/' % (args, k))
        out.append((k[3:], b64(kv.get('value', ''))))
    return out


def pairs(port, *args):
    return [(b64(kv['key']), b64(kv.get('value', ''))) for kv in jget(port, *args).get('kvs', [])]


def outside_intact(s, t, what):
    have = t.core.kvs()
    bad = {k: (v, have.get(k)) for k, v in OUTSIDE.items() if have.get(k) != v}
    s.check(not bad, '%s: the core keys outside /a/ are untouched' % what,
            'missing or changed (want, have): %s' % bad)


def refused(s, r, path, what):
    """A command the proxy refuses: non-zero exit, PermissionDenied, the refusal message."""
    text = r.stdout + r.stderr
    s.check(r.returncode != 0 and 'PermissionDenied' in text and
            'etcdproxy: refused %s:' % path in text,
            '%s: refused with PermissionDenied "etcdproxy: refused %s: ..."' % (what, path),
            (r.returncode, text[-600:]))


# ---- KV ------------------------------------------------------------------------------------

def test_put_get(s, t):
    for k, v in OUTSIDE.items():
        t.core.put(k, v)
    # values ordered differently from the keys, for --sort-by=VALUE
    for k, v in (('g/1', 'e'), ('g/2', 'c'), ('g/3', 'a'), ('g/4', 'd'), ('g/5', 'b'),
                 ('h', 'hv')):
        s.require_check(eptest.etcd_put(t.pa, k, v), 'put %s through a' % k)
    s.eq(t.core.kvs('--prefix', '/a/'), {'/a/g/1': 'e', '/a/g/2': 'c', '/a/g/3': 'a',
                                         '/a/g/4': 'd', '/a/g/5': 'b', '/a/h': 'hv'},
         'the core holds a\'s puts under /a/')
    s.eq(t.core.get('g/1'), None, 'no unprefixed g/1 was written')
    s.eq(t.core.get('/g/1'), 'unprefixed', 'the core\'s own /g/1 is unchanged')

    s.eq(pairs(t.pa, 'g/', '--prefix'), unprefixed_core(t, '/a/g/', '--prefix'),
         'get g/ --prefix through a = the core\'s /a/g/ --prefix, unprefixed')
    s.eq(pairs(t.pa, 'g/3', '--from-key'), unprefixed_core(t, '/a/g/3', '/a0'),
         'get g/3 --from-key through a = the core\'s /a/g/3 .. /a0 (stops at a\'s end)')
    s.eq([k for k, _ in pairs(t.pa, '', '--from-key')], ['g/1', 'g/2', 'g/3', 'g/4', 'g/5', 'h'],
         'get "" --from-key through a: exactly a\'s keys')
    s.eq(pairs(t.pa, 'g/2', 'g/4'), unprefixed_core(t, '/a/g/2', '/a/g/4'),
         'get g/2 g/4 (explicit range end) = the core\'s /a/g/2 .. /a/g/4')
    s.eq(pairs(t.pa, 'g', '~'), unprefixed_core(t, '/a/g', '/a/~'),
         'get g ~ through a stays inside /a/')

    j = jget(t.pa, 'g/', '--prefix', '--limit', '2')
    s.check([b64(kv['key']) for kv in j.get('kvs', [])] == ['g/1', 'g/2'] and
            j.get('more') is True and j.get('count') == 5,
            'get --prefix --limit 2: the first two keys, more=true, count=5', j)
    got = etcdctl(t.pa, 'get', 'g/', '--prefix', '--sort-by=VALUE', '--order=DESCEND').stdout
    want = unprefixed_core(t, '/a/g/', '--prefix', '--sort-by=VALUE', '--order=DESCEND')
    s.eq(got.split(), [x for kv in want for x in kv],
         'get --prefix --sort-by=VALUE --order=DESCEND: the core\'s order, unprefixed')
    s.eq([v for _, v in want], ['e', 'd', 'c', 'b', 'a'], 'and that order is by value')
    got = etcdctl(t.pa, 'get', 'g/', '--prefix', '--sort-by=KEY', '--order=DESCEND').stdout
    s.eq(got.split()[::2], ['g/5', 'g/4', 'g/3', 'g/2', 'g/1'],
         'get --prefix --sort-by=KEY --order=DESCEND')

    r = etcdctl(t.pa, 'get', 'g/', '--prefix', '--keys-only')
    s.eq([l for l in r.stdout.splitlines() if l], ['g/1', 'g/2', 'g/3', 'g/4', 'g/5'],
         'get --prefix --keys-only: the keys, unprefixed, no values')
    j = jget(t.pa, 'g/', '--prefix', '--keys-only')
    s.check(all('value' not in kv for kv in j.get('kvs', [])) and len(j.get('kvs', [])) == 5,
            'get --keys-only -w json: kvs without values', j)
    j = jget(t.pa, 'g/', '--prefix', '--limit', '1')
    s.eq(j.get('count'), len(unprefixed_core(t, '/a/g/', '--prefix')),
         'get --prefix -w json count = the number of /a/g/ keys in the core')
    r = etcdctl(t.pa, 'get', 'h', '--print-value-only')
    s.eq(r.stdout.strip(), 'hv', 'get h --print-value-only')
    r = etcdctl(t.pa, 'get', 'g/1', 'g/3', '--print-value-only')
    s.eq(r.stdout.split(), ['e', 'c'], 'get g/1 g/3 --print-value-only')

    # revisions: the header is the core's, a past revision reads the past value
    rev_core = revision(t.core.port)
    s.eq(jget(t.pa, 'h')['header']['revision'], rev_core,
         'the response header revision through a is the core\'s revision')
    r1 = json.loads(etcdctl(t.pa, 'put', 'r', 'one', '-w', 'json').stdout)['header']['revision']
    eptest.etcd_put(t.pa, 'r', 'two')
    s.eq(etcdctl(t.pa, 'get', 'r', '--rev', r1, '--print-value-only').stdout.strip(), 'one',
         'get r --rev R through a: the value at revision R')
    s.eq(etcdctl(t.core.port, 'get', '/a/r', '--rev', r1, '--print-value-only').stdout.strip(),
         'one', 'the core\'s /a/r at revision R is the same')
    s.eq(etcdctl(t.pa, 'get', 'r', '--print-value-only').stdout.strip(), 'two',
         'get r: the current value')
    j = json.loads(etcdctl(t.pa, 'put', 'r', 'three', '--prev-kv', '-w', 'json').stdout)
    s.check(b64(j.get('prev_kv', {}).get('key', '')) == 'r' and
            b64(j['prev_kv'].get('value', '')) == 'two',
            'put --prev-kv: the previous kv, key unprefixed', j)
    r = etcdctl(t.pa, 'put', 'r', '--ignore-value')
    s.check(r.returncode == 0 and t.core.get('/a/r') == 'three',
            'put --ignore-value keeps the value', r.stderr)
    outside_intact(s, t, 'get and put')


def test_del(s, t):
    r = etcdctl(t.pa, 'del', 'g/1')
    s.check(r.stdout.strip() == '1' and t.core.get('/a/g/1') is None and
            t.core.get('/g/1') == 'unprefixed' and t.core.get('/b/g/1') == 'bx',
            'del g/1 through a: deletes /a/g/1 only', r.stdout + r.stderr)
    before = unprefixed_core(t, '/a/g/', '--prefix')
    r = etcdctl(t.pa, 'del', 'g/', '--prefix', '--prev-kv')
    lines = r.stdout.splitlines()
    want = [str(len(before))] + [x for kv in before for x in kv]
    s.eq(lines, want, 'del g/ --prefix --prev-kv: the count, then the deleted kvs, unprefixed')
    s.eq(t.core.kvs('--prefix', '/a/g/'), {}, 'nothing is left under /a/g/ in the core')
    s.eq(t.core.get('/a-other/g/1'), 'other', '/a-other/g/1 survives del g/ --prefix')

    for k in ('x1', 'x2', 'y'):
        eptest.etcd_put(t.pa, k, 'v' + k)
    core_before = {k for k in t.core.kvs('--prefix', '/a/')}
    r = etcdctl(t.pa, 'del', 'x', '--from-key')
    gone = core_before - set(t.core.kvs('--prefix', '/a/'))
    s.check(r.stdout.strip() == str(len([k for k in core_before if k >= '/a/x'])) and
            gone == {k for k in core_before if k >= '/a/x'},
            'del x --from-key through a deletes a\'s keys >= x and nothing else',
            (r.stdout, r.stderr, sorted(gone)))
    s.eq(t.core.get('/a0'), 'a-prefix-end', 'the core\'s /a0 (a\'s range end) survives')
    s.eq(t.core.get('/zz'), 'zz', 'the core\'s /zz survives')
    r = etcdctl(t.pa, 'del', 'zzz', '--from-key')
    s.eq(r.stdout.strip(), '0', 'del zzz --from-key: nothing of a\'s is there')
    outside_intact(s, t, 'del')


def txn(port, text, *args):
    return etcdctl(port, 'txn', *args, input=text)


def test_txn(s, t):
    eptest.etcd_put(t.pa, 't1', 'one')
    eptest.etcd_put(t.pb, 't1', 'b-one')
    eptest.etcd_put(t.pb, 'bonly', 'x')
    crev = jget(t.pa, 't1')['kvs'][0]['create_revision']
    # compares on mod, create, value and version; success and failure branches
    script = ('mod("t1") > "0"\ncreate("t1") = "%d"\nvalue("t1") = "one"\n'
              'version("t1") = "1"\n\nput t2 yes\nget t1\ndel t-none\n\nput t3 no\n\n' % crev)
    path = os.path.join(t.s.tmp, 'txn-success.txt')
    eptest.write_text(path, script)
    with open(path) as f:
        r = txn(t.pa, f.read())
    s.check(r.returncode == 0 and r.stdout.splitlines()[:1] == ['SUCCESS'] and
            't1\none' in r.stdout, 'txn (from a file) whose compares hold: SUCCESS, the get '
            'inside shows t1 unprefixed', r.stdout + r.stderr)
    s.check(t.core.get('/a/t2') == 'yes' and t.core.get('/a/t3') is None and
            t.core.get('t2') is None, 'the success branch wrote /a/t2, the failure branch did '
            'not run')
    r = txn(t.pa, 'value("t1") = "b-one"\n\nput t4 yes\n\nput t3 no\nget t1\n\n', '-w', 'json')
    j = json.loads(r.stdout) if r.returncode == 0 else {}
    rng = [x['Response']['ResponseRange'] for x in j.get('responses', [])
           if 'ResponseRange' in x.get('Response', {})]
    s.check(r.returncode == 0 and not j.get('succeeded') and rng and
            b64(rng[0]['kvs'][0]['key']) == 't1',
            'txn comparing a\'s t1 with b\'s value: FAILURE; the get in the failure branch '
            'answers t1 (unprefixed)', r.stdout + r.stderr)
    s.check(t.core.get('/a/t3') == 'no' and t.core.get('/a/t4') is None and
            t.core.get('/b/t3') is None, 'the failure branch wrote /a/t3 only')
    r = txn(t.pa, 'version("bonly") = "0"\n\nput t5 yes\n\n\n')
    s.check(r.returncode == 0 and r.stdout.startswith('SUCCESS') and t.core.get('/a/t5') == 'yes',
            'a compare through a does not see b\'s key bonly (version 0)', r.stdout + r.stderr)
    r = txn(t.pa, 'mod("t1") < "%d"\n\ndel t2\n\n\n' % (revision(t.core.port) + 1))
    s.check(r.returncode == 0 and r.stdout.startswith('SUCCESS') and t.core.get('/a/t2') is None,
            'txn with a mod < compare and a delete: /a/t2 deleted', r.stdout + r.stderr)
    s.eq(t.core.get('/b/t1'), 'b-one', 'b\'s t1 is untouched by a\'s transactions')
    outside_intact(s, t, 'txn')


# ---- watch ---------------------------------------------------------------------------------

class Bg:
    """`etcdctl CMD ARGS` in the background (watch, elect), its output in a file."""

    def __init__(self, t, port, cmd, *args, name='watch'):
        self.out = os.path.join(t.s.tmp, '%s.out' % name)
        self.p = t.s.popen([eptest.ETCDCTL, '--endpoints=127.0.0.1:%d' % port, cmd] +
                           [str(a) for a in args], log=self.out, label='etcdctl ' + name,
                           log_lines=0, env=dict(os.environ, ETCDCTL_API='3'))

    def text(self):
        return eptest.read_text(self.out)

    def lines(self):
        return self.text().splitlines()

    def wait(self, needle, timeout=10):
        return wait_until(lambda: needle in self.text(), timeout)

    def stop(self):
        self.p.terminate()
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            self.p.kill()


def test_watch(s, t):
    start = revision(t.core.port) + 1
    # --rev: the events are replayed from start, so there is no race with the watch's creation
    w = Bg(t, t.pa, 'watch', 'w/', '--prefix', '--rev', start, name='watch-prefix')
    wp = Bg(t, t.pa, 'watch', 'w/p', '--prev-kv', '--rev', start, name='watch-prevkv')
    try:
        eptest.etcd_put(t.pa, 'w/1', 'one')
        t.core.put('/a/w/2', 'two-core')
        eptest.etcd_put(t.pb, 'w/3', 'b-three')
        t.core.put('/w/4', 'core-unprefixed')
        t.core.put('/a-other/w/5', 'other')
        eptest.etcd_put(t.pa, 'w/p', 'old')
        eptest.etcd_put(t.pa, 'w/p', 'new')
        etcdctl(t.pa, 'del', 'w/p')
        eptest.etcd_put(t.pa, 'w/end', 'end')
        s.check(w.wait('w/end'), 'etcdctl watch w/ --prefix through a delivers a\'s events',
                w.text())
        s.eq(w.lines(), ['PUT', 'w/1', 'one', 'PUT', 'w/2', 'two-core', 'PUT', 'w/p', 'old',
                         'PUT', 'w/p', 'new', 'DELETE', 'w/p', '', 'PUT', 'w/end', 'end'],
             'watch --prefix: exactly a\'s events (also /a/w/2 written in the core), '
             'unprefixed, in order')
        s.check(wp.wait('DELETE') and wait_until(lambda: len(wp.lines()) >= 13, 5),
                'watch w/p --prev-kv delivers the delete', wp.text())
        # etcdctl prints the previous kv before the event's kv
        s.eq(wp.lines(), ['PUT', 'w/p', 'old', 'PUT', 'w/p', 'old', 'w/p', 'new',
                          'DELETE', 'w/p', 'new', 'w/p', ''],
             'watch --prev-kv: each event with its previous kv, keys unprefixed')
    finally:
        w.stop()
        wp.stop()
    # history replay from an older revision, in a new watch
    h = Bg(t, t.pa, 'watch', 'w/1', '--rev', start, name='watch-history')
    try:
        s.check(h.wait('one'), 'watch w/1 --rev OLD replays the history', h.text())
        s.eq(h.lines()[:3], ['PUT', 'w/1', 'one'], 'the replayed event, unprefixed')
    finally:
        h.stop()


# ---- leases --------------------------------------------------------------------------------

def grant(s, port, ttl=60, what='lease grant'):
    r = etcdctl(port, 'lease', 'grant', ttl)
    m = re.match(r'lease ([0-9a-f]+) granted with TTL\((\d+)s\)', r.stdout)
    s.require_check(r.returncode == 0 and m, '%s: "lease ID granted with TTL(%ds)"' % (what, ttl),
                    r.stdout + r.stderr)
    return m.group(1)


def record(t, tenant, lease):
    return '/__etcdproxy/leases/%s/%016x' % (tenant, int(lease, 16))


def not_found(s, r, what):
    s.check(r.returncode != 0 and 'etcdserver: requested lease not found' in r.stdout + r.stderr,
            '%s: "etcdserver: requested lease not found"' % what, (r.returncode, r.stdout,
                                                                   r.stderr[-400:]))


def expired(s, t, r, lease, what):
    """What etcd itself says of a lease that does not exist: a foreign lease is one."""
    direct = etcdctl(t.core.port, 'lease', 'timetolive', 'fffffffffffff')
    s.check(r.returncode == 0 and r.stdout.strip() == 'lease %016x already expired' % int(lease, 16)
            and direct.stdout.strip() == 'lease 000fffffffffffff already expired',
            '%s: "already expired", as etcd says of a lease that does not exist' % what,
            (r.returncode, r.stdout, r.stderr[-300:], direct.stdout))


def core_lease_alive(t, lease):
    r = etcdctl(t.core.port, 'lease', 'timetolive', lease)
    return r.returncode == 0 and 'remaining' in r.stdout


def test_lease(s, t):
    la = grant(s, t.pa, 60, 'lease grant 60 through a')
    j = jget(t.core.port, record(t, 'a', la))
    kvs = j.get('kvs', [])
    s.check(len(kvs) == 1 and kvs[0].get('lease') == int(la, 16),
            'the core holds the ownership record %s, attached to the lease' % record(t, 'a', la),
            j)
    s.check(core_lease_alive(t, la), 'the lease exists in the core')
    r = etcdctl(t.pa, 'put', 'lk', 'lv', '--lease=%s' % la)
    s.check(r.returncode == 0 and jget(t.core.port, '/a/lk')['kvs'][0].get('lease') ==
            int(la, 16), 'put lk --lease through a: /a/lk in the core carries the lease',
            r.stderr)
    r = etcdctl(t.pa, 'lease', 'timetolive', la, '--keys')
    s.check(r.returncode == 0 and 'granted with TTL(60s)' in r.stdout and
            'attached keys([lk])' in r.stdout, 'lease timetolive --keys through a: TTL 60, '
            'attached keys [lk] (unprefixed, no ownership record)', r.stdout + r.stderr)
    r = etcdctl(t.pa, 'lease', 'keep-alive', '--once', la)
    s.check(r.returncode == 0 and 'keepalived with TTL(60)' in r.stdout,
            'lease keep-alive --once through a', r.stdout + r.stderr)

    lb = grant(s, t.pb, 60, 'lease grant through b')
    s.require_check(eptest.etcd_put(t.pb, 'bk', 'bv') and
                    etcdctl(t.pb, 'put', 'bk', 'bv', '--lease=%s' % lb).returncode == 0,
                    'put bk --lease through b')
    lc = grant(s, t.core.port, 60, 'lease grant directly on the core')
    t.core_lease = lc
    etcdctl(t.core.port, 'put', '/a/ck', 'cv', '--lease=%s' % lc)

    r = etcdctl(t.pa, 'lease', 'list')
    listed = r.stdout.split()[3:] if r.stdout.startswith('found') else None
    s.check(r.returncode == 0 and listed is not None and la in listed and lb not in listed and
            lc not in listed, 'lease list through a: a\'s lease, not b\'s nor the core\'s',
            r.stdout + r.stderr)
    r = etcdctl(t.pb, 'lease', 'list')
    s.check(r.returncode == 0 and r.stdout.split()[:2] == ['found', '1'] and lb in r.stdout,
            'lease list through b: b\'s one lease only', r.stdout + r.stderr)
    r = etcdctl(t.core.port, 'lease', 'list')
    s.check(all(x in r.stdout for x in (la, lb, lc)), 'the core lists all three leases',
            r.stdout)

    # foreign leases through a: b's and the core's
    for lease, whose in ((lb, 'b\'s'), (lc, 'the core\'s')):
        not_found(s, etcdctl(t.pa, 'lease', 'revoke', lease), 'lease revoke of %s lease '
                  'through a' % whose)
        not_found(s, etcdctl(t.pa, 'lease', 'keep-alive', '--once', lease),
                  'lease keep-alive --once of %s lease through a' % whose)
        expired(s, t, etcdctl(t.pa, 'lease', 'timetolive', lease, '--keys'), lease,
                'lease timetolive --keys of %s lease through a' % whose)
        not_found(s, etcdctl(t.pa, 'put', 'stolen', 'x', '--lease=%s' % lease),
                  'put --lease=%s lease through a' % whose)
        r = txn(t.pa, '\nput stolen2 x --lease=%s\n\n\n' % lease)
        not_found(s, r, 'txn put --lease=%s lease through a' % whose)
    s.check(t.core.get('/a/stolen') is None and t.core.get('/a/stolen2') is None,
            'no key was written with a foreign lease')
    s.check(core_lease_alive(t, lb) and core_lease_alive(t, lc),
            'b\'s and the core\'s leases are still alive')
    s.eq(t.core.get('/b/bk'), 'bv', 'b\'s key attached to its lease survives a\'s revoke')
    s.eq(t.core.get('/a/ck'), 'cv', '/a/ck attached to the core\'s lease survives a\'s revoke')
    not_found(s, etcdctl(t.pb, 'lease', 'revoke', la), 'lease revoke of a\'s lease through b')
    not_found(s, etcdctl(t.pb, 'put', 'x', 'y', '--lease=%s' % la),
              'put --lease=a\'s lease through b')
    expired(s, t, etcdctl(t.pb, 'lease', 'timetolive', la), la,
            'timetolive of a\'s lease through b')
    s.check(core_lease_alive(t, la) and t.core.get('/a/lk') == 'lv',
            'a\'s lease and key survive b\'s attempts')
    # a lease ID that does not exist at all
    not_found(s, etcdctl(t.pa, 'lease', 'revoke', '1234abcd'), 'lease revoke of an unknown ID '
              'through a')

    r = etcdctl(t.pa, 'lease', 'revoke', la)
    s.check(r.returncode == 0 and 'revoked' in r.stdout, 'lease revoke through a',
            r.stdout + r.stderr)
    s.check(t.core.get('/a/lk') is None and t.core.get(record(t, 'a', la)) is None and
            not core_lease_alive(t, la), 'the revoke deleted /a/lk, the ownership record and '
            'the lease in the core')
    r = etcdctl(t.pb, 'lease', 'revoke', lb)
    s.check(r.returncode == 0 and t.core.get('/b/bk') is None, 'b revokes its own lease: '
            '/b/bk goes', r.stdout + r.stderr)


def test_lease_restart(s, t):
    """Ownership is kept in the core etcd: a new worker of a still knows a's leases."""
    la = grant(s, t.pa, 60, 'lease grant through a (before a restart)')
    s.require_check(etcdctl(t.pa, 'put', 'rk', 'rv', '--lease=%s' % la).returncode == 0,
                    'put rk with it')
    old = t.sv.status()['a']['pid']
    rc, out, err, _ = t.sv.ctl('restart', 'a')
    s.check(rc == 0, 'etcdproxyctl restart a', err)
    t.sv.wait_state('a', 'ready', pred=lambda x: x['pid'] not in (None, old))
    s.check(eptest.wait_serves(t.pa), 'a serves after the restart')
    r = etcdctl(t.pa, 'lease', 'timetolive', la, '--keys')
    s.check(r.returncode == 0 and 'attached keys([rk])' in r.stdout,
            'after etcdproxyctl restart: timetolive --keys of a\'s lease through a',
            r.stdout + r.stderr)
    r = etcdctl(t.pa, 'lease', 'list')
    s.check(la in r.stdout, 'after the restart: lease list through a has it', r.stdout)
    r = etcdctl(t.pa, 'lease', 'keep-alive', '--once', la)
    s.check(r.returncode == 0 and 'keepalived' in r.stdout,
            'after the restart: keep-alive --once', r.stdout + r.stderr)
    expired(s, t, etcdctl(t.pa, 'lease', 'timetolive', t.core_lease), t.core_lease,
            'after the restart: the core\'s lease is still foreign to a')

    lk = grant(s, t.pa, 60, 'another lease through a (before kill -9 of its worker)')
    old = t.sv.status()['a']['pid']
    os.kill(old, signal.SIGKILL)
    t.sv.wait_state('a', 'ready', pred=lambda x: x['pid'] not in (None, old))
    s.check(eptest.wait_serves(t.pa), 'a serves after kill -9 of its worker')
    r = etcdctl(t.pa, 'put', 'kk', 'kv', '--lease=%s' % lk)
    s.check(r.returncode == 0 and t.core.get('/a/kk') == 'kv',
            'after kill -9: put --lease with the lease granted before', r.stderr)
    for lease in (la, lk):
        r = etcdctl(t.pa, 'lease', 'revoke', lease)
        s.check(r.returncode == 0 and 'revoked' in r.stdout, 'after the restarts: revoke %s '
                'through a' % lease, r.stdout + r.stderr)
    s.check(t.core.get('/a/rk') is None and t.core.get('/a/kk') is None,
            'the revokes deleted the attached keys')


# ---- compaction ----------------------------------------------------------------------------

def two_revisions(s, port, key):
    """Put key twice: (revision of the first put, revision of the second)."""
    r1 = json.loads(etcdctl(port, 'put', key, 'first', '-w', 'json').stdout)['header']['revision']
    r2 = json.loads(etcdctl(port, 'put', key, 'second', '-w', 'json').stdout)['header']['revision']
    return r1, r2


def test_compaction_ignore(s, t):
    r1, r2 = two_revisions(s, t.pa, 'c1')
    r = etcdctl(t.pa, 'compact', r2)
    s.check(r.returncode == 0 and r.stdout.strip() == 'compacted revision %d' % r2,
            'compact through a (policy ignore, the default): "compacted revision %d"' % r2,
            r.stdout + r.stderr)
    r = etcdctl(t.core.port, 'get', '/a/c1', '--rev', r1, '--print-value-only')
    s.check(r.returncode == 0 and r.stdout.strip() == 'first', 'the core is NOT compacted: '
            '/a/c1 at revision %d is still readable directly' % r1, r.stdout + r.stderr)
    r = etcdctl(t.pa, 'get', 'c1', '--rev', r1, '--print-value-only')
    s.eq(r.stdout.strip(), 'first', 'and through a')


def test_compaction_deny(s, t):
    r1, r2 = two_revisions(s, t.pd, 'c1')
    r = etcdctl(t.pd, 'compact', r2)
    text = r.stdout + r.stderr
    s.check(r.returncode != 0 and 'PermissionDenied' in text and
            'etcdproxy: refused Compact' in text, 'compact through d (policy deny): '
            'PermissionDenied, "etcdproxy: refused Compact ..."', text[-500:])
    r = etcdctl(t.core.port, 'get', '/d/c1', '--rev', r1, '--print-value-only')
    s.check(r.returncode == 0 and r.stdout.strip() == 'first', 'the core is not compacted',
            r.stdout + r.stderr)


def test_compaction_allow(s, t):
    """Last: this compacts the shared core etcd for real."""
    r1, r2 = two_revisions(s, t.pe, 'c1')
    h = Bg(t, t.pe, 'watch', 'c1', '--rev', r1, name='watch-before-compact')
    try:
        s.check(h.wait('second'), 'a watch --rev through e before the compaction replays both '
                'puts', h.text())
    finally:
        h.stop()
    r = etcdctl(t.pe, 'compact', r2)
    s.check(r.returncode == 0 and r.stdout.strip() == 'compacted revision %d' % r2,
            'compact through e (policy allow): "compacted revision %d"' % r2, r.stdout + r.stderr)
    r = etcdctl(t.core.port, 'get', '/e/c1', '--rev', r1)
    s.check(r.returncode != 0 and 'required revision has been compacted' in r.stderr,
            'the core really is compacted: /e/c1 at revision %d fails directly' % r1,
            r.stdout + r.stderr[-300:])
    r = etcdctl(t.pe, 'get', 'c1', '--rev', r1)
    s.check(r.returncode != 0 and
            'Error: etcdserver: mvcc: required revision has been compacted' in r.stderr,
            'get --rev of a compacted revision through e: etcd\'s message verbatim',
            r.stderr[-400:])
    s.eq(code_of(r), 'OutOfRange', 'and etcd\'s code OutOfRange')
    r = etcdctl(t.pa, 'get', 'c1', '--rev', r1)
    s.check(r.returncode != 0 and 'required revision has been compacted' in r.stderr and
            code_of(r) == 'OutOfRange', 'the same through a (ignore does not undo another '
            'tenant\'s compaction)', r.stderr[-300:])
    r = etcdctl(t.pe, 'get', 'c1', '--print-value-only')
    s.eq(r.stdout.strip(), 'second', 'the current revision still reads through e')
    w = Bg(t, t.pe, 'watch', 'c1', '--rev', r1, name='watch-compacted')
    try:
        s.check(w.wait('compacted') and 'required revision has been compacted' in w.text(),
                'watch --rev of a compacted revision through e: canceled, "required revision '
                'has been compacted"', w.text())
    finally:
        w.stop()


# ---- cluster, maintenance, refusals, errors -------------------------------------------------

def test_endpoint_member(s, t):
    # etcdctl 3.4 prints the health lines on stderr
    r = etcdctl(t.pa, 'endpoint', 'health')
    s.check(r.returncode == 0 and '127.0.0.1:%d is healthy' % t.pa in r.stdout + r.stderr,
            'endpoint health through a', r.stdout + r.stderr)
    r = etcdctl(t.pa, 'endpoint', 'health', '--cluster')
    s.check(r.returncode == 0 and 'http://127.0.0.1:%d is healthy' % t.pa in r.stdout + r.stderr
            and str(t.core.port) not in r.stdout + r.stderr, 'endpoint health --cluster: the '
            'member list leads back to the proxy, not to the core', r.stdout + r.stderr)
    r = etcdctl(t.pa, 'endpoint', 'status', '-w', 'json')
    try:
        st = json.loads(r.stdout)[0]['Status']
    except (ValueError, IndexError, KeyError):
        st = {}
    s.check(r.returncode == 0 and st.get('version', '').startswith('3.') and
            st.get('dbSize', 0) > 0 and st.get('header', {}).get('revision') ==
            revision(t.core.port), 'endpoint status -w json through a: version, dbSize and '
            'the core\'s revision', r.stdout + r.stderr)
    r = etcdctl(t.pa, 'endpoint', 'status')
    s.check(r.returncode == 0 and r.stdout.startswith('127.0.0.1:%d, ' % t.pa),
            'endpoint status (simple)', r.stdout + r.stderr)
    r = etcdctl(t.pa, 'member', 'list')
    lines = r.stdout.strip().splitlines()
    mid = lines[0].split(',')[0] if lines else ''
    s.check(r.returncode == 0 and len(lines) == 1 and
            lines[0] == '%s, started, etcdproxy-a, , http://127.0.0.1:%d, false' % (mid, t.pa),
            'member list through a: one member, etcdproxy-a, http://<a\'s listen>',
            r.stdout + r.stderr)
    r = etcdctl(t.pa, 'endpoint', 'status', '-w', 'json')
    try:
        st = json.loads(r.stdout)[0]['Status']
    except (ValueError, IndexError, KeyError):
        st = {}
    s.check(mid and st.get('leader') == int(mid, 16) and
            st.get('header', {}).get('member_id') == int(mid, 16),
            'endpoint status: its leader and its header\'s member are that member (%s)' % mid,
            r.stdout)
    r = etcdctl(t.pa, 'member', 'list', '-w', 'json')
    try:
        members = json.loads(r.stdout)['members']
    except (ValueError, KeyError):
        members = None
    s.check(members is not None and len(members) == 1 and
            members[0].get('name') == 'etcdproxy-a' and
            members[0].get('clientURLs') == ['http://127.0.0.1:%d' % t.pa] and
            not members[0].get('peerURLs'), 'member list -w json: name and clientURLs',
            r.stdout)
    r = etcdctl(t.core.port, 'member', 'list')
    s.check('etcdproxy' not in r.stdout and len(r.stdout.strip().splitlines()) == 1,
            'the core\'s own member list is unchanged', r.stdout)
    r = etcdctl(t.pa, 'alarm', 'list')
    s.check(r.returncode == 0 and r.stdout.strip() == '', 'alarm list through a (Alarm GET '
            'passes): no alarm', r.stdout + r.stderr)


def test_unix_listen(s, t):
    ep = 'unix://%s' % t.sock
    cmd = [eptest.ETCDCTL, '--endpoints=%s' % ep, '--dial-timeout=3s', '--command-timeout=5s']
    env = dict(os.environ, ETCDCTL_API='3')

    def ctl(*a):
        return subprocess.run(cmd + list(a), capture_output=True, text=True, timeout=15,
                              env=env, stdin=subprocess.DEVNULL)
    r = ctl('put', 'uk', 'uv')
    s.check(r.returncode == 0 and t.core.get('/u/uk') == 'uv',
            'a tenant listening on unix:%s serves etcdctl: put lands at /u/uk' % t.sock,
            r.stdout + r.stderr)
    r = ctl('get', 'uk', '--print-value-only')
    s.eq(r.stdout.strip(), 'uv', 'get through the unix socket')
    r = ctl('member', 'list', '-w', 'json')
    s.check(r.returncode == 0 and 'unix://%s' % t.sock in r.stdout and 'etcdproxy-u' in r.stdout,
            'member list through the unix socket names unix://PATH', r.stdout + r.stderr)


def test_refused(s, t):
    snap = os.path.join(t.s.tmp, 'snap.db')
    r = etcdctl(t.pa, 'snapshot', 'save', snap)
    refused(s, r, '/etcdserverpb.Maintenance/Snapshot', 'snapshot save')
    s.check(not os.path.exists(snap), 'no snapshot file was written')
    refused(s, etcdctl(t.pa, 'defrag'), '/etcdserverpb.Maintenance/Defragment', 'defrag')
    refused(s, etcdctl(t.pa, 'user', 'add', 'eve:secret'), '/etcdserverpb.Auth/UserAdd',
            'user add')
    refused(s, etcdctl(t.pa, 'user', 'list'), '/etcdserverpb.Auth/UserList', 'user list')
    refused(s, etcdctl(t.pa, 'role', 'add', 'r1'), '/etcdserverpb.Auth/RoleAdd', 'role add')
    refused(s, etcdctl(t.pa, 'role', 'list'), '/etcdserverpb.Auth/RoleList', 'role list')
    refused(s, etcdctl(t.pa, 'auth', 'enable'), '/etcdserverpb.Auth/AuthEnable', 'auth enable')
    refused(s, etcdctl(t.pa, 'auth', 'disable'), '/etcdserverpb.Auth/AuthDisable',
            'auth disable')
    refused(s, etcdctl(t.pa, 'member', 'add', 'evil', '--peer-urls=http://127.0.0.1:1'),
            '/etcdserverpb.Cluster/MemberAdd', 'member add')
    refused(s, etcdctl(t.pa, 'member', 'remove', '1234'), '/etcdserverpb.Cluster/MemberRemove',
            'member remove')
    refused(s, etcdctl(t.pa, 'member', 'update', '1234', '--peer-urls=http://127.0.0.1:1'),
            '/etcdserverpb.Cluster/MemberUpdate', 'member update')
    refused(s, etcdctl(t.pa, 'move-leader', '1234'), '/etcdserverpb.Maintenance/MoveLeader',
            'move-leader')
    r = etcdctl(t.core.port, 'user', 'list')
    s.check(r.returncode == 0 and r.stdout.strip() == '', 'the core has no user (user add did '
            'not pass; auth is still off since this works)', r.stdout + r.stderr)
    r = etcdctl(t.core.port, 'role', 'list')
    s.eq(r.stdout.strip(), '', 'the core has no role')
    r = etcdctl(t.core.port, 'member', 'list')
    s.eq(len(r.stdout.strip().splitlines()), 1, 'the core still has one member')


def test_lock_elect(s, t):
    """etcdctl 3.4's lock and elect are client-side recipes (concurrency package) over KV,
    Lease and Watch, not the v3lock/v3election services: through the proxy they work inside
    the tenant's namespace.  (The services themselves are refused: test_native_python.)"""
    probe = 'ETCDCTL_API=3 %s --endpoints=127.0.0.1:%d get --prefix "" --keys-only' % (
        eptest.ETCDCTL, t.core.port)
    r = etcdctl(t.pa, 'lock', 'mylock', '--', 'sh', '-c', probe)
    held = [l for l in r.stdout.splitlines() if l]
    s.check(r.returncode == 0 and any(k.startswith('/a/mylock/') for k in held),
            'etcdctl lock through a: while it is held the core has /a/mylock/<lease>',
            r.stdout + r.stderr)
    s.check(not any('mylock' in k and not k.startswith('/a/mylock/') for k in held),
            'and no lock key outside /a/', held)
    s.eq(t.core.kvs('--prefix', '/a/mylock/'), {}, 'the lock key is gone once released')
    e = Bg(t, t.pa, 'elect', 'myelect', 'p1', name='elect')
    obs = None
    try:
        got = wait_until(lambda: [k for k, v in t.core.kvs('--prefix', '/a/myelect/').items()
                                  if v == 'p1'], 10)
        s.check(got and e.wait('p1', 5) and e.lines()[0] == got[0][3:],
                'etcdctl elect through a: the candidate key is /a/myelect/<lease> in the '
                'core, and elect prints it unprefixed', (got, e.text()))
        obs = Bg(t, t.pa, 'elect', '-l', 'myelect', name='elect-listen')
        s.check(obs.wait('p1', 5) and obs.lines()[:2] == e.lines()[:2],
                'elect -l through a observes the leader, key unprefixed', obs.text())
    finally:
        e.stop()
        if obs:
            obs.stop()


def test_errors(s, t):
    r = etcdctl(t.pa, 'put', '', 'x')
    s.check(r.returncode != 0 and 'Error: etcdserver: key is not provided' in r.stderr and
            code_of(r) == 'InvalidArgument', 'put "": "etcdserver: key is not provided", '
            'InvalidArgument', r.stderr[-400:])
    r = etcdctl(t.pa, 'get', '')
    s.check(r.returncode != 0 and 'etcdserver: key is not provided' in r.stderr,
            'get "": "etcdserver: key is not provided"', r.stderr[-300:])
    r = etcdctl(t.pa, 'get', 'x', '--rev', revision(t.core.port) + 1000)
    s.check(r.returncode != 0 and
            'Error: etcdserver: mvcc: required revision is a future revision' in r.stderr and
            code_of(r) == 'OutOfRange', 'get --rev FUTURE: etcd\'s message and code',
            r.stderr[-300:])
    r = etcdctl(t.pa, 'lease', 'grant', 99999999999)
    s.check(r.returncode != 0 and 'etcdserver: too large lease TTL' in r.stderr and
            code_of(r) == 'OutOfRange', 'lease grant of a huge TTL: etcd\'s message and code',
            r.stderr[-300:])
    r = txn(t.pa, '\nput dup 1\nput dup 2\n\n\n')
    s.check(r.returncode != 0 and 'etcdserver: duplicate key given in txn request' in r.stderr,
            'txn with a duplicate key: etcd\'s message', r.stderr[-300:])
    s.eq(t.core.get('/a/dup'), None, 'and nothing was written')


def body(s):
    t = T()
    t.s = s
    t.core = eptest.CoreEtcd(s).start()
    # the default policy (no backends.native at all) is ignore
    t.sv = eptest.Supervisor(s, t.core)
    t.pa = t.sv.add_tenant('a', backend='native')
    t.pb = t.sv.add_tenant('b', backend='native')
    t.sock = os.path.join(s.tmp, 'u.sock')
    t.sv.add_tenant('u', listen='unix:%s' % t.sock, backend='native')
    t.sv.start()
    t.sv_deny = eptest.Supervisor(s, t.core, name='deny',
                                  backends={'native': {'compaction': 'deny'}})
    t.pd = t.sv_deny.add_tenant('d', backend='native')
    t.sv_deny.start()
    t.sv_allow = eptest.Supervisor(s, t.core, name='allow',
                                   backends={'native': {'compaction': 'allow'}})
    t.pe = t.sv_allow.add_tenant('e', backend='native')
    t.sv_allow.start()
    t.sv.wait_ready('a', 'b', 'u')
    t.sv_deny.wait_ready('d')
    t.sv_allow.wait_ready('e')
    t.core_lease = '1'
    for fn in (test_put_get, test_del, test_txn, test_watch, test_lease, test_lease_restart,
               test_endpoint_member, test_unix_listen, test_refused, test_lock_elect,
               test_errors, test_compaction_ignore, test_compaction_deny,
               test_compaction_allow):
        s.run(fn, s, t)
    for sv in (t.sv, t.sv_deny, t.sv_allow):
        s.eq(sv.stop(), 0, 'etcdproxyd %s exits 0 on SIGTERM' % sv.name)


if __name__ == '__main__':
    s = eptest.Suite('native_etcdctl')
    s.require(eptest.ETCD, eptest.ETCDCTL, eptest.ETCDPROXYD, eptest.ETCDPROXYCTL, eptest.WORKER)
    s.main(body)
