#!/usr/bin/python3
"""Tenants from the cluster: EtcdStorage objects on the kube-apiserver stand-in
(tests/kube/apiserver.py, itself proven against kubectl and python3-kubernetes by
test_kube_apiserver.py), served by etcdproxyd against a real etcd.

  - kubectl apply / apply of a change / delete starts, reloads and stops the tenant, checked
    with etcdctl through it; its status gets Accepted, Ready, Deployed and its node's entry;
  - a tenant named "registry" gets Accepted=False with reason NameReserved; a name a file
    in storages_dir already has gets reason Conflict, and the file's tenant keeps running;
  - an idle resync writes nothing; a 409 on the status is retried;
  - a watch that ends is started again without a list; a compaction behind a broken watch
    makes a list, and a deletion during the gap is noticed; 503 with Retry-After and 500
    keep the request rate bounded;
  - with the API server gone the tenants keep serving, also across a restart of etcdproxyd;
  - spec.clientCertSecret and spec.caCertConfigMap: the Secret's certificate and the
    ConfigMap's CA give working mutual TLS with etcdctl; a resync leaves their
    resourceVersions alone; other keys and the type of an existing Secret stay; a 403 in
    one namespace shows as CertificatesPublished=False, reason Forbidden;
  - three daemons: one lease holder; SIGSTOP of it hands the lease over within the lease
    duration, and it writes nothing after SIGCONT; SIGTERM releases the lease, even when a
    renewal was committed but not yet answered;
  - a kubeconfig with inline data over TLS, one with file paths, a token that rotates, and
    in-cluster mode (service account files, KUBERNETES_SERVICE_HOST/PORT)."""

import base64
import re
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

sys.dont_write_bytecode = True  # nothing written into the source tree
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, '..', 'kube'))
import eptest  # noqa: E402
import kubeserver  # noqa: E402

API = '/apis/etcd.xmudrii.com/v1alpha1/etcdstorages'
KUBECTL = shutil.which('kubectl') or '/usr/bin/kubectl'


# ---- the API, by hand and with kubectl ----------------------------------------------------------

def call(k, method, path, body=None, ctype='application/json'):
    """(status, decoded body)."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {'Content-Type': ctype}
    if k.tokens_file:  # the first token the server takes
        with open(k.tokens_file) as f:
            headers['Authorization'] = 'Bearer ' + f.read().split()[0]
    req = urllib.request.Request(k.url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10, context=k._ctx) as r:
            return r.status, json.loads(r.read().decode() or 'null')
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode() or 'null')


def storage(name, spec):
    return {'apiVersion': 'etcd.xmudrii.com/v1alpha1', 'kind': 'EtcdStorage',
            'metadata': {'name': name}, 'spec': spec}


def kubectl(k, *args, input=None):
    return subprocess.run([KUBECTL, '--kubeconfig', k.kubeconfig] + list(args),
                          capture_output=True, text=True, timeout=30, input=input)


def get(k, name):
    st, obj = call(k, 'GET', '%s/%s' % (API, name))
    return obj if st == 200 else None


def condition(obj, ctype):
    for c in ((obj or {}).get('status') or {}).get('conditions') or []:
        if c.get('type') == ctype:
            return c
    return None


def wait_condition(s, k, name, ctype, status, reason=None, timeout=15, current=False):
    """The object once condition ctype has that status (and reason), or a Failure.
    current: and observed at the object's generation (not left from an earlier one)."""
    last = [None]

    def probe():
        last[0] = get(k, name)
        c = condition(last[0], ctype)
        return c is not None and c['status'] == status and (reason is None or
                                                             c['reason'] == reason) and (
            not current or c['observedGeneration'] == last[0]['metadata']['generation'])
    if eptest.wait_until(probe, timeout, 0.2):
        return last[0]
    raise eptest.Failure('%s: no %s=%s%s within %gs; status: %s' % (
        name, ctype, status, ' (%s)' % reason if reason else '', timeout,
        json.dumps((last[0] or {}).get('status'))))


def supervisor(s, core, k, name='sv', node='node-a', extra_kube=None, **kw):
    kube = {'kubeconfig': k.kubeconfig, 'node_name': node, 'resync': '2s'}
    kube.update(extra_kube or {})
    return eptest.Supervisor(s, core, name=name, extra={'kubernetes': kube}, **kw)


def writes(k, path_part=None):
    """The API server's log of writes (PATCH, PUT, POST) so far, optionally of one path."""
    return [r for r in k.requests() if r['method'] in ('PATCH', 'PUT', 'POST') and
            (path_part is None or path_part in r['path'])]


# ---- scenarios ------------------------------------------------------------------------------

def events(k, name):
    st, lst = call(k, 'GET', '/api/v1/namespaces/default/events?fieldSelector=' +
                   urllib.parse.quote('involvedObject.kind=EtcdStorage,involvedObject.name=' +
                                      name))
    return lst['items'] if st == 200 else []


