#!/usr/bin/python3
"""A tenant's data from birth to death with etcdproxyctl, against real etcds:

  - import --from-etcd: a standalone etcd (a second real etcd) holding 10,000 keys under a
    prefix, some larger than 100 KiB, one attached to a lease, lands them all under the
    tenant's prefix and nothing else, read at one revision, in batches under the core's
    request limit; the lease comes along, owned by the tenant (the native backend answers its
    TimeToLive); it says that revisions change and the API server must relist;
  - a tenant that holds keys is refused unless --force;
  - export then import --from-file reproduces every key and value exactly, into another
    tenant, and the lease's TTL; the export streams: exporting 60 MB of values keeps
    etcdproxyctl under 30 MB of memory;
  - a file cut short, or of another format version, is refused with the line;
  - purge refuses a running tenant, a reserved name, and (without a terminal) anything
    without --yes; it deletes the tenant's keys, revokes its leases and removes their records,
    and touches nothing outside its prefix (neighbouring tenants "a" and "a-b");
  - spec.deletionPolicy Purge: a removed tenant is purged after supervisor.purge_delay, unless
    it comes back first; the pending purge survives a restart of etcdproxyd; Retain (the
    default) keeps the keys."""

import json
import os
import subprocess
import sys

sys.dont_write_bytecode = True  # nothing written into the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eptest  # noqa: E402
from eptest import wait_until  # noqa: E402


def ctl(t, *args, stdin=subprocess.DEVNULL, timeout=300):
    r = subprocess.run([eptest.ETCDPROXYCTL, '-c', t.sv.conf] + list(args), capture_output=True,
                       text=True, timeout=timeout, stdin=stdin)
    return r


def core_prefix(t, prefix):
    """{key: value bytes} under prefix in the core etcd."""
    c = eptest.etcd3_client(t.core.port)
    try:
        return {m.key.decode(): v for v, m in c.get_prefix(prefix)}
    finally:
        c.close()


def fill_source(t):
    c = eptest.etcd3_client(t.src.port)
    try:
        for start in range(0, 10000, 125):
            c.transaction(compare=[], success=[
                c.transactions.put('/app/k%05d' % i, 'value-%d' % i)
                for i in range(start, start + 125)], failure=[])
        for i in range(5):
            c.put('/app/big%d' % i, bytes([65 + i]) * (150 * 1024))
        t.src_lease = c.lease(300)
        c.put('/app/leased', 'with a lease', lease=t.src_lease)
        c.put('/other/outside', 'not under the prefix')
        c.put('/apple', 'a neighbour of the prefix')
    finally:
        c.close()


def test_import_etcd(s, t):
    fill_source(t)
    r = ctl(t, 'import', 'imp', '--from-etcd', t.src.url, '--prefix', '/app/')
    s.check(r.returncode == 0, 'import --from-etcd of 10,006 keys', r.stderr)
    s.check('imported 10006 keys' in r.stdout and '1 leases' in r.stdout,
            'it reports the count, the bytes and the lease', r.stdout)
    s.check('relist' in r.stdout or 'lists everything again' in r.stdout,
            'and says that revisions change and the API server must start fresh', r.stdout)
    keys = core_prefix(t, '/imp/')
    s.eq(len(keys), 10006, 'the core etcd holds all 10,006 keys under /imp/')
    c = eptest.etcd3_client(t.ports['imp'])
    src = eptest.etcd3_client(t.src.port)
    try:
        mine = {m.key.decode(): v for v, m in c.get_all()}
        theirs = {m.key.decode()[len('/app/'):]: v for v, m in src.get_prefix('/app/')}
    finally:
        c.close()
        src.close()
    s.check(len(mine) == 10006 and mine == theirs, 'read back through the tenant, every key '
            'and value is the source\'s, byte for byte (%d keys)' % len(mine))
    s.check(all(mine.get('big%d' % i) == bytes([65 + i]) * (150 * 1024) for i in range(5)),
            'values of 150 KiB included')
    s.check('/imp/outside' not in keys and not core_prefix(t, '/other/') and
            '/imp/apple' not in keys, 'keys outside --prefix stay where they are')
    c = eptest.etcd3_client(t.ports['imp'])
    try:
        v, meta = c.get('leased')
        s.check(v == b'with a lease' and meta.lease_id != 0, 'the leased key has a lease')
        ttl = c.get_lease_info(meta.lease_id)
        s.check(0 < ttl.TTL <= 300, 'which the tenant owns: TimeToLive through it says %d s '
                'remain' % ttl.TTL)
    finally:
        c.close()
    s.check(len(core_prefix(t, '/__etcdproxy/leases/imp/')) == 1,
            'the lease is recorded as the tenant\'s')


