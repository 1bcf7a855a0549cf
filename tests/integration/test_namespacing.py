#!/usr/bin/python3
"""Each tenant sees exactly its own key prefix of the core etcd: through etcdctl
(get/put/del with prefixes and from-key ranges, watch) and through python-etcd3
(put/get/get_prefix/get_all/delete/transaction/watch)."""

import os
import subprocess
import sys

sys.dont_write_bytecode = True  # nothing written into the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eptest  # noqa: E402
from eptest import etcd_kvs, etcdctl, wait_until  # noqa: E402

# keys written straight into the core that tenant a must never see or touch
OUTSIDE = {'/zz': 'zz', '/a-other/x': 'other', '/b/x': 'bx', '/': 'root', '/a': 'a-noslash',
           '/a0': 'a-prefix-end', '/A/x': 'upper'}


def seed_outside(s, core):
    for k, v in OUTSIDE.items():
        core.put(k, v)


def outside_intact(s, core, what):
    have = core.kvs()
    missing = {k: v for k, v in OUTSIDE.items() if have.get(k) != v}
    s.check(not missing, '%s: keys outside /a/ in the core are untouched' % what,
            'missing or changed: %s' % missing)


def test_put_get(s, core, pa, pb):
    s.require_check(eptest.etcd_put(pa, 'key', 'va'), 'put key through a')
    s.eq(core.get('/a/key'), 'va', 'the core has /a/key after a put through a')
    s.eq(core.get('key'), None, 'the core has no unprefixed "key"')
    s.require_check(eptest.etcd_put(pb, 'key', 'vb'), 'put key through b')
    s.eq(core.get('/b/key'), 'vb', 'the core has /b/key after a put through b')
    s.eq(eptest.etcd_get(pa, 'key'), 'va', 'a reads its own value of key')
    s.eq(eptest.etcd_get(pb, 'key'), 'vb', 'b reads its own value of key')
    core.put('/a/fromcore', 'c')
    s.eq(eptest.etcd_get(pa, 'fromcore'), 'c', 'a sees /a/fromcore written in the core as fromcore')
    s.eq(eptest.etcd_get(pb, 'fromcore'), None, 'b does not see /a/fromcore')


def test_ranges(s, core, pa, pb):
    seed_outside(s, core)
    a_keys = {'key': 'va', 'fromcore': 'c'}
    s.eq(etcd_kvs(pa, '--prefix', ''), a_keys, 'get --prefix "" through a: exactly a\'s keys')
    s.eq(etcd_kvs(pa, '--from-key', ''), a_keys, 'get --from-key "" through a: exactly a\'s keys')
    s.eq(etcd_kvs(pa, '--from-key', 'g'), {'key': 'va'}, 'get --from-key g through a stays in /a/')
    s.eq(etcd_kvs(pa, '0', '~'), a_keys, 'get 0 .. ~ (explicit range end) through a stays in /a/')
    s.eq(etcd_kvs(pb, '--prefix', ''), {'key': 'vb', 'x': 'bx'},
         'get --prefix "" through b: exactly b\'s keys')
    r = etcdctl(pa, 'get', '--prefix', '', '--keys-only')
    s.eq(r.stdout.split(), ['fromcore', 'key'], 'get --prefix "" --keys-only through a')


def test_delete_prefix(s, core, pa, pb):
    for k in ('d1', 'd2', 'sub/d3'):
        s.require_check(eptest.etcd_put(pa, k, 'x'), 'put %s through a' % k)
    r = etcdctl(pa, 'del', '--prefix', '')
    s.check(r.returncode == 0 and r.stdout.strip() == '5',
            'del --prefix "" through a deletes a\'s 5 keys', r.stdout + r.stderr)
    s.eq(core.kvs('--prefix', '/a/'), {}, 'nothing is left under /a/ in the core')
    outside_intact(s, core, 'del --prefix ""')
    s.eq(etcd_kvs(pb, '--prefix', ''), {'key': 'vb', 'x': 'bx'}, 'b still has its keys')


