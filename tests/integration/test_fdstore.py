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

import array
import os
import signal
import socket
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True  # nothing written into the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eptest  # noqa: E402
from eptest import wait_until  # noqa: E402


class FakeSystemd:
    """The notify socket: READY=1, FDSTORE=1 (keeping the fds) and FDSTOREREMOVE=1."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.store = {}  # name -> fd
        self.messages = []
        self.lock = threading.Lock()
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()

    def _run(self):
        while True:
            try:
                msg, anc, _, _ = self.sock.recvmsg(8192, socket.CMSG_SPACE(4 * 8))
            except OSError:
                return
            fds = array.array('i')
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
            fields = dict(x.split('=', 1) for x in msg.decode().split('\n') if '=' in x)
            with self.lock:
                self.messages.append(fields)
                name = fields.get('FDNAME', 'stored')
                if fields.get('FDSTORE') == '1' and fds:
                    old = self.store.pop(name, None)
                    self.store[name] = fds[0]
                    if old is not None and old != fds[0]:
                        os.close(old)
                    for extra in fds[1:]:
                        os.close(extra)
                elif fields.get('FDSTOREREMOVE') == '1':
                    old = self.store.pop(name, None)
                    if old is not None:
                        os.close(old)
                else:
                    for fd in fds:
                        os.close(fd)

    def names(self):
        with self.lock:
            return sorted(self.store)

    def close(self):
        self.sock.close()
        for fd in self.store.values():
            os.close(fd)
        self.store = {}


WRAPPER = '''#!/usr/bin/python3
import fcntl, os, sys
# systemd's side of a start with a file descriptor store: the fds at 3, 4, ... in order
fds = [int(x) for x in os.environ.pop('EP_TEST_FDS').split(',')]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]  # out of the way of 3, 4, ...
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
    os.set_inheritable(3 + i, True)
for fd in high + [fd for fd in fds if fd >= 3 + len(fds)]:
    try:
        os.close(fd)
    except OSError:
        pass
os.environ['LISTEN_FDS'] = str(len(fds))
os.environ['LISTEN_PID'] = str(os.getpid())
os.execv(sys.argv[1], sys.argv[1:])
'''


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
    names = t.sd.names()
    fds = [t.sd.store[n] for n in names]
    t.sv.proc = t.s.popen([t.wrapper, eptest.ETCDPROXYD, '-c', t.sv.conf, '-f'], log=t.sv.log,
                          label='etcdproxyd (restarted)', pass_fds=fds,
                          env=dict(os.environ, EP_TEST_FDS=','.join(map(str, fds)),
                                   LISTEN_FDNAMES=':'.join(names),
                                   NOTIFY_SOCKET=t.sd.path))
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
    t.sd = FakeSystemd(os.path.join(s.tmp, 'notify.sock'))
    s.cleanups.append(t.sd.close)
    t.wrapper = os.path.join(s.tmp, 'systemd-start.py')
    eptest.write_text(t.wrapper, WRAPPER, 0o755)
    t.sv = eptest.Supervisor(s, t.core)
    t.ports = {n: t.sv.add_tenant(n, backend='native') for n in ('a', 'b')}
    os.environ['NOTIFY_SOCKET'] = t.sd.path
    try:
        t.sv.start()
    finally:
        del os.environ['NOTIFY_SOCKET']
    t.sv.wait_ready('a', 'b')
    for fn in (test_store, test_crash_restart, test_removed):
        s.run(fn, s, t)
    s.eq(t.sv.stop(), 0, 'etcdproxyd exits 0 on SIGTERM')


if __name__ == '__main__':
    s = eptest.Suite('fdstore', timeout=300)
    s.require(eptest.ETCD, eptest.ETCDCTL, eptest.ETCDPROXYD, eptest.ETCDPROXYCTL, eptest.WORKER)
    s.main(body)