def test_import_refuses_nonempty(s, t):
    r = ctl(t, 'import', 'imp', '--from-etcd', t.src.url, '--prefix', '/app/')
    s.check(r.returncode == 1 and 'already holds 10006 keys' in r.stderr and '--force'
            in r.stderr, 'a tenant with keys is refused, naming --force', r.stderr)
    r = ctl(t, 'import', 'imp', '--from-etcd', t.src.url, '--prefix', '/app/', '--force')
    s.check(r.returncode == 0 and len(core_prefix(t, '/imp/')) == 10006,
            'with --force it writes over the keys of the same name', r.stderr)


def test_roundtrip(s, t):
    path = os.path.join(s.tmp, 'imp.export')
    r = ctl(t, 'export', 'imp', '--out', path)
    s.check(r.returncode == 0 and 'exported 10006 keys' in r.stderr, 'export into a file',
            r.stderr)
    with open(path) as f:
        lines = f.read().splitlines()
    head, end = json.loads(lines[0]), json.loads(lines[-1])
    s.check(head.get('format') == 'etcdproxy-export' and head.get('version') == 1 and
            head.get('tenant') == 'imp' and head.get('revision', 0) > 0,
            'the file starts with its header: format, version, tenant, revision', lines[0])
    s.check(end == {'end': True, 'keys': 10006, 'bytes': end.get('bytes')} and
            len(lines) == 10008, 'and ends with its end record', lines[-1])
    leased = [json.loads(x) for x in lines if '"lease"' in x]
    s.check(len(leased) == 1 and leased[0].get('ttl', 0) > 0,
            'the leased key notes its lease and remaining TTL', leased)
    r = ctl(t, 'import', 'copy', '--from-file', path)
    s.check(r.returncode == 0 and 'imported 10006 keys' in r.stdout, 'import --from-file',
            r.stderr)
    a, b = core_prefix(t, '/imp/'), core_prefix(t, '/copy/')
    s.check(len(a) == len(b) == 10006 and
            all(b.get('/copy/' + k[5:]) == v for k, v in a.items()),
            'the round trip reproduces every key and value exactly')
    c = eptest.etcd3_client(t.core.port)
    try:
        _, meta = c.get('/copy/leased')
        s.check(meta.lease_id != 0 and c.get_lease_info(meta.lease_id).TTL > 0,
                'and the lease, with its TTL')
    finally:
        c.close()
    r = subprocess.run([eptest.ETCDPROXYCTL, '-c', t.sv.conf, 'export', 'copy'],
                       capture_output=True, timeout=300)
    out = r.stdout.decode().splitlines()
    s.check(r.returncode == 0 and len(out) == 10008, 'export to standard output streams the '
            'same lines', r.stderr[-300:])


def test_bad_files(s, t):
    path = os.path.join(s.tmp, 'imp.export')
    with open(path) as f:
        lines = f.read().splitlines()
    cut = os.path.join(s.tmp, 'cut.export')
    with open(cut, 'w') as f:
        f.write('\n'.join(lines[:500]) + '\n')
    r = ctl(t, 'import', 'cut', '--from-file', cut)
    s.check(r.returncode == 1 and 'cut short' in r.stderr, 'a file cut short is refused', r.stderr)
    v2 = os.path.join(s.tmp, 'v2.export')
    with open(v2, 'w') as f:
        f.write(json.dumps(dict(json.loads(lines[0]), version=2)) + '\n' + lines[-1] + '\n')
    r = ctl(t, 'import', 'v2', '--from-file', v2)
    s.check(r.returncode == 1 and ':1: export format version 2' in r.stderr,
            'a file of another format version is refused at line 1', r.stderr)
    bad = os.path.join(s.tmp, 'bad.export')
    with open(bad, 'w') as f:
        f.write(lines[0] + '\n{"key": 1}\n')
    r = ctl(t, 'import', 'bad', '--from-file', bad)
    s.check(r.returncode == 1 and 'bad.export:2:' in r.stderr, 'a bad record names its line',
            r.stderr)
    r = ctl(t, 'import', 'x', '--from-file', bad, '--from-etcd', t.src.url)
    s.eq(r.returncode, 2, 'import with two sources is a usage error')


