#!/usr/bin/python3
"""The kube-apiserver stand-in (tests/kube/apiserver.py) against the real clients: Debian's
kubectl (EP_KUBECTL, default /usr/bin/kubectl) and python3-kubernetes.  Discovery (kubectl
api-resources), client-side apply (created, unchanged, configured), the status subresource
(kubectl patch --subresource=status where kubectl has it, kubectl replace --raw on /status
where it does not, as 1.20), kubectl wait for a Ready condition, kubectl get -w
--output-watch-events, Table columns from the CRD, a stale resourceVersion refused with
Conflict, kubectl create secret tls, 410 Expired for a watch and a list below the compaction
floor, and the same through python3-kubernetes (list, watch, ApiException 410).  The test hooks
(faults with Retry-After, split and closed watch events, bookmarks, end-watches, the request
log).  TLS: kubectl with the inline and the file-path kubeconfig, a wrong token 401, a token
rotated through the tokens file."""

import base64
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

sys.dont_write_bytecode = True  # nothing written into the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eptest  # noqa: E402
from eptest import Failure, wait_until  # noqa: E402

sys.path.insert(0, os.path.join(eptest.SRCDIR, 'tests', 'kube'))
import kubeserver  # noqa: E402

KUBECTL = os.environ.get('EP_KUBECTL') or '/usr/bin/kubectl'
OPENSSL = '/usr/bin/openssl'
CRD = os.path.join(eptest.SRCDIR, 'contrib', 'crd', 'etcdstorage-crd.yaml')
G, V, P = 'etcd.xmudrii.com', 'v1alpha1', 'etcdstorages'
ES = '/apis/%s/%s/%s' % (G, V, P)

try:
    import kubernetes  # noqa: E402
    from kubernetes import client as kclient, config as kconfig, watch as kwatch  # noqa: E402
    from kubernetes.client.rest import ApiException  # noqa: E402
except ImportError:
    kubernetes = None


# ---- helpers ---------------------------------------------------------------------------------

