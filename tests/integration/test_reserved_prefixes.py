#!/usr/bin/python3
"""Reserved prefixes, with both backends in one etcdproxyd:

  - tenants named registry, kubernetes.io and openshift.io (the default reserved_prefixes)
    are refused at load: state failed, no worker, no listening port, one error line with
    file:line:column that names the tenant, its prefix, the reserved prefix and the setting;
    the same line in the log and from etcdproxyd --check-config, which exits 1; the other
    tenants serve;
  - keys of the core etcd outside a tenant's prefix (/registry/secrets/..., the native
    backend's lease records under /__etcdproxy/) are out of reach of every request of
    every running tenant: Range and DeleteRange over the whole key space, Txn compares and
    nested requests, Watch with a range end, LeaseTimeToLive with keys;
  - a custom reserved_prefixes entry refuses the names it covers, and a reload that adds
    one stops the running tenant it now covers and logs why (and one that removes it
    brings the tenant back);
  - a tenant that could not listen at first and then became ready shows its last error
    with when it happened."""

import os
import re
import socket
import sys

sys.dont_write_bytecode = True  # nothing written into the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eptest  # noqa: E402
from eptest import wait_until  # noqa: E402

REFUSED = {'registry': 'native', 'kubernetes.io': 'etcd', 'openshift.io': 'native'}
SERVING = {'n': 'native', 'e': 'etcd'}
# keys of others in the core etcd, all outside /n/ and /e/
FOREIGN = {
    '/registry/secrets/kube-system/bootstrap-token-abcdef': 'token',
    '/kubernetes.io/pods/default/p': 'pod',
    '/openshift.io/users/admin': 'user',
    '/__etcdproxy/sentinel': 'record',
    '/m/x': 'a neighbour',
    '/n': 'no slash',
    '/n0': 'prefix end',
}
EVERYTHING = dict(key=b'\x00', range_end=b'\x00')


class T:
    pass


def refusal(sv, name):
    """The one-line error expected for a refused tenant: its file and the position of
    metadata.name in it (eptest writes the file with an indent of 2)."""
    return re.compile(r'^%s:5:5: metadata\.name: tenant "%s" would have the key prefix "/%s/", '
                      r'which overlaps the reserved prefix "/%s/" \(the default of '
                      r'reserved_prefixes\); no worker is started for it$' % (
                          re.escape(sv.tenant_file(name)), re.escape(name), re.escape(name),
                          re.escape(name)))


def core_keys(t):
    return dict(t.core.kvs('', '--from-key'))


def test_refused(s, t):
    sv = t.sv
    st = sv.status()
    for name, backend in REFUSED.items():
        x = st[name]
        s.check(x['state'] == 'failed' and x['pid'] is None,
                '%s (%s backend): failed, no worker' % (name, backend), x)
        s.check(refusal(sv, name).match(x['last_error'] or ''),
                '%s: last_error is one line with file:line:col naming the tenant, its prefix, '
                'the reserved prefix and the setting' % name, x['last_error'])
        s.check(not eptest.port_open(t.ports[name]), '%s: nothing listens on its port' % name)
        s.check(x['last_error'] in sv.log_text(), '%s: the same line is in the log' % name)
    rc, out, err, _ = sv.ctl('status', json_out=False)
    line = [ln for ln in out.splitlines() if ln.startswith('registry ')]
    s.check(rc == 4 and line and ' failed ' in line[0] and ' ready ' not in line[0] and
            'reserved prefix "/registry/"' in line[0],
            'etcdproxyctl status (exit 4): registry is failed, with the reason', out + err)
    for name in SERVING:
        s.eq(st[name]['state'], 'ready', '%s (%s backend) is ready beside them' % (
            name, SERVING[name]))
    for option_first in eptest.CHECK_CONFIG_ORDERS:
        r = eptest.check_config(sv.conf, option_first=option_first)
        lines = r.stderr.splitlines()
        s.check(r.returncode == 1 and all(any(refusal(sv, n).match(ln) for ln in lines)
                                          for n in REFUSED) and
                '5 tenants, 3 with errors' in r.stdout,
                'etcdproxyd --check-config exits 1 and prints the three refusals',
                (r.returncode, r.stdout, r.stderr))


