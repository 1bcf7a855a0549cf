#!/usr/bin/python3
"""The native backend through python3-etcd3 (and its generated gRPC stubs for what the
library does not expose: count_only, watch progress requests, Alarm actions, metadata):
put/get/get_prefix/get_all/get_range/delete/delete_prefix/transaction/watch/watch_prefix/
leases/members/status, each checked against what the core etcd holds; and the Lock and
Election services (v3lockpb, v3electionpb) by raw gRPC calls: namespaced, with the
tenant's leases only, invisible to another tenant."""

import base64
import json
import os
import queue
import sys
import threading
import time

sys.dont_write_bytecode = True  # nothing written into the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eptest  # noqa: E402
from eptest import wait_until  # noqa: E402
from h2raw import pb_bytes, varint  # noqa: E402

OUTSIDE = {'/zz': 'zz', '/a-other/py/1': 'other', '/b/zz': 'bx', '/': 'root', '/a': 'a',
           '/a0': 'a0', '/py/1': 'unprefixed'}


class T:
    pass


def outside_intact(s, t, what):
    have = t.core.kvs()
    bad = {k: (v, have.get(k)) for k, v in OUTSIDE.items() if have.get(k) != v}
    s.check(not bad, '%s: the core keys outside /a/ are untouched' % what, bad)


def core_under_a(t, prefix=''):
    """{key without /a/: value} of the core's /a/<prefix> keys."""
    return {k[3:]: v for k, v in t.core.kvs('--prefix', '/a/' + prefix).items()}


def core_keys(t):
    """Every key in the core (values may be binary: python-etcd3's lock writes a UUID)."""
    r = eptest.etcdctl(t.core.port, 'get', '', '--from-key', '--keys-only')
    return [k for k in r.stdout.splitlines() if k]


def rpc_error(fn, *args, **kw):
    """(code, details) of the grpc.RpcError fn raises, or (None, result)."""
    import grpc
    try:
        return None, fn(*args, **kw)
    except grpc.RpcError as e:
        return e.code(), e.details()


def raw_unary(t, port, path, msg=b'', metadata=None):
    """A unary call with raw bytes both ways: (code, details or response bytes)."""
    import grpc
    ch = grpc.insecure_channel('127.0.0.1:%d' % port)
    try:
        call = ch.unary_unary(path, request_serializer=lambda b: b,
                              response_deserializer=lambda b: b)
        try:
            return grpc.StatusCode.OK, call(msg, timeout=5, metadata=metadata)
        except grpc.RpcError as e:
            return e.code(), e.details()
    finally:
        ch.close()


# ---- KV ----------------------------------------------------------------------------------------

def test_kv(s, t):
    a, b = t.a, t.b
    for k, v in OUTSIDE.items():
        t.core.put(k, v)
    for i in range(1, 6):
        a.put('py/%d' % i, 'v%d' % i)
    b.put('py/1', 'b1')
    s.eq(core_under_a(t, 'py/'), {'py/%d' % i: 'v%d' % i for i in range(1, 6)},
         'etcd3 put through a: the core holds /a/py/1..5')
    v, meta = a.get('py/1')
    s.check(v == b'v1' and meta.key == b'py/1' and meta.version == 1 and meta.mod_revision > 0,
            'get py/1: value, unprefixed key, version, mod_revision', (v, meta and meta.key))
    s.eq(a.get('nope'), (None, None), 'get of a missing key: (None, None)')
    s.eq(a.get('py/1', serializable=True)[0], b'v1', 'a serializable get')
    s.eq({m.key.decode(): v.decode() for v, m in a.get_prefix('py/')}, core_under_a(t, 'py/'),
         'get_prefix py/ = the core\'s /a/py/')
    got = [m.key.decode() for _, m in a.get_prefix('py/', sort_order='descend',
                                                     sort_target='value')]
    s.eq(got, ['py/5', 'py/4', 'py/3', 'py/2', 'py/1'], 'get_prefix sorted by value, descending')
    s.eq({m.key.decode(): v.decode() for v, m in a.get_all()}, core_under_a(t),
         'get_all (from-key range) = every core key under /a/, nothing else')
    s.eq([m.key for _, m in a.get_range('py/2', 'py/4')], [b'py/2', b'py/3'],
         'get_range py/2 .. py/4')
    s.eq([m.key for _, m in a.get_range('py/4', '\0')], [b'py/4', b'py/5'],
         'get_range py/4 .. "\\0" (from-key) stays inside /a/')
    # count_only and keys_only through the generated stubs
    from etcd3 import etcdrpc
    r = a.kvstub.Range(etcdrpc.RangeRequest(key=b'py/', range_end=b'py0', count_only=True),
                       timeout=5)
    s.check(r.count == 5 and not r.kvs, 'Range count_only over py/: count 5, no kvs', r)
    r = a.kvstub.Range(etcdrpc.RangeRequest(key=b'\0', range_end=b'\0', count_only=True),
                       timeout=5)
    s.eq(r.count, len(core_under_a(t)), 'Range count_only over everything: a\'s key count')
    r = a.kvstub.Range(etcdrpc.RangeRequest(key=b'py/', range_end=b'py0', keys_only=True,
                                            limit=2), timeout=5)
    s.check([kv.key for kv in r.kvs] == [b'py/1', b'py/2'] and r.more and
            all(not kv.value for kv in r.kvs), 'Range keys_only limit 2: keys, more, no values',
            r)
    r = a.kvstub.Put(etcdrpc.PutRequest(key=b'py/1', value=b'v1b', prev_kv=True), timeout=5)
    s.check(r.prev_kv.key == b'py/1' and r.prev_kv.value == b'v1', 'Put prev_kv: previous kv, '
            'key unprefixed', r)
    s.check(a.put_if_not_exists('py/new', 'n') and not a.put_if_not_exists('py/new', 'm') and
            t.core.get('/a/py/new') == 'n', 'put_if_not_exists (a create-revision compare)')
    s.check(a.replace('py/new', 'n', 'n2') and not a.replace('py/new', 'n', 'n3') and
            t.core.get('/a/py/new') == 'n2', 'replace (a value compare)')
    outside_intact(s, t, 'puts and gets')

    s.check(a.delete('py/1') and t.core.get('/a/py/1') is None and
            t.core.get('/b/py/1') == 'b1', 'delete py/1 through a: /a/py/1 only')
    s.check(not a.delete('py/1'), 'delete of a missing key: False')
    r = a.delete('py/2', prev_kv=True, return_response=True)
    s.check(len(r.prev_kvs) == 1 and r.prev_kvs[0].key == b'py/2',
            'delete with prev_kv: the deleted kv, unprefixed', r)
    r = a.delete_prefix('py/')
    s.check(r.deleted == 4 and core_under_a(t, 'py/') == {}, 'delete_prefix py/: a\'s 4 keys',
            r)
    s.eq(t.core.get('/a-other/py/1'), 'other', 'delete_prefix py/ leaves /a-other/py/1')
    r = a.kvstub.DeleteRange(etcdrpc.DeleteRangeRequest(key=b'zzz', range_end=b'\0'),
                             timeout=5)
    s.eq(r.deleted, 0, 'DeleteRange zzz.. (from-key): nothing of a\'s')
    outside_intact(s, t, 'deletes')


