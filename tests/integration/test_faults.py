#!/usr/bin/python3
"""Faults under load, with a history checker: a three-member core etcd on 127.0.0.1, a native
tenant that reaches each member through a relay the test controls, writers and a watcher
through the tenant, and one fault after another:

  - kill -9 of the tenant's worker;
  - every connection to the core cut (relays reset), then a stall of every link longer than
    the election timeout (bytes held, connections kept);
  - a leader change forced with `etcdctl move-leader` against the core;
  - a member killed and started again; a member stopped (SIGSTOP) past the election timeout.

Invariants, checked after the faults:
  - every acknowledged put is in the core etcd;
  - a compare-and-swap counter ends within [acknowledged, acknowledged + in-doubt];
  - the watcher saw strictly increasing revisions, and every acknowledged put, or its
    stream failed loudly and it resumed from the last revision it had;
  - no put outlives its 5 s deadline by more than 1 s;
  - after each fault writes succeed again within HEAL seconds (the time it took is reported).

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


def healed(s, t, what):
    """Writes succeed again: the time it took."""
    t0 = time.monotonic()
    ok = wait_until(lambda: eptest.serves(t.port, key='heal'), HEAL, 0.2)
    took = time.monotonic() - t0
    s.check(ok, '%s: writes succeed again after %.1f s (at most %d)' % (what, took, HEAL))
    t.heal[what] = took


def fault_worker(s, t):
    pid = t.sv.tenant('f')['pid']
    os.kill(pid, signal.SIGKILL)
    healed(s, t, 'kill -9 of the worker')


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
    t.sv = eptest.Supervisor(s, None)
    t.sv.config['core_etcd']['endpoints'] = ['http://127.0.0.1:%d' % r.port
                                             for r in t.relays.values()]
    t.sv.write_config()
    t.port = t.sv.add_tenant('f', backend='native')
    t.sv.start()
    t.sv.wait_ready('f')
    h = History()
    # the watch starts where the history does: from the revision before the first write
    c = eptest.etcd3_client(t.port)
    try:
        h.start_rev = c.get_response('k-').header.revision
    finally:
        c.close()
    threads = [threading.Thread(target=writer, args=(t.port, i, h)) for i in range(3)]
    threads += [threading.Thread(target=counter, args=(t.port, h))]
    watch = threading.Thread(target=watcher, args=(t.port, h))
    for th in threads + [watch]:
        th.start()
    try:
        time.sleep(1)
        for _ in range(ROUNDS):
            for fn in (fault_worker, fault_cut, fault_stall, fault_move_leader,
                       fault_member_restart, fault_member_stop):
                s.run(fn, s, t)
                time.sleep(0.5)
        time.sleep(1)
    finally:
        h.stop = True
        for th in threads:
            th.join(30)
        # the events of the last acknowledged writes may still be on their way
        wait_until(lambda: h.acked <= h.seen, 15, 0.2)
        h.stop_watch = True
        watch.join(30)
    core = eptest.etcd3_client(t.cl.client[t.cl.leader() or 'm1'])
    try:
        have = {m.key.decode()[len('/f/'):]: v for v, m in core.get_prefix('/f/')}
    finally:
        core.close()
    lost = sorted(k for k in h.acked if k not in have)
    s.check(h.acked and not lost, 'every acknowledged put (%d) is in the core etcd' %
            len(h.acked), lost[:5])
    final = int(have.get('counter', b'0'))
    s.check(h.cas_acked <= final <= h.cas_acked + h.cas_doubt,
            'the compare-and-swap counter ends at %d, within [acknowledged %d, + in doubt %d]'
            % (final, h.cas_acked, h.cas_doubt))
    s.check(not h.order_errors, 'the watcher saw strictly increasing revisions (%d events, '
            '%d loud failures resumed)' % (len(h.revisions), h.watch_failures),
            h.order_errors[:5])
    unseen = sorted(k for k in h.acked if k not in h.seen)
    s.check(not unseen, 'the watcher saw every acknowledged put, across its resumptions',
            unseen[:5])
    s.check(h.longest <= 6.0, 'no put outlived its 5 s deadline by more than 1 s (the longest '
            'took %.1f s)' % h.longest)
    print('# heal times: ' + ', '.join('%s %.1f s' % kv for kv in t.heal.items()), flush=True)
    s.eq(t.sv.stop(), 0, 'etcdproxyd exits 0 on SIGTERM')


if __name__ == '__main__':
    s = eptest.Suite('faults', timeout=300 + 120 * ROUNDS)
    s.require(eptest.ETCD, eptest.ETCDCTL, eptest.ETCDPROXYD, eptest.ETCDPROXYCTL, eptest.WORKER)
    s.main(body)