def test_lifecycle(s, core, k):
    sv = supervisor(s, core, k)
    sv.start()
    port = eptest.free_port()
    doc = storage('lc', {'listen': '127.0.0.1:%d' % port, 'backend': 'native',
                         'tls': {'enabled': False}})
    r = kubectl(k, 'apply', '-f', '-', input=json.dumps(doc))
    s.check(r.returncode == 0, 'kubectl apply of an EtcdStorage', r.stderr)
    r = kubectl(k, 'wait', '--for=condition=Ready', 'etcdstorage/lc', '--timeout=30s')
    s.check(r.returncode == 0, 'kubectl wait --for=condition=Ready returns', r.stdout + r.stderr)
    sv.wait_ready('lc')
    s.check(eptest.serves(port, 'k1', 'v1'), 'the tenant serves: etcdctl put and get through it')
    s.eq(eptest.etcd_get(core.port, '/lc/k1'), 'v1', 'under its prefix /lc/ in the core etcd')
    s.check(eptest.wait_until(lambda: any(
        e['type'] == 'Normal' and e['reason'] == 'Serving' and
        e['message'].startswith('Ready=True') and e['source']['host'] == 'node-a'
        for e in events(k, 'lc')), 10),
        'an Event Normal/Serving "Ready=True" about the EtcdStorage', events(k, 'lc'))
    r = kubectl(k, 'describe', 'etcdstorage', 'lc')
    s.check(r.returncode == 0 and 'Serving' in r.stdout and 'Ready=True' in r.stdout,
            'kubectl describe shows it', r.stdout + r.stderr)
    obj = wait_condition(s, k, 'lc', 'Ready', 'True', 'Serving')
    acc = condition(obj, 'Accepted')
    s.check(acc and acc['status'] == 'True' and acc['observedGeneration'] ==
            obj['metadata']['generation'], 'Accepted=True, observedGeneration as the object',
            obj.get('status'))
    dep = condition(obj, 'Deployed')
    s.check(dep and dep['status'] == 'True', 'Deployed=True, for the controller\'s users',
            obj.get('status'))
    node = ((obj.get('status') or {}).get('nodes') or {}).get('node-a') or {}
    s.check(node.get('ready') is True and node.get('endpoint') == '127.0.0.1:%d' % port,
            'status.nodes.node-a: ready, with its endpoint', node)
    for c in obj['status']['conditions']:
        s.check(set(('type', 'status', 'lastTransitionTime', 'reason', 'message',
                     'observedGeneration')) <= set(c), 'condition %s has the metav1.Condition '
                'keys' % c['type'], c)
    r = kubectl(k, 'get', 'etcdstorage', 'lc')
    s.check(r.returncode == 0 and 'READY' in r.stdout.splitlines()[0] and
            'True' in r.stdout.splitlines()[1], 'kubectl get etcdstorage shows Ready',
            r.stdout + r.stderr)

    # a change: the tenant is restarted on its new address
    port2 = eptest.free_port()
    doc['spec']['listen'] = '127.0.0.1:%d' % port2
    r = kubectl(k, 'apply', '-f', '-', input=json.dumps(doc))
    s.check(r.returncode == 0 and 'configured' in r.stdout, 'kubectl apply of a change',
            r.stdout + r.stderr)
    sv.wait_tenant('lc', lambda t: t['state'] == 'ready' and t['listen'] ==
                   '127.0.0.1:%d' % port2, what='ready on the new address')
    s.eq(eptest.etcd_get(port2, 'k1'), 'v1', 'the changed tenant serves the same data')
    obj = wait_condition(s, k, 'lc', 'Ready', 'True', current=True)
    s.check(condition(obj, 'Accepted')['observedGeneration'] == obj['metadata']['generation']
            and obj['metadata']['generation'] >= 2, 'observedGeneration follows the change',
            obj.get('status'))

    r = kubectl(k, 'delete', 'etcdstorage', 'lc')
    s.check(r.returncode == 0, 'kubectl delete', r.stderr)
    sv.wait_gone('lc')
    s.check(not eptest.serves(port2), 'the deleted tenant serves no more')
    s.eq(sv.stop(), 0, 'etcdproxyd exits 0 on SIGTERM')


def test_refused_names(s, core, k):
    sv = supervisor(s, core, k, name='names')
    fport = sv.add_tenant('dup', backend='native')
    sv.start()
    sv.wait_ready('dup')
    s.eq(call(k, 'POST', API, storage('registry', {'listen': '127.0.0.1:%d' %
                                                   eptest.free_port()}))[0], 201,
         'an EtcdStorage named registry is created')
    obj = wait_condition(s, k, 'registry', 'Accepted', 'False', 'NameReserved')
    msg = condition(obj, 'Accepted')['message']
    s.check('overlaps the reserved prefix "/registry/"' in msg and '.json:' not in msg,
            'its message names the reserved prefix, without the cache file\'s position', msg)
    s.eq(condition(obj, 'Ready')['status'], 'False', 'and Ready=False')
    s.check(eptest.wait_until(lambda: any(
        e['type'] == 'Warning' and e['reason'] == 'NameReserved' and
        e['involvedObject']['uid'] == obj['metadata']['uid'] for e in events(k, 'registry')),
        10), 'and a Warning Event with reason NameReserved', events(k, 'registry'))
    s.check(eptest.etcd_get(core.port, '/registry/probe') is None and
            sv.tenant('registry')['state'] == 'failed', 'no worker serves it')

    # paths on the node are the node operator's: not from the cluster
    s.eq(call(k, 'POST', API, storage('paths', {
        'listen': '127.0.0.1:%d' % eptest.free_port(),
        'tls': {'clientCertificates': [{'name': 'x', 'outputDir': '/etc/cron.d'}]}}))[0], 201,
         'an EtcdStorage that names an outputDir on the node')
    obj = wait_condition(s, k, 'paths', 'Accepted', 'False', 'InvalidSpec')
    s.check('names a path on the node' in condition(obj, 'Accepted')['message'] and
            not os.path.exists('/etc/cron.d/tls.key'),
            'is refused: nothing is written there', condition(obj, 'Accepted'))

    s.eq(call(k, 'POST', API, storage('dup', {'listen': '127.0.0.1:%d' %
                                              eptest.free_port()}))[0], 201,
         'an EtcdStorage with the name of a file tenant')
    obj = wait_condition(s, k, 'dup', 'Accepted', 'False', 'Conflict')
    s.check(sv.tenant('dup')['listen'] == '127.0.0.1:%d' % fport and eptest.serves(fport),
            'the file in storages_dir keeps the name and keeps serving')
    s.eq(sv.stop(), 0, 'etcdproxyd exits 0 on SIGTERM')


