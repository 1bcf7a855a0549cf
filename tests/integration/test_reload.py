#!/usr/bin/python3
"""Reload (etcdproxyctl reload and SIGHUP): added, removed, changed and unchanged
tenants; an unchanged tenant keeps its worker and its open watches; broken
tenant files fail alone; a broken global file changes nothing; a reload that
comes while an earlier one still waits for a worker to exit."""

import os
import signal
import sys

sys.dont_write_bytecode = True  # nothing written into the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eptest  # noqa: E402
from eptest import wait_until  # noqa: E402


class State:
    pass


def pids(sv, *names):
    t = sv.status()
    return {n: t[n]['pid'] if n in t else None for n in names}


def test_add_remove_keep(s, sv, st):
    t = sv.status()
    old_a, old_b = t['a']['pid'], t['b']['pid']
    # the etcd backend's grpc-proxy children (the native backend has none)
    proxy_a, proxy_b = (sv.grpc_proxy('a'), sv.grpc_proxy('b')) if eptest.etcd_backend() else \
        (None, None)
    # a watch through b that must survive the reload
    st.client_b = eptest.etcd3_client(st.ports['b'])
    st.watch_b = eptest.Watch(st.client_b, 'w/', range_end='w0')
    st.client_b.put('w/before', '1')
    s.require_check(st.watch_b.wait_key('w/before'), 'a watch through b sees w/before')

    sv.remove_tenant('a')
    st.ports['c'] = sv.add_tenant('c')
    rc, out, err, data = sv.ctl('reload')
    s.require_check(rc == 0 and data and data.get('ok') is True, 'etcdproxyctl reload: exit 0',
                    (rc, out, err))
    s.eq((data['added'], data['removed'], data['changed'], data['unchanged']),
         (['c'], ['a'], [], ['b']), 'reload summary: c added, a removed, b unchanged')
    t = sv.wait_ready('c')
    s.check(eptest.wait_serves(st.ports['c']), 'c serves')
    s.eq(eptest.etcd_get(st.core.port, '/c/probe') is not None, True, 'c writes under /c/')
    sv.wait_gone('a')
    s.check(wait_until(lambda: not s.procs.alive(old_a) and
                       (proxy_a is None or not s.procs.alive(proxy_a)), 8),
            'a\'s worker%s gone' % (' and grpc-proxy are' if proxy_a else ' is'))
    s.check(wait_until(lambda: not eptest.port_open(st.ports['a']), 8),
            'a\'s port no longer accepts connections')
    b = sv.status()['b']
    s.check(b['pid'] == old_b and b['state'] == 'ready' and b['restarts'] == 0,
            'b keeps its worker (pid %d)' % old_b, b)
    if proxy_b is not None:
        s.check(s.procs.alive(proxy_b), 'b keeps its grpc-proxy (pid %d)' % proxy_b)
    st.client_b.put('w/after', '2')
    s.check(st.watch_b.wait_key('w/after'), 'the watch opened through b before the reload '
            'delivers a put made after it', st.watch_b.events)
    s.check(not st.watch_b.errors, 'the watch saw no error', st.watch_b.errors)


def test_change_listen(s, sv, st):
    t = sv.status()
    old_c, old_b = t['c']['pid'], t['b']['pid']
    old_port = st.ports['c']
    st.ports['c'] = sv.add_tenant('c')
    rc, out, err, data = sv.ctl('reload')
    s.check(rc == 0 and data and data['changed'] == ['c'] and data['unchanged'] == ['b'] and
            not data['added'] and not data['removed'], 'reload after a listen change: c changed',
            (rc, out, err))
    t = sv.wait_state('c', 'ready', pred=lambda t: t['pid'] not in (None, old_c))
    s.eq(t['listen'], '127.0.0.1:%d' % st.ports['c'], 'c listens on its new port')
    s.check(eptest.wait_serves(st.ports['c']), 'c serves on the new port')
    s.check(wait_until(lambda: not eptest.port_open(old_port), 8), 'c\'s old port is closed')
    s.check(not s.procs.alive(old_c), 'c\'s old worker is gone')
    s.eq(sv.status()['b']['pid'], old_b, 'b keeps its worker')