def test_large_range(s, t):
    """A Range answer above 256 KiB is rewritten as it streams (doc/wire.md section 3b):
    the same keys, values, more and count as the core's, byte for byte."""
    values = {'big/%d' % i: os.urandom(700 * 1024 + i) for i in range(3)}
    for k, v in values.items():
        t.a.put(k, v)
    got = {m.key.decode(): v for v, m in t.a.get_prefix('big/')}
    s.check(got == values, 'python-etcd3 reads 3 values of 700 KiB through the tenant in one '
            'Range, byte for byte, keys without the prefix', sorted(got))
    core = {m.key.decode(): v for v, m in t.core_client.get_prefix('/a/big/')}
    s.check({k[len('/a/'):]: v for k, v in core.items()} == values,
            'and they are in the core under /a/')
    r = eptest.etcdctl(t.pa, 'get', '--prefix', 'big/', '--limit', '2', '-w', 'json')
    doc = json.loads(r.stdout) if r.returncode == 0 else {}
    keys = [base64.b64decode(kv['key']).decode() for kv in doc.get('kvs', [])]
    s.check(keys == ['big/0', 'big/1'] and doc.get('more') is True and doc.get('count') == 3,
            'etcdctl get --limit 2: two keys, more and count 3 (%d bytes of JSON)' %
            len(r.stdout), (keys, doc.get('more'), doc.get('count'), r.stderr[-300:]))
    v = base64.b64decode(doc['kvs'][1]['value']) if len(doc.get('kvs', [])) == 2 else b''
    s.check(v == values['big/1'], 'and the second value is whole')
    t.a.delete_prefix('big/')


