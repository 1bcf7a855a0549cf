#!/usr/bin/python3
"""Seamless restarts of etcdproxyd through systemd's file descriptor store, with the test
playing systemd's part of the protocol (sd_notify FDSTORE=1 with the socket attached, and
$LISTEN_FDS, $LISTEN_FDNAMES and $LISTEN_PID at the next start):

  - etcdproxyd hands each native tenant's listening socket to the store, named after the
    tenant and its address;
  - killed with SIGKILL under load (clients opening new connections and writing all the
    while) and started again with the stored sockets, it refuses no connection: connections
    wait in the kept socket's backlog and are served by the new workers; every write
    acknowledged before or after is in the core etcd;
  - a tenant removed while etcdproxyd runs has its socket taken out of the store."""

import os
import signal
import socket
import sys
import threading
import time

sys.dont_write_bytecode = True  # nothing written into the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eptest  # noqa: E402
from eptest import wait_until  # noqa: E402


class Load:
    """New connections and writes through a tenant, all the time: what was refused, what was
    acknowledged."""

    def __init__(self, port):
        self.port = port
        self.refused = 0
        self.connected = 0
        self.acked = []
        self.errors = []
        self.stop = False
        self.threads = [threading.Thread(target=self._connect, daemon=True),
                        threading.Thread(target=self._write, daemon=True)]
        for th in self.threads:
            th.start()

    def _connect(self):
        while not self.stop:
            try:
                c = socket.create_connection(('127.0.0.1', self.port), timeout=10)
                c.close()
                self.connected += 1
            except ConnectionRefusedError:
                self.refused += 1
            except OSError as e:
                self.errors.append(str(e))
            time.sleep(0.02)

    def _write(self):
        n = 0
        while not self.stop:
            r = eptest.etcdctl(self.port, '--command-timeout=20s', 'put', 'w%d' % n, 'v',
                               timeout=30)
            if r.returncode == 0:
                self.acked.append('w%d' % n)
            elif 'refused' in r.stderr:
                self.refused += 1
            n += 1

    def finish(self):
        self.stop = True
        for th in self.threads:
            th.join(60)


def test_store(s, t):
    want = ['ep-a@127.0.0.1_%d' % t.ports['a'], 'ep-b@127.0.0.1_%d' % t.ports['b']]
    s.check(wait_until(lambda: t.sd.names() == want, 10), 'etcdproxyd hands its tenants\' '
            'listening sockets to the store, one per tenant', t.sd.names())


def test_crash_restart(s, t):
    load = Load(t.ports['a'])
    time.sleep(1)
    workers = [t.sv.tenant(n)['pid'] for n in ('a', 'b')]
    os.kill(t.sv.pid, signal.SIGKILL)
    t.sv.proc.wait(10)
    s.check(wait_until(lambda: not any(eptest.pid_alive(p) for p in workers), 15),
            'etcdproxyd killed with SIGKILL; its workers stop (their IPC socket closed)')
    time.sleep(1)  # systemd's RestartSec: the sockets are only in the store now
    t.sd.restart(t.sv)
    s.require_check(wait_until(lambda: t.sv.proc.poll() is None and
                               t.sv.ctl('status')[0] in (0, 4), 20),
                    'etcdproxyd started again with the stored sockets')
    t.sv.wait_ready('a', 'b', timeout=30)
    time.sleep(2)
    load.finish()
    s.check(load.refused == 0 and load.connected > 50,
            'no connection refused across the crash and restart (%d connections, %d writes '
            'acknowledged)' % (load.connected, len(load.acked)), load.errors[-3:])
    s.check('with the socket systemd kept across the restart' in t.sv.log_text(),
            'the new etcdproxyd says it took the kept sockets')
    have = set(t.core.kvs('/a/', '--prefix'))
    lost = [k for k in load.acked if '/a/' + k not in have]
    s.check(load.acked and not lost, 'every acknowledged write is in the core etcd (%d)' %
            len(load.acked), lost[:5])
    s.check(eptest.serves(t.ports['b']), 'tenant b serves as well')


def test_removed(s, t):
    t.sv.remove_tenant('b')
    s.eq(t.sv.ctl('reload')[0], 0, 'tenant b removed')
    s.check(wait_until(lambda: t.sd.names() == ['ep-a@127.0.0.1_%d' % t.ports['a']], 10),
            'its socket leaves the store (FDSTOREREMOVE)', t.sd.names())


class T:
    pass


def body(s):
    t = T()
    t.s = s
    t.core = eptest.CoreEtcd(s).start()
    t.sd = eptest.FakeSystemd(s)
    t.sv = eptest.Supervisor(s, t.core)
    t.ports = {n: t.sv.add_tenant(n, backend='native') for n in ('a', 'b')}
    t.sd.start(t.sv)
    t.sv.wait_ready('a', 'b')
    for fn in (test_store, test_crash_restart, test_removed):
        s.run(fn, s, t)
    s.eq(t.sv.stop(), 0, 'etcdproxyd exits 0 on SIGTERM')


if __name__ == '__main__':
    s = eptest.Suite('fdstore', timeout=300)
    s.require(eptest.ETCD, eptest.ETCDCTL, eptest.ETCDPROXYD, eptest.ETCDPROXYCTL, eptest.WORKER)
    s.main(body)