def test_broken_tenant_file(s, sv, st):
    before = pids(sv, 'b', 'c')
    # line 3, column 13: a value is missing
    sv.add_tenant('bad', text='{\n  "apiVersion": "etcd.xmudrii.com/v1alpha1",\n  "kind": ,\n}\n')
    rc, out, err, data = sv.ctl('reload')
    s.check(rc == 0 and data and data['added'] == ['bad'], 'reload with a broken new tenant file: '
            'exit 0, bad added', (rc, out, err))
    t = sv.wait_state('bad', 'failed', timeout=5)
    where = sv.tenant_file('bad') + ':3:'
    s.check(where in (t['last_error'] or ''), 'the broken tenant is failed and last_error says '
            'file:line:col', t['last_error'])
    s.eq(t['pid'], None, 'no worker runs for it')
    s.eq(pids(sv, 'b', 'c'), before, 'b and c keep their workers')
    s.check(eptest.serves(st.ports['b']) and eptest.serves(st.ports['c']), 'b and c still serve')
    rc, _, _, _ = sv.ctl('status')
    s.eq(rc, 4, 'status exits 4 while a tenant is failed')

    for first in eptest.CHECK_CONFIG_ORDERS:
        how = '--check-config -c CONF' if first else '-c CONF --check-config'
        r = eptest.check_config(sv.conf, option_first=first)
        s.check(r.returncode == 1 and where in r.stderr, 'etcdproxyd %s: exit 1, names the bad '
                'file with line and column' % how, r.stdout + r.stderr)
        s.check(r.returncode == 1 and 'b.json' not in r.stderr and 'c.json' not in r.stderr,
                '%s names only the bad file' % how, r.stderr)

    sv.remove_tenant('bad')
    rc, out, err, data = sv.ctl('reload')
    s.check(rc == 0 and data and data['removed'] == ['bad'], 'removing the broken file: bad removed',
            (rc, out, err))
    sv.wait_gone('bad')
    for first in eptest.CHECK_CONFIG_ORDERS:
        r = eptest.check_config(sv.conf, option_first=first)
        s.check(r.returncode == 0 and 'OK' in r.stdout, '%s: exit 0 once it is gone' % (
            '--check-config -c CONF' if first else '-c CONF --check-config'), r.stdout + r.stderr)


def test_broken_global_file(s, sv, st):
    good = eptest.read_text(sv.conf)
    before = pids(sv, 'b', 'c')
    st.ports['d'] = sv.add_tenant('d')
    # line 3: a comma is missing
    sv.write_config('{\n  "storages_dir": "%s",\n  "supervisor": {"max_failures": 4 '
                    '"stop_timeout": "4s"}\n}\n' % sv.storages)
    rc, out, err, data = sv.ctl('reload')
    s.eq(rc, 1, 'etcdproxyctl reload with a broken global file exits 1')
    s.check(sv.conf + ':3:' in err, 'and says file:line:col on stderr', err)
    s.check(data is not None and data.get('ok') is False, '-o json prints {"ok": false, ...}', out)
    t = sv.status()
    s.check('d' not in t, 'nothing was added', list(t))
    s.eq(pids(sv, 'b', 'c'), before, 'nothing was restarted')
    rc, out, err, data = sv.ctl('status')
    s.check(sv.conf + ':3:' in (data['daemon'].get('last_reload_error') or ''),
            'status shows last_reload_error', data['daemon'])

    # SIGHUP: the same refusal
    mark = len(sv.log_text())
    sv.send(signal.SIGHUP)
    s.check(wait_until(lambda: 'reload refused' in sv.log_text()[mark:], 5),
            'SIGHUP with a broken global file: reload refused (logged)')
    s.check('d' not in sv.status() and pids(sv, 'b', 'c') == before,
            'SIGHUP with a broken global file changes nothing')

    # SIGHUP with a good file: d comes up, b and c keep running
    sv.write_config(good)
    sv.send(signal.SIGHUP)
    s.check(wait_until(lambda: 'd' in sv.status(), 5), 'SIGHUP with the fixed file adds d')
    sv.wait_ready('d')
    s.check(eptest.wait_serves(st.ports['d']), 'd serves')
    s.eq(pids(sv, 'b', 'c'), before, 'b and c kept their workers through both SIGHUPs')
    rc, out, err, data = sv.ctl('status')
    s.check(rc == 0 and 'last_reload_error' not in data['daemon'],
            'status exits 0 and the reload error is cleared', data['daemon'])
    st.client_b.put('w/end', '3')
    s.check(st.watch_b.wait_key('w/end'), 'the watch through b still works', st.watch_b.events)


