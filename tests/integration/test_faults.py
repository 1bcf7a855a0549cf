#!/usr/bin/python3
"""Faults under load, with a history checker: a three-member core etcd on 127.0.0.1, a
native tenant and an etcd-backend tenant (grpc-proxy) that reach each member through a
relay the test controls, writers and a watcher through each tenant, and one fault after
another:

  - kill -9 of the tenants' workers, then of the etcd backend's grpc-proxy child;
  - every connection to the core cut (relays reset); every link stalled longer than the
    election timeout (bytes held, connections kept);
  - every link delayed by 200 ms, then read at 16 KiB/s, with writes going on meanwhile;
  - two of the three links blackholed (bytes swallowed, new connections never answered):
    writes must go on through the third member while it lasts;
  - a leader change forced with `etcdctl move-leader` against the core;
  - a member killed and started again; a member stopped (SIGSTOP) past the election timeout;
  - kill -9 of etcdproxyd, started again with the sockets "systemd" kept (FakeSystemd).

Invariants, checked for each tenant after the faults:
  - every acknowledged put is in the core etcd;
  - a compare-and-swap counter ends within [acknowledged, acknowledged + in-doubt];
  - the watcher saw strictly increasing revisions, and every acknowledged put, or its
    stream failed loudly and it resumed from the last revision it had;
  - no put outlives its 5 s deadline by more than 1 s;
  - after each fault (or while it lasts) writes succeed again within HEAL seconds (the time
    it took is reported).

EP_FAULT_ROUNDS repeats the fault sequence (contrib/faults/soak.sh runs it long)."""

import os
import signal
import sys
import threading
import time

sys.dont_write_bytecode = True  # nothing written into the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eptest  # noqa: E402
from eptest import wait_until  # noqa: E402

HEAL = 20  # seconds a fault may take to heal
ROUNDS = int(os.environ.get('EP_FAULT_ROUNDS', '1'))


class Cluster:
    """Three etcd members on 127.0.0.1 with free ports."""

    def __init__(self, s):
        self.s = s
        self.names = ['m1', 'm2', 'm3']
        self.client = {n: eptest.free_port() for n in self.names}
        self.peer = {n: eptest.free_port() for n in self.names}
        self.procs = {}
        self.initial = ','.join('%s=http://127.0.0.1:%d' % (n, self.peer[n]) for n in self.names)

    def start(self, n, new=True):
        d = os.path.join(self.s.tmp, n)
        self.procs[n] = self.s.popen(
            [eptest.ETCD, '--name', n, '--data-dir', d,
             '--listen-client-urls', 'http://127.0.0.1:%d' % self.client[n],
             '--advertise-client-urls', 'http://127.0.0.1:%d' % self.client[n],
             '--listen-peer-urls', 'http://127.0.0.1:%d' % self.peer[n],
             '--initial-advertise-peer-urls', 'http://127.0.0.1:%d' % self.peer[n],
             '--initial-cluster', self.initial, '--initial-cluster-state',
             'new' if new else 'existing', '--heartbeat-interval', '100',
             '--election-timeout', '1000', '--logger', 'zap', '--log-outputs', 'stderr'],
            log=os.path.join(self.s.tmp, '%s.log' % n), label='etcd %s' % n, log_lines=5)

    def start_all(self):
        for n in self.names:
            self.start(n)
        if not wait_until(lambda: self.leader() is not None, 30):
            raise eptest.Failure('the three-member core etcd has no leader')

    def status(self, n):
        r = eptest.etcdctl(self.client[n], 'endpoint', 'status', '-w', 'json', timeout=5)
        try:
            import json
            return json.loads(r.stdout)[0]['Status']
        except (ValueError, IndexError, KeyError):
            return None

    def leader(self):
        for n in self.names:
            if self.procs[n].poll() is None:
                st = self.status(n)
                if st and st.get('leader'):
                    for m in self.names:
                        mst = self.status(m) if self.procs[m].poll() is None else None
                        if mst and mst['header']['member_id'] == st['leader']:
                            return m
        return None

    def kill(self, n):
        self.procs[n].send_signal(signal.SIGKILL)
        self.procs[n].wait(10)