def test_large_put(s, t):
    """A Put above 256 KiB goes on to the core as it arrives (doc/wire.md section 3c): whole and
    prefixed in the core, its lease checked after its value; refused before its last byte
    when it cannot go on, so that the core never stores it."""
    import struct
    import grpc
    from etcd3 import etcdrpc
    from h2raw import H2, RST_STREAM, frame, grpc_msg
    a = t.a
    v = os.urandom(900 * 1024)
    lease = a.lease(60)
    a.put('bigput/1', v, lease=lease)
    got, meta = t.core_client.get('/a/bigput/1')
    s.check(got == v and meta is not None and meta.lease_id == lease.id,
            'python-etcd3 puts 900 KiB with the tenant\'s lease: in the core under /a/, byte '
            'for byte, with the lease', meta and meta.lease_id)
    got, _ = a.get('bigput/1')
    s.check(got == v, 'and reads it back whole')

    lb = t.b.lease(60)
    code, det = rpc_error(a.kvstub.Put, etcdrpc.PutRequest(key=b'bigput/2', value=v, lease=lb.id),
                          timeout=10)
    s.check(code == grpc.StatusCode.NOT_FOUND and det == 'etcdserver: requested lease not found'
            and t.core_client.get('/a/bigput/2')[0] is None,
            'a 900 KiB Put with tenant b\'s lease: NOT_FOUND, and nothing in the core', (code, det))

    # a worker that restarted knows no lease yet: it asks the core, then the Put completes
    pid = t.sv.status()['a']['pid']
    os.kill(pid, 9)
    t.sv.wait_tenant('a', lambda x: x['pid'] not in (None, pid) and x['state'] == 'ready',
                     what='a new worker')
    ok = wait_until(lambda: rpc_error(a.kvstub.Put, etcdrpc.PutRequest(
        key=b'bigput/3', value=v, lease=lease.id), timeout=10)[0] is None, 10, 0.2)
    got, meta = t.core_client.get('/a/bigput/3')
    s.check(ok and got == v and meta.lease_id == lease.id,
            'a 900 KiB Put with a lease the new worker had to look up: written, with the lease')

    msg = pb_bytes(1, b'bigput/4') + pb_bytes(2, v) + pb_bytes(1, b'bigput/5')
    code, det = raw_unary(t, t.pa, '/etcdserverpb.KV/Put', msg)
    s.check(code == grpc.StatusCode.INVALID_ARGUMENT and
            det == 'etcdproxy: a large Put must carry its key once' and
            t.core_client.get('/a/bigput/4')[0] is None and
            t.core_client.get('/a/bigput/5')[0] is None,
            'a large Put with a second key after its value: INVALID_ARGUMENT, nothing written',
            (code, det))

    # a client that stops half way: the core never gets a whole message
    body = grpc_msg(pb_bytes(1, b'bigput/cut') + pb_bytes(2, v))[:600 * 1024]
    for how in ('end', 'reset'):
        c = H2(t.pa)
        try:
            c.pump(0.3)
            sid = c.request('/etcdserverpb.KV/Put', body=None, end=False)
            for i in range(0, len(body), 16384):
                c.data(sid, body[i:i + 16384])
                c.pump(0.01)
            c.pump(0.5)
            if how == 'end':
                c.data(sid, b'', end=True)
                st = c.wait_stream(sid)
                s.check(st is not None and st.grpc_status == 13 and
                        'ended inside a message' in (st.header('grpc-message') or ''),
                        'a Put whose stream ends after 600 KiB of 900: INTERNAL, "the request '
                        'ended inside a message"', st and (st.grpc_status,
                                                            st.header('grpc-message')))
            else:
                c.send(frame(RST_STREAM, 0, sid, struct.pack('>I', 8)))
                c.pump(0.5)
        finally:
            c.close()
        time.sleep(0.5)
        s.check(t.core_client.get('/a/bigput/cut')[0] is None,
                'after a Put %s half way, the core has no such key' %
                ('ended' if how == 'end' else 'reset'))
    a.delete_prefix('bigput/')

    # more Puts at once than a worker streams (16): the others wait whole, all are written
    msgs = {'bigput/many/%02d' % i: os.urandom(300 * 1024) for i in range(18)}
    conns, sids = [H2(t.pa), H2(t.pa)], {}
    try:
        for c in conns:
            c.pump(0.3)
        for i, (k, val) in enumerate(sorted(msgs.items())):
            c = conns[i % 2]  # within each connection's 4 MiB window, no WINDOW_UPDATE needed
            body = grpc_msg(pb_bytes(1, k.encode()) + pb_bytes(2, val))
            sid = c.request('/etcdserverpb.KV/Put', body=None, end=False)
            sids[k] = (c, sid, body)
            for j in range(0, 6 * 16384, 16384):  # 96 KiB: the head, and a start
                c.data(sid, body[j:j + 16384])
        for c in conns:
            c.pump(0.3)
        for k, (c, sid, body) in sids.items():
            for j in range(6 * 16384, len(body), 16384):
                c.data(sid, body[j:j + 16384])
            c.data(sid, b'', end=True)
        done = [c.wait_stream(sid) for c, sid, _ in sids.values()]
        codes = [(d.grpc_status, d.header('grpc-message')) for d in done]
    finally:
        for c in conns:
            c.close()
    core = {k: t.core_client.get('/a/' + k)[0] for k in msgs}  # one by one: 5 MB in all
    s.check(len(codes) == len(msgs) and all(code == 0 for code, _ in codes) and core == msgs,
            '18 Puts of 300 KiB sent at once over two connections (16 stream, the others wait '
            'whole): all answered OK and in the core byte for byte', (codes, sorted(core)))
    a.delete_prefix('bigput/')


def test_txn(s, t):
    a, b = t.a, t.b
    tx = a.transactions
    a.put('tx/k', 'one')
    b.put('tx/k', 'b-one')
    b.put('tx/bonly', 'x')
    _, meta = a.get('tx/k')
    ok, resp = a.transaction(
        compare=[tx.value('tx/k') == 'one', tx.version('tx/k') == 1,
                 tx.create('tx/k') == meta.create_revision, tx.mod('tx/k') > 0,
                 tx.version('tx/bonly') == 0],
        success=[tx.put('tx/s', 'yes'), tx.get('tx/k'), tx.delete('tx/none')],
        failure=[tx.put('tx/f', 'no')])
    got = resp[1][0] if ok and len(resp) > 1 and resp[1] else None
    s.check(ok and got is not None and got[0] == b'one' and got[1].key == b'tx/k',
            'transaction with value/version/create/mod compares: success; its get is '
            'unprefixed', resp)
    s.check(t.core.get('/a/tx/s') == 'yes' and t.core.get('/a/tx/f') is None,
            'the success branch wrote /a/tx/s')
    ok, resp = a.transaction(compare=[tx.value('tx/k') == 'b-one'],
                             success=[tx.put('tx/s2', 'x')],
                             failure=[tx.put('tx/f', 'no'), tx.get('tx/', 'tx0')])
    keys = [m.key for _, m in resp[1]] if not ok and len(resp) > 1 else None
    s.check(not ok and keys == [b'tx/f', b'tx/k', b'tx/s'], 'a compare with b\'s value fails; '
            'the range get in the failure branch lists a\'s tx/ keys, unprefixed', resp)
    s.check(t.core.get('/a/tx/f') == 'no' and t.core.get('/a/tx/s2') is None and
            t.core.get('/b/tx/f') is None, 'the failure branch wrote /a/tx/f only')
    # a nested Txn through the stub
    from etcd3 import etcdrpc
    inner = etcdrpc.TxnRequest(success=[etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(
        key=b'tx/nested', value=b'n'))])
    r = a.kvstub.Txn(etcdrpc.TxnRequest(
        compare=[etcdrpc.Compare(key=b'tx/k', result=etcdrpc.Compare.EQUAL,
                                 target=etcdrpc.Compare.VALUE, value=b'one')],
        success=[etcdrpc.RequestOp(request_txn=inner),
                 etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=b'tx/k'))]),
        timeout=5)
    s.check(r.succeeded and t.core.get('/a/tx/nested') == 'n' and
            r.responses[1].response_range.kvs[0].key == b'tx/k',
            'a nested Txn (etcdctl cannot send one): the inner put lands at /a/tx/nested', r)
    s.eq(t.core.get('/b/tx/k'), 'b-one', 'b\'s tx/k is untouched')
    outside_intact(s, t, 'transactions')


