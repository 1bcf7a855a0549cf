#!/usr/bin/python3
"""A property test of the native backend's namespacing: ~300 random requests through
tenant a (python-etcd3's generated stubs, bytes keys: empty, "\\0", "\\xff", long keys of
up to ~1 KiB, prefix, from-key and odd ranges; puts, ranges, deletes and txns with
compares), with a fixed seed (printed; EP_SEED overrides it).  The core holds sentinel
keys outside /a/ and watches are open on a's whole key space and on random ranges.

After every request:
  - the core's keys outside /a/ are exactly the sentinels;
  - the core's keys under /a/ are exactly the model of a's key space;
  - a range through a equals the equivalent range made directly on the core (at the same
    revision), with /a/ stripped, and every key it returns maps to a core key under /a/;
  - a txn through a takes the branch the equivalent compares take on the core;
  - refused requests (empty keys) change nothing.
At the end, every watch through a has delivered exactly the core's events in its
range, unprefixed."""

import os
import random
import sys
import threading

sys.dont_write_bytecode = True  # nothing written into the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eptest  # noqa: E402
from eptest import wait_until  # noqa: E402

PREFIX = b'/a/'
PREFIX_END = b'/a0'
N_OPS = int(os.environ.get('EP_OPS') or 300)

SENTINELS = {
    b'/b/x': b'b', b'/a-x': b'dash', b'/a': b'no slash', b'/': b'root', b'/A/x': b'upper',
    b'/zzz': b'z', b'\xff': b'ff', b'\xff\xff': b'ffff', b'/a\xff': b'a-ff', b'/a0': b'end',
    b'/a.': b'dot', b'\x00': b'nul', b'/b/\x00': b'b-nul', b'/__etcdproxy/sentinel': b'rec',
    b'/b/' + b'L' * 1000: b'long', b'a/x': b'no leading slash', b'/a/'[:-1] + b'\x00': b'/a nul',
}

ALPHABET = [b'\x00', b'\x01', b'\xff', b'\xfe', b'/', b'a', b'b', b'0', b'.', b'~', b'x', b'\x7f']


class T:
    pass


def prefix_end(key):
    """clientv3.GetPrefixRangeEnd: the smallest key above every key starting with key."""
    k = bytearray(key)
    while k and k[-1] == 0xff:
        k.pop()
    if not k:
        return b'\x00'
    k[-1] += 1
    return bytes(k)


def core_range(key, end):
    """The core range a tenant range (key, range_end) means."""
    if end == b'':
        return PREFIX + key, b''
    if end == b'\x00':
        return PREFIX + key, PREFIX_END
    return PREFIX + key, PREFIX + end


def in_range(k, key, end):
    """etcd's range semantics on tenant keys (end b'' = single key, b'\\0' = from key)."""
    if end == b'':
        return k == key
    if end == b'\x00':
        return k >= key
    return key <= k < end


class Gen:
    def __init__(self, rnd, model):
        self.r = rnd
        self.model = model

    def key(self, allow_empty=True):
        r = self.r
        x = r.random()
        if x < 0.45 and self.model:
            k = r.choice(sorted(self.model))
            if r.random() < 0.3:  # a neighbour of an existing key
                k = k + r.choice(ALPHABET) if r.random() < 0.5 else k[:-1]
            return k if (k or allow_empty) else b'k'
        if x < 0.5 and allow_empty:
            return b''
        if x < 0.55:
            return r.choice([b'\x00', b'\xff', b'\xff\xff', b'/', b'a', b'/a/', b'\x00\x00'])
        if x < 0.58:
            return bytes(r.choice(b'ab/\x00\xff') for _ in range(r.randint(200, 1024)))
        k = b''.join(r.choice(ALPHABET) for _ in range(r.randint(1, 6)))
        return k

    def range_end(self, key):
        r = self.r
        x = r.random()
        if x < 0.25:
            return b''
        if x < 0.45:
            return b'\x00'
        if x < 0.65:
            return prefix_end(key)
        if x < 0.72:
            return r.choice([b'\xff', b'\xff\xff', b'\x01', b'~', key])
        return self.key(allow_empty=False)

    def value(self):
        r = self.r
        if r.random() < 0.1:
            return b''
        return bytes(r.randrange(256) for _ in range(r.randint(1, 40)))


class Collector:
    """A watch's events as (type, key, value, mod_revision), raw bytes."""

    def __init__(self, client, key, range_end):
        self.events = []
        self.errors = []
        self.lock = threading.Lock()
        self.id = client.add_watch_callback(key, self._cb, range_end=range_end)

    def _cb(self, resp):
        if isinstance(resp, Exception):
            self.errors.append(resp)
            return
        with self.lock:
            for ev in resp.events:
                self.events.append((type(ev).__name__, ev.key, ev.value, ev.mod_revision))

    def snapshot(self):
        with self.lock:
            return list(self.events)


