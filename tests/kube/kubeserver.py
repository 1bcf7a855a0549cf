"""Start and stop the kube-apiserver stand-in (apiserver.py beside this file) from a test.

    import kubeserver
    k = kubeserver.start(tmpdir)                 # plain HTTP, no authentication
    k = kubeserver.start(tmpdir, tls=True, tokens=['t1'])
    k.kubeconfig, k.kubeconfig_paths (TLS only), k.url, k.port, k.tls_dir, k.tokens_file
    k.hook('compact'); k.hook('fault', {'method': 'PATCH', 'path': '/status$', 'code': 409})
    k.requests(); k.clear_requests(); k.set_tokens(['t2'])
    k.stop()                                     # SIGTERM, then SIGKILL, by PID

Only the standard library; the server runs under /usr/bin/python3.
"""

import json
import os
import signal
import socket
import ssl
import subprocess
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
APISERVER = os.path.join(HERE, 'apiserver.py')
PYTHON = '/usr/bin/python3'


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]
    finally:
        s.close()


class KubeServer:
    def __init__(self, tmpdir, tls=False, tokens=None, crd=None, name='kube', log=True):
        self.dir = os.path.join(tmpdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.kubeconfig = os.path.join(self.dir, 'kubeconfig')
        self.kubeconfig_paths = self.kubeconfig + '.paths' if tls else None
        self.tls_dir = os.path.join(self.dir, 'pki') if tls else None
        self.tokens_file = None
        if tokens is not None:
            self.tokens_file = os.path.join(self.dir, 'tokens')
            self.set_tokens(tokens)
        self.crd = crd
        self.log = os.path.join(self.dir, 'apiserver.log') if log else None
        self.proc = None
        self.port = None
        self._ctx = None

    @property
    def url(self):
        return '%s://127.0.0.1:%d' % ('https' if self.tls_dir else 'http', self.port)

    def set_tokens(self, tokens):
        """Replace the accepted tokens (the server reads the file on every request)."""
        with open(self.tokens_file + '.tmp', 'w') as f:
            f.write(''.join('%s\n' % t for t in tokens))
        os.rename(self.tokens_file + '.tmp', self.tokens_file)

    def start(self, timeout=20):
        for attempt in range(3):
            self.port = free_port()
            cmd = [PYTHON, APISERVER, '--listen', '127.0.0.1:%d' % self.port,
                   '--kubeconfig-out', self.kubeconfig]
            if self.crd is not None:
                cmd += ['--crd', self.crd]
            if self.tls_dir:
                cmd += ['--tls', self.tls_dir]
            if self.tokens_file:
                cmd += ['--tokens', self.tokens_file]
            if self.log:
                cmd += ['--log', self.log]
            err = open(os.path.join(self.dir, 'apiserver.stderr'), 'ab')
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=err)
            err.close()
            line = self._readline(timeout)
            if line == 'ready':
                if self.tls_dir:
                    self._ctx = ssl.create_default_context(
                        cafile=os.path.join(self.tls_dir, 'ca.crt'))
                return self
            self.stop()
        raise RuntimeError('the kube-apiserver stand-in does not start: see %s'
                           % os.path.join(self.dir, 'apiserver.stderr'))

    def _readline(self, timeout):
        import select
        fd = self.proc.stdout
        r, _, _ = select.select([fd], [], [], timeout)
        if not r:
            return None
        return fd.readline().decode(errors='replace').strip()

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def hook(self, name, body=None, method=None):
        """Call a test hook: POST /_test/NAME with body as JSON (GET when method says so);
        returns the decoded answer."""
        method = method or ('POST' if body is not None or name not in ('requests', 'state')
                            else 'GET')
        data = json.dumps(body if body is not None else {}).encode() if method == 'POST' \
            else None
        req = urllib.request.Request(self.url + '/_test/' + name, data=data, method=method,
                                     headers={'Content-Type': 'application/json'})
        with urllib.request.urlopen(req, timeout=10, context=self._ctx) as r:
            return json.loads(r.read().decode() or 'null')

    def requests(self):
        return self.hook('requests', method='GET')

    def clear_requests(self):
        return self.hook('requests/clear')

    def stop(self, timeout=5):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except OSError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(self.proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                self.proc.wait(timeout)
        if self.proc.stdout:
            self.proc.stdout.close()
        rc = self.proc.returncode
        return rc


def start(tmpdir, tls=False, tokens=None, crd=None, name='kube', timeout=20):
    """A running stand-in with its files in tmpdir/NAME; see KubeServer."""
    return KubeServer(tmpdir, tls=tls, tokens=tokens, crd=crd, name=name).start(timeout)