# ---- watch ----------------------------------------------------------------------------------

def test_watch(s, t):
    a, b = t.a, t.b
    w = eptest.Watch(a, 'wp/', range_end='wp0')
    it, cancel = a.watch('wk')
    events = []
    th = threading.Thread(target=lambda: events.extend(
        [ev for _, ev in zip(range(2), it)]), daemon=True)
    th.start()
    prev = eptest.Watch(a, 'wprev', prev_kv=True)
    try:
        n = [0]

        def established():  # a put after the watch exists shows up
            n[0] += 1
            a.put('wp/probe%d' % n[0], 'p')
            return wait_until(lambda: 'wp/probe%d' % n[0] in w.keys(), 0.5)
        s.require_check(wait_until(established, 10, 0), 'watch through a is established')
        start = len(w.events)
        a.put('wp/1', 'one')
        t.core.put('/a/wp/2', 'core')
        b.put('wp/3', 'b')
        t.core.put('/wp/4', 'unprefixed')
        t.core.put('/a-other/wp/5', 'other')
        a.delete('wp/1')
        a.put('wp/end', 'end')
        s.check(w.wait_key('wp/end'), 'add_watch_callback wp/..wp0 sees the last put')
        s.eq(w.events[start:], [('PUT', 'wp/1', 'one'), ('PUT', 'wp/2', 'core'),
                                ('DELETE', 'wp/1', ''), ('PUT', 'wp/end', 'end')],
             'the watch sees exactly a\'s events (also /a/wp/2 written in the core), '
             'unprefixed')
        a.put('wk', 'x1')
        a.put('wk', 'x2')
        th.join(10)
        s.eq([(type(e).__name__, e.key, e.value) for e in events],
             [('PutEvent', b'wk', b'x1'), ('PutEvent', b'wk', b'x2')],
             'watch(key) iterator: two puts, key unprefixed')
        a.put('wprev', 'old')
        a.put('wprev', 'new')
        s.check(wait_until(lambda: len(prev.events) >= 2, 5), 'watch wprev prev_kv=True fires')
    finally:
        w.cancel()
        cancel()
        prev.cancel()
    # watch_prefix with history: start_revision replays
    rev = a.get('wp/end')[1].mod_revision
    hist = eptest.Watch(a, 'wp/', range_end='wp0', start_revision=rev - 10)
    try:
        s.check(hist.wait_key('wp/end'), 'a watch with start_revision replays the history')
        s.check(all(k.startswith('wp/') for k in hist.keys()) and 'wp/3' not in hist.keys(),
                'the replayed events are a\'s only, unprefixed', hist.events)
    finally:
        hist.cancel()
    # watch_prefix_once: put until the watch (created in the thread) has seen one
    res = []
    th = threading.Thread(target=lambda: res.append(a.watch_prefix_once('wo/', timeout=10)),
                          daemon=True)
    th.start()
    s.check(wait_until(lambda: (a.put('wo/x', 'y'), res)[1], 5, 0.1) and
            res[0].key == b'wo/x', 'watch_prefix_once wo/ returns the event, unprefixed', res)
    th.join(5)


def test_watch_progress(s, t):
    """A progress request (WatchRequest.progress_request, field 3; not in python-etcd3's
    generated WatchRequest) is passed to the core: the answer carries the core's revision."""
    import grpc
    from etcd3 import etcdrpc
    ch = grpc.insecure_channel('127.0.0.1:%d' % t.pa)
    reqs = queue.Queue()

    def gen():
        while True:
            x = reqs.get()
            if x is None:
                return
            yield x
    call = ch.stream_stream('/etcdserverpb.Watch/Watch', request_serializer=lambda b: b,
                            response_deserializer=etcdrpc.WatchResponse.FromString)
    it = call(gen(), timeout=20)
    got = queue.Queue()

    def reader():
        try:
            for r in it:
                got.put(r)
        except grpc.RpcError as e:
            got.put(e)
    th = threading.Thread(target=reader, daemon=True)
    th.start()
    try:
        reqs.put(etcdrpc.WatchRequest(create_request=etcdrpc.WatchCreateRequest(
            key=b'prog/', range_end=b'prog0')).SerializeToString())
        r = got.get(timeout=5)
        s.check(getattr(r, 'created', False), 'a raw watch stream is created', r)
        t.a.put('prog/1', 'x')
        r = got.get(timeout=5)
        s.check(r.events and r.events[0].kv.key == b'prog/1', 'it delivers prog/1', r)
        t.core.put('/zz-progress', 'moves the revision')
        core_rev = t.core_client.get('/zz-progress')[1].mod_revision
        reqs.put(b'\x1a\x00')  # WatchRequest{progress_request{}}
        r = got.get(timeout=5)
        s.check(not isinstance(r, Exception) and not r.events and not r.canceled and
                r.header.revision >= core_rev and r.watch_id in (-1, 0),
                'a progress request through a: an empty response with the core\'s revision '
                '(%d)' % core_rev, r)
        t.a.put('prog/2', 'y')
        r = got.get(timeout=5)
        s.check(not isinstance(r, Exception) and r.events and r.events[0].kv.key == b'prog/2',
                'the stream still delivers events after the progress request', r)
        reqs.put(etcdrpc.WatchRequest(cancel_request=etcdrpc.WatchCancelRequest(
            watch_id=0)).SerializeToString())
        r = got.get(timeout=5)
        s.check(not isinstance(r, Exception) and r.canceled, 'a cancel request: canceled', r)
    finally:
        reqs.put(None)
        ch.close()