def test_delete_from_key(s, core, pa, pb):
    for k in ('f1', 'f2'):
        s.require_check(eptest.etcd_put(pa, k, 'y'), 'put %s through a' % k)
    r = etcdctl(pa, 'del', '--from-key', '')
    s.check(r.returncode == 0 and r.stdout.strip() == '2',
            'del --from-key "" through a deletes a\'s 2 keys', r.stdout + r.stderr)
    s.eq(core.kvs('--prefix', '/a/'), {}, 'nothing is left under /a/ in the core')
    outside_intact(s, core, 'del --from-key ""')
    s.eq(core.get('/b/key'), 'vb', 'b\'s key survives a\'s del --from-key')
    r = etcdctl(pa, 'del', 'f1', '\x7f')
    s.check(r.returncode == 0 and r.stdout.strip() == '0', 'del of a range with nothing of a\'s '
            'in it deletes nothing', r.stdout + r.stderr)
    outside_intact(s, core, 'del f1..\\x7f')


def test_etcdctl_watch(s, core, pa, pb):
    out = os.path.join(s.tmp, 'watch-a.out')
    w = s.popen([eptest.ETCDCTL, '--endpoints=127.0.0.1:%d' % pa, 'watch', '--prefix', ''],
                log=out, label='etcdctl watch through a', log_lines=0,
                env=dict(os.environ, ETCDCTL_API='3'))
    try:
        # the watch is established once one of our puts shows up
        n = [0]

        def established():
            n[0] += 1
            eptest.etcd_put(pa, 'probe%d' % n[0], 'p')
            return wait_until(lambda: 'probe%d' % n[0] in eptest.read_text(out), 0.5)
        s.require_check(wait_until(established, 10, 0), 'etcdctl watch --prefix "" through a '
                        'reports a\'s puts', eptest.read_text(out))
        eptest.etcd_put(pa, 'w-a', 'seen')
        eptest.etcd_put(pb, 'w-b', 'unseen-b')
        core.put('/zz-w', 'unseen-core')
        core.put('/a-other/w', 'unseen-other')
        core.put('/a/w-core', 'seen-core')
        eptest.etcd_put(pa, 'sentinel', 'end')
        s.check(wait_until(lambda: 'sentinel' in eptest.read_text(out), 10),
                'the watch delivers the sentinel put')
        text = eptest.read_text(out)
        lines = text.splitlines()
        s.check('w-a' in lines and 'seen' in lines, 'the watch sees a put through a (key unprefixed)',
                text)
        s.check('w-core' in lines, 'the watch sees /a/w-core written in the core as w-core', text)
        s.check(not any(x in text for x in ('unseen', '/zz', '/a-other', 'w-b')),
                'the watch sees nothing of b, nor core keys outside /a/', text)
        s.check(not any(l.startswith('/a/') for l in lines), 'the watch shows no /a/ prefix', text)
    finally:
        w.terminate()
        try:
            w.wait(5)
        except subprocess.TimeoutExpired:
            w.kill()


