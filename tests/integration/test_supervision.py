#!/usr/bin/python3
"""Supervision: crashed workers and grpc-proxy children come back, a tenant that
keeps failing ends "failed" instead of looping, `etcdproxyctl restart`, a worker
that speaks garbage or hangs, and no process outlives etcdproxyd (SIGTERM:
graceful; SIGKILL: PDEATHSIG and the closed IPC socket)."""

import os
import signal
import socket
import sys
import time

sys.dont_write_bytecode = True  # nothing written into the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eptest  # noqa: E402
from eptest import wait_until  # noqa: E402


def test_kill_worker(s, sv, ports):
    t = sv.status()
    old, old_b = t['a']['pid'], t['b']['pid']
    old_proxy = sv.grpc_proxy('a') if eptest.etcd_backend() else None
    os.kill(old, signal.SIGKILL)
    t = sv.wait_state('a', 'ready', pred=lambda t: t['pid'] not in (None, old))
    s.check(t['pid'] != old, 'kill -9 of a\'s worker: a new worker (%d -> %d)' % (old, t['pid']))
    s.eq(t['restarts'], 1, 'restarts of a is 1')
    s.check('signal 9' in (t['last_error'] or ''), 'last_error says the worker was killed by '
            'signal 9', t['last_error'])
    if old_proxy is not None:
        s.check(wait_until(lambda: not s.procs.alive(old_proxy), 5),
                'the old grpc-proxy (pid %d) died with its worker' % old_proxy)
    s.check(eptest.wait_serves(ports['a']), 'a serves again')
    b = sv.status()['b']
    s.check(b['pid'] == old_b and b['restarts'] == 0 and b['state'] == 'ready',
            'b was not disturbed', b)


def test_kill_grpc_proxy(s, sv, ports):
    t = sv.status()['a']
    worker, restarts = t['pid'], t['restarts']
    proxy = sv.grpc_proxy('a')
    os.kill(proxy, signal.SIGKILL)
    new = sv.grpc_proxy('a', exclude=(proxy,))
    s.check(new != proxy, 'kill -9 of a\'s grpc-proxy: the worker starts a new one (%d -> %d)' % (
        proxy, new))
    t = sv.wait_state('a', 'ready')
    s.eq(t['pid'], worker, 'the worker pid is unchanged')
    s.eq(t['restarts'], restarts, 'the worker restart count is unchanged')
    s.check(eptest.wait_serves(ports['a']), 'a serves again through the new grpc-proxy')
    s.check('killed by signal 9; restarting it' in sv.log_text(),
            'the worker logs the death of its grpc-proxy')


def test_ctl_restart(s, core):
    sv = eptest.Supervisor(s, core, name='restart')
    ports = {n: sv.add_tenant(n) for n in ('a', 'b')}
    sv.start()
    sv.wait_ready('a', 'b')
    t = sv.status()['a']
    old, restarts = t['pid'], t['restarts']
    old_proxy = sv.grpc_proxy('a') if eptest.etcd_backend() else None
    t_b = sv.status()['b']['pid']
    rc, out, err, data = sv.ctl('restart', 'a')
    s.check(rc == 0 and data and data.get('ok') is True, 'etcdproxyctl restart a: exit 0, ok',
            (rc, out, err))
    t = sv.wait_state('a', 'ready', pred=lambda t: t['pid'] not in (None, old))
    s.check(t['pid'] != old, 'restart gives a new worker pid (%d -> %d)' % (old, t['pid']))
    s.eq(t['restarts'], restarts + 1, 'restarts went up by one')
    if old_proxy is not None:
        s.check(not s.procs.alive(old) and not s.procs.alive(old_proxy),
                'the old worker and its grpc-proxy are gone')
    else:
        s.check(not s.procs.alive(old), 'the old worker is gone')
    s.check(eptest.wait_serves(ports['a']), 'a serves after the restart')
    s.eq(sv.status()['b']['pid'], t_b, 'b was not disturbed')
    # a client that connects and never sends its request must not hold up the exit
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    idle.connect(sv.sock)
    try:
        s.eq(sv.stop(timeout=10), 0, 'that etcdproxyd exits 0 on SIGTERM, with an idle control '
             'connection open')
    finally:
        idle.close()