class History:
    """What the writers were told and what the watcher saw."""

    def __init__(self):
        self.lock = threading.Lock()
        self.acked = set()
        self.cas_acked = 0
        self.cas_doubt = 0
        self.revisions = []
        self.seen = set()
        self.watch_failures = 0
        self.order_errors = []
        self.stop = False        # the writers
        self.stop_watch = False  # the watcher, once it has caught up
        self.start_rev = 0
        self.longest = 0.0  # the longest put, its deadline being the client's 5 s


def writer(port, i, h):
    c = eptest.etcd3_client(port)
    n = 0
    try:
        while not h.stop:
            key = 'k-%d-%d' % (i, n)
            t0 = time.monotonic()
            try:
                c.put(key, 'v')
                with h.lock:
                    h.acked.add(key)
            except Exception:  # noqa: BLE001 - unacknowledged: may or may not be there
                time.sleep(0.05)
            with h.lock:
                h.longest = max(h.longest, time.monotonic() - t0)
            n += 1
    finally:
        c.close()


def counter(port, h):
    """A compare-and-swap counter: a failed read is no attempt, a failed Txn may have landed."""
    c = eptest.etcd3_client(port)
    try:
        while not h.stop:
            try:
                v, _ = c.get('counter')
            except Exception:  # noqa: BLE001
                time.sleep(0.05)
                continue
            cur = int(v or b'0')
            same = c.transactions.value('counter') == str(cur) if v is not None \
                else c.transactions.version('counter') == 0
            try:
                ok, _ = c.transaction(compare=[same],
                                      success=[c.transactions.put('counter', str(cur + 1))],
                                      failure=[])
                if ok:
                    with h.lock:
                        h.cas_acked += 1
            except Exception:  # noqa: BLE001
                with h.lock:
                    h.cas_doubt += 1
                time.sleep(0.05)
    finally:
        c.close()


def watcher(port, h):
    c = eptest.etcd3_client(port)
    last = [h.start_rev]
    done = threading.Event()

    def cb(resp):
        if isinstance(resp, Exception):
            with h.lock:
                h.watch_failures += 1
            done.set()
            return
        with h.lock:
            for ev in resp.events:
                rev = ev.mod_revision
                if h.revisions and rev < h.revisions[-1]:
                    h.order_errors.append((h.revisions[-1], rev))
                h.revisions.append(rev)
                h.seen.add(ev.key.decode())
                last[0] = max(last[0], rev)
    try:
        while not h.stop_watch:
            done.clear()
            try:
                kw = {'start_revision': last[0] + 1} if last[0] else {}
                wid = c.add_watch_prefix_callback('k-', cb, **kw)
            except Exception:  # noqa: BLE001 - the tenant is down: try again
                time.sleep(0.2)
                continue
            while not h.stop_watch and not done.wait(0.2):
                pass
            try:
                c.cancel_watch(wid)
            except Exception:  # noqa: BLE001
                pass
            if not h.stop_watch:
                c.close()
                c = eptest.etcd3_client(port)
    finally:
        c.close()


def healed(s, t, what, names=('f', 'g')):
    """Writes through each of the tenants NAMES succeed again: the time it took."""
    for name in names:
        t0 = time.monotonic()
        ok = wait_until(lambda: eptest.serves(t.ports[name], key='heal'), HEAL, 0.2)
        took = time.monotonic() - t0
        s.check(ok, '%s: writes through %s (%s) succeed again after %.1f s (at most %d)' %
                (what, name, BACKENDS[name], took, HEAL))
        t.heal.setdefault(what, {})[name] = took


def fault_worker(s, t):
    for name in ('f', 'g'):
        os.kill(t.sv.tenant(name)['pid'], signal.SIGKILL)
    healed(s, t, 'kill -9 of the workers')