class Kube:
    """One stand-in and the ways the test talks to it."""

    def __init__(self, s, name, **kw):
        self.s = s
        self.k = kubeserver.KubeServer(s.tmp, crd=CRD, name=name, **kw).start()
        s.procs.track(self.k.pid, 'apiserver.py %s' % name)
        s.cleanups.append(self.k.stop)
        s.logs.append(('apiserver %s' % name, self.k.log, 15))
        self.cache = os.path.join(s.tmp, 'kubectl-cache-' + name)
        self.ctx = None
        if kw.get('tls'):
            pki = self.k.tls_dir
            self.ctx = ssl.create_default_context(cafile=os.path.join(pki, 'ca.crt'))
            self.ctx.load_cert_chain(os.path.join(pki, 'client.crt'),
                                     os.path.join(pki, 'client.key'))

    def kubectl(self, *args, kubeconfig=None, input=None, timeout=30):
        cmd = [KUBECTL, '--kubeconfig', kubeconfig or self.k.kubeconfig,
               '--cache-dir', self.cache] + [str(a) for a in args]
        env = dict(os.environ, HOME=self.s.tmp)
        try:
            return subprocess.run(cmd, capture_output=True, text=True, input=input, env=env,
                                  timeout=timeout, stdin=None if input else subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            return subprocess.CompletedProcess(cmd, -1, '', 'timed out: %s' % e)

    def kubectl_bg(self, log, *args):
        cmd = [KUBECTL, '--kubeconfig', self.k.kubeconfig, '--cache-dir', self.cache] + \
            [str(a) for a in args]
        return self.s.popen(cmd, log=log, label='kubectl %s' % args[0], log_lines=10,
                            env=dict(os.environ, HOME=self.s.tmp))

    def http(self, method, path, body=None, ctype='application/json', headers=None,
             cert=True, token=None):
        """(code, headers, decoded body) of one request; body: an object sent as JSON."""
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h = dict(headers or {})
        if data is not None:
            h['Content-Type'] = ctype
        if token is not None:
            h['Authorization'] = 'Bearer ' + token
        ctx = self.ctx if cert else (
            ssl.create_default_context(cafile=os.path.join(self.k.tls_dir, 'ca.crt'))
            if self.ctx else None)
        req = urllib.request.Request(self.k.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
                raw = r.read()
                code, hdrs = r.status, dict(r.headers)
        except urllib.error.HTTPError as e:
            raw, code, hdrs = e.read(), e.code, dict(e.headers)
        try:
            return code, hdrs, json.loads(raw.decode() or 'null')
        except ValueError:
            return code, hdrs, raw.decode(errors='replace')

    def obj(self, path):
        code, _, o = self.http('GET', path)
        if code != 200:
            raise Failure('GET %s: %d %s' % (path, code, o))
        return o


def etcdstorage(name, listen, backend='native'):
    return ('apiVersion: %s/%s\nkind: EtcdStorage\nmetadata:\n  name: %s\nspec:\n'
            '  backend: %s\n  listen: "%s"\n' % (G, V, name, backend, listen))


def is_status(o, code, reason):
    return (isinstance(o, dict) and o.get('kind') == 'Status' and o.get('apiVersion') == 'v1'
            and o.get('status') == 'Failure' and o.get('code') == code
            and o.get('reason') == reason and bool(o.get('message')))


def out_of(r):
    return 'rc=%s\nstdout: %s\nstderr: %s' % (r.returncode, r.stdout, r.stderr)


class RawWatch:
    """A watch read at the level of HTTP chunks (plain HTTP only)."""

    def __init__(self, port, path):
        self.sock = socket.create_connection(('127.0.0.1', port), timeout=5)
        self.sock.sendall(('GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n'
                           '\r\n' % path).encode())
        self.buf = b''
        while b'\r\n\r\n' not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b'\r\n\r\n', 1)
        self.head = head.decode()

    def _more(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.buf += data

    def chunk(self, timeout=5):
        """The next chunk's payload; b'' for the last chunk; None when the connection ends
        (or nothing arrives in time: 'timeout')."""
        self.sock.settimeout(timeout)
        try:
            while b'\r\n' not in self.buf:
                self._more()
            size_line, rest = self.buf.split(b'\r\n', 1)
            size = int(size_line, 16)
            self.buf = rest
            while len(self.buf) < size + 2:
                self._more()
            payload, self.buf = self.buf[:size], self.buf[size + 2:]
            return payload
        except EOFError:
            return None
        except socket.timeout:
            return 'timeout'

    def close(self):
        self.sock.close()


# ---- plain HTTP: kubectl ---------------------------------------------------------------------

def test_discovery(s, kube):
    r = kube.kubectl('api-resources')
    line = [x for x in r.stdout.splitlines() if x.split()[:1] == ['etcdstorages']]
    s.check(r.returncode == 0 and line, 'kubectl api-resources lists etcdstorages', out_of(r))
    if line:
        f = line[0].split()
        s.check('false' in f and 'EtcdStorage' in f and any(G in x for x in f),
                'etcdstorages: group %s, not namespaced, kind EtcdStorage' % G, line[0])
    s.check(any(x.split()[:1] == ['leases'] for x in r.stdout.splitlines()),
            'kubectl api-resources lists coordination.k8s.io leases', r.stdout)
    r = kube.kubectl('api-resources', '--api-group', G, '-o', 'name')
    s.eq(r.stdout.split(), ['%s.%s' % (P, G)], 'api-resources --api-group %s: one resource' % G)
    code, _, o = kube.http('GET', '/apis/%s/%s' % (G, V))
    names = [x['name'] for x in (o or {}).get('resources', [])] if code == 200 else []
    s.eq(sorted(names), [P, P + '/status'], 'discovery of %s/%s: the resource and its status '
         'subresource' % (G, V))


def test_apply(s, kube):
    path = os.path.join(s.tmp, 'a1.yaml')
    eptest.write_text(path, etcdstorage('a1', '127.0.0.1:2400'))
    r = kube.kubectl('apply', '-f', path)
    s.check(r.returncode == 0 and 'created' in r.stdout, 'kubectl apply: created', out_of(r))
    kube.k.clear_requests()
    r = kube.kubectl('apply', '-f', path)
    s.check(r.returncode == 0 and 'a1 unchanged' in r.stdout,
            'kubectl apply of the same file: unchanged', out_of(r))
    writes = [q for q in kube.k.requests() if q['method'] in ('PATCH', 'PUT', 'POST')]
    s.eq(writes, [], 'an unchanged apply writes nothing')
    eptest.write_text(path, etcdstorage('a1', '127.0.0.1:2401'))
    r = kube.kubectl('apply', '-f', path)
    s.check(r.returncode == 0 and 'a1 configured' in r.stdout,
            'kubectl apply of a changed file: configured', out_of(r))
    patches = [q for q in kube.k.requests() if q['method'] == 'PATCH']
    s.check(patches and patches[-1]['content_type'] == 'application/merge-patch+json'
            and patches[-1]['code'] == 200,
            'the change went as a JSON merge patch (a custom resource)', patches)
    o = kube.obj(ES + '/a1')
    s.eq((o['spec'].get('listen'), o['metadata'].get('generation')), ('127.0.0.1:2401', 2),
         'the object holds the new spec, generation 2')
    r = kube.kubectl('apply', '-f', path)
    s.check('a1 unchanged' in r.stdout, 'applied again: unchanged', out_of(r))


def set_ready_status(s, kube, name, status='True', reason='Serving'):
    """Write status.conditions through the status subresource with kubectl; also tries to
    change the spec in the same write, which must not stick."""
    cond = {'type': 'Ready', 'status': status, 'reason': reason, 'message': 'by the test',
            'lastTransitionTime': '2024-01-01T00:00:00Z'}
    help_text = kube.kubectl('patch', '--help').stdout
    if '--subresource' in help_text:
        how = 'kubectl patch --subresource=status --type=merge'
        r = kube.kubectl('patch', P, name, '--subresource=status', '--type=merge', '-p',
                         json.dumps({'status': {'conditions': [cond]},
                                     'spec': {'listen': 'changed-by-status'}}))
    else:
        how = 'kubectl replace --raw on /status (kubectl has no --subresource)'
        o = kube.obj(ES + '/' + name)
        o['status'] = {'conditions': [cond]}
        o['spec']['listen'] = 'changed-by-status'
        path = os.path.join(s.tmp, 'status-%s.json' % name)
        eptest.write_json(path, o)
        r = kube.kubectl('replace', '--raw', '%s/%s/status' % (ES, name), '-f', path)
    return how, r


def test_status_and_wait(s, kube):
    path = os.path.join(s.tmp, 'w1.yaml')
    eptest.write_text(path, etcdstorage('w1', '127.0.0.1:2500', backend='etcd'))
    r = kube.kubectl('apply', '-f', path)
    s.require_check(r.returncode == 0, 'w1 created', out_of(r))
    waiter = kube.kubectl_bg(os.path.join(s.tmp, 'wait.log'), 'wait',
                             '--for=condition=Ready', '%s/w1' % P, '--timeout=20s')
    time.sleep(0.5)
    s.check(waiter.poll() is None, 'kubectl wait --for=condition=Ready waits while w1 has no '
            'Ready condition', eptest.read_text(os.path.join(s.tmp, 'wait.log')))
    before = kube.obj(ES + '/w1')
    how, r = set_ready_status(s, kube, 'w1')
    print('# status written with %s' % how)
    s.check(r.returncode == 0, 'status subresource written (%s)' % how, out_of(r))
    after = kube.obj(ES + '/w1')
    conds = (after.get('status') or {}).get('conditions') or []
    s.eq([(c.get('type'), c.get('status')) for c in conds], [('Ready', 'True')],
         'status.conditions holds Ready=True')
    s.eq(after['spec'], before['spec'], 'a write through /status leaves the spec alone')
    s.eq(after['metadata']['generation'], before['metadata']['generation'],
         'a write through /status does not bump the generation')
    s.check(int(after['metadata']['resourceVersion']) > int(before['metadata']['resourceVersion']),
            'the status write got a new resourceVersion')
    s.check(wait_until(lambda: waiter.poll() is not None, 15), 'kubectl wait returns')
    s.eq(waiter.returncode, 0, 'kubectl wait --for=condition=Ready exits 0 after the status '
         'write')
    s.check('condition met' in eptest.read_text(os.path.join(s.tmp, 'wait.log')),
            'kubectl wait says "condition met"', eptest.read_text(os.path.join(s.tmp,
                                                                               'wait.log')))
    # a write to the main resource cannot change the status
    o = kube.obj(ES + '/w1')
    o['status'] = {'conditions': []}
    o['spec']['listen'] = '127.0.0.1:2501'
    code, _, new = kube.http('PUT', ES + '/w1', o)
    s.check(code == 200 and new['status'] == after['status']
            and new['spec']['listen'] == '127.0.0.1:2501'
            and new['metadata']['generation'] == after['metadata']['generation'] + 1,
            'PUT on the resource: spec changed, generation bumped, status kept', new)


def test_table(s, kube):
    r = kube.kubectl('get', 'etcdstorage')
    lines = r.stdout.splitlines()
    s.eq(lines[0].split() if lines else None, ['NAME', 'READY', 'REASON', 'BACKEND', 'LISTEN',
                                               'AGE'],
         'kubectl get etcdstorage: the CRD\'s printer columns')
    row = [x.split() for x in lines[1:] if x.split()[:1] == ['w1']]
    s.check(row and row[0][1:5] == ['True', 'Serving', 'etcd', '127.0.0.1:2501'],
            'the w1 row: Ready True, Reason Serving, Backend etcd, Listen', r.stdout)
    s.check(row and row[0][5][-1] in 'smhd', 'the AGE cell is a duration', r.stdout)
    code, _, t = kube.http('GET', ES, headers={
        'Accept': 'application/json;as=Table;v=v1;g=meta.k8s.io'})
    s.check(code == 200 and t.get('kind') == 'Table' and
            [c['name'] for c in t.get('columnDefinitions', [])] ==
            ['Name', 'Ready', 'Reason', 'Backend', 'Listen', 'Age'],
            'a Table asked for by Accept has the column definitions', t)
    r = kube.kubectl('get', 'secrets', '-n', 'kube-system')
    s.check(r.returncode == 0 and 'No resources found' in r.stderr,
            'kubectl get of an empty namespaced list', out_of(r))


def test_watch_events(s, kube):
    log = os.path.join(s.tmp, 'get-w.log')
    w = kube.kubectl_bg(log, 'get', P, '-w', '--output-watch-events')
    s.require_check(wait_until(lambda: 'EVENT' in eptest.read_text(log), 10),
                    'kubectl get -w --output-watch-events prints its header', eptest.read_text(log))
    path = os.path.join(s.tmp, 'ev1.yaml')
    eptest.write_text(path, etcdstorage('ev1', '127.0.0.1:2600'))
    kube.kubectl('apply', '-f', path)
    eptest.write_text(path, etcdstorage('ev1', '127.0.0.1:2601'))
    kube.kubectl('apply', '-f', path)
    kube.kubectl('delete', P, 'ev1')

    def seen():
        rows = [x.split() for x in eptest.read_text(log).splitlines()]
        return [r[0] for r in rows if len(r) > 1 and r[1] == 'ev1']
    wait_until(lambda: 'DELETED' in seen(), 10)
    s.eq(seen(), ['ADDED', 'MODIFIED', 'DELETED'], 'kubectl get -w sees ev1 ADDED, MODIFIED, '
         'DELETED')
    r = kube.k.hook('end-watches')
    s.check(r.get('ended', 0) >= 1, 'end-watches counts the open watch', r)
    s.check(wait_until(lambda: w.poll() is not None, 10), 'kubectl get -w ends when the '
            'server ends its watch normally', eptest.read_text(log))


def test_conflict(s, kube):
    o = kube.obj(ES + '/a1')
    stale = os.path.join(s.tmp, 'a1-stale.json')
    eptest.write_json(stale, o)
    r = kube.kubectl('annotate', P, 'a1', 'touched=yes')
    s.require_check(r.returncode == 0, 'a1 annotated (its resourceVersion moves on)', out_of(r))
    r = kube.kubectl('replace', '-f', stale)
    s.check(r.returncode != 0 and '(Conflict)' in r.stderr and
            'the object has been modified' in r.stderr,
            'kubectl replace with a stale resourceVersion: Conflict', out_of(r))
    o['metadata']['resourceVersion'] = kube.obj(ES + '/a1')['metadata']['resourceVersion']
    eptest.write_json(stale, o)
    r = kube.kubectl('replace', '-f', stale)
    s.check(r.returncode == 0 and 'replaced' in r.stdout,
            'the same replace with the current resourceVersion succeeds', out_of(r))
    # merge patch with a resourceVersion precondition
    code, _, st = kube.http('PATCH', ES + '/a1', {'metadata': {'resourceVersion': '1'},
                                                  'spec': {'backend': 'etcd'}},
                            'application/merge-patch+json')
    s.check(code == 409 and is_status(st, 409, 'Conflict'),
            'merge patch with a stale resourceVersion: 409 Conflict Status', st)
    code, _, st = kube.http('PATCH', ES + '/a1', {'spec': {'backend': 'etcd'}},
                            'application/strategic-merge-patch+json')
    s.check(code == 415 and is_status(st, 415, 'UnsupportedMediaType'),
            'strategic merge patch on a custom resource: 415', st)
    code, _, new = kube.http('PATCH', ES + '/a1', [
        {'op': 'test', 'path': '/spec/backend', 'value': 'native'},
        {'op': 'replace', 'path': '/spec/backend', 'value': 'etcd'}],
        'application/json-patch+json')
    s.check(code == 200 and new['spec']['backend'] == 'etcd', 'JSON patch (test, replace)', new)
    code, _, st = kube.http('POST', ES, {'apiVersion': '%s/%s' % (G, V), 'kind': 'EtcdStorage',
                                         'metadata': {'name': 'a1'}, 'spec': {}})
    s.check(code == 409 and is_status(st, 409, 'AlreadyExists'), 'create twice: 409 '
            'AlreadyExists', st)
    code, _, st = kube.http('GET', ES + '/nope')
    s.check(code == 404 and is_status(st, 404, 'NotFound'), 'a missing object: 404 NotFound', st)
    code, _, st = kube.http('POST', ES, {'apiVersion': '%s/%s' % (G, V), 'kind': 'EtcdStorage',
                                         'metadata': {'name': 'bad'},
                                         'spec': {'backend': 'Not Valid'}})
    s.check(code == 422 and is_status(st, 422, 'Invalid') and 'spec.backend' in st['message'],
            'a spec against the CRD schema: 422 Invalid naming spec.backend', st)


def test_secret_tls(s, kube):
    key, crt = os.path.join(s.tmp, 'tls.key'), os.path.join(s.tmp, 'tls.crt')
    subprocess.run([OPENSSL, 'req', '-x509', '-newkey', 'ec', '-pkeyopt',
                    'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', crt,
                    '-days', '1', '-subj', '/CN=tls-secret'], check=True,
                   capture_output=True)
    r = kube.kubectl('create', 'secret', 'tls', 'tls1', '--cert', crt, '--key', key)
    s.check(r.returncode == 0 and 'created' in r.stdout, 'kubectl create secret tls', out_of(r))
    o = kube.obj('/api/v1/namespaces/default/secrets/tls1')
    s.eq(o.get('type'), 'kubernetes.io/tls', 'the Secret has type kubernetes.io/tls')
    data = o.get('data') or {}
    s.eq(base64.b64decode(data.get('tls.crt', '')).decode(), eptest.read_text(crt),
         'tls.crt holds the certificate, base64')
    r = kube.kubectl('get', 'secret', 'tls1')
    s.check(r.returncode == 0 and 'kubernetes.io/tls' in r.stdout, 'kubectl get secret shows '
            'the type', out_of(r))
    r = kube.kubectl('label', 'secret', 'tls1', 'role=serving')
    r = kube.kubectl('get', 'secrets', '-l', 'role=serving', '-o', 'name')
    s.eq(r.stdout.split(), ['secret/tls1'], 'list with an equality label selector')
    r = kube.kubectl('get', 'secrets', '-l', 'role=other', '-o', 'name')
    s.eq(r.stdout.split(), [], 'a selector that matches nothing')
    code, _, lst = kube.http('GET', '/api/v1/namespaces/default/secrets?fieldSelector='
                             'metadata.name%3Dtls1')
    s.check(code == 200 and [i['metadata']['name'] for i in lst['items']] == ['tls1']
            and lst['metadata'].get('resourceVersion'),
            'list with fieldSelector=metadata.name=tls1, resourceVersion in ListMeta', lst)


def test_expired(s, kube):
    rv = kube.obj(ES)['metadata']['resourceVersion']
    w = RawWatch(kube.k.port, ES + '?watch=1&resourceVersion=%s' % rv)
    try:
        code, _, _ = kube.http('PATCH', ES + '/a1', {'metadata': {'labels': {'c': '1'}}},
                               'application/merge-patch+json')
        floor = kube.k.hook('compact')['floor']
        c = w.chunk()
        ev = json.loads(c) if isinstance(c, bytes) and c else {}
        s.check(code == 200 and ev.get('type') == 'MODIFIED' and
                ev['object']['metadata']['resourceVersion'] == str(floor),
                'a watch open across a compaction still gets the event written just before it',
                c)
    finally:
        w.close()
    s.check(floor > 1, 'compact: the floor is the current resourceVersion (%s)' % floor)
    r = kube.kubectl('get', '--raw', ES + '?watch=1&resourceVersion=1')
    ev = None
    try:
        ev = json.loads(r.stdout.splitlines()[0])
    except (ValueError, IndexError):
        pass
    s.check(ev and ev.get('type') == 'ERROR' and is_status(ev.get('object'), 410, 'Expired'),
            'a watch from resourceVersion 1 after compaction: one ERROR event, Status 410 '
            'Expired', out_of(r))
    r = kube.kubectl('get', '--raw', ES + '?resourceVersion=1&resourceVersionMatch=Exact')
    s.check(r.returncode != 0 and '(Expired)' in r.stderr,
            'a list at an exact resourceVersion below the floor: Expired', out_of(r))
    code, _, st = kube.http('GET', ES + '?resourceVersion=1&resourceVersionMatch=Exact')
    s.check(code == 410 and is_status(st, 410, 'Expired'), 'the same list: HTTP 410 with a '
            'Status', st)
    code, _, lst = kube.http('GET', ES + '?resourceVersion=%d&resourceVersionMatch=Exact'
                             % floor)
    s.check(code == 200 and lst['metadata']['resourceVersion'] == str(floor),
            'a list at exactly the floor is served', lst)
    code, _, page = kube.http('GET', ES + '?limit=1')
    token = (page or {}).get('metadata', {}).get('continue')
    s.check(code == 200 and token and len(page['items']) == 1, 'a list with limit=1 pages',
            page)
    r = kube.kubectl('annotate', P, 'a1', 'again=yes', '--overwrite')
    s.require_check(r.returncode == 0, 'a1 annotated (the resourceVersion moves past the '
                    'token\'s)', out_of(r))
    kube.k.hook('compact')
    code, _, st = kube.http('GET', ES + '?limit=1&continue=%s' % token)
    s.check(code == 410 and is_status(st, 410, 'Expired'), 'its continue token after a '
            'compaction: 410 Expired', st)


# ---- plain HTTP: python3-kubernetes ----------------------------------------------------------

def test_python_client(s, kube):
    kconfig.load_kube_config(config_file=kube.k.kubeconfig)
    api = kclient.CustomObjectsApi()
    api.create_cluster_custom_object(G, V, P, {
        'apiVersion': '%s/%s' % (G, V), 'kind': 'EtcdStorage', 'metadata': {'name': 'py1'},
        'spec': {'listen': '127.0.0.1:2700'}})
    lst = api.list_cluster_custom_object(G, V, P)
    names = [i['metadata']['name'] for i in lst['items']]
    s.check('py1' in names and lst['metadata'].get('resourceVersion'),
            'python3-kubernetes lists the etcdstorages (py1 among them)', lst['metadata'])
    rv = lst['metadata']['resourceVersion']

    def writer():
        time.sleep(0.3)
        api.patch_cluster_custom_object(G, V, P, 'py1', {'spec': {'listen': '127.0.0.1:2701'}})
        api.patch_cluster_custom_object_status(G, V, P, 'py1', {'status': {
            'observedGeneration': 2}})
        api.delete_cluster_custom_object(G, V, P, 'py1')
    t = threading.Thread(target=writer)
    t.start()
    events = []
    w = kwatch.Watch()
    for ev in w.stream(api.list_cluster_custom_object, G, V, P, resource_version=rv,
                       timeout_seconds=8):
        events.append((ev['type'], ev['object']['metadata']['name'],
                       int(ev['object']['metadata']['resourceVersion'])))
        if ev['type'] == 'DELETED':
            w.stop()
    t.join()
    s.eq([e[:2] for e in events], [('MODIFIED', 'py1'), ('MODIFIED', 'py1'),
                                   ('DELETED', 'py1')],
         'python3-kubernetes watch: MODIFIED, MODIFIED (status), DELETED')
    s.check([e[2] for e in events] == sorted({e[2] for e in events}),
            'the events\' resourceVersions grow', events)
    kube.k.hook('compact')
    try:
        got = list(kwatch.Watch().stream(api.list_cluster_custom_object, G, V, P,
                                         resource_version='1', timeout_seconds=5))
        s.check(False, 'a watch from a compacted resourceVersion raises ApiException', got)
    except ApiException as e:
        s.check(e.status == 410 and 'Expired' in str(e.reason),
                'a watch from a compacted resourceVersion raises ApiException 410 Expired',
                '%s %s' % (e.status, e.reason))
    try:
        api.list_cluster_custom_object(G, V, P, resource_version='1',
                                       resource_version_match='Exact')
        s.check(False, 'an exact list below the floor raises ApiException')
    except ApiException as e:
        s.eq(e.status, 410, 'an exact list below the floor raises ApiException 410')
    core = kclient.CoreV1Api()
    core.create_namespaced_config_map('kube-system', kclient.V1ConfigMap(
        metadata=kclient.V1ObjectMeta(name='cm1', labels={'app': 'ep'}), data={'ca.crt': 'x'}))
    cms = core.list_namespaced_config_map('kube-system', label_selector='app=ep')
    s.eq([(c.metadata.name, c.data) for c in cms.items], [('cm1', {'ca.crt': 'x'})],
         'python3-kubernetes: a ConfigMap created and listed by label')
    coord = kclient.CoordinationV1Api()
    now = time.strftime('%Y-%m-%dT%H:%M:%S.000000Z', time.gmtime())
    coord.create_namespaced_lease('kube-system', kclient.V1Lease(
        metadata=kclient.V1ObjectMeta(name='etcdproxy'), spec=kclient.V1LeaseSpec(
            holder_identity='node-a', lease_duration_seconds=15)))
    code, _, lease = kube.http('PATCH', '/apis/coordination.k8s.io/v1/namespaces/kube-system/'
                               'leases/etcdproxy', {'spec': {'renewTime': now}},
                               'application/merge-patch+json')
    s.check(code == 200 and lease['spec']['renewTime'] == now and
            lease['spec']['holderIdentity'] == 'node-a', 'a Lease renewed by merge patch', lease)
    code, _, st = kube.http('PATCH', '/apis/coordination.k8s.io/v1/namespaces/kube-system/'
                            'leases/etcdproxy', {'spec': {'renewTime': now[:19] + 'Z'}},
                            'application/merge-patch+json')
    s.check(code == 400 and is_status(st, 400, 'BadRequest'),
            'a Lease renewTime without microseconds: 400, as metav1.MicroTime refuses it', st)


# ---- the hooks -------------------------------------------------------------------------------

def test_hooks(s, kube):
    path = ES + '/a1'
    r = kube.k.hook('fault', {'method': 'PATCH', 'path': '^%s$' % path, 'code': 503, 'count': 1,
                              'retry_after': 2})
    s.eq(len(r['faults']), 1, 'fault: one pending')
    code, hdrs, st = kube.http('PATCH', path, {'metadata': {'labels': {'f': '1'}}},
                               'application/merge-patch+json')
    s.check(code == 503 and is_status(st, 503, 'ServiceUnavailable') and
            hdrs.get('Retry-After') == '2',
            'the matching PATCH gets 503 ServiceUnavailable with Retry-After: 2', (code, hdrs, st))
    code, _, o = kube.http('PATCH', path, {'metadata': {'labels': {'f': '1'}}},
                           'application/merge-patch+json')
    s.check(code == 200 and o['metadata']['labels'].get('f') == '1',
            'the next one succeeds (count 1 used up)', o)
    kube.k.hook('fault', {'path': '/secrets', 'code': 429, 'count': 2})
    codes = [kube.http('GET', '/api/v1/namespaces/default/secrets')[0] for _ in range(3)]
    s.eq(codes, [429, 429, 200], 'a fault with count 2 and any method: 429, 429, then 200')
    s.eq(kube.http('GET', '/api/v1/namespaces/default/configmaps')[0], 200,
         'a request whose path does not match gets no fault')

    kube.k.clear_requests()
    kube.http('GET', path)
    log = kube.k.requests()
    s.check(len(log) == 1 and log[0]['method'] == 'GET' and log[0]['path'] == path and
            log[0]['code'] == 200 and isinstance(log[0]['time'], float),
            'the request log: method, path, code, time of each request', log)

    rv = kube.obj(ES)['metadata']['resourceVersion']
    w = RawWatch(kube.k.port, ES + '?watch=1&allowWatchBookmarks=true&resourceVersion=%s' % rv)
    try:
        s.check('Transfer-Encoding: chunked' in w.head and ' 200 ' in w.head.splitlines()[0],
                'a watch answers 200 with a chunked body', w.head)
        kube.k.hook('watch-fault', {'kind': 'split'})
        kube.kubectl('annotate', P, 'a1', 'split=yes', '--overwrite')
        first = w.chunk()
        while isinstance(first, bytes) and b'"BOOKMARK"' in first:
            first = w.chunk()
        second = w.chunk()
        s.check(isinstance(first, bytes) and isinstance(second, bytes) and first and
                not first.endswith(b'\n') and second.endswith(b'\n') and
                json.loads(first + second)['type'] == 'MODIFIED',
                'watch-fault split: one MODIFIED event in two chunks cut inside its JSON',
                (first, second))
        c = w.chunk(timeout=3)
        ev = json.loads(c) if isinstance(c, bytes) and c else {}
        s.check(ev.get('type') == 'BOOKMARK' and list(ev['object']['metadata']) ==
                ['resourceVersion'], 'BOOKMARKs come on their own about every second, with '
                'only metadata.resourceVersion', c)
        # right after a periodic one, the next is a second away: one sooner is the hook's
        t0 = time.monotonic()
        kube.k.hook('bookmark')
        c = w.chunk(timeout=3)
        took = time.monotonic() - t0
        s.check(isinstance(c, bytes) and b'"BOOKMARK"' in c and took < 0.6,
                'the bookmark hook: a BOOKMARK at once (%.2f s)' % took, c)
        kube.k.hook('end-watches')
        for _ in range(3):
            c = w.chunk()
            if not (isinstance(c, bytes) and b'BOOKMARK' in c):
                break
        s.eq(c, b'', 'end-watches: the watch ends with the last chunk')
    finally:
        w.close()

    rv = kube.obj(ES)['metadata']['resourceVersion']
    w = RawWatch(kube.k.port, ES + '?watch=1&resourceVersion=%s' % rv)
    try:
        kube.k.hook('watch-fault', {'kind': 'close'})
        kube.kubectl('annotate', P, 'a1', 'close=yes', '--overwrite')
        part = w.chunk()
        end = w.chunk()
        s.check(isinstance(part, bytes) and part and not part.endswith(b'\n') and end is None,
                'watch-fault close: half an event, then the connection closes without the '
                'last chunk', (part, end))
    finally:
        w.close()
    s.eq(kube.http('GET', '/_test/nothing')[0], 404, 'an unknown hook: 404')


# ---- TLS and tokens --------------------------------------------------------------------------

def test_tls(s, kube):
    for cfg, what in ((kube.k.kubeconfig, 'inline'), (kube.k.kubeconfig_paths, 'file paths')):
        text = eptest.read_text(cfg)
        marker = 'client-key-data' if what == 'inline' else 'client-key:'
        s.check(marker in text and 'https://127.0.0.1:' in text, 'the %s kubeconfig names '
                'the key with %s' % (what, marker.rstrip(':')), text[:300])
        r = kube.kubectl('get', 'ns', 'kube-system', '-o', 'name', kubeconfig=cfg)
        s.eq(r.stdout.strip(), 'namespace/kube-system', 'kubectl over TLS with the %s '
             'kubeconfig (client certificate)' % what)
        r = kube.kubectl('get', P, kubeconfig=cfg)
        s.check(r.returncode == 0, 'kubectl get %s over TLS (%s)' % (P, what), out_of(r))
    users = {q['user'] for q in kube.k.requests()}
    s.eq(users, {'etcdproxy-node'}, 'every request authenticated as the client certificate\'s '
         'CN')
    code, _, st = kube.http('GET', '/api/v1/namespaces', cert=False)
    s.check(code == 401 and is_status(st, 401, 'Unauthorized'), 'no certificate, no token: '
            '401 Unauthorized Status', st)
    code, _, st = kube.http('GET', '/api/v1/namespaces', cert=False, token='wrong')
    s.check(code == 401 and is_status(st, 401, 'Unauthorized'), 'a wrong token: 401', st)
    code, _, _ = kube.http('GET', '/api/v1/namespaces', cert=False, token='token-one')
    s.eq(code, 200, 'a listed token: 200')

    cfg = os.path.join(s.tmp, 'token.kubeconfig')
    eptest.write_text(cfg, json.dumps({
        'apiVersion': 'v1', 'kind': 'Config', 'current-context': 't',
        'clusters': [{'name': 't', 'cluster': {
            'server': kube.k.url, 'certificate-authority': os.path.join(kube.k.tls_dir,
                                                                        'ca.crt')}}],
        'users': [{'name': 't', 'user': {'token': 'token-one'}}],
        'contexts': [{'name': 't', 'context': {'cluster': 't', 'user': 't'}}]}))
    r = kube.kubectl('get', 'ns', 'default', '-o', 'name', kubeconfig=cfg)
    s.eq(r.stdout.strip(), 'namespace/default', 'kubectl with a token kubeconfig')
    r = kube.kubectl('get', 'ns', 'default', '--token', 'wrong', kubeconfig=cfg)
    s.check(r.returncode != 0 and 'Unauthorized' in r.stderr, 'kubectl with a wrong token: '
            'Unauthorized', out_of(r))
    kube.k.set_tokens(['token-two'])
    r = kube.kubectl('get', 'ns', 'default', kubeconfig=cfg)
    s.check(r.returncode != 0 and 'Unauthorized' in r.stderr, 'after rotation the old token '
            'is refused', out_of(r))
    r = kube.kubectl('get', 'ns', 'default', '-o', 'name', '--token', 'token-two',
                     kubeconfig=cfg)
    s.eq(r.stdout.strip(), 'namespace/default', 'after rotation the new token is accepted')

    kconfig.load_kube_config(config_file=kube.k.kubeconfig)
    names = [n.metadata.name for n in kclient.CoreV1Api().list_namespace().items]
    s.check('default' in names and 'kube-system' in names, 'python3-kubernetes over TLS with '
            'the inline kubeconfig', names)


def body(s):
    r = subprocess.run([KUBECTL, 'version', '--client'], capture_output=True, text=True)
    print('# %s: %s' % (KUBECTL, ((r.stdout or r.stderr).strip().splitlines() or [''])[0][:100]))
    kube = Kube(s, 'plain')
    s.run(test_discovery, s, kube)
    s.run(test_apply, s, kube)
    s.run(test_status_and_wait, s, kube)
    s.run(test_table, s, kube)
    s.run(test_watch_events, s, kube)
    s.run(test_conflict, s, kube)
    s.run(test_secret_tls, s, kube)
    s.run(test_python_client, s, kube)
    s.run(test_hooks, s, kube)
    s.run(test_expired, s, kube)
    s.eq(kube.k.stop(), 0, 'the stand-in exits 0 on SIGTERM')
    tls = Kube(s, 'tls', tls=True, tokens=['token-one'])
    s.run(test_tls, s, tls)


if __name__ == '__main__':
    s = eptest.Suite('kube-apiserver', timeout=120)
    s.require(KUBECTL, OPENSSL, kubeserver.PYTHON)
    if kubernetes is None:
        print('# SKIP: python3-kubernetes is not installed')
        print('0 passed, 0 failed')
        sys.exit(eptest.SKIP)
    s.main(body)