def test_status_writes(s, core, k):
    sv = supervisor(s, core, k, name='quiet')
    sv.start()
    port = eptest.free_port()
    call(k, 'POST', API, storage('q', {'listen': '127.0.0.1:%d' % port, 'backend': 'native',
                                       'tls': {'enabled': False}}))
    wait_condition(s, k, 'q', 'Ready', 'True')
    time.sleep(1)
    k.clear_requests()
    time.sleep(5)  # two resyncs (every 2 s here)
    w = writes(k, '/etcdstorages/q')
    s.eq(w, [], 'no status write on an idle resync')

    # someone wipes the conditions; the resync puts them back, and a 409 on that write is
    # read again, decided again and written
    call(k, 'PATCH', '%s/q/status' % API, {'status': {'conditions': []}},
         'application/merge-patch+json')
    k.clear_requests()
    k.hook('fault', {'method': 'PATCH', 'path': '/etcdstorages/q/status$', 'code': 409,
                     'count': 1})
    obj = wait_condition(s, k, 'q', 'Ready', 'True', timeout=20)
    codes = [r['code'] for r in k.requests() if r['method'] == 'PATCH' and
             r['path'].endswith('/etcdstorages/q/status')]
    s.check(409 in codes and codes[-1] == 200, 'a 409 on the status is read again and retried',
            codes)
    s.eq(sv.stop(), 0, 'etcdproxyd exits 0 on SIGTERM')


def count(k, method, part, query_part=None):
    return len([r for r in k.requests() if r['method'] == method and part in r['path'] and
                (query_part is None or query_part in (r.get('query') or ''))])


def test_watch(s, core, k):
    sv = supervisor(s, core, k, name='watch')
    sv.start()
    p1, p2 = eptest.free_port(), eptest.free_port()
    call(k, 'POST', API, storage('w1', {'listen': '127.0.0.1:%d' % p1, 'backend': 'native',
                                        'tls': {'enabled': False}}))
    sv.wait_ready('w1')
    time.sleep(0.5)
    k.clear_requests()
    k.hook('end-watches')
    time.sleep(1.5)
    s.eq(count(k, 'GET', API, 'watch'), 1, 'a watch that ends is started again')
    s.eq(count(k, 'GET', API) - count(k, 'GET', API, 'watch'), 0, '... without a list')

    # a split event is one event (a broken one would be "not an event" and make a list)
    k.clear_requests()
    k.hook('watch-fault', {'kind': 'split'})
    call(k, 'POST', API, storage('w2', {'listen': '127.0.0.1:%d' % p2, 'backend': 'native',
                                        'tls': {'enabled': False}}))
    sv.wait_ready('w2')
    s.eq(count(k, 'GET', API) - count(k, 'GET', API, 'watch'), 0,
         'an event split across two chunks is read as one: no list followed it')

    # the watch breaks, w1 is deleted meanwhile and the history compacted: 410, list, diff
    k.hook('fault', {'method': 'GET', 'path': '/etcdstorages$', 'query': 'watch', 'code': 500,
                     'count': 3})
    k.hook('end-watches')
    call(k, 'DELETE', '%s/w1' % API)
    k.hook('compact')
    k.clear_requests()
    sv.wait_gone('w1', timeout=30)
    s.check(count(k, 'GET', API) - count(k, 'GET', API, 'watch') >= 1,
            'the compacted history made a list, and the deletion during the gap is seen')
    s.check(eptest.serves(p2), 'the other tenant serves on')

    # a watch answered with an error (no RBAC for watch, say): backoff, not a list loop
    k.hook('fault', {'method': 'GET', 'path': '/etcdstorages$', 'query': 'watch', 'code': 403,
                     'count': 1000})
    k.hook('end-watches')
    k.clear_requests()
    time.sleep(5)
    nw, nl = count(k, 'GET', API, 'watch'), count(k, 'GET', API) - count(k, 'GET', API, 'watch')
    s.check(nl == 0 and 1 <= nw <= 6, 'a 403 on the watch backs off (%d watches, %d lists in 5 s)'
            % (nw, nl))
    k.hook('fault/clear')

    # 503 with Retry-After, then 500s: a bounded request rate (the backoff grows across both,
    # so only the upper bound is the point), then the faults end and it carries on
    k.hook('fault', {'method': 'GET', 'path': '/etcdstorages', 'code': 503, 'count': 1000,
                     'retry_after': 2})
    k.hook('end-watches')
    k.clear_requests()
    time.sleep(5)
    n = count(k, 'GET', API)
    s.check(n <= 3, 'with 503 and Retry-After: 2, no more than one request per 2 s (%d in 5 s)'
            % n)
    k.hook('fault/clear')
    k.hook('fault', {'method': 'GET', 'path': '/etcdstorages', 'code': 500, 'count': 1000})
    k.clear_requests()
    time.sleep(6)
    n = count(k, 'GET', API)
    s.check(n <= 12, 'with 500s, the backoff bounds the rate (%d in 6 s)' % n)
    k.hook('fault/clear')
    p3 = eptest.free_port()
    call(k, 'POST', API, storage('w3', {'listen': '127.0.0.1:%d' % p3, 'backend': 'native',
                                        'tls': {'enabled': False}}))
    sv.wait_ready('w3', timeout=45)
    s.check(eptest.serves(p3), 'once the faults end it catches up: a new EtcdStorage is served')
    s.eq(sv.stop(), 0, 'etcdproxyd exits 0 on SIGTERM')