def fault_grpc_proxy(s, t):
    kids = eptest.proc_children(t.sv.tenant('g')['pid'])
    s.require_check(kids, 'the etcd backend\'s worker has its grpc-proxy child')
    for pid in kids:
        os.kill(pid, signal.SIGKILL)
    healed(s, t, 'kill -9 of the grpc-proxy', ('g',))


def fault_daemon(s, t):
    """etcdproxyd killed and started again by "systemd" with its stored sockets."""
    os.kill(t.sv.pid, signal.SIGKILL)
    t.sv.proc.wait(10)
    time.sleep(0.5)  # RestartSec
    t.sd.restart(t.sv)
    healed(s, t, 'kill -9 of etcdproxyd')


def fault_cut(s, t):
    for r in t.relays.values():
        r.cut()
    time.sleep(0.5)
    for r in t.relays.values():
        r.mend()
    healed(s, t, 'every connection to the core reset')


def fault_stall(s, t):
    for r in t.relays.values():
        r.stall()
    time.sleep(2.5)
    for r in t.relays.values():
        r.mend()
    healed(s, t, 'every link stalled for 2.5 s')


def while_faulty(s, t, what, names=('f', 'g')):
    """Writes go on while the fault lasts: the time to the first that succeeds."""
    try:
        healed(s, t, what, names)
        time.sleep(2)  # the load goes on under the fault
    finally:
        for r in t.relays.values():
            r.mend()


def fault_delay(s, t):
    for r in t.relays.values():
        r.delay(0.2)
    while_faulty(s, t, 'every link delayed by 200 ms')


def fault_slow(s, t):
    for r in t.relays.values():
        r.slow(16384)
    while_faulty(s, t, 'every link read at 16 KiB/s')


def fault_blackhole(s, t):
    """Two of the three links swallow everything: the one the native tenant uses among them,
    so that it must notice (keepalive) and go to the third member."""
    order = sorted(t.relays, key=lambda n: -t.relays[n].active())
    for n in order[:2]:
        t.relays[n].blackhole()
    while_faulty(s, t, 'the links to %s and %s blackholed' % tuple(order[:2]))


def fault_move_leader(s, t):
    old = t.cl.leader()
    target = [n for n in t.cl.names if n != old][0]
    st = t.cl.status(target)
    r = eptest.etcdctl(t.cl.client[old], 'move-leader', '%x' % st['header']['member_id'])
    s.check(r.returncode == 0, 'etcdctl move-leader %s -> %s' % (old, target), r.stderr)
    healed(s, t, 'a leader change')


def fault_member_restart(s, t):
    victim = t.cl.leader() or 'm1'
    t.cl.kill(victim)
    time.sleep(1)
    healed(s, t, 'the leader %s killed' % victim)
    t.cl.start(victim, new=False)
    s.check(wait_until(lambda: t.cl.status(victim) is not None, 20), 'member %s is back' % victim)


def fault_member_stop(s, t):
    victim = t.cl.leader() or 'm2'
    t.cl.procs[victim].send_signal(signal.SIGSTOP)
    try:
        time.sleep(2)  # twice the election timeout
        healed(s, t, 'the leader %s stopped (SIGSTOP)' % victim)
    finally:
        t.cl.procs[victim].send_signal(signal.SIGCONT)


FAULTS = (fault_worker, fault_grpc_proxy, fault_cut, fault_stall, fault_delay, fault_slow,
          fault_blackhole, fault_move_leader, fault_member_restart, fault_member_stop,
          fault_daemon)