# ---- leases ---------------------------------------------------------------------------------

def test_lease(s, t):
    import grpc
    a, b = t.a, t.b
    la = a.lease(60)
    rec = '/__etcdproxy/leases/a/%016x' % la.id
    s.check(t.core.get(rec) is not None, 'lease(60) through a: the core holds the ownership '
            'record %s' % rec)
    a.put('lk', 'v', lease=la)
    s.eq(t.core.get('/a/lk'), 'v', 'put with the lease: /a/lk in the core')
    info = a.get_lease_info(la.id)
    s.check(info.TTL > 0 and info.grantedTTL == 60 and list(info.keys) == [b'lk'],
            'get_lease_info through a: TTL, granted TTL, keys [lk] (unprefixed, without the '
            'record)', info)
    s.eq(la.keys, [b'lk'], 'Lease.keys')
    r = la.refresh()
    s.check(r and r[0].TTL == 60, 'Lease.refresh (keep-alive) through a', r)
    from etcd3 import etcdrpc
    ids = [x.ID for x in a.leasestub.LeaseLeases(etcdrpc.LeaseLeasesRequest(), timeout=5).leases]
    lb = b.lease(60)
    b.put('bk', 'bv', lease=lb)
    lc = t.core_client.lease(60)
    ids = [x.ID for x in a.leasestub.LeaseLeases(etcdrpc.LeaseLeasesRequest(), timeout=5).leases]
    s.check(la.id in ids and lb.id not in ids and lc.id not in ids,
            'LeaseLeases through a: a\'s lease only', ids)
    ids = [x.ID for x in t.core_client.leasestub.LeaseLeases(etcdrpc.LeaseLeasesRequest(),
                                                             timeout=5).leases]
    s.check(all(x in ids for x in (la.id, lb.id, lc.id)), 'the core lists all three', ids)
    for lease, whose in ((lb, 'b\'s'), (lc, 'the core\'s')):
        info = a.get_lease_info(lease.id)
        s.check(info.TTL == -1 and info.ID == lease.id,
                'get_lease_info of %s lease through a: TTL -1, as etcd answers for a lease '
                'that does not exist' % whose, info)
        got = [(r.TTL, r.ID) for r in a.refresh_lease(lease.id)]
        s.eq(got, [(0, lease.id)], 'refresh_lease (keep-alive stream) of %s lease through a: '
             'TTL 0, as etcd answers for a lease that does not exist' % whose)
        for what, fn, args in (('revoke_lease', a.revoke_lease, (lease.id,)),
                               ('put with lease', a.put, ('stolen', 'x', lease.id))):
            code, det = rpc_error(fn, *args)
            s.check(code == grpc.StatusCode.NOT_FOUND and
                    det == 'etcdserver: requested lease not found',
                    '%s of %s lease through a: NOT_FOUND "etcdserver: requested lease not '
                    'found"' % (what, whose), (code, det))
        tx = a.transactions
        code, det = rpc_error(a.transaction, compare=[], success=[
            tx.put('stolen2', 'x', lease=lease.id)], failure=[])
        s.check(code == grpc.StatusCode.NOT_FOUND, 'a transaction put with %s lease through a: '
                'NOT_FOUND' % whose, (code, det))
    s.check(t.core.get('/a/stolen') is None and t.core.get('/a/stolen2') is None,
            'nothing was written with a foreign lease')
    s.check(b.get_lease_info(lb.id).TTL > 0 and t.core.get('/b/bk') == 'bv',
            'b\'s lease and key survive')
    code, _ = rpc_error(b.revoke_lease, la.id)
    s.eq(code, grpc.StatusCode.NOT_FOUND, 'b cannot revoke a\'s lease')
    la.revoke()
    s.check(t.core.get('/a/lk') is None and t.core.get(rec) is None,
            'Lease.revoke through a: /a/lk and the record are gone')
    lb.revoke()
    lc.revoke()


# ---- cluster, maintenance, refusals ---------------------------------------------------------