def view(client):
    """Everything a tenant can see of the whole key space through the requests that take a
    range (Range from \\0 to \\0 and to \\xff\\xff, a Txn's nested Range), and whether a Txn
    compare "version is 0" over the whole range holds (only when it sees no key at all)."""
    from etcd3 import etcdrpc
    r = client.kvstub.Range(etcdrpc.RangeRequest(**EVERYTHING), timeout=5)
    seen = {kv.key for kv in r.kvs}
    r = client.kvstub.Range(etcdrpc.RangeRequest(key=b'\x00', range_end=b'\xff\xff'), timeout=5)
    seen |= {kv.key for kv in r.kvs}
    cmp = etcdrpc.Compare(result=etcdrpc.Compare.EQUAL, target=etcdrpc.Compare.VERSION,
                          version=0, **EVERYTHING)
    op = etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(**EVERYTHING))
    r = client.kvstub.Txn(etcdrpc.TxnRequest(compare=[cmp], success=[op], failure=[op]),
                          timeout=5)
    seen |= {kv.key for kv in r.responses[0].response_range.kvs}
    return seen, r.succeeded


def test_unreachable(s, t):
    from etcd3 import etcdrpc
    for k, v in FOREIGN.items():
        t.core.put(k, v)
    # a lease record of n's, and a foreign lease with a /registry/ key attached
    n_lease = t.clients['n'].lease(300)
    t.clients['n'].put('leased', 'v', lease=n_lease)
    record = '/__etcdproxy/leases/n/%016x' % n_lease.id
    core_lease = t.core_client.lease(300)
    t.core_client.put('/registry/leases/kube-node-lease/x', 'l', lease=core_lease)
    before = core_keys(t)
    s.require_check(record in before, 'the core holds n\'s lease record %s' % record)

    for name, c in t.clients.items():
        c.put('own', name)
        own = {b'own'} | ({b'leased'} if name == 'n' else set())
        seen, succeeded = view(c)
        s.eq(seen, own, '%s: Range over the whole key space, up to \\xff\\xff, and a Txn\'s '
             'nested Range see only the tenant\'s own keys' % name)
        s.check(not succeeded, '%s: a Txn compare "version 0" over the whole range fails, '
                'because of the tenant\'s own keys' % name)
        # DeleteRange over everything, alone and nested in a Txn
        r = c.kvstub.DeleteRange(etcdrpc.DeleteRangeRequest(prev_kv=True, **EVERYTHING),
                                 timeout=5)
        gone = {kv.key for kv in r.prev_kvs}
        c.put('own', name)
        txn = etcdrpc.TxnRequest(success=[etcdrpc.RequestOp(
            request_delete_range=etcdrpc.DeleteRangeRequest(key=b'\x00', range_end=b'\xff',
                                                            prev_kv=True))])
        r = c.kvstub.Txn(txn, timeout=5)
        gone_txn = {kv.key for kv in r.responses[0].response_delete_range.prev_kvs}
        s.check(gone == own and gone_txn == {b'own'}, '%s: DeleteRange over the whole key '
                'space (alone and in a Txn) deletes the tenant\'s own keys and nothing else'
                % name, (gone, gone_txn))
        seen, succeeded = view(c)
        s.check(seen == set() and succeeded, '%s: with its own keys gone, it sees no key at '
                'all, and the compare over the whole range holds' % name, (seen, succeeded))
        after = core_keys(t)
        s.check(all(after.get(k) == v for k, v in FOREIGN.items()) and record in after and
                '/registry/leases/kube-node-lease/x' in after,
                '%s: every foreign key and n\'s lease record are still in the core' % name,
                sorted(set(before) - set(after)))
    t.clients['n'].put('leased', 'v', lease=n_lease)

    # LeaseTimeToLive with keys: never a key outside the tenant
    info = t.clients['n'].get_lease_info(n_lease.id)
    s.eq(list(info.keys), [b'leased'], 'n: LeaseTimeToLive with keys of its own lease lists '
         'its key, not the lease record attached to the same lease')
    for name, c in t.clients.items():
        info = c.get_lease_info(core_lease.id)
        s.eq(list(info.keys), [], '%s: LeaseTimeToLive with keys of a lease whose key is '
             '/registry/leases/...: no key' % name)
    info = t.clients['e'].get_lease_info(n_lease.id)
    s.eq(list(info.keys), [], 'e: LeaseTimeToLive with keys of n\'s lease: neither n\'s key '
         'nor the record')

    # Watch with a range end over the whole key space sees no foreign event
    watches = {name: eptest.Watch(c, b'\x00', range_end=b'\x00') for name, c in
               t.clients.items()}
    try:
        t.core.put('/registry/secrets/kube-system/new', 'secret')
        t.core.put('/__etcdproxy/sentinel', 'changed')
        lb = t.clients['n'].lease(60)  # writes a new record under /__etcdproxy/leases/n/
        t.core_client.delete('/kubernetes.io/pods/default/p')
        for name, c in t.clients.items():
            c.put('marker', name)  # after every foreign change: it arrives last
        for name, w in watches.items():
            s.check(w.wait_key('marker'), '%s: the watch over the whole range delivers the '
                    'tenant\'s own put' % name, w.events)
            s.eq(w.keys(), ['marker'], '%s: and nothing of the foreign writes before it (a '
                 '/registry/ secret, /__etcdproxy/ records, a delete under /kubernetes.io/)'
                 % name)
        t.clients['n'].revoke_lease(lb.id)
    finally:
        for w in watches.values():
            w.cancel()
    s.check(all(eptest.etcd_get(t.core.port, k) is not None for k in
                ('/registry/secrets/kube-system/bootstrap-token-abcdef',
                 '/registry/secrets/kube-system/new')),
            'the secrets are still in the core')