def test_stop_escalation(s, core):
    sv = eptest.Supervisor(s, core, name='hung')
    sv.add_tenant('h')
    sv.start()
    worker = sv.wait_ready('h')['h']['pid']
    proxy = sv.grpc_proxy('h') if eptest.etcd_backend() else None
    os.kill(worker, signal.SIGSTOP)  # it cannot read STOP: only SIGKILL ends it
    try:
        t0 = time.monotonic()
        rc, out, err, _ = sv.ctl('rotate', 'h', timeout=40)
        s.check(rc == 1 and 'did not answer within 25 s' in err,
                'rotate relayed to a hung worker: etcdproxyd answers by itself after 25 s '
                '(%.0f s), before etcdproxyctl gives up' % (time.monotonic() - t0), (rc, err))
        rc, out, err, _ = sv.ctl('restart', 'h')
        s.check(rc == 0, 'etcdproxyctl restart h of a hung worker: exit 0', (rc, out, err))
        sv.wait_state('h', 'stopping')
        t0 = time.monotonic()
        # stop_timeout is 4s: stopping it again must not cancel the escalation
        rc = sv.stop(timeout=10)
        s.eq(rc, 0, 'SIGTERM while the hung worker is stopping: etcdproxyd exits 0 (after '
             '%.1fs)' % (time.monotonic() - t0))
        s.check('ignored SIGTERM; sending SIGKILL' in sv.log_text(), 'it escalated to SIGKILL')
    finally:
        if s.procs.alive(worker):
            os.kill(worker, signal.SIGKILL)
    s.check(wait_until(lambda: not s.procs.alive(worker) and
                       (proxy is None or not s.procs.alive(proxy)), 5),
            'the hung worker%s gone' % (' and its grpc-proxy are' if proxy else ' is'))


def test_start_timeout(s, mute):
    t = mute.wait_tenant('m', lambda t: 'sent no HELLO within 1s' in (t['last_error'] or ''),
                         timeout=15, what='a worker killed for saying no HELLO')
    s.check('supervisor.start_timeout' in t['last_error'],
            'a worker that never says HELLO is killed after supervisor.start_timeout, and '
            'last_error says so', t['last_error'])
    s.check(mute.wait_tenant('m', lambda t: t['restarts'] >= 1, timeout=15, what='a restart'),
            'and it is started again (with backoff)')
    s.eq(mute.stop(), 0, 'that etcdproxyd exits 0 on SIGTERM')


def test_stop_not_graceful(s, core):
    """A second SIGTERM: workers still draining their clients stop at once (STOP graceful
    false) instead of waiting out backends.native.drain_timeout."""
    sv = eptest.Supervisor(s, core, name='drain', backends={
        'native': {'drain_timeout': '60s'}})
    port = sv.add_tenant('d', backend='native')
    sv.start()
    sv.wait_ready('d')
    c = eptest.etcd3_client(port)
    w = eptest.Watch(c, 'held')  # an open call: a graceful stop waits for it to end
    try:
        s.check(wait_until(lambda: eptest.serves(port), 10), 'a watch is open through d')
        sv.send(signal.SIGTERM)
        sv.wait_state('d', 'stopping')
        t0 = time.monotonic()
        time.sleep(1)
        s.check(sv.proc.poll() is None, 'after SIGTERM the worker drains (the watch is open)')
        sv.send(signal.SIGTERM)
        rc = sv.proc.wait(20)
        s.eq(rc, 0, 'a second SIGTERM: etcdproxyd exits 0 without waiting out the 60 s drain '
             '(%.1f s)' % (time.monotonic() - t0))
        s.check('STOP from the supervisor (at once, not graceful)' in sv.log_text(),
                'the worker was told to stop at once')
    finally:
        c.close()
    del w


def test_protocol_error(s, garbage):
    t = garbage.wait_tenant('g', lambda t: 'signal 9' in (t['last_error'] or ''), timeout=10,
                            what='a worker killed for a protocol error')
    s.check('IPC protocol error: frame payload is not a JSON object' in t['last_error'],
            'last_error says why the worker was killed', t['last_error'])
    s.eq(garbage.stop(), 0, 'that etcdproxyd exits 0 on SIGTERM')


def test_sigterm(s, sv, ports):
    sv.observe()
    mine = 'of %s/' % sv.name
    seen = [p for p, (_, label) in s.procs.known.items() if mine in label]
    # two workers, and with the etcd backend their two grpc-proxies
    want = 4 if eptest.etcd_backend() else 2
    s.check(len(s.procs.living(seen)) >= want, 'recorded the live workers%s (%d, %d in all)' % (
        ' and grpc-proxies' if eptest.etcd_backend() else '', len(s.procs.living(seen)),
        len(seen)))
    t0 = time.monotonic()
    rc = sv.stop(signal.SIGTERM, timeout=15)
    s.eq(rc, 0, 'etcdproxyd exits 0 on SIGTERM (after %.1fs)' % (time.monotonic() - t0))
    s.check(not os.path.exists(sv.sock), 'the control socket is removed')
    left = s.procs.living(seen)
    s.check(not left, 'no worker or grpc-proxy is left after etcdproxyd exited',
            ['%d: %s' % (p, s.procs.known[p][1]) for p in left])
    for p in ports.values():
        s.check(not eptest.port_open(p), 'port %d is closed' % p)
    rc, _, err, _ = sv.ctl('status')
    s.eq(rc, 3, 'etcdproxyctl status now exits 3')


