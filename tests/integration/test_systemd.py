#!/usr/bin/python3
"""etcdproxyd speaks sd_notify: READY, STATUS with tenant counts, RELOADING on
SIGHUP, STOPPING on SIGTERM, and WATCHDOG keep-alives when asked for."""
import os
import signal
import socket

import eptest


class Notify:
    """A $NOTIFY_SOCKET like systemd's: a datagram socket that collects every message."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.1)
        self.path = path
        self.messages = []

    def drain(self):
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except socket.timeout:
                return

    def wait(self, pred, timeout=15):
        def seen():
            self.drain()
            return any(pred(m) for m in self.messages)
        return eptest.wait_until(seen, timeout)

    def since(self, n):
        self.drain()
        return self.messages[n:]


def body(s):
    core = eptest.CoreEtcd(s).start()
    sv = eptest.Supervisor(s, core)
    sv.add_tenant('a')
    sv.add_tenant('b')
    n = Notify(os.path.join(s.tmp, 'notify.sock'))
    env = dict(os.environ, NOTIFY_SOCKET=n.path, WATCHDOG_USEC='200000')
    sv.proc = s.popen([sv.daemon, '-c', sv.conf, '-f'], log=sv.log, label='etcdproxyd',
                      env=env)

    s.check(n.wait(lambda m: m == 'READY=1'), 'READY=1 once the workers are spawned')
    s.check(n.wait(lambda m: m.startswith('STATUS=2 tenants: 2 ready')),
            'STATUS= counts both tenants ready', n.messages[-5:])
    s.check(n.wait(lambda m: m == 'WATCHDOG=1'), 'WATCHDOG=1 with $WATCHDOG_USEC set')
    mark = len(n.since(0))
    s.check(n.wait(lambda m: 'WATCHDOG=1' in n.messages[mark:], timeout=2),
            'WATCHDOG=1 repeats (every WATCHDOG_USEC/2)')

    rc, out, err, st = sv.ctl('status')
    worker = {t['name']: t['pid'] for t in st['tenants']}
    s.check(all('NOTIFY_SOCKET' not in eptest.read_text('/proc/%d/environ' % p)
                for p in worker.values()),
            'workers do not inherit NOTIFY_SOCKET (only the main process may notify)')

    mark = len(n.since(0))
    sv.send(signal.SIGHUP)
    s.check(n.wait(lambda m: 'READY=1' in n.messages[mark:] and
                   'RELOADING=1' in n.messages[mark:]),
            'SIGHUP: RELOADING=1, then READY=1')
    got = n.since(mark)
    s.check(got.index('RELOADING=1') < got.index('READY=1'), 'RELOADING=1 comes before READY=1', got)

    eptest.write_text(sv.tenant_file('b'), '{ broken')
    mark = len(n.since(0))
    sv.send(signal.SIGHUP)
    s.check(n.wait(lambda m: m.startswith('STATUS=2 tenants: 1 ready, 1 failed')),
            'STATUS= counts a failed tenant', n.since(mark))

    mark = len(n.since(0))
    s.eq(sv.stop(), 0, 'etcdproxyd exits 0 on SIGTERM')
    s.check('STOPPING=1' in n.since(mark), 'SIGTERM: STOPPING=1', n.since(mark))


if __name__ == '__main__':
    s = eptest.Suite('systemd')
    s.require(eptest.ETCD, eptest.ETCDCTL, eptest.ETCDPROXYD, eptest.ETCDPROXYCTL, eptest.WORKER)
    s.main(body)