def test_cluster(s, t):
    import grpc
    a = t.a
    members = list(a.members)
    s.check(len(members) == 1 and members[0].name == 'etcdproxy-a' and
            list(members[0].client_urls) == ['http://127.0.0.1:%d' % t.pa],
            'members through a: only etcdproxy-a with a\'s own URL',
            [(m.id, m.name, m.client_urls) for m in members])
    st = a.status()
    core_st = t.core_client.status()
    s.check(st.version == core_st.version and st.db_size > 0 and
            st.raft_term == core_st.raft_term, 'status through a: the core\'s version, db size '
            'and raft term', (st.version, st.db_size, st.raft_term))
    # one identity: the member the tenant sees is the leader Status names, in every header
    s.check(st.leader is not None and st.leader.id == members[0].id,
            'status().leader through a is the member MemberList names (%x)' % members[0].id,
            st.leader)
    from etcd3 import etcdrpc as rpc
    hdrs = [a.kvstub.Range(rpc.RangeRequest(key=b'x'), timeout=5).header,
            a.maintenancestub.Status(rpc.StatusRequest(), timeout=5).header,
            a.clusterstub.MemberList(rpc.MemberListRequest(), timeout=5).header,
            a.kvstub.Put(rpc.PutRequest(key=b'hdr', value=b'v'), timeout=5).header]
    core_hdr = t.core_client.kvstub.Range(rpc.RangeRequest(key=b'x'), timeout=5).header
    s.check(all(h.member_id == members[0].id for h in hdrs),
            'Range, Status, MemberList and Put headers through a carry that member\'s ID',
            [h.member_id for h in hdrs])
    s.check(all(h.cluster_id == core_hdr.cluster_id for h in hdrs),
            'and the core\'s cluster ID, MemberList\'s included', [h.cluster_id for h in hdrs])
    s.eq(list(a.list_alarms()), [], 'list_alarms (Alarm GET) through a: none')
    from etcd3 import etcdrpc
    for action, name in ((etcdrpc.AlarmRequest.ACTIVATE, 'ACTIVATE'),
                         (etcdrpc.AlarmRequest.DEACTIVATE, 'DEACTIVATE')):
        code, det = rpc_error(a.maintenancestub.Alarm, etcdrpc.AlarmRequest(
            action=action, memberID=0, alarm=etcdrpc.NOSPACE), timeout=5)
        s.check(code == grpc.StatusCode.PERMISSION_DENIED and 'only Alarm GET' in (det or ''),
                'Alarm %s NOSPACE through a: PERMISSION_DENIED' % name, (code, det))
    s.eq(list(t.core_client.list_alarms()), [], 'the core has no alarm')
    code, det = rpc_error(a.compact, 2)
    s.eq(code, None, 'compact through a (policy ignore): no error')
    for what, fn, args, path in (
            ('defragment', a.defragment, (), 'Maintenance/Defragment'),
            ('hash', a.hash, (), 'Maintenance/Hash'),
            ('add_member', a.add_member, (['http://127.0.0.1:1'],), 'Cluster/MemberAdd'),
            ('remove_member', a.remove_member, (1,), 'Cluster/MemberRemove'),
            ('update_member', a.update_member, (1, ['http://127.0.0.1:1']),
             'Cluster/MemberUpdate'),
            ('snapshot', a.snapshot, (open(os.devnull, 'wb'),), 'Maintenance/Snapshot')):
        code, det = rpc_error(fn, *args)
        s.check(code == grpc.StatusCode.PERMISSION_DENIED and
                (det or '').startswith('etcdproxy: refused /etcdserverpb.%s: ' % path),
                '%s through a: PERMISSION_DENIED "etcdproxy: refused /etcdserverpb.%s: ..."' % (
                    what, path), (code, det))
    for path in ('/etcdserverpb.Maintenance/HashKV', '/etcdserverpb.Maintenance/MoveLeader',
                 '/etcdserverpb.Maintenance/Downgrade', '/etcdserverpb.Cluster/MemberPromote',
                 '/etcdserverpb.Auth/Authenticate', '/etcdserverpb.Auth/UserAdd',
                 '/etcdserverpb.Auth/AuthEnable', '/etcdserverpb.Auth/RoleGrantPermission'):
        code, det = raw_unary(t, t.pa, path, b'\x0a\x01x')
        s.check(code == grpc.StatusCode.PERMISSION_DENIED and
                (det or '').startswith('etcdproxy: refused %s: ' % path),
                '%s through a: PERMISSION_DENIED with the refusal message' % path, (code, det))
    code, det = raw_unary(t, t.pa, '/etcdserverpb.KV/RangeStream', b'\x0a\x01x')
    s.eq(code, grpc.StatusCode.UNIMPLEMENTED, 'RangeStream through a: UNIMPLEMENTED')
    code, det = raw_unary(t, t.pa, '/etcdserverpb.KV/Nope', b'')
    s.check(code == grpc.StatusCode.UNIMPLEMENTED and
            det == 'unknown method Nope for service etcdserverpb.KV',
            'an unknown method: UNIMPLEMENTED "unknown method Nope for service etcdserverpb.KV"',
            (code, det))
    code, resp = raw_unary(t, t.pa, '/grpc.health.v1.Health/Check', b'')
    s.check(code == grpc.StatusCode.OK and resp == b'\x08\x01',
            'grpc.health.v1.Health/Check through a: SERVING', (code, resp))
    s.eq(t.core_client.members and len(list(t.core_client.members)), 1,
         'the core still has one member')

    # python-etcd3's lock is a client-side recipe over Txn and leases: it stays inside /a/
    lock = a.lock('pylock', ttl=30)
    s.check(lock.acquire(timeout=5), 'etcd3 lock through a: acquired')
    held = [k for k in core_keys(t) if 'pylock' in k]
    s.check(held and all(k.startswith('/a/') for k in held),
            'the lock\'s key is under /a/ in the core', held)
    lock.release()


