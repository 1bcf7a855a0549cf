#!/usr/bin/python3
"""Listen addresses, read by one parser (lib/util.c) wherever they are used:

  - a Unix socket path where a regular file stands: the tenant does not start, its last
    error says the path is not a socket, and the file is left as it was; the standalone
    worker, which binds the socket itself, says the same;
  - a socket left behind at the path (a process killed before it could remove it) is
    replaced, and the tenant serves;
  - "[::1]:PORT" serves with both backends (the etcd backend's health check connects to
    the address through the same parser)."""

import os
import socket
import subprocess
import sys

sys.dont_write_bytecode = True  # nothing written into the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eptest  # noqa: E402
from eptest import wait_until  # noqa: E402

NOT_A_SOCKET = 'the path exists and is not a socket; remove it or choose another'


def etcdctl6(port, *args):
    return subprocess.run([eptest.ETCDCTL, '--endpoints=[::1]:%d' % port, '--dial-timeout=3s',
                           '--command-timeout=5s'] + list(args), capture_output=True,
                          text=True, timeout=15, env=dict(os.environ, ETCDCTL_API='3'),
                          stdin=subprocess.DEVNULL)


def unix_connects(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def test_unix_paths(s, sv, t):
    x = sv.wait_tenant('file', lambda x: NOT_A_SOCKET in (x['last_error'] or ''),
                       what='an error about its path')
    s.check(x['state'] != 'ready' and ('cannot listen on unix:%s: ' % t.file_path +
                                       NOT_A_SOCKET) in x['last_error'],
            'a Unix socket path over a regular file: the tenant does not start, and says why',
            x)
    with open(t.file_path) as f:
        s.eq(f.read(), 'precious', 'the file is left as it was')
    sv.wait_ready('stale')
    s.check(wait_until(lambda: unix_connects(t.stale_path), 10),
            'a stale socket at the path is replaced: the tenant serves on it')

    # the standalone worker binds the socket itself, with the same function
    r = subprocess.run([eptest.WORKER, '--standalone', '-c', sv.conf, sv.tenant_file('file')],
                       capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    s.check(r.returncode != 0 and NOT_A_SOCKET in r.stderr,
            'etcdproxy-worker --standalone says the same and exits', (r.returncode,
                                                                      r.stderr[-600:]))
    with open(t.file_path) as f:
        s.eq(f.read(), 'precious', 'and leaves the file alone too')


def test_ipv6(s, sv, t):
    sv.wait_ready('six-native', 'six-etcd')
    for name in ('six-native', 'six-etcd'):
        port = t.ports[name]
        ok = wait_until(lambda: etcdctl6(port, 'put', 'k', name).returncode == 0, 15)
        s.check(ok, '%s on [::1]:%d: etcdctl puts a key' % (name, port))
        s.eq(eptest.etcd_get(t.core.port, '/%s/k' % name), name,
             '%s: the core holds it under /%s/' % (name, name))


def body(s):
    t = type('T', (), {})()
    t.core = eptest.CoreEtcd(s).start()
    sv = eptest.Supervisor(s, t.core)
    t.file_path = os.path.join(s.tmp, 'file.sock')
    with open(t.file_path, 'w') as f:
        f.write('precious')
    t.stale_path = os.path.join(s.tmp, 'stale.sock')
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(t.stale_path)  # closed without unlinking, as by a process killed with -9
    stale.close()
    sv.add_tenant('file', listen='unix:' + t.file_path, backend='native')
    sv.add_tenant('stale', listen='unix:' + t.stale_path, backend='native')
    t.ports = {}
    for name, backend in (('six-native', 'native'), ('six-etcd', 'etcd')):
        t.ports[name] = eptest.free_port()
        sv.add_tenant(name, listen='[::1]:%d' % t.ports[name], backend=backend)
    sv.start()
    s.run(test_unix_paths, s, sv, t)
    s.run(test_ipv6, s, sv, t)
    s.eq(sv.stop(), 0, 'etcdproxyd exits 0 on SIGTERM')


if __name__ == '__main__':
    s = eptest.Suite('listen')
    s.require(eptest.ETCD, eptest.ETCDCTL, eptest.ETCDPROXYD, eptest.ETCDPROXYCTL, eptest.WORKER)
    s.main(body)
