#!/usr/bin/python3
"""spec.rateLimit in the native backend, against a real etcd with etcdctl and python3-etcd3:

  - a tenant limited to 50 requests per second (burst 10), driven flat out by 4 clients for
    10 s, gets within 10% of its limit, without errors;
  - a full queue refuses with RESOURCE_EXHAUSTED "etcdproxy: rate limit ...", counted in
    etcdproxyctl show;
  - a lease kept alive by etcdctl does not expire while the tenant is flooded far past its
    limit;
  - a Watch stream beyond maxWatches is refused when it opens, the others keep working;
  - bytesPerSecond: 2 clients putting 2 KiB values flat out for 8 s move within 15% of
    "20Ki" per second, without errors;
  - a call waiting for its turn gets no flow-control credit for what its client sends
    meanwhile (at most the stream's 1 MiB window), and gets it once it goes on; a request
    that ends inside a message while it waits is refused when it goes on;
  - spec.rateLimit on the etcd backend is refused."""

import os
import sys
import time

sys.dont_write_bytecode = True  # nothing written into the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eptest  # noqa: E402
from eptest import wait_until  # noqa: E402
from h2raw import H2, grpc_msg, pb_bytes  # noqa: E402


def flood(port, threads, seconds, prefix, value='v'):
    """Puts from several clients as fast as answers come: (ok, errors, messages)."""
    r = eptest.put_flood([port], threads, seconds=seconds, prefix=prefix, value=value)
    return {'ok': r['ok'], 'err': len(r['errors']), 'msgs': set(r['errors'])}


def test_rate(s, t):
    r = flood(t.ports['r'], 4, 10, 'rate')
    rate = (r['ok'] - 10) / 10.0  # the burst is free
    s.check(r['err'] == 0, 'no call of the 4 flat-out clients failed (they wait their turn)',
            r['msgs'])
    s.check(45 <= rate <= 55, 'limited to 50 requests per second: %.1f per second over 10 s '
            '(%d puts)' % (rate, r['ok']))


def test_queue_full(s, t):
    r = flood(t.ports['q'], 8, 3, 'queue')
    s.check(r['err'] > 0 and all('etcdproxy: rate limit' in m for m in r['msgs']),
            'beyond the queue calls are refused with "etcdproxy: rate limit ..." (%d ok, %d '
            'refused)' % (r['ok'], r['err']), r['msgs'])
    s.check(any('RESOURCE_EXHAUSTED' in m or 'ResourceExhausted' in m for m in r['msgs']),
            'as RESOURCE_EXHAUSTED', r['msgs'])
    s.check(wait_until(lambda: t.sv.counters('q').get('rate_limited', 0) >= r['err'] and
                       t.sv.counters('q').get('rate_delayed', 0) > 0, 15, 0.5),
            'etcdproxyctl show counts the refused and the delayed calls (at the next report)',
            t.sv.counters('q'))


def test_keepalive(s, t):
    port = t.ports['k']
    g = eptest.etcdctl(port, 'lease', 'grant', '3')
    s.check(g.returncode == 0, 'a lease of 3 s', g.stderr)
    lease = g.stdout.split()[1]
    eptest.etcdctl(port, 'put', 'held', 'v', '--lease=' + lease)
    ka = t.s.popen([eptest.ETCDCTL, '--endpoints=127.0.0.1:%d' % port, 'lease', 'keep-alive',
                    lease], env=dict(os.environ, ETCDCTL_API='3'), label='etcdctl keep-alive')
    r = flood(port, 8, 8, 'ka')
    s.check(r['err'] > 0, 'the tenant was flooded far past its limit (%d refused)' % r['err'])
    ttl = eptest.etcdctl(port, 'lease', 'timetolive', lease)
    s.check(ttl.returncode == 0 and 'remaining(' in ttl.stdout and 'expired' not in ttl.stdout,
            'the kept-alive lease did not expire meanwhile', ttl.stdout + ttl.stderr)
    s.eq(eptest.etcd_get(t.core.port, '/k/held'), 'v', 'and its key is still there')
    ka.terminate()
    ka.wait(10)


def test_watches(s, t):
    h = H2(t.ports['w'])
    try:
        first = h.request('/etcdserverpb.Watch/Watch', end=False)
        h.pump(0.5)
        second = h.request('/etcdserverpb.Watch/Watch', end=False)
        h.wait_stream(second, 10)
        st = h.stream(second)
        s.check(st.grpc_status == 8 and 'rate limit' in (st.header('grpc-message') or ''),
                'a watch stream beyond maxWatches 1 is refused at creation (RESOURCE_EXHAUSTED)',
                (st.grpc_status, st.header('grpc-message')))
        s.check(not h.stream(first).done, 'the first watch stream stays open')
    finally:
        h.close()
    s.check(eptest.serves(t.ports['w']), 'and the tenant serves')


def test_bytes(s, t):
    value = 'x' * 2048
    r = flood(t.ports['b'], 2, 8, 'b', value)
    moved = r['ok'] * (len(value) + len('b-0-000'))
    rate = (moved - 20480) / 8.0  # one second's worth is free
    s.check(r['err'] == 0, 'no put of the 2 flat-out clients failed (they wait their turn)',
            r['msgs'])
    s.check(0.85 * 20480 <= rate <= 1.15 * 20480, 'limited to "20Ki" bytes per second: %.0f '
            'bytes per second over 8 s (%d puts of 2 KiB)' % (rate, r['ok']))