def pb_uint(field, v):
    return varint(field << 3) + varint(v)


def pb_fields(msg):
    """{field: [value, ...]} of a protobuf message: ints for varints, bytes otherwise."""
    out, i = {}, 0
    while i < len(msg):
        tag, i = read_varint(msg, i)
        if tag & 7 == 0:
            v, i = read_varint(msg, i)
        elif tag & 7 == 2:
            n, i = read_varint(msg, i)
            v, i = msg[i:i + n], i + n
        else:
            raise ValueError('wire type %d' % (tag & 7))
        out.setdefault(tag >> 3, []).append(v)
    return out


def read_varint(b, i):
    v = shift = 0
    while True:
        v |= (b[i] & 0x7f) << shift
        i += 1
        if b[i - 1] < 0x80:
            return v, i
        shift += 7


def test_lock_election(s, t):
    import grpc
    la, lb = t.a.lease(60), t.b.lease(60)
    code, resp = raw_unary(t, t.pa, '/v3lockpb.Lock/Lock', pb_bytes(1, b'mylock') +
                           pb_uint(2, la.id))
    key_a = pb_fields(resp).get(2, [b''])[0] if code == grpc.StatusCode.OK else b''
    s.check(code == grpc.StatusCode.OK and key_a == b'mylock/%x' % la.id,
            'Lock through a: held, its key as a sees it (%r)' % key_a, (code, resp))
    s.check(('/a/mylock/%x' % la.id) in core_keys(t), 'the lock\'s key is under /a/ in the core')
    code, resp = raw_unary(t, t.pb, '/v3lockpb.Lock/Lock', pb_bytes(1, b'mylock') +
                           pb_uint(2, lb.id))
    s.check(code == grpc.StatusCode.OK and ('/b/mylock/%x' % lb.id) in core_keys(t),
            'the same lock name through b is b\'s own lock: held at once, under /b/', (code, resp))
    code, det = raw_unary(t, t.pb, '/v3lockpb.Lock/Lock', pb_bytes(1, b'mylock') +
                          pb_uint(2, la.id))
    s.check(code == grpc.StatusCode.NOT_FOUND and 'lease not found' in (det or ''),
            'b cannot lock with a\'s lease (NOT_FOUND, as for a lease that does not exist)',
            (code, det))
    code, _ = raw_unary(t, t.pa, '/v3lockpb.Lock/Unlock', pb_bytes(1, key_a))
    s.check(code == grpc.StatusCode.OK and ('/a/mylock/%x' % la.id) not in core_keys(t),
            'Unlock through a: the key is gone')

    code, resp = raw_unary(t, t.pa, '/v3electionpb.Election/Campaign', pb_bytes(1, b'el') +
                           pb_uint(2, la.id) + pb_bytes(3, b'v1'))
    leader = pb_fields(resp).get(2, [b''])[0] if code == grpc.StatusCode.OK else b''
    lk = pb_fields(leader) if leader else {}
    s.check(code == grpc.StatusCode.OK and lk.get(1) == [b'el'] and
            lk.get(2) == [b'el/%x' % la.id], 'Campaign through a: leader, with its name and key '
            'as a sees them', (code, lk))
    code, resp = raw_unary(t, t.pa, '/v3electionpb.Election/Leader', pb_bytes(1, b'el'))
    kv = pb_fields(pb_fields(resp)[2][0]) if code == grpc.StatusCode.OK else {}
    s.check(kv.get(1) == [b'el/%x' % la.id] and kv.get(5) == [b'v1'],
            'Leader through a names it', (code, kv))
    code, det = raw_unary(t, t.pb, '/v3electionpb.Election/Leader', pb_bytes(1, b'el'))
    s.check(code != grpc.StatusCode.OK and 'no leader' in (det or ''),
            'b sees no leader of "el": it is another tenant\'s election', (code, det))
    code, _ = raw_unary(t, t.pa, '/v3electionpb.Election/Proclaim', pb_bytes(1, leader) +
                        pb_bytes(2, b'v2'))
    s.eq(code, grpc.StatusCode.OK, 'Proclaim through a')
    ch = grpc.insecure_channel('127.0.0.1:%d' % t.pa)
    try:
        obs = ch.unary_stream('/v3electionpb.Election/Observe', request_serializer=lambda b: b,
                              response_deserializer=lambda b: b)(pb_bytes(1, b'el'), timeout=5)
        first = pb_fields(pb_fields(next(obs))[2][0])
        obs.cancel()
    finally:
        ch.close()
    s.check(first.get(1) == [b'el/%x' % la.id] and first.get(5) == [b'v2'],
            'Observe through a streams the proclaimed value, the key as a sees it', first)
    code, _ = raw_unary(t, t.pa, '/v3electionpb.Election/Resign', pb_bytes(1, leader))
    code2, det = raw_unary(t, t.pa, '/v3electionpb.Election/Leader', pb_bytes(1, b'el'))
    s.check(code == grpc.StatusCode.OK and code2 != grpc.StatusCode.OK and
            'no leader' in (det or ''), 'Resign through a: no leader any more', (code, code2, det))
    theirs = [k for k in core_keys(t) if 'mylock' in k or '/el/' in k]
    s.check(theirs and all(k.startswith(('/a/', '/b/')) for k in theirs),
            'every key the services wrote is under a tenant prefix', theirs)