def test_outage(s, core, tmp):
    k = kubeserver.start(tmp, name='kube-outage')
    try:
        sv = supervisor(s, core, k, name='outage')
        sv.start()
        port = eptest.free_port()
        call(k, 'POST', API, storage('o', {'listen': '127.0.0.1:%d' % port, 'backend': 'native',
                                           'tls': {'enabled': False}}))
        sv.wait_ready('o')
        k.stop()
        time.sleep(1.5)
        s.check(eptest.serves(port), 'with the API server gone, the tenant keeps serving')
        s.eq(sv.stop(), 0, 'etcdproxyd stops while the API server is gone')
        sv.start()
        sv.wait_ready('o')
        s.check(eptest.serves(port), 'and serves again after a restart without the API server')
        rc, out, _, _ = sv.ctl('status', json_out=False)
        s.check('not in sync' in out, 'etcdproxyctl status says it is not in sync', out)
        s.eq(sv.stop(), 0, 'etcdproxyd exits 0 on SIGTERM')
    finally:
        k.stop()


def secret_files(k, ns, name, d):
    st, sec = call(k, 'GET', '/api/v1/namespaces/%s/secrets/%s' % (ns, name))
    if st != 200:
        return None
    for key in ('tls.crt', 'tls.key', 'ca.crt'):
        with open(os.path.join(d, key), 'wb') as f:
            f.write(base64.b64decode(sec['data'][key]))
    return sec


def etcdctl_tls(port, d, *args):
    return eptest.etcdctl(port, '--cacert', os.path.join(d, 'ca.crt'), '--cert',
                          os.path.join(d, 'tls.crt'), '--key', os.path.join(d, 'tls.key'),
                          *args)


def test_certificates(s, core, k, tmp):
    sv = supervisor(s, core, k, name='certs')
    sv.start()
    for ns in ('team', 'locked'):
        call(k, 'POST', '/api/v1/namespaces', {'apiVersion': 'v1', 'kind': 'Namespace',
                                              'metadata': {'name': ns}})
    # an existing Opaque Secret with a key of its own
    call(k, 'POST', '/api/v1/namespaces/team/secrets', {
        'apiVersion': 'v1', 'kind': 'Secret', 'metadata': {'name': 'old'}, 'type': 'Opaque',
        'data': {'note': base64.b64encode(b'mine').decode()}})
    k.hook('fault', {'path': '/namespaces/locked/', 'code': 403, 'count': 1000})
    port = eptest.free_port()
    call(k, 'POST', API, storage('c', {
        'listen': '127.0.0.1:%d' % port, 'backend': 'native', 'tls': {'source': 'ca'},
        'clientCertSecret': [{'name': 'c-etcd', 'namespace': 'team'},
                             {'name': 'old', 'namespace': 'team'}],
        'caCertConfigMap': [{'name': 'c-ca', 'namespace': 'team'}]}))
    sv.wait_ready('c', timeout=30)
    d = os.path.join(tmp, 'from-secret')
    os.makedirs(d, exist_ok=True)
    s.check(eptest.wait_until(lambda: secret_files(k, 'team', 'c-etcd', d) is not None, 15),
            'the Secret of spec.clientCertSecret is created')
    sec = secret_files(k, 'team', 'c-etcd', d)
    s.eq(sec['type'], 'kubernetes.io/tls', 'of type kubernetes.io/tls')
    labels = sec['metadata'].get('labels') or {}
    s.check(labels.get('app.kubernetes.io/managed-by') == 'etcdproxy' and
            labels.get('etcd.xmudrii.com/storage') == 'c', 'with the labels', labels)
    owner = (sec['metadata'].get('ownerReferences') or [{}])[0]
    s.check(owner.get('kind') == 'EtcdStorage' and owner.get('uid') ==
            get(k, 'c')['metadata']['uid'], 'owned by its EtcdStorage', owner)
    r = etcdctl_tls(port, d, 'put', 'tls-key', 'ok')
    s.check(r.returncode == 0, 'the Secret\'s certificate and CA give working mutual TLS',
            r.stderr)
    st, cm = call(k, 'GET', '/api/v1/namespaces/team/configmaps/c-ca')
    s.check(st == 200 and cm['data'].get('ca.crt') == open(os.path.join(d, 'ca.crt')).read()
            and cm['data'].get('serving-ca.crt') == cm['data'].get('ca.crt'),
            'the ConfigMap holds ca.crt and serving-ca.crt', (st, cm))
    st, old = call(k, 'GET', '/api/v1/namespaces/team/secrets/old')
    s.check(st == 200 and old['type'] == 'Opaque' and old['data'].get('note') and
            old['data'].get('tls.crt') and not old['metadata'].get('ownerReferences'),
            'an existing Secret keeps its type, its own keys and has no owner added', old)

    obj = wait_condition(s, k, 'c', 'CertificatesPublished', 'True', timeout=15)
    rvs = (sec['metadata']['resourceVersion'], cm['metadata']['resourceVersion'])
    time.sleep(5)  # resyncs
    st, sec2 = call(k, 'GET', '/api/v1/namespaces/team/secrets/c-etcd')
    st, cm2 = call(k, 'GET', '/api/v1/namespaces/team/configmaps/c-ca')
    s.eq((sec2['metadata']['resourceVersion'], cm2['metadata']['resourceVersion']), rvs,
         'a resync leaves the Secret and the ConfigMap alone')

    # rotation: the material read back from the cluster still works
    rc, out, err, _ = sv.ctl('rotate', 'c')
    s.check(rc == 0, 'etcdproxyctl rotate c', err)
    s.check(eptest.wait_until(lambda: call(k, 'GET', '/api/v1/namespaces/team/secrets/c-etcd')
                              [1]['metadata']['resourceVersion'] != rvs[0], 15),
            'the rotation reaches the Secret')
    secret_files(k, 'team', 'c-etcd', d)
    r = etcdctl_tls(port, d, 'get', 'tls-key', '--print-value-only')
    s.check(r.returncode == 0 and r.stdout.strip() == 'ok',
            'the rotated certificate from the Secret works', r.stderr)

    # one forbidden namespace: that output only
    spec = get(k, 'c')['spec']
    spec['clientCertSecret'].append({'name': 'c-etcd', 'namespace': 'locked'})
    call(k, 'PATCH', '%s/c' % API, {'spec': spec}, 'application/merge-patch+json')
    obj = wait_condition(s, k, 'c', 'CertificatesPublished', 'False', 'Forbidden', timeout=30)
    s.check('locked' in condition(obj, 'CertificatesPublished')['message'],
            'CertificatesPublished=False, reason Forbidden, naming the namespace',
            obj['status'])
    sv.wait_ready('c', timeout=30)
    s.check(eptest.wait_until(lambda: secret_files(k, 'team', 'c-etcd', d) is not None and
                              etcdctl_tls(port, d, 'get', 'tls-key').returncode == 0, 20),
            'the other outputs keep working')
    k.hook('fault/clear')
    s.eq(sv.stop(), 0, 'etcdproxyd exits 0 on SIGTERM')