def test_held_while_waiting(s, t):
    """A call waiting for its turn gets no flow-control credit: what its client may send
    meanwhile is bounded by the stream's window (1 MiB), and the credit comes when it goes."""
    h = H2(t.ports['h'])
    try:
        h.pump(0.3)
        start = time.monotonic()
        small = [h.request('/etcdserverpb.KV/Put', body=grpc_msg(
            pb_bytes(1, b'small%d' % i) + pb_bytes(2, b'v'))) for i in range(2)]
        value = os.urandom(1400 * 1024)
        body = grpc_msg(pb_bytes(1, b'held') + pb_bytes(2, value))
        sid = h.request('/etcdserverpb.KV/Put', body=None, end=False)  # third: waits ~2 s
        window = 1 << 20  # the worker's SETTINGS_INITIAL_WINDOW_SIZE
        for i in range(0, window, 16384):
            h.data(sid, body[i:i + 16384])
        while time.monotonic() - start < 0.8:
            h.pump(0.05)
        s.eq(h.window_updates.get(sid, 0), 0, 'while the third call waits for a token (1 per '
             'second), the 1 MiB its client sent gets no WINDOW_UPDATE')
        s.check(h.wait(lambda: h.window_updates.get(sid, 0) > 0, 10),
                'once it may go, the credit comes', h.window_updates)
        sent, stuck = window, False
        while sent < len(body) and not stuck:
            stuck = not h.wait(lambda: h.window_updates.get(sid, 0) + window > sent, 10)
            n = min(16384, len(body) - sent, h.window_updates.get(sid, 0) + window - sent)
            if n > 0:
                h.data(sid, body[sent:sent + n], end=sent + n == len(body))
                sent += n
        s.check(not stuck, 'the worker gives credit until the message is whole',
                (sent, h.window_updates))
        done = [h.wait_stream(x) for x in small + [sid]]
        s.eq([d.grpc_status for d in done], [0, 0, 0], 'all three Puts are answered OK')
    finally:
        h.close()
    # a request that ends inside its second message while it waits: refused when it goes on
    h = H2(t.ports['h'])
    try:
        h.pump(0.3)
        first = h.request('/etcdserverpb.KV/Put', body=grpc_msg(pb_bytes(1, b'small9') +
                                                                 pb_bytes(2, b'v')))
        sid = h.request('/etcdserverpb.KV/Put', body=grpc_msg(
            pb_bytes(1, b'tail') + pb_bytes(2, b'v')) + b'\0\0\0', end=True)
        st = h.wait_stream(sid)
        s.check(st.grpc_status == 13 and 'ended inside a message' in
                (st.header('grpc-message') or ''), 'a Put whose request ends inside a second '
                'message while it waits for its turn: INTERNAL, "the request ended inside a '
                'message"', (st.grpc_status, st.header('grpc-message')))
        h.wait_stream(first)
    finally:
        h.close()
    core = eptest.etcd3_client(t.core.port)
    try:
        s.check(core.get('/h/held')[0] == value,
                'the 1.4 MiB Put that waited is in the core, byte for byte')
        s.check(core.get('/h/tail')[0] is None, 'the Put cut after its message is not')
    finally:
        core.close()


def test_refused_on_etcd(s, t):
    st = t.sv.tenant('e')
    s.check(st['state'] == 'failed' and 'spec.rateLimit: enforced by the native backend only'
            in (st.get('last_error') or ''), 'spec.rateLimit on the etcd backend is refused', st)


class T:
    pass


def body(s):
    t = T()
    t.s = s
    t.core = eptest.CoreEtcd(s).start()
    t.sv = eptest.Supervisor(s, t.core)
    t.ports = {
        'r': t.sv.add_tenant('r', backend='native', spec_extra={'rateLimit': {
            'requestsPerSecond': 50, 'burst': 10}}),
        'q': t.sv.add_tenant('q', backend='native', spec_extra={'rateLimit': {
            'requestsPerSecond': 5, 'burst': 1, 'maxQueue': 2, 'maxWait': '500ms'}}),
        'k': t.sv.add_tenant('k', backend='native', spec_extra={'rateLimit': {
            'requestsPerSecond': 5, 'burst': 5, 'maxQueue': 4, 'maxWait': '200ms'}}),
        'w': t.sv.add_tenant('w', backend='native', spec_extra={'rateLimit': {
            'maxWatches': 1}}),
        'b': t.sv.add_tenant('b', backend='native', spec_extra={'rateLimit': {
            'bytesPerSecond': '20Ki', 'maxWait': '5s'}}),
        'h': t.sv.add_tenant('h', backend='native', spec_extra={'rateLimit': {
            'requestsPerSecond': 1, 'burst': 1, 'maxQueue': 4, 'maxWait': '10s'}}),
    }
    t.sv.add_tenant('e', backend='etcd', spec_extra={'rateLimit': {'requestsPerSecond': 5}})
    t.sv.start()
    t.sv.wait_ready('r', 'q', 'k', 'w', 'b', 'h')
    for fn in (test_rate, test_queue_full, test_keepalive, test_watches, test_bytes,
               test_held_while_waiting, test_refused_on_etcd):
        s.run(fn, s, t)
    s.eq(t.sv.stop(), 0, 'etcdproxyd exits 0 on SIGTERM')


if __name__ == '__main__':
    s = eptest.Suite('rate_limit', timeout=300)
    s.require(eptest.ETCD, eptest.ETCDCTL, eptest.ETCDPROXYD, eptest.ETCDPROXYCTL, eptest.WORKER)
    s.main(body)
