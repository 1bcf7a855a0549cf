#!/usr/bin/python3
"""A native tenant's worker restarts without refusing or failing a request.

The supervisor binds a native tenant's listening socket and passes it to each
worker, and a worker accepts clients only once it reaches the core etcd: so
a kill -9 of the worker costs the requests inside it, never a refused
connection, and a graceful restart (GOAWAY, drain) costs nothing at all.
Last, a worker whose core etcd is named by an IPv6 URL."""
import json
import os
import signal
import threading
import time

import eptest


def put_loop(port, stop, results):
    """New connection per request (etcdctl): counts failures of any kind."""
    i = 0
    while not stop.is_set():
        r = eptest.etcdctl(port, 'put', 'loop', str(i), timeout=10)
        results.append(r.returncode == 0 or r.stderr)
        i += 1


def test_kill_refuses_nothing(s, sv, port):
    pid = sv.tenant('a')['pid']
    lfd = os.readlink('/proc/%d/fd/4' % pid)
    s.check(lfd.startswith('socket:'), 'the native worker got the listening socket as fd 4')
    sv_fds = [os.readlink('/proc/%d/fd/%s' % (sv.pid, fd)) for fd in os.listdir('/proc/%d/fd' % sv.pid)]
    s.check(lfd in sv_fds, 'the supervisor holds the same listening socket')
    stop, results = threading.Event(), []
    t = threading.Thread(target=put_loop, args=(port, stop, results))
    t.start()
    time.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    sv.wait_tenant('a', lambda x: x['pid'] not in (None, pid) and x['state'] == 'ready',
                   what='a new worker')
    time.sleep(0.5)
    stop.set()
    t.join(30)
    failures = [r for r in results if r is not True]
    refused = [f for f in failures if 'refused' in str(f)]
    s.check(len(results) > 5, 'requests went on during the restart (%d)' % len(results))
    s.eq(refused[:1], [], 'no connection was refused across kill -9 of the worker')
    # the one request inside the killed worker may fail; every other one must not
    s.check(len(failures) <= 1, 'at most the request in flight at the kill failed (%d)'
            % len(failures), failures[:2])


def test_graceful_restart_loses_nothing(s, sv, port):
    client = eptest.etcd3_client(port)
    errors, count = [], [0]
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            try:
                client.put('graceful', str(count[0]))
                count[0] += 1
            except Exception as e:  # noqa: BLE001 - any failure counts
                cause = e.__cause__ or e.__context__
                errors.append('%r: %s' % (e, cause.details() if hasattr(cause, 'details')
                                          else repr(cause)))
                time.sleep(0.05)

    old = sv.tenant('a')['pid']
    t = threading.Thread(target=loop)
    t.start()
    time.sleep(0.3)
    rc, out, err, _ = sv.ctl('restart', 'a')
    s.eq(rc, 0, 'etcdproxyctl restart a')
    sv.wait_tenant('a', lambda x: x['pid'] not in (None, old) and x['state'] == 'ready',
                   what='a new worker')
    time.sleep(0.5)
    stop.set()
    t.join(30)
    s.check(count[0] > 5, 'one client connection kept sending during the restart (%d)' % count[0])
    s.eq(errors[:1], [], 'no request of a long-lived client failed across a graceful restart')
    client.close()


def test_changed_keeps_socket(s, sv, port):
    """A change that keeps the address hands the socket to the new worker."""
    before = os.readlink('/proc/%d/fd/4' % sv.tenant('a')['pid'])
    old = sv.tenant('a')['pid']
    sv.add_tenant('a', text=json.dumps({
        'apiVersion': 'etcd.xmudrii.com/v1alpha1', 'kind': 'EtcdStorage',
        'metadata': {'name': 'a'},
        'spec': {'backend': 'native', 'listen': '127.0.0.1:%d' % port, 'tls': {'enabled': False},
                 'policy': {'compaction': 'deny'}}}))
    rc, out, err, data = sv.ctl('reload')
    s.eq(data and data.get('changed'), ['a'], 'a policy change is a change')
    sv.wait_tenant('a', lambda x: x['pid'] not in (None, old) and x['state'] == 'ready',
                   what='the changed worker')
    after = os.readlink('/proc/%d/fd/4' % sv.tenant('a')['pid'])
    s.eq(after, before, 'the changed tenant serves on the very same socket')
    s.check(eptest.serves(port), 'and it serves')


def test_removed_closes_socket(s, sv, port):
    sv.remove_tenant('a')
    sv.ctl('reload')
    sv.wait_gone('a')
    s.check(eptest.wait_until(lambda: not eptest.port_open(port), 5),
            'a removed tenant\'s port refuses connections')


def test_ipv6_core(s):
    """The core etcd named by an IPv6 URL ([::1]): the worker connects and serves."""
    core = eptest.CoreEtcd(s, 'core6', ipv6=True).start()
    sv = eptest.Supervisor(s, core, name='sv6')
    sv.config['core_etcd']['endpoints'] = [core.url6]
    port = sv.add_tenant('v6', backend='native')
    sv.start()
    sv.wait_ready('v6')
    s.check(eptest.etcd_put(port, 'k6', 'over-ipv6'), 'a put through a worker whose core etcd '
            'is %s' % core.url6)
    s.eq(core.get('/v6/k6'), 'over-ipv6', 'the core etcd holds it under /v6/')
    s.eq(eptest.etcdctl(port, 'get', '--print-value-only', 'k6').stdout.strip(), 'over-ipv6',
         'and the tenant reads it back')
    s.eq(sv.stop(), 0, 'that etcdproxyd exits 0 on SIGTERM')
    core.stop()


def body(s):
    core = eptest.CoreEtcd(s).start()
    sv = eptest.Supervisor(s, core)
    port = sv.add_tenant('a', backend='native')
    sv.start()
    sv.wait_ready('a')
    s.run(test_kill_refuses_nothing, s, sv, port)
    s.run(test_graceful_restart_loses_nothing, s, sv, port)
    s.run(test_changed_keeps_socket, s, sv, port)
    s.run(test_removed_closes_socket, s, sv, port)
    s.eq(sv.stop(), 0, 'etcdproxyd exits 0 on SIGTERM')
    s.run(test_ipv6_core, s)


if __name__ == '__main__':
    s = eptest.Suite('native-restart')
    s.require(eptest.ETCD, eptest.ETCDCTL, eptest.ETCDPROXYD, eptest.ETCDPROXYCTL, eptest.WORKER)
    s.main(body)