def test_remove_pending_change(s, sv, st):
    """A tenant removed while its change waits for the old worker stays removed."""
    t = sv.status()
    old_d, others = t['d']['pid'], pids(sv, 'b', 'c')
    proxy_d = sv.grpc_proxy('d') if eptest.etcd_backend() else None
    old_port = st.ports['d']
    os.kill(old_d, signal.SIGSTOP)  # holds d in "stopping" across both reloads
    try:
        new_port = sv.add_tenant('d')
        rc, out, err, data = sv.ctl('reload')
        s.check(rc == 0 and data and data['changed'] == ['d'], 'd changed (its worker is '
                'held stopped)', (rc, out, err))
        sv.remove_tenant('d')
        rc, out, err, data = sv.ctl('reload')
        s.check(rc == 0 and data and data['removed'] == ['d'], 'then d removed before the old '
                'worker exited', (rc, out, err))
    finally:
        os.kill(old_d, signal.SIGCONT)
    sv.wait_gone('d')
    s.check(wait_until(lambda: not s.procs.alive(old_d) and
                       (proxy_d is None or not s.procs.alive(proxy_d)), 8),
            'd\'s old worker%s gone' % (' and grpc-proxy are' if proxy_d else ' is'))
    s.check('d' not in sv.status() and 'tenant d: started worker' not in
            sv.log_text()[sv.log_text().rindex('tenant d removed'):],
            'the pending change did not bring d back', sv.status().get('d'))
    s.check(not eptest.port_open(old_port) and not eptest.port_open(new_port),
            'neither of d\'s ports accepts connections')
    s.eq(pids(sv, 'b', 'c'), others, 'b and c keep their workers')


def test_readd_while_stopping(s, sv, st):
    """A tenant added back while its removed worker still stops replaces it, once."""
    t = sv.status()
    old_c, old_b = t['c']['pid'], t['b']['pid']
    os.kill(old_c, signal.SIGSTOP)
    try:
        sv.remove_tenant('c')
        rc, out, err, data = sv.ctl('reload')
        s.check(rc == 0 and data and data['removed'] == ['c'], 'c removed (its worker is held '
                'stopped)', (rc, out, err))
        st.ports['c'] = sv.add_tenant('c')
        rc, out, err, data = sv.ctl('reload')
        s.check(rc == 0 and data and data['added'] == ['c'], 'c added back before the old '
                'worker exited', (rc, out, err))
        rc, out, err, data = sv.ctl('status')
        listed = [x for x in data['tenants'] if x['name'] == 'c']
        s.check(len(listed) == 1 and listed[0]['pid'] == old_c,
                'one tenant c, the old worker, until it has exited', listed)
    finally:
        os.kill(old_c, signal.SIGCONT)
    t = sv.wait_state('c', 'ready', pred=lambda t: t['pid'] not in (None, old_c))
    s.check(eptest.wait_serves(st.ports['c']), 'the new c serves on its port')
    rc, out, err, data = sv.ctl('status')
    s.eq(len([x for x in data['tenants'] if x['name'] == 'c']), 1, 'still one tenant c')
    s.eq(sv.status()['b']['pid'], old_b, 'b keeps its worker')


def body(s):
    st = State()
    st.core = eptest.CoreEtcd(s).start()
    sv = eptest.Supervisor(s, st.core)
    st.ports = {n: sv.add_tenant(n) for n in ('a', 'b')}
    sv.start()
    sv.wait_ready('a', 'b')
    st.client_b = st.watch_b = None
    try:
        for fn in (test_add_remove_keep, test_change_listen, test_broken_tenant_file,
                   test_broken_global_file, test_remove_pending_change,
                   test_readd_while_stopping):
            s.run(fn, s, sv, st)
    finally:
        if st.watch_b:
            st.watch_b.cancel()
        if st.client_b:
            st.client_b.close()
    s.eq(sv.stop(), 0, 'etcdproxyd exits 0 on SIGTERM')


if __name__ == '__main__':
    s = eptest.Suite('reload')
    s.require(eptest.ETCD, eptest.ETCDCTL, eptest.ETCDPROXYD, eptest.ETCDPROXYCTL, eptest.WORKER)
    s.main(body)