def test_python_etcd3(s, core, pa, pb):
    import etcd3
    a = eptest.etcd3_client(pa)
    b = eptest.etcd3_client(pb)
    try:
        a.put('py/k1', 'v1')
        a.put('py/k2', 'v2')
        b.put('py/k1', 'b1')
        core.put('/b/py/z', 'bz')
        s.eq(core.get('/a/py/k1'), 'v1', 'etcd3 put through a lands at /a/py/k1')
        s.eq(core.get('/b/py/k1'), 'b1', 'etcd3 put through b lands at /b/py/k1')
        v, meta = a.get('py/k1')
        s.check(v == b'v1' and meta.key == b'py/k1', 'etcd3 get through a: value and unprefixed key',
                (v, meta.key if meta else None))
        s.eq(sorted((m.key.decode(), v.decode()) for v, m in a.get_prefix('py/')),
             [('py/k1', 'v1'), ('py/k2', 'v2')], 'etcd3 get_prefix through a')
        want = sorted(k[len('/a/'):] for k in core.kvs('--prefix', '/a/'))
        s.check('py/k1' in want and not any(k.startswith('/') for k in want), 'core has a\'s keys')
        s.eq(sorted(m.key.decode() for _, m in a.get_all()), want,
             'etcd3 get_all (from-key range) through a: exactly a\'s keys')

        tx = a.transactions
        ok, resp = a.transaction(compare=[tx.value('py/k1') == 'v1'],
                                 success=[tx.put('py/t', 'yes'), tx.get('py/k2')],
                                 failure=[tx.put('py/f', 'no')])
        got = resp[1][0] if ok and len(resp) > 1 and resp[1] else None
        s.check(ok and got is not None and got[0] == b'v2' and got[1].key == b'py/k2',
                'etcd3 transaction through a: compare holds, get inside it is unprefixed', resp)
        s.eq(core.get('/a/py/t'), 'yes', 'the transaction\'s put lands at /a/py/t')
        s.eq(core.get('/a/py/f'), None, 'the failure branch did not run')
        ok, _ = a.transaction(compare=[tx.value('py/k1') == 'b1'], success=[tx.put('py/t2', 'x')],
                              failure=[tx.put('py/f', 'no')])
        s.check(not ok and core.get('/a/py/f') == 'no' and core.get('/a/py/t2') is None,
                'etcd3 transaction through a compares a\'s value, not b\'s')
        ok, _ = b.transaction(compare=[tx.version('py/t') > 0], success=[tx.put('py/leak', '1')],
                              failure=[])
        s.check(not ok and core.get('/b/py/leak') is None,
                'a transaction through b does not see a\'s py/t')

        s.check(a.delete('py/k1') and core.get('/a/py/k1') is None,
                'etcd3 delete through a removes /a/py/k1')
        s.eq(core.get('/b/py/k1'), 'b1', 'b\'s py/k1 survives')
        a.delete_prefix('py/')
        s.eq(core.kvs('--prefix', '/a/py/'), {}, 'etcd3 delete_prefix py/ through a empties /a/py/')
        s.eq(core.kvs('--prefix', '/b/py/'), {'/b/py/k1': 'b1', '/b/py/z': 'bz'},
             'delete_prefix through a leaves /b/py/ alone')
        outside_intact(s, core, 'etcd3 delete_prefix')

        # a watch over a's whole key space ("\0" .. from-key)
        w = eptest.Watch(a, '\0', range_end='\0')
        try:
            b.put('pw/b', 'x')
            core.put('/pw', 'x')
            core.put('/a-other/pw', 'x')
            a.put('pw/a', 'x')
            core.put('/a/pw/core', 'x')
            a.put('pw/end', 'x')
            s.check(w.wait_key('pw/end'), 'etcd3 watch through a sees its puts', w.events)
            s.eq(w.keys(), ['pw/a', 'pw/core', 'pw/end'],
                 'etcd3 watch through a sees exactly a\'s events, unprefixed')
        finally:
            w.cancel()
    except etcd3.exceptions.Etcd3Exception as e:
        s.check(False, 'etcd3 call failed: %r' % e)
    finally:
        a.close()
        b.close()


def body(s):
    core = eptest.CoreEtcd(s).start()
    sv = eptest.Supervisor(s, core)
    pa = sv.add_tenant('a')
    pb = sv.add_tenant('b')
    sv.start()
    t = sv.wait_ready('a', 'b')
    s.check(t['a']['prefix'] == '/a/' and t['b']['prefix'] == '/b/', 'prefixes are /a/ and /b/',
            t)
    for fn in (test_put_get, test_ranges, test_delete_prefix, test_delete_from_key,
               test_etcdctl_watch, test_python_etcd3):
        s.run(fn, s, core, pa, pb)
    s.eq(sv.stop(), 0, 'etcdproxyd exits 0 on SIGTERM')


if __name__ == '__main__':
    s = eptest.Suite('namespacing')
    s.require(eptest.ETCD, eptest.ETCDCTL, eptest.ETCDPROXYD, eptest.ETCDPROXYCTL, eptest.WORKER)
    s.main(body)