def test_flat_memory(s, t):
    """EP_EXPORT_MB=1024 makes it the 1 GiB export of etcdproxyctl(8)'s claim (a minute or two
    of writing; etcd then needs ETCD_QUOTA_BACKEND_BYTES above its 2 GiB default)."""
    mb = int(os.environ.get('EP_EXPORT_MB', '60'))
    bound = 64 if mb >= 512 else 30
    c = eptest.etcd3_client(t.core.port)
    try:
        for i in range(mb * 10):
            c.put('/big/v%05d' % i, os.urandom(100 * 1024))
        # then 40 of 1 MiB: the pages sized for the small ones would hold 80 MiB of these
        for i in range(40):
            c.put('/big/w%05d' % i, os.urandom(1 << 20))
    finally:
        c.close()
    out = os.path.join(s.tmp, 'big.export')
    probe = ('import resource, subprocess, sys\n'
             'r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, '
             'stderr=subprocess.PIPE)\n'
             'print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n')
    r = subprocess.run(['/usr/bin/python3', '-c', probe, eptest.ETCDPROXYCTL, '-c', t.sv.conf,
                        'export', 'big', '--out', out], capture_output=True, text=True,
                       timeout=300)
    rc, kib = (int(x) for x in r.stdout.split())
    s.eq(rc, 0, 'export of %d MB of values of 100 KiB, then 40 MB of 1 MiB' % mb)
    with open(out) as f:
        lines = [json.loads(line) for line in f]
    os.unlink(out)
    s.eq((len(lines), lines[-1].get('keys')), (mb * 10 + 42, mb * 10 + 40),
         'every key is in the file')
    # ASan keeps freed memory in quarantine: the bound is checked by the normal build
    if not os.environ.get('EP_SANITIZED'):
        s.check(kib < bound * 1024, 'exporting %d MB of values, etcdproxyctl peaks at %.1f MB, '
                'under %d MB (pages, not the whole tenant)' % (mb + 40, kib / 1024.0, bound),
                r.stderr)


def test_purge(s, t):
    for name in ('a', 'a-b'):
        c = eptest.etcd3_client(t.ports[name])
        try:
            for i in range(20):
                c.put('k%d' % i, name)
            lease = c.lease(600)
            c.put('leased', 'x', lease=lease)
            if name == 'a':
                t.a_lease = lease.id
        finally:
            c.close()
    t.core.put('/x/y', 'someone else')
    r = ctl(t, 'purge', 'a', '--yes')
    s.check(r.returncode == 1 and 'tenant a is configured here (state ready)' in r.stderr,
            'purge refuses a running tenant', r.stderr)
    # a tenant whose file has an error is still the operator's: a typo must not cost its data
    t.sv.add_tenant('typo', text='{"apiVersion": "etcd.xmudrii.com/v1alpha1", "kind": '
                    '"EtcdStorage", "metadata": {"name": "typo"}, "spec": {"listen": 1}}')
    s.eq(t.sv.ctl('reload')[0], 0, 'a tenant file with an error is loaded')
    t.core.put('/typo/keep', 'me')
    r = ctl(t, 'purge', 'typo', '--yes')
    s.check(r.returncode == 1 and 'tenant typo is configured here (state failed)' in r.stderr
            and t.core.get('/typo/keep') == 'me',
            'purge refuses a tenant whose file has an error, and deletes nothing', r.stderr)
    t.sv.remove_tenant('typo')
    t.sv.remove_tenant('a')
    s.eq(t.sv.ctl('reload')[0], 0, 'the tenant removed')
    t.sv.wait_gone('a')
    r = ctl(t, 'purge', 'a')
    s.check(r.returncode == 1 and '--yes' in r.stderr and len(core_prefix(t, '/a/')) == 21,
            'without a terminal and without --yes nothing is deleted', r.stderr)
    r = ctl(t, 'purge', 'a', '--yes')
    s.check(r.returncode == 0 and 'revoked 1 leases (and their keys' in r.stdout and
            'deleted 20 keys under /a/' in r.stdout, 'purge --yes: every step said (the leased '
            'key went with its lease, the 20 others by the delete)', r.stdout + r.stderr)
    s.eq(core_prefix(t, '/a/'), {}, 'tenant a has no key left')
    s.eq(core_prefix(t, '/__etcdproxy/leases/a/'), {}, 'nor a lease record')
    c = eptest.etcd3_client(t.core.port)
    try:
        s.check(c.get_lease_info(t.a_lease).TTL == -1, 'its lease is revoked')
    finally:
        c.close()
    s.eq(len(core_prefix(t, '/a-b/')), 21, 'tenant a-b keeps all its keys')
    s.eq(len(core_prefix(t, '/__etcdproxy/leases/a-b/')), 1, 'and its lease record')
    s.eq(t.core.get('/x/y'), 'someone else', 'and a key of nobody\'s tenant is there')
    r = ctl(t, 'purge', 'registry', '--yes')
    s.check(r.returncode == 1 and '/registry/' in r.stderr, 'a reserved name is refused',
            r.stderr)
    r = ctl(t, 'purge', 'Bad_Name', '--yes')
    s.eq(r.returncode, 2, 'an invalid name is a usage error')