def test_metadata(s, t):
    """token/authorization metadata from the tenant is not forwarded; the core (auth off)
    would refuse a bogus one with "invalid auth token"."""
    import grpc
    from etcd3 import etcdrpc
    req = etcdrpc.PutRequest(key=b'tok', value=b'v').SerializeToString()
    code, det = raw_unary(t, t.core.port, '/etcdserverpb.KV/Put',
                          etcdrpc.PutRequest(key=b'/a/tok', value=b'v').SerializeToString(),
                          metadata=[('token', 'bogus')])
    s.check(code == grpc.StatusCode.UNAUTHENTICATED, 'the core refuses a bogus token', det)
    for md in ([('token', 'bogus')], [('authorization', 'bogus')],
               [('authorization', 'Bearer bogus')]):
        code, det = raw_unary(t, t.pa, '/etcdserverpb.KV/Put', req, metadata=md)
        s.eq(code, grpc.StatusCode.OK, 'a Put through a with %s=%s: OK (stripped)' % md[0])
    s.eq(t.core.get('/a/tok'), 'v', 'and it landed at /a/tok')


def test_errors(s, t):
    import grpc
    from etcd3 import etcdrpc
    a = t.a
    code, det = rpc_error(a.kvstub.Put, etcdrpc.PutRequest(key=b'', value=b'x'), timeout=5)
    s.check(code == grpc.StatusCode.INVALID_ARGUMENT and det == 'etcdserver: key is not provided',
            'Put with an empty key: INVALID_ARGUMENT "etcdserver: key is not provided"',
            (code, det))
    code, det = rpc_error(a.kvstub.Range, etcdrpc.RangeRequest(key=b'x', revision=1 << 40),
                          timeout=5)
    s.check(code == grpc.StatusCode.OUT_OF_RANGE and
            det == 'etcdserver: mvcc: required revision is a future revision',
            'Range at a future revision: etcd\'s OUT_OF_RANGE and message verbatim', (code, det))
    code, det = rpc_error(a.kvstub.Txn, etcdrpc.TxnRequest(success=[
        etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=b'd', value=b'1')),
        etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=b'd', value=b'2'))]), timeout=5)
    s.check(code == grpc.StatusCode.INVALID_ARGUMENT and
            det == 'etcdserver: duplicate key given in txn request',
            'Txn with a duplicate key: etcd\'s message verbatim', (code, det))
    code, det = rpc_error(a.kvstub.Txn, etcdrpc.TxnRequest(success=[
        etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=b'k%d' % i, value=b'1'))
        for i in range(129)]), timeout=5)
    s.check(code == grpc.StatusCode.INVALID_ARGUMENT and
            det == 'etcdserver: too many operations in txn request',
            'Txn with 129 ops: etcd\'s message verbatim', (code, det))
    code, det = rpc_error(a.kvstub.Put, etcdrpc.PutRequest(key=b'big', value=b'x' * (1600 << 10)),
                          timeout=10)
    s.check(code == grpc.StatusCode.INVALID_ARGUMENT and det == 'etcdserver: request is too large',
            'a 1.6 MB Put (below the proxy\'s limit): etcd\'s "request is too large"', (code, det))


def test_unix_grpc(s, t):
    """The unix: listen with python's grpc (it sends :authority "localhost")."""
    import grpc
    from etcd3 import etcdrpc
    ch = grpc.insecure_channel('unix:' + t.sock)
    try:
        kv = etcdrpc.KVStub(ch)
        kv.Put(etcdrpc.PutRequest(key=b'uk', value=b'uv'), timeout=5)
        r = kv.Range(etcdrpc.RangeRequest(key=b'uk'), timeout=5)
        s.check(t.core.get('/u/uk') == 'uv' and r.kvs[0].key == b'uk',
                'python grpc over the unix: socket: put lands at /u/uk, get is unprefixed', r)
    except grpc.RpcError as e:
        s.check(False, 'python grpc over the unix: socket', (e.code(), e.details()))
    finally:
        ch.close()


def body(s):
    import etcd3
    t = T()
    t.core = eptest.CoreEtcd(s).start()
    t.sv = eptest.Supervisor(s, t.core)
    t.pa = t.sv.add_tenant('a', backend='native')
    t.pb = t.sv.add_tenant('b', backend='native')
    t.sock = os.path.join(s.tmp, 'u.sock')
    t.sv.add_tenant('u', listen='unix:%s' % t.sock, backend='native')
    t.sv.start()
    t.sv.wait_ready('a', 'b', 'u')
    t.a = eptest.etcd3_client(t.pa)
    t.b = eptest.etcd3_client(t.pb)
    t.core_client = eptest.etcd3_client(t.core.port)
    try:
        for fn in (test_kv, test_large_range, test_large_put, test_txn, test_watch, test_watch_progress, test_lease, test_cluster,
                   test_lock_election, test_metadata, test_errors, test_unix_grpc):
            s.run(fn, s, t)
    except etcd3.exceptions.Etcd3Exception as e:
        s.check(False, 'etcd3 call failed: %r' % e)
    finally:
        for c in (t.a, t.b, t.core_client):
            c.close()
    s.eq(t.sv.stop(), 0, 'etcdproxyd exits 0 on SIGTERM')


if __name__ == '__main__':
    s = eptest.Suite('native_python')
    s.require(eptest.ETCD, eptest.ETCDCTL, eptest.ETCDPROXYD, eptest.ETCDPROXYCTL, eptest.WORKER)
    s.main(body)