def test_worker_keeps_dying(s, crashy):
    t = crashy.wait_state('x', 'failed', timeout=15)
    s.check('gave up after 4 consecutive failures' in (t['last_error'] or '') and
            'exited with code 69' in t['last_error'],
            'a worker that keeps exiting 69 ends "failed" after max_failures', t['last_error'])
    s.eq(t['restarts'], 3, 'it was restarted 3 times (4 runs)')
    s.eq(t['pid'], None, 'a failed tenant has no pid')
    runs = crashy.log_text().count('tenant x: started worker')
    time.sleep(1.5)  # backoff is at most 1s: a loop would have spawned again by now
    t = crashy.status()['x']
    s.check(t['state'] == 'failed' and t['restarts'] == 3 and
            crashy.log_text().count('tenant x: started worker') == runs == 4,
            'it stays failed and is not started again', t)
    rc, out, err, _ = crashy.ctl('status')
    s.eq(rc, 4, 'etcdproxyctl status exits 4 with a failed tenant')
    rc, out, err, _ = crashy.ctl('restart', 'x')
    s.eq(rc, 0, 'etcdproxyctl restart x accepts a failed tenant')
    t = crashy.wait_state('x', 'failed', pred=lambda t: t['restarts'] > 3)
    s.eq(t['restarts'], 7, 'restart gave it 4 more runs, then failed again')
    s.eq(crashy.stop(), 0, 'that etcdproxyd exits 0 on SIGTERM')


def test_child_keeps_failing(s, flaky):
    # the worker itself restarts the failing grpc-proxy child with its own backoff
    t = flaky.wait_state('y', ('starting', 'unhealthy'), pred=lambda t: t['pid'])
    pid = t['pid']
    s.check(wait_until(lambda: flaky.log_text().count('exited with code 1; restarting it') >= 3,
                       8), 'the worker restarts a grpc-proxy that exits 1, with backoff')
    t = flaky.status()['y']
    s.check(t['state'] in ('starting', 'unhealthy') and t['pid'] == pid and t['restarts'] == 0,
            'the tenant is starting/unhealthy, same worker', t)
    s.check('exited with code 1' in (t['last_error'] or ''),
            'last_error of a tenant whose grpc-proxy keeps exiting 1 mentions the exit code', t)
    s.eq(flaky.stop(), 0, 'that etcdproxyd exits 0 on SIGTERM')


def test_fatal_config(s, fatal, binary):
    t = fatal.wait_state('z', 'failed', timeout=10)
    err = t['last_error'] or ''
    s.check('exited with code 78' in err and binary in err,
            '%s: worker exits 78, tenant failed, last_error names %s' % (
                'a missing backends.etcd.binary' if eptest.etcd_backend() else
                'an unknown option in ' + binary, 'the path' if eptest.etcd_backend() else
                binary), err)
    time.sleep(2)
    t = fatal.status()['z']
    s.check(t['state'] == 'failed' and t['restarts'] == 0 and t['pid'] is None,
            'a fatal configuration error is not retried (restarts 0 after 2s)', t)
    s.eq(fatal.log_text().count('tenant z: started worker'), 1, 'one worker run only')
    rc, _, _, _ = fatal.ctl('restart', 'z')
    t = fatal.wait_state('z', 'failed', pred=lambda t: t['restarts'] == 1)
    s.check(rc == 0 and t['restarts'] == 1, 'etcdproxyctl restart runs it once more', t)
    s.eq(fatal.stop(), 0, 'that etcdproxyd exits 0 on SIGTERM')