def reserve(sv, extra):
    sv.config['reserved_prefixes'] = ['/registry/', '/kubernetes.io/', '/openshift.io/'] + extra
    sv.write_config()


def test_custom_and_reload(s, t):
    sv = t.sv
    port_v = sv.add_tenant('victim', backend='native')
    port_w = sv.add_tenant('victim-etcd', backend='etcd')
    rc, out, err, data = sv.ctl('reload')
    s.require_check(rc == 0 and data and sorted(data['added']) == ['victim', 'victim-etcd'],
                    'victim and victim-etcd added', (rc, out, err))
    st = sv.wait_ready('victim', 'victim-etcd')
    old = {n: st[n]['pid'] for n in st}
    s.check(eptest.wait_serves(port_v) and eptest.wait_serves(port_w), 'both serve')

    # "/victim" without a slash covers both names
    reserve(sv, ['/victim'])
    with open(sv.conf) as f:
        line = [i + 1 for i, ln in enumerate(f) if '"/victim"' in ln]
    where = '%s:%d:' % (sv.conf, line[0])
    rc, out, err, data = sv.ctl('reload')
    s.check(rc == 0 and data and {'victim', 'victim-etcd'} <= set(data['changed']),
            'a reload that reserves "/victim": both tenants changed', (rc, out, err))
    for name, port in (('victim', port_v), ('victim-etcd', port_w)):
        x = sv.wait_state(name, 'failed')
        s.check(x['pid'] is None and not s.procs.alive(old[name]),
                '%s: its worker is stopped' % name, x)
        s.check(wait_until(lambda: not eptest.port_open(port), 8),
                '%s: its port is closed' % name)
        s.check(('overlaps the reserved prefix "/victim" (reserved_prefixes in %s' % where)
                in (x['last_error'] or ''),
                '%s: last_error names the entry of reserved_prefixes and where it is' % name,
                x['last_error'])
        s.check(re.search(r'reload: tenant %s is stopped: .*reserved prefix "/victim"' %
                          re.escape(name), sv.log_text()),
                '%s: the log says why it was stopped' % name)
    st = sv.status()
    s.check(all(st[n]['state'] == 'ready' and st[n]['pid'] == t.pids[n] for n in SERVING),
            'n and e keep their workers', st)
    s.check('(reserved_prefixes in %s:' % sv.conf in (st['registry']['last_error'] or ''),
            'registry: refused by the list the operator wrote now', st['registry'])

    # taken out of the list again: the tenants come back
    reserve(sv, [])
    rc, out, err, data = sv.ctl('reload')
    s.check(rc == 0 and data and {'victim', 'victim-etcd'} <= set(data['changed']),
            'a reload without "/victim": both changed', (rc, out, err))
    sv.wait_ready('victim', 'victim-etcd')
    s.check(eptest.wait_serves(port_v) and eptest.wait_serves(port_w), 'both serve again')

    # an empty list: only etcdproxy's own prefix is reserved, and registry may run
    sv.config['reserved_prefixes'] = []
    sv.write_config()
    rc, out, err, data = sv.ctl('reload')
    s.check(rc == 0 and data and 'registry' in data['changed'],
            'reserved_prefixes []: registry is no longer refused', (rc, out, err))
    sv.wait_ready('registry')
    # back to the default (the key left out)
    del sv.config['reserved_prefixes']
    sv.write_config()
    sv.ctl('reload')
    x = sv.wait_state('registry', 'failed')
    s.check(refusal(sv, 'registry').match(x['last_error'] or ''),
            'reserved_prefixes left out again: registry is refused by the default', x)