class Load:
    """Three writers, a compare-and-swap counter and a watcher through one tenant."""

    def __init__(self, name, port):
        self.name = name
        self.h = History()
        # the watch starts where the history does: from the revision before the first write
        c = eptest.etcd3_client(port)
        try:
            self.h.start_rev = c.get_response('k-').header.revision
        finally:
            c.close()
        self.threads = [threading.Thread(target=writer, args=(port, i, self.h))
                        for i in range(3)]
        self.threads += [threading.Thread(target=counter, args=(port, self.h))]
        self.watch = threading.Thread(target=watcher, args=(port, self.h))
        for th in self.threads + [self.watch]:
            th.start()

    def stop(self):
        self.h.stop = True
        for th in self.threads:
            th.join(30)

    def stop_watch(self):
        # the events of the last acknowledged writes may still be on their way
        wait_until(lambda: self.h.acked <= self.h.seen, 15, 0.2)
        self.h.stop_watch = True
        self.watch.join(30)

    def check(self, s, core):
        h, what = self.h, '%s (%s)' % (self.name, BACKENDS[self.name])
        prefix = '/%s/' % self.name
        have = {m.key.decode()[len(prefix):]: v for v, m in core.get_prefix(prefix)}
        lost = sorted(k for k in h.acked if k not in have)
        s.check(h.acked and not lost, '%s: every acknowledged put (%d) is in the core etcd' %
                (what, len(h.acked)), lost[:5])
        final = int(have.get('counter', b'0'))
        s.check(h.cas_acked <= final <= h.cas_acked + h.cas_doubt,
                '%s: the compare-and-swap counter ends at %d, within [acknowledged %d, '
                '+ in doubt %d]' % (what, final, h.cas_acked, h.cas_doubt))
        s.check(not h.order_errors, '%s: the watcher saw strictly increasing revisions (%d '
                'events, %d loud failures resumed)' % (what, len(h.revisions), h.watch_failures),
                h.order_errors[:5])
        unseen = sorted(k for k in h.acked if k not in h.seen)
        s.check(not unseen, '%s: the watcher saw every acknowledged put, across its '
                'resumptions' % what, unseen[:5])
        s.check(h.longest <= 6.0, '%s: no put outlived its 5 s deadline by more than 1 s '
                '(the longest took %.1f s)' % (what, h.longest))


BACKENDS = {'f': 'native', 'g': 'etcd'}


def body(s):
    class T:
        pass
    t = T()
    t.s = s
    t.heal = {}
    t.cl = Cluster(s)
    t.cl.start_all()
    t.relays = {n: eptest.Relay(t.cl.client[n]) for n in t.cl.names}
    for r in t.relays.values():
        s.cleanups.append(r.close)
    t.sd = eptest.FakeSystemd(s)
    t.sv = eptest.Supervisor(s, None)
    t.sv.config['core_etcd']['endpoints'] = ['http://127.0.0.1:%d' % r.port
                                             for r in t.relays.values()]
    t.sv.write_config()
    t.ports = {n: t.sv.add_tenant(n, backend=b) for n, b in BACKENDS.items()}
    t.sd.start(t.sv)
    t.sv.wait_ready(*BACKENDS)
    loads = [Load(n, t.ports[n]) for n in BACKENDS]
    try:
        time.sleep(1)
        for _ in range(ROUNDS):
            for fn in FAULTS:
                s.run(fn, s, t)
                time.sleep(0.5)
        time.sleep(1)
    finally:
        for load in loads:
            load.stop()
        for load in loads:
            load.stop_watch()
    core = eptest.etcd3_client(t.cl.client[t.cl.leader() or 'm1'])
    try:
        for load in loads:
            load.check(s, core)
    finally:
        core.close()
    for what, took in t.heal.items():
        print('# heal time of %s: %s' % (what, ', '.join('%s %.1f s' % (BACKENDS[n], x)
                                                          for n, x in took.items())), flush=True)
    s.eq(t.sv.stop(), 0, 'etcdproxyd exits 0 on SIGTERM')


if __name__ == '__main__':
    s = eptest.Suite('faults', timeout=300 + 120 * ROUNDS)
    s.require(eptest.ETCD, eptest.ETCDCTL, eptest.ETCDPROXYD, eptest.ETCDPROXYCTL, eptest.WORKER)
    s.main(body)