def test_sigkill_supervisor(s, core):
    sv = eptest.Supervisor(s, core, name='orphans')
    ports = {n: sv.add_tenant(n) for n in ('p', 'q')}
    sv.start()
    sv.wait_ready('p', 'q')
    procs = []
    for n in ports:
        procs.append(sv.status()[n]['pid'])
        if eptest.etcd_backend():
            procs.append(sv.grpc_proxy(n))
    t0 = time.monotonic()
    sv.stop(signal.SIGKILL, timeout=5)
    gone = wait_until(lambda: not s.procs.living(procs), 8)
    s.check(gone, 'kill -9 of etcdproxyd: its workers%s exit (%.1fs)' % (
        ' and grpc-proxies' if eptest.etcd_backend() else '',
        time.monotonic() - t0), ['%d: %s' % (p, s.procs.known[p][1]) for p in s.procs.living(procs)])
    s.check(os.path.exists(sv.sock), 'the control socket file is left behind')
    # a new etcdproxyd takes over the stale socket and the freed ports
    sv.start()
    t = sv.wait_ready('p', 'q')
    s.check(all(t[n]['pid'] not in procs for n in t), 'a new etcdproxyd starts over the stale '
            'socket and serves again')
    s.check(eptest.wait_serves(ports['p']), 'p serves')
    s.eq(sv.stop(), 0, 'it exits 0 on SIGTERM')


def body(s):
    core = eptest.CoreEtcd(s).start()

    # supervisors without a core etcd for the failure cases, started early: they run meanwhile
    crashy_worker = os.path.join(s.tmp, 'crashy-worker.sh')
    eptest.write_text(crashy_worker, '#!/bin/sh\necho "crashy worker $*" >&2\nexit 69\n', 0o755)
    crashy = eptest.Supervisor(s, core, name='crashy', worker=crashy_worker)
    crashy.add_tenant('x')
    flaky = None
    if eptest.etcd_backend():
        # a grpc-proxy child that keeps failing, and a missing etcd binary
        fail_etcd = os.path.join(s.tmp, 'fail-etcd.sh')
        eptest.write_text(fail_etcd, '#!/bin/sh\necho "failing etcd $*" >&2\nexit 1\n', 0o755)
        flaky = eptest.Supervisor(s, core, name='flaky', backends={'etcd': {'binary': fail_etcd}})
        flaky.add_tenant('y')
        missing = os.path.join(s.tmp, 'no-such-dir', 'etcd')
        fatal = eptest.Supervisor(s, core, name='fatal', backends={'etcd': {'binary': missing}})
    else:
        # the backend's own fatal configuration error: an option it does not know
        missing = 'backends.%s' % eptest.test_backend()
        fatal = eptest.Supervisor(s, core, name='fatal', backends={
            eptest.test_backend(): {'no_such_option': 1}})
    fatal.add_tenant('z')
    # a "worker" whose first frame carries a JSON array instead of an object
    garbage_worker = os.path.join(s.tmp, 'garbage-worker.py')
    eptest.write_text(garbage_worker, '#!/usr/bin/python3\nimport os, time\n'
                      'os.write(3, b"EP\\x01\\x01\\x00\\x00\\x00\\x02[]")\ntime.sleep(60)\n',
                      0o755)
    garbage = eptest.Supervisor(s, core, name='garbage', worker=garbage_worker)
    garbage.add_tenant('g')
    # a "worker" that never says HELLO
    mute_worker = os.path.join(s.tmp, 'mute-worker.sh')
    eptest.write_text(mute_worker, '#!/bin/sh\nexec sleep 600\n', 0o755)
    mute = eptest.Supervisor(s, core, name='mute', worker=mute_worker,
                             supervisor={'start_timeout': '1s'})
    mute.add_tenant('m')
    for x in (crashy, flaky, fatal, garbage, mute):
        if x is not None:
            x.start()

    sv = eptest.Supervisor(s, core)
    ports = {n: sv.add_tenant(n) for n in ('a', 'b')}
    sv.start()
    sv.wait_ready('a', 'b')
    for fn in (test_kill_worker, test_kill_grpc_proxy, test_sigterm):
        if fn is test_kill_grpc_proxy and not eptest.etcd_backend():
            continue  # the etcd backend's child process
        s.run(fn, s, sv, ports)
    s.run(test_ctl_restart, s, core)
    s.run(test_worker_keeps_dying, s, crashy)
    if flaky is not None:
        s.run(test_child_keeps_failing, s, flaky)
    s.run(test_fatal_config, s, fatal, missing)
    s.run(test_protocol_error, s, garbage)
    s.run(test_start_timeout, s, mute)
    s.run(test_stop_escalation, s, core)
    s.run(test_stop_not_graceful, s, core)
    s.run(test_sigkill_supervisor, s, core)


if __name__ == '__main__':
    s = eptest.Suite('supervision')
    s.require(eptest.ETCD, eptest.ETCDCTL, eptest.ETCDPROXYD, eptest.ETCDPROXYCTL, eptest.WORKER)
    s.main(body)