def fill(t, name, n=10):
    c = eptest.etcd3_client(t.ports[name])
    try:
        for i in range(n):
            c.put('k%d' % i, name)
        c.put('leased', 'x', lease=c.lease(600))
    finally:
        c.close()


def pending(t):
    st = t.sv.ctl('status')[3] or {}
    return [p['tenant'] for p in (st.get('daemon') or {}).get('pending_purges') or []]


def test_deletion_policy(s, t):
    for name in ('p', 'r', 'q'):
        fill(t, name)
    t.sv.remove_tenant('p')
    t.sv.remove_tenant('r')
    s.eq(t.sv.ctl('reload')[0], 0, 'tenants p (Purge) and r (Retain) removed')
    s.eq(pending(t), ['p'], 'etcdproxyctl status lists the pending purge of p only')
    t.sv.add_tenant('p', port=t.ports['p'], backend='native',
                    spec_extra={'deletionPolicy': 'Purge'})
    t.sv.ctl('reload')
    s.eq(pending(t), [], 'p added again within the delay: its purge is cancelled')
    t.sv.wait_ready('p')
    s.check(wait_until(lambda: False, 4, 0.5) is None and len(core_prefix(t, '/p/')) == 11,
            'and after the delay its 11 keys are all there')
    t.sv.remove_tenant('p')
    t.sv.ctl('reload')
    s.check(wait_until(lambda: not core_prefix(t, '/p/') and
                       not core_prefix(t, '/__etcdproxy/leases/p/'), 20, 0.3),
            'removed again: after purge_delay its keys and lease records are gone')
    s.check(wait_until(lambda: 'tenant p purged from the core etcd' in t.sv.log_text(), 10, 0.3),
            'the log says so, step by step', t.sv.log_text()[-2000:])
    s.check('purge p: deleted 10 keys under /p/' in t.sv.log_text(),
            'with etcdproxyctl\'s lines')
    s.eq(len(core_prefix(t, '/r/')), 11, 'tenant r (Retain) keeps its keys')
    t.sv.remove_tenant('q')
    t.sv.ctl('reload')
    s.eq(t.sv.stop(), 0, 'etcdproxyd stopped right after removing q')
    s.check(os.path.exists(os.path.join(t.sv.state, 'purges', 'q.json')),
            'the pending purge is kept in state_dir/purges/q.json')
    s.eq(len(core_prefix(t, '/q/')), 11, 'q\'s keys are still there')
    t.sv.start()
    s.check(wait_until(lambda: not core_prefix(t, '/q/'), 20, 0.3),
            'started again, etcdproxyd purges q when its delay is over')
    s.check(wait_until(lambda: not os.path.exists(os.path.join(t.sv.state, 'purges', 'q.json')),
                       10, 0.3), 'and forgets the pending purge')
    s.eq(len(core_prefix(t, '/a-b/')), 21, 'nothing else was touched')


class T:
    pass


def body(s):
    t = T()
    t.s = s
    t.core = eptest.CoreEtcd(s).start()
    t.src = eptest.CoreEtcd(s, name='src').start()
    t.sv = eptest.Supervisor(s, t.core, supervisor={'purge_delay': '3s'},
                             extra={'etcdproxyctl': eptest.ETCDPROXYCTL})
    t.ports = {n: t.sv.add_tenant(n, backend='native') for n in ('imp', 'a', 'a-b', 'r')}
    for n in ('p', 'q'):
        t.ports[n] = t.sv.add_tenant(n, backend='native', spec_extra={'deletionPolicy': 'Purge'})
    t.sv.start()
    t.sv.wait_ready('imp', 'a', 'a-b', 'p', 'q', 'r')
    for fn in (test_import_etcd, test_import_refuses_nonempty, test_roundtrip, test_bad_files,
               test_flat_memory, test_purge, test_deletion_policy):
        s.run(fn, s, t)
    s.eq(t.sv.stop(), 0, 'etcdproxyd exits 0 on SIGTERM')


if __name__ == '__main__':
    s = eptest.Suite('data', timeout=600)
    s.require(eptest.ETCD, eptest.ETCDCTL, eptest.ETCDPROXYD, eptest.ETCDPROXYCTL, eptest.WORKER)
    s.main(body)