def kvs_of(resp_kvs, strip=False):
    out = []
    for kv in resp_kvs:
        k = kv.key[len(PREFIX):] if strip else kv.key
        out.append((k, kv.value, kv.mod_revision, kv.create_revision, kv.version))
    return out


def run_ops(s, t):
    import grpc
    from etcd3 import etcdrpc
    seed = int(os.environ.get('EP_SEED') or 20241123)
    print('# seed %d (EP_SEED=%d to repeat), %d operations' % (seed, seed, N_OPS))
    rnd = random.Random(seed)
    model = {}
    g = Gen(rnd, model)
    a_kv, core_kv = t.a.kvstub, t.core_client.kvstub
    for k, v in SENTINELS.items():
        t.core_client.put(k, v)
    start_rev = t.core_client.get(b'/zzz')[1].mod_revision + 1

    # the core's own view of a's key space, and watches through a
    core_watch = Collector(t.core_client, PREFIX, PREFIX_END)
    watches = [((b'\x00', b'\x00'), Collector(t.a, b'\x00', b'\x00')),
               ((b'', b'\x00'), Collector(t.a, b'', b'\x00'))]
    for key, end in ((b'x', prefix_end(b'x')), (b'\xff', b'\x00'), (b'a', b''),
                     (b'/', b'b'), (b'\x00', b'\x01')):
        watches.append(((key, end), Collector(t.a, key, end)))
    # the watches exist once a put shows up in all of them
    ok = wait_until(lambda: t.a.put(b'zz-probe', b'p') is not None and
                    all(b'zz-probe' in [e[1] for e in w.snapshot()] for (k, e), w in watches
                        if in_range(b'zz-probe', k, e)) and
                    any(e[1] == PREFIX + b'zz-probe' for e in core_watch.snapshot()), 10, 0.2)
    s.require_check(ok, 'the watches through a and on the core are established')
    t.a.delete(b'zz-probe')

    stats = {'put': 0, 'range': 0, 'delete': 0, 'txn': 0, 'refused': 0, 'compare': 0}
    failures = []

    def fail(i, what, detail):
        failures.append(('op %d: %s: %s' % (i, what, detail))[:500])

    def error_of(fn, *args):
        try:
            return None, fn(*args, timeout=5)
        except grpc.RpcError as e:
            return (e.code(), e.details()), None

    def refused_ok(i, what, err):
        if err != (grpc.StatusCode.INVALID_ARGUMENT, 'etcdserver: key is not provided'):
            fail(i, what + ' with an empty key', 'expected INVALID_ARGUMENT "etcdserver: key is '
                 'not provided", got %r' % (err,))
        stats['refused'] += 1

    def check_range(i, what, key, end, resp, revision, extra):
        """A range answer through a against the same range on the core at revision."""
        ck, ce = core_range(key, end)
        want = core_kv.Range(etcdrpc.RangeRequest(key=ck, range_end=ce, revision=revision,
                                                  **extra), timeout=5)
        bad = [kv.key for kv in want.kvs if not kv.key.startswith(PREFIX)]
        if bad:
            fail(i, what, 'the EQUIVALENT core range reached outside /a/: %r' % bad[:3])
        got = kvs_of(resp.kvs)
        if got != kvs_of(want.kvs, strip=True) or resp.count != want.count or \
                resp.more != want.more:
            fail(i, what, 'range %r..%r %r: through a %r (count %d, more %s), core %r (count %d, '
                 'more %s)' % (key, end, extra, got[:4], resp.count, resp.more,
                               kvs_of(want.kvs, True)[:4], want.count, want.more))
        for k in [kv.key for kv in resp.kvs]:
            if PREFIX + k not in t.last_core_inside and revision == t.last_rev:
                fail(i, what, 'returned key %r has no core key %r' % (k, PREFIX + k))

    def check_core(i, what):
        inside, outside = {}, {}
        for v, m in t.core_client.get_all():
            (inside if m.key.startswith(PREFIX) else outside)[m.key] = v
        if outside != SENTINELS:
            fail(i, what, 'the core outside /a/ changed: added %r, changed/removed %r' % (
                sorted(set(outside) - set(SENTINELS))[:3],
                sorted(k for k in SENTINELS if outside.get(k) != SENTINELS[k])[:3]))
        want = {PREFIX + k: v for k, v in model.items()}
        if inside != want:
            fail(i, what, 'the core under /a/ differs from the model: extra %r, missing %r' % (
                sorted(set(inside) - set(want))[:3], sorted(set(want) - set(inside))[:3]))
        t.last_core_inside = inside
        t.last_rev = core_kv.Range(etcdrpc.RangeRequest(key=b'/zzz'), timeout=5).header.revision

    def compare(key):
        c = etcdrpc.Compare(key=key)
        c.target = rnd.choice([etcdrpc.Compare.VALUE, etcdrpc.Compare.VERSION,
                               etcdrpc.Compare.MOD, etcdrpc.Compare.CREATE])
        c.result = rnd.choice([etcdrpc.Compare.EQUAL, etcdrpc.Compare.GREATER,
                               etcdrpc.Compare.LESS, etcdrpc.Compare.NOT_EQUAL])
        cur = model.get(key)
        if c.target == etcdrpc.Compare.VALUE:
            c.value = cur if cur is not None and rnd.random() < 0.6 else g.value()
        elif c.target == etcdrpc.Compare.VERSION:
            c.version = rnd.choice([0, 1, 2, 5])
        elif c.target == etcdrpc.Compare.MOD:
            c.mod_revision = rnd.randint(0, t.last_rev + 2)
        else:
            c.create_revision = rnd.randint(0, t.last_rev + 2)
        if rnd.random() < 0.2 and key:
            c.range_end = g.range_end(key) or b'\x00'
        return c

    def core_compare(c):
        m = etcdrpc.Compare()
        m.CopyFrom(c)
        m.key = PREFIX + c.key
        if c.range_end:
            m.range_end = core_range(c.key, c.range_end)[1]
        return m

    def apply_delete(key, end):
        for k in [k for k in model if in_range(k, key, end)]:
            del model[k]

    check_core(-1, 'the start')
    for i in range(N_OPS):
        op = rnd.choices(['put', 'range', 'delete', 'txn'], [35, 30, 15, 20])[0]
        stats[op] += 1
        if op == 'put':
            key, value = g.key(), g.value()
            prev = rnd.random() < 0.3
            err, resp = error_of(a_kv.Put, etcdrpc.PutRequest(key=key, value=value,
                                                              prev_kv=prev))
            if key == b'':
                refused_ok(i, 'put', err)
            elif err:
                fail(i, 'put %r' % key, err)
            else:
                if prev and key in model and (resp.prev_kv.key, resp.prev_kv.value) != (
                        key, model[key]):
                    fail(i, 'put prev_kv', (resp.prev_kv.key, key))
                model[key] = value
            check_core(i, 'put')
        elif op == 'range':
            key = g.key()
            end = g.range_end(key)
            extra = {}
            if rnd.random() < 0.3:
                extra['limit'] = rnd.randint(1, 4)
            if rnd.random() < 0.2:
                extra['keys_only'] = True
            if rnd.random() < 0.1:
                extra['count_only'] = True
            if rnd.random() < 0.2:
                extra['sort_order'] = rnd.choice([1, 2])
                extra['sort_target'] = rnd.choice([0, 1, 2, 3, 4])
            rev = 0
            if rnd.random() < 0.15 and t.last_rev > start_rev:
                rev = rnd.randint(start_rev, t.last_rev)  # a past revision
            err, resp = error_of(a_kv.Range, etcdrpc.RangeRequest(key=key, range_end=end,
                                                                  revision=rev, **extra))
            if key == b'':
                refused_ok(i, 'range', err)
            elif err:
                fail(i, 'range %r..%r' % (key, end), err)
            else:
                check_range(i, 'range', key, end, resp, rev or resp.header.revision, extra)
            check_core(i, 'range')
        elif op == 'delete':
            key = g.key()
            end = g.range_end(key)
            err, resp = error_of(a_kv.DeleteRange, etcdrpc.DeleteRangeRequest(
                key=key, range_end=end, prev_kv=True))
            if key == b'':
                refused_ok(i, 'delete', err)
            elif err:
                fail(i, 'delete %r..%r' % (key, end), err)
            else:
                want = sorted(k for k in model if in_range(k, key, end))
                got = sorted(kv.key for kv in resp.prev_kvs)
                if resp.deleted != len(want) or got != want:
                    fail(i, 'delete %r..%r' % (key, end), 'deleted %d %r, the model says %r' % (
                        resp.deleted, got[:4], want[:4]))
                apply_delete(key, end)
            check_core(i, 'delete')
        else:
            compares = [compare(g.key(allow_empty=rnd.random() < 0.1))
                        for _ in range(rnd.randint(0, 3))]
            branches = []
            for _ in range(2):
                ops, used = [], set()
                for _ in range(rnd.randint(0, 2)):  # ranges first: they see the state before
                    k = g.key(allow_empty=rnd.random() < 0.05)
                    ops.append(('range', k, g.range_end(k)))
                for _ in range(rnd.randint(0, 3)):
                    k = g.key(allow_empty=rnd.random() < 0.05)
                    if k in used:
                        continue
                    used.add(k)
                    if rnd.random() < 0.7:
                        ops.append(('put', k, g.value()))
                    else:
                        ops.append(('delete', k, b''))
                branches.append(ops)

            def req_ops(ops):
                out = []
                for kind, k, x in ops:
                    if kind == 'range':
                        out.append(etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(
                            key=k, range_end=x)))
                    elif kind == 'put':
                        out.append(etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(
                            key=k, value=x)))
                    else:
                        out.append(etcdrpc.RequestOp(request_delete_range=etcdrpc.
                                                     DeleteRangeRequest(key=k)))
                return out
            empty = any(c.key == b'' for c in compares) or \
                any(k == b'' for ops in branches for _, k, _ in ops)
            rev_before = t.last_rev
            expect = None
            if not empty:
                expect = core_kv.Txn(etcdrpc.TxnRequest(
                    compare=[core_compare(c) for c in compares]), timeout=5).succeeded
                stats['compare'] += len(compares)
            err, resp = error_of(a_kv.Txn, etcdrpc.TxnRequest(
                compare=compares, success=req_ops(branches[0]), failure=req_ops(branches[1])))
            if empty:
                refused_ok(i, 'txn', err)
            elif err:
                fail(i, 'txn', err)
            else:
                if resp.succeeded != expect:
                    fail(i, 'txn', 'through a succeeded=%s, the same compares on the core: %s '
                         '(%r)' % (resp.succeeded, expect, compares))
                ops = branches[0] if resp.succeeded else branches[1]
                for (kind, k, x), r in zip(ops, resp.responses):
                    if kind == 'range':
                        check_range(i, 'txn range', k, x, r.response_range, rev_before, {})
                    elif kind == 'put':
                        model[k] = x
                    else:
                        if r.response_delete_range.deleted != (1 if k in model else 0):
                            fail(i, 'txn delete %r' % k, r.response_delete_range)
                        model.pop(k, None)
            check_core(i, 'txn')
        if len(failures) > 10:
            break
    print('# %s' % ', '.join('%s %d' % x for x in sorted(stats.items())))
    s.check(not failures, '%d random requests through a (seed %d): the core outside /a/ is '
            'untouched, under /a/ it matches the model, ranges and txns match the core\'s' % (
                i + 1, seed), '\n'.join(failures[:10]))
    s.check(stats['refused'] > 0 and stats['txn'] > 20 and stats['compare'] > 20,
            'the random mix had refusals, txns and compares', stats)

    # the watches: exactly the core's events in their range, unprefixed
    last = t.last_rev
    s.check(wait_until(lambda: core_watch.snapshot() and
                       core_watch.snapshot()[-1][3] >= last, 10) is not None,
            'the core\'s own watch reached the last revision')
    core_events = [(kind, k[len(PREFIX):], v, rev) for kind, k, v, rev in core_watch.snapshot()
                   if rev >= start_rev]
    for (key, end), w in watches:
        want = [e for e in core_events if in_range(e[1], key, end)]

        def done():
            got = [e for e in w.snapshot() if e[3] >= start_rev]
            return len(got) >= len(want)
        wait_until(done, 10)
        got = [e for e in w.snapshot() if e[3] >= start_rev]
        s.check(got == want and not w.errors, 'the watch through a on %r..%r delivered exactly '
                'the core\'s %d events in that range, unprefixed' % (key, end, len(want)),
                'got %d %r... want %d %r...; errors %r' % (len(got), got[:3], len(want),
                                                           want[:3], w.errors[:2]))


def body(s):
    t = T()
    t.core = eptest.CoreEtcd(s).start()
    t.sv = eptest.Supervisor(s, t.core)
    t.pa = t.sv.add_tenant('a', backend='native')
    t.sv.start()
    t.sv.wait_ready('a')
    t.a = eptest.etcd3_client(t.pa)
    t.core_client = eptest.etcd3_client(t.core.port)
    t.last_rev = 0
    t.last_core_inside = {}
    try:
        s.run(run_ops, s, t)
    finally:
        t.a.close()
        t.core_client.close()
    st = t.sv.status()['a']
    s.check(st['restarts'] == 0 and st['state'] == 'ready', 'the worker never restarted', st)
    s.eq(t.sv.stop(), 0, 'etcdproxyd exits 0 on SIGTERM')


if __name__ == '__main__':
    s = eptest.Suite('native_isolation')
    s.require(eptest.ETCD, eptest.ETCDCTL, eptest.ETCDPROXYD, eptest.ETCDPROXYCTL, eptest.WORKER)
    s.main(body)