def lease(k):
    st, obj = call(k, 'GET', '/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/'
                   'etcdproxyd')
    return (obj or {}).get('spec') if st == 200 else None


def holder(k):
    return (lease(k) or {}).get('holderIdentity')


def tls_args(d):
    return ['--cacert', os.path.join(d, 'ca.crt'), '--cert', os.path.join(d, 'tls.crt'),
            '--key', os.path.join(d, 'tls.key')]


def serves_at(host, port, tls_dir=None):
    """etcdctl put and get through HOST:PORT (with the client material in tls_dir)."""
    ep = ['--endpoints=%s:%d' % (host, port), '--dial-timeout=3s', '--command-timeout=5s']
    if tls_dir:
        ep += tls_args(tls_dir)
    env = dict(os.environ, ETCDCTL_API='3')
    value = 'v%f' % time.time()
    put = subprocess.run([eptest.ETCDCTL] + ep + ['put', 'at-' + host, value],
                         capture_output=True, text=True, timeout=15, env=env)
    got = subprocess.run([eptest.ETCDCTL] + ep + ['get', '--print-value-only', 'at-' + host],
                         capture_output=True, text=True, timeout=15, env=env)
    return put.returncode == 0 and got.stdout.strip() == value


def serving_issuer(host, port, d):
    """The issuer's CN of the serving certificate HOST:PORT shows, or None."""
    try:
        r = subprocess.run(['openssl', 's_client', '-alpn', 'h2', '-connect',
                            '%s:%d' % (host, port), '-cert', os.path.join(d, 'tls.crt'), '-key',
                            os.path.join(d, 'tls.key')], input=b'', capture_output=True,
                           timeout=10)  # bytes: the server's HTTP/2 frames follow
        x = subprocess.run(['openssl', 'x509', '-noout', '-issuer', '-nameopt', 'multiline'],
                           input=r.stdout.decode(errors='replace'), capture_output=True,
                           text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return None
    m = re.search(r'commonName\s*=\s*(.*)', x.stdout)
    return m.group(1).strip() if m else None


def bundle_cns(pem):
    """The subjects' CNs of the certificates of a PEM bundle, in order."""
    out = []
    for block in re.findall(r'-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----', pem,
                            re.S):
        x = subprocess.run(['openssl', 'x509', '-noout', '-subject', '-nameopt', 'multiline'],
                           input=block, capture_output=True, text=True, timeout=10)
        m = re.search(r'commonName\s*=\s*(.*)', x.stdout)
        out.append(m.group(1).strip() if m else '?')
    return out


def ca_secret(k, name):
    """The CA Secret of tenant NAME: (object, its ca.json parsed), or (None, None)."""
    st, sec = call(k, 'GET', '/api/v1/namespaces/kube-system/secrets/etcdproxy-ca-%s' % name)
    if st != 200:
        return None, None
    try:
        return sec, json.loads(base64.b64decode(sec['data']['ca.json']))
    except ValueError:
        return sec, None


def ca_serials(doc):
    return [[c['serial'] for c in doc[kind]] for kind in ('serving', 'client')]


def test_three_nodes(s, core, k, tmp):
    timings = {'lease_duration': '3s', 'renew_deadline': '2s', 'retry_period': '500ms'}
    nodes = []
    port = eptest.free_port()
    # the Lease the earlier tests' daemons left (released) goes: this test sees it created
    call(k, 'DELETE', '/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/etcdproxyd')
    k.clear_requests()
    for i, name in enumerate(('n1', 'n2', 'n3')):
        sv = supervisor(s, core, k, name=name, node=name,
                        extra_kube=dict(timings, node_address='127.0.0.%d' % (i + 1)))
        sv.config['certs'] = {'ca': {'grace': '5s'}}
        sv.write_config()
        sv.start()
        nodes.append(sv)
    call(k, 'POST', API, storage('ha', {'listen': ':%d' % port, 'backend': 'native',
                                        'tls': {'enabled': False}}))
    for i, sv in enumerate(nodes):
        sv.wait_ready('ha')
        s.check(eptest.wait_until(lambda: serves_at('127.0.0.%d' % (i + 1), port), 10, 0.2),
                'node %s serves the tenant on its own address' % sv.name)
    s.check(eptest.wait_until(lambda: holder(k) in ('n1', 'n2', 'n3'), 10),
            'one node holds the lease', lease(k))
    created = [json.loads(r['body']) for r in k.requests() if r['method'] == 'POST' and
               r['path'].endswith('/leases') and r.get('code') == 201]
    s.check(len(created) == 1 and created[0]['spec'].get('leaseTransitions') == 0,
            'the Lease is created with leaseTransitions 0, as client-go does', created)
    time.sleep(2)
    leaders = [sv.name for sv in nodes if ((sv.ctl('status')[3] or {}).get('daemon') or {})
               .get('kubernetes', {}).get('leader')]
    s.eq(leaders, [holder(k)], 'exactly one node says it is the leader, the holder')
    obj = get(k, 'ha')
    s.eq(sorted(((obj.get('status') or {}).get('nodes') or {})), ['n1', 'n2', 'n3'],
         'every node reports itself under status.nodes')

    # TLS from the ca source: the same CAs on every node
    hosts = ['127.0.0.%d' % (i + 1) for i in range(3)]
    call(k, 'POST', '/api/v1/namespaces', {'apiVersion': 'v1', 'kind': 'Namespace',
                                          'metadata': {'name': 'hans'}})
    tport = eptest.free_port()
    call(k, 'POST', API, storage('hatls', {
        'listen': ':%d' % tport, 'backend': 'native', 'tls': {'source': 'ca'},
        'clientCertSecret': [{'name': 'hatls-etcd', 'namespace': 'hans'}],
        'caCertConfigMap': [{'name': 'hatls-ca', 'namespace': 'hans'}]}))
    for sv in nodes:
        sv.wait_ready('hatls', timeout=30)
    d = os.path.join(tmp, 'ha-client')
    os.makedirs(d, exist_ok=True)

    def everywhere(dd):
        return all(serves_at(h, tport, dd) for h in hosts)
    s.check(eptest.wait_until(lambda: secret_files(k, 'hans', 'hatls-etcd', d) is not None and
                              everywhere(d), 30),
            'one client certificate, from the Secret, works against all three nodes with the '
            'Secret\'s ca.crt')
    sec, doc = ca_secret(k, 'hatls')
    s.check(doc is not None and doc.get('tenant') == 'hatls' and
            (sec['metadata'].get('labels') or {}).get('etcd.xmudrii.com/ca-state') == 'true' and
            (sec['metadata'].get('ownerReferences') or [{}])[0].get('uid') ==
            get(k, 'hatls')['metadata']['uid'],
            'the CAs are shared through the Secret kube-system/etcdproxy-ca-hatls, owned by '
            'the EtcdStorage', sec and sec['metadata'])
    first = ca_serials(doc)
    lead = next(sv for sv in nodes if sv.name == holder(k))
    followers = [sv for sv in nodes if sv is not lead]
    rc, out, err, _ = followers[0].ctl('rotate', 'hatls')
    s.check(rc != 0 and 'another node leads' in (out + err),
            'etcdproxyctl rotate on a follower is refused, naming the leader', (rc, out, err))
    s.check(all('shared across the cluster' in sv.ctl('show', 'hatls')[1] for sv in nodes),
            'etcdproxyctl show says the CAs are shared on every node')

    # a rotation on the leader reaches every node; a client that rereads the Secret before
    # each request never fails one, whichever node it asks
    stop = threading.Event()
    client = {'requests': 0, 'failures': []}

    def rereading_client():
        cd = os.path.join(tmp, 'ha-rereading')
        os.makedirs(cd, exist_ok=True)
        while not stop.is_set():
            for h in hosts:
                if secret_files(k, 'hans', 'hatls-etcd', cd) is None:
                    client['failures'].append('the Secret is gone')
                    continue
                r = subprocess.run([eptest.ETCDCTL, '--endpoints=%s:%d' % (h, tport),
                                    '--dial-timeout=3s', '--command-timeout=5s'] +
                                   tls_args(cd) + ['get', 'probe'], capture_output=True,
                                   text=True, timeout=15, env=dict(os.environ, ETCDCTL_API='3'))
                client['requests'] += 1
                if r.returncode != 0:
                    client['failures'].append('%s: %s' % (h, r.stderr.strip()[-300:]))
    th = threading.Thread(target=rereading_client, daemon=True)
    th.start()
    rc, out, err, _ = lead.ctl('rotate', 'hatls')
    s.check(rc == 0, 'etcdproxyctl rotate on the leader', err)

    seen = {}

    def rotated():
        sec2, doc2 = ca_secret(k, 'hatls')
        seen['serials'] = doc2 and ca_serials(doc2)
        if doc2 is None or ca_serials(doc2)[0][-1] == first[0][-1]:
            return False
        if secret_files(k, 'hans', 'hatls-etcd', d) is None:
            return False
        seen['bundle'] = bundle_cns(open(os.path.join(d, 'ca.crt')).read())
        seen['issuers'] = [serving_issuer(h, tport, d) for h in hosts]
        seen['works'] = [serves_at(h, tport, d) for h in hosts]
        return all(i == seen['bundle'][-1] for i in seen['issuers']) and all(seen['works'])
    s.check(eptest.wait_until(rotated, 40, 0.5),
            'after the grace period every node serves a certificate of the new serving CA, '
            'and the client certificate read back from the Secret works against all three',
            (first, seen))
    time.sleep(3)
    stop.set()
    th.join(30)
    s.check(client['requests'] >= 9 and not client['failures'],
            'a client that rereads the Secret before each request failed none of them across '
            'the rotation (%d requests to the three nodes)' % client['requests'],
            client['failures'][:5])
    # a CA Secret someone damaged: its label removed, then its document
    path = '/api/v1/namespaces/kube-system/secrets/etcdproxy-ca-hatls'
    k.clear_requests()
    call(k, 'PATCH', path, {'metadata': {'labels': {'etcd.xmudrii.com/ca-state': None}}},
         'application/merge-patch+json')
    s.check(eptest.wait_until(lambda: ((ca_secret(k, 'hatls')[0] or {}).get('metadata', {})
                                       .get('labels') or {}).get('etcd.xmudrii.com/ca-state')
                              == 'true', 20, 0.5),
            'a CA Secret that lost its label gets it back from the leader (read by name and '
            'patched)')
    posts = [r for r in writes(k, '/namespaces/kube-system/secrets') if r['method'] == 'POST']
    s.check(len(posts) <= 3, 'with a bounded number of POSTs (%d)' % len(posts), posts)
    call(k, 'PATCH', path, {'data': {'ca.json': base64.b64encode(b'{"broken"').decode()}},
         'application/merge-patch+json')
    s.check(eptest.wait_until(lambda: ca_secret(k, 'hatls')[1] is not None, 20, 0.5),
            'a CA Secret whose document is broken is written again by the leader')
    s.check(secret_files(k, 'hans', 'hatls-etcd', d) is not None and everywhere(d),
            'and the nodes kept serving with the CAs they had, for the Secret\'s client '
            'certificate')
    _, doc = ca_secret(k, 'hatls')
    before_takeover = ca_serials(doc)
    published = condition(wait_condition(s, k, 'hatls', 'CertificatesPublished', 'True'),
                          'CertificatesPublished')

    old = next(sv for sv in nodes if sv.name == holder(k))
    t0 = time.time()
    old.send(signal.SIGSTOP)
    s.check(eptest.wait_until(lambda: holder(k) not in (None, old.name), 10),
            'SIGSTOP of the leader: another node takes the lease')
    took = time.time() - t0
    s.check(took < 3 + 2 + 1, 'within the lease duration and a retry (%.1fs)' % took)
    new = holder(k)
    k.clear_requests()
    old.send(signal.SIGCONT)
    time.sleep(3)
    s.eq(holder(k), new, 'after SIGCONT the old leader does not take the lease back')
    st = ((old.ctl('status')[3] or {}).get('daemon') or {}).get('kubernetes') or {}
    s.check(st.get('leader') is False, 'and knows it is not the leader', st)
    by_old = [r for r in k.requests() if '(node %s)' % old.name in r.get('agent', '')]
    led = [(r['method'], r['path'], r.get('code')) for r in by_old
           if r['method'] in ('PATCH', 'PUT', 'POST') and r.get('code', 0) < 300 and
           any(p in r['path'] for p in ('/secrets', '/configmaps', '/leases/', '/events')) or
           '"conditions"' in r.get('body', '')]
    s.check(by_old and not led, 'after SIGCONT the old leader (known by its User-Agent, %d '
            'requests) wrote nothing a leader writes: no Lease, Secret, ConfigMap, Event or '
            'condition' % len(by_old), led)
    _, doc = ca_secret(k, 'hatls')
    s.check(doc is not None and all(set(a) <= set(b) for a, b in
                                    zip(ca_serials(doc), before_takeover)),
            'the new leader continues the CAs it found (no CA of its own)',
            (doc and ca_serials(doc), before_takeover))
    s.check(eptest.wait_until(lambda: secret_files(k, 'hans', 'hatls-etcd', d) is not None and
                              everywhere(d), 30),
            'after the takeover the Secret\'s client certificate works against all three nodes')
    time.sleep(2)
    s.eq(condition(get(k, 'hatls'), 'CertificatesPublished'), published,
         'CertificatesPublished did not flip on the way (the new leader kept what it found '
         'until it had looked)')

    leader = next(sv for sv in nodes if sv.name == new)
    # the stop comes while a renewal is committed but its answer is not back yet: the release,
    # an update of the last write the leader heard of, conflicts (409); the leader must read
    # the Lease again and release it all the same
    k.hook('fault', {'method': 'PUT', 'path': '/leases/etcdproxyd$', 'hold': 1.5})
    s.check(eptest.wait_until(lambda: not k.hook('fault', method='GET')['faults'], 5),
            'a renewal of the leader is held back by the API server')
    time.sleep(0.2)
    s.eq(leader.stop(), 0, 'SIGTERM of the leader: it exits 0')
    sp = lease(k) or {}
    s.check(sp.get('holderIdentity') in ('', None) or sp.get('holderIdentity') != new,
            'it released the lease', sp)
    for sv in nodes:
        if sv is not leader:
            s.eq(sv.stop(), 0, 'etcdproxyd %s exits 0' % sv.name)


def test_tls_kubeconfigs(s, core, tmp):
    k = kubeserver.start(tmp, tls=True, tokens=['tok-1'], name='kube-tls')
    try:
        for i, (kc, what) in enumerate(((k.kubeconfig, 'inline data'),
                                        (k.kubeconfig_paths, 'file paths'))):
            sv = eptest.Supervisor(s, core, name='tls-%d' % i, extra={
                'kubernetes': {'kubeconfig': kc, 'node_name': 'x'}})
            sv.start()
            port = eptest.free_port()
            name = 'tls%d' % i
            call(k, 'POST', API, storage(name, {'listen': '127.0.0.1:%d' % port,
                                                'backend': 'native', 'tls': {'enabled': False}}))
            sv.wait_ready(name)
            obj = wait_condition(s, k, name, 'Ready', 'True')
            s.check('x' in ((obj.get('status') or {}).get('nodes') or {}),
                    'a kubeconfig with %s over TLS with a client certificate: the tenant came '
                    'from the cluster and its status went back' % what, obj.get('status'))
            s.eq(sv.stop(), 0, 'etcdproxyd exits 0')

        # a token file that rotates
        tok = os.path.join(tmp, 'bearer-token')
        with open(tok, 'w') as f:
            f.write('tok-1\n')
        kc = os.path.join(tmp, 'bearer-token.kubeconfig')
        with open(kc, 'w') as f:
            f.write('apiVersion: v1\nkind: Config\ncurrent-context: c\n'
                    'clusters: [{name: k, cluster: {server: "%s", certificate-authority: '
                    '"%s"}}]\n'
                    'contexts: [{name: c, context: {cluster: k, user: u}}]\n'
                    'users: [{name: u, user: {tokenFile: "%s"}}]\n' % (
                        k.url, os.path.join(k.tls_dir, 'ca.crt'), tok))
        sv = eptest.Supervisor(s, core, name='token', extra={
            'kubernetes': {'kubeconfig': kc, 'node_name': 'x', 'resync': '1s'}})
        sv.start()
        port = eptest.free_port()
        call(k, 'POST', API, storage('tok', {'listen': '127.0.0.1:%d' % port,
                                             'backend': 'native', 'tls': {'enabled': False}}))
        sv.wait_ready('tok')
        with open(tok + '.new', 'w') as f:
            f.write('tok-2\n')
        os.rename(tok + '.new', tok)
        k.set_tokens(['tok-2'])
        k.hook('end-watches')
        port2 = eptest.free_port()
        call(k, 'POST', API, storage('tok2', {'listen': '127.0.0.1:%d' % port2,
                                              'backend': 'native', 'tls': {'enabled': False}}))
        sv.wait_ready('tok2', timeout=30)
        codes = [r['code'] for r in k.requests()]
        s.check(401 in codes, 'after the token rotates, the old one gets a 401 ...', codes[-20:])
        s.check(eptest.wait_until(lambda: 'x' in ((get(k, 'tok2').get('status') or {})
                                                  .get('nodes') or {}), 10),
                '... and the file, read again, carries on (tok2 came and its status went back)')
        s.eq(sv.stop(), 0, 'etcdproxyd exits 0')

        # in a pod: the service account's files and the KUBERNETES_SERVICE_* variables
        sa = os.path.join(tmp, 'serviceaccount')
        os.makedirs(sa, exist_ok=True)
        shutil.copy(os.path.join(k.tls_dir, 'ca.crt'), os.path.join(sa, 'ca.crt'))
        with open(os.path.join(sa, 'token'), 'w') as f:
            f.write('tok-2\n')
        with open(os.path.join(sa, 'namespace'), 'w') as f:
            f.write('etcdproxy\n')
        call(k, 'POST', '/api/v1/namespaces', {'apiVersion': 'v1', 'kind': 'Namespace',
                                               'metadata': {'name': 'etcdproxy'}})
        sv = eptest.Supervisor(s, core, name='pod', extra={
            'kubernetes': {'kubeconfig': 'in-cluster', 'service_account_dir': sa,
                           'node_name': 'pod'}})
        saved = dict(os.environ)
        os.environ.update(KUBERNETES_SERVICE_HOST='127.0.0.1',
                          KUBERNETES_SERVICE_PORT=str(k.port))
        try:
            sv.start()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        sv.wait_ready('tok', 'tok2', timeout=30)
        s.check(eptest.wait_until(lambda: 'pod' in ((get(k, 'tok').get('status') or {})
                                                    .get('nodes') or {}), 10),
                'in-cluster: the service account reaches the API server (its status is written)',
                get(k, 'tok').get('status'))
        lease_path = '/apis/coordination.k8s.io/v1/namespaces/etcdproxy/leases/etcdproxyd'
        s.check(eptest.wait_until(lambda: call(k, 'GET', lease_path)[0] == 200, 10),
                'in-cluster without kubernetes.namespace: the Lease is in the pod\'s namespace '
                '(the service account\'s namespace file)', call(k, 'GET', lease_path))
        s.eq(sv.stop(), 0, 'etcdproxyd exits 0')
    finally:
        k.stop()


def body(s):
    core = eptest.CoreEtcd(s).start()
    k = kubeserver.start(s.tmp)
    try:
        for fn, args in ((test_lifecycle, (s, core, k)),
                         (test_refused_names, (s, core, k)),
                         (test_status_writes, (s, core, k)),
                         (test_watch, (s, core, k)),
                         (test_outage, (s, core, s.tmp)),
                         (test_certificates, (s, core, k, s.tmp)),
                         (test_three_nodes, (s, core, k, s.tmp)),
                         (test_tls_kubeconfigs, (s, core, s.tmp))):
            s.run(fn, *args)
    finally:
        k.stop()


if __name__ == '__main__':
    s = eptest.Suite('kube-source')
    s.require(eptest.ETCD, eptest.ETCDCTL, eptest.ETCDPROXYD, eptest.ETCDPROXYCTL, eptest.WORKER,
              KUBECTL)
    s.main(body)