def test_last_error_when(s, t):
    sv = t.sv
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind(('127.0.0.1', 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    try:
        sv.add_tenant('busy', port=port, backend='native')
        sv.ctl('reload')
        x = sv.wait_tenant('busy', lambda x: 'Address already in use' in (x['last_error'] or ''),
                           what='an error about its port')
        s.check(x['state'] != 'ready', 'busy: not ready while its port is taken', x)
    finally:
        blocker.close()
    x = sv.wait_state('busy', 'ready', timeout=20)
    s.check(re.match(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$', x.get('last_error_at') or '') and
            isinstance(x.get('last_error_age_s'), (int, float)),
            'busy is ready; -o json gives when its last error happened (last_error_at, '
            'last_error_age_s)', x)
    rc, out, err, _ = sv.ctl('status', json_out=False)
    line = [ln for ln in out.splitlines() if ln.startswith('busy ')]
    s.check(line and ' ready ' in line[0] and
            re.search(r'\d+s ago: cannot listen on 127\.0\.0\.1:%d' % port, line[0]),
            'etcdproxyctl status: the ready tenant\'s last error says how long ago it was', out)
    rc, out, err, _ = sv.ctl('show', 'busy', json_out=False)
    s.check(re.search(r'last error: +cannot listen .* \(at \d{4}-\d\d-\d\dT[0-9:]+Z, \d+s ago\)',
                      out), 'etcdproxyctl show: the last error with its time', out)
    st = sv.status()
    s.eq((st['n']['last_error'], st['n']['last_error_at']), (None, None),
         'a tenant that never failed has no last error and no time')


def body(s):
    t = T()
    t.core = eptest.CoreEtcd(s).start()
    t.core_client = eptest.etcd3_client(t.core.port)
    t.sv = eptest.Supervisor(s, t.core, supervisor={'max_failures': 100,
                                                    'restart_backoff_max': '300ms'})
    t.ports = {}
    for name, backend in list(REFUSED.items()) + list(SERVING.items()):
        t.ports[name] = t.sv.add_tenant(name, backend=backend)
    t.sv.start()
    st = t.sv.wait_ready(*SERVING)
    t.pids = {n: st[n]['pid'] for n in SERVING}
    t.clients = {n: eptest.etcd3_client(t.ports[n]) for n in SERVING}
    try:
        for fn in (test_refused, test_unreachable, test_custom_and_reload,
                   test_last_error_when):
            s.run(fn, s, t)
    finally:
        for c in t.clients.values():
            c.close()
        t.core_client.close()
    s.eq(t.sv.stop(), 0, 'etcdproxyd exits 0 on SIGTERM')


if __name__ == '__main__':
    s = eptest.Suite('reserved_prefixes', timeout=200)
    s.require(eptest.ETCD, eptest.ETCDCTL, eptest.ETCDPROXYD, eptest.ETCDPROXYCTL, eptest.WORKER)
    s.main(body)
