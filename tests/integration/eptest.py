"""Shared helpers for the etcdproxy integration tests (run by /usr/bin/python3).

A test script builds a Suite, starts what it needs through it (CoreEtcd,
Supervisor), runs its checks with Suite.run() and ends with Suite.finish(),
which kills everything the test started (by PID), checks that no process of
the test is left, prints "N passed, M failed" and exits 0 or 1.

Environment: EP_SRCDIR and EP_BUILDDIR (absolute; set by `make check`);
EP_BUILDDIR defaults to /work/build for runs by hand. EP_ETCD and EP_ETCDCTL: the etcd
and etcdctl configure found (set by `make check`). EP_TEST_BACKEND (default "etcd")
is the backend of the tenants a test adds without naming one. EP_ONLY: a comma-separated
list of test function names; Suite.run() runs only those, so that one scenario of a file
can be run alone:
    EP_ONLY=test_ipv6 make check TESTS=tests/integration/test_listen.py
"""

import array
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request

from procs import descendants, proc_children

SRCDIR = os.environ.get('EP_SRCDIR') or os.path.abspath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
BUILDDIR = os.environ.get('EP_BUILDDIR') or '/work/build'

ETCDPROXYD = os.path.join(BUILDDIR, 'supervisor', 'etcdproxyd')
ETCDPROXYCTL = os.path.join(BUILDDIR, 'ctl', 'etcdproxyctl')
WORKER = os.path.join(BUILDDIR, 'worker', 'etcdproxy-worker')
PLUGIN_DIR = os.path.join(BUILDDIR, 'plugins', '.libs')
# the etcd and etcdctl configure found (make check passes them), else Debian's
ETCD = os.environ.get('EP_ETCD') or '/usr/bin/etcd'
ETCDCTL = os.environ.get('EP_ETCDCTL') or '/usr/bin/etcdctl'

SKIP = 77


def test_backend():
    """The backend of tenants a test writes without naming one: EP_TEST_BACKEND, "etcd" when
    unset (the test_native_* wrappers run the etcd-backend scenarios again with "native")."""
    return os.environ.get('EP_TEST_BACKEND') or 'etcd'


def etcd_backend():
    """Checks that only make sense for the etcd backend (its grpc-proxy child, its own
    refusals, a fake etcd binary) run only when this is true."""
    return test_backend() == 'etcd'

# the one marker every process a test starts inherits (see Suite.leftovers)
MARKER_VAR = 'EPTEST_TMP'


class Failure(Exception):
    """A check failed in a way that makes the rest of a test pointless."""
    reported = False


# ---- small utilities -----------------------------------------------------------------------

_ports_given = set()


def free_port():
    """A TCP port on 127.0.0.1 that nobody listens on right now, and that this test has not
    been given before (the kernel may hand out a port again once it is free, and two tenants
    written before either listens would then collide)."""
    while True:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]
        finally:
            s.close()
        if port not in _ports_given:
            _ports_given.add(port)
            return port


def port_open(port, host='127.0.0.1', timeout=0.5):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(pred, timeout, interval=0.1):
    """Poll pred() until it returns a true value (returned) or timeout (returns None)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def read_text(path):
    try:
        with open(path, errors='replace') as f:
            return f.read()
    except OSError:
        return ''


def tail(path, n=25):
    lines = read_text(path).splitlines()
    return lines[-n:]


def write_json(path, obj):
    with open(path + '.tmp', 'w') as f:
        json.dump(obj, f, indent=2)
        f.write('\n')
    os.rename(path + '.tmp', path)


def write_text(path, text, mode=None):
    with open(path + '.tmp', 'w') as f:
        f.write(text)
    if mode is not None:
        os.chmod(path + '.tmp', mode)
    os.rename(path + '.tmp', path)


# ---- /proc ---------------------------------------------------------------------------------

def proc_stat(pid):
    """(state, starttime) of a process, or None when it does not exist."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(')') + 2:].split()
    return fields[0], int(fields[19])


def pid_alive(pid, starttime=None):
    """A live (non-zombie) process, the same one when starttime is given."""
    st = proc_stat(pid)
    if st is None or st[0] in ('Z', 'X'):
        return False
    return starttime is None or st[1] == starttime


def proc_cmdline(pid):
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            return [a.decode(errors='replace') for a in f.read().split(b'\0') if a]
    except OSError:
        return []


class Procs:
    """Every process a test saw, by PID and start time (so a reused PID is never killed)."""

    def __init__(self):
        self.known = {}  # pid -> (starttime, label)

    def track(self, pid, label):
        if pid is None or pid in self.known:
            return
        st = proc_stat(pid)
        if st is not None and st[0] not in ('Z', 'X'):
            self.known[pid] = (st[1], label)

    def track_tree(self, pid, label):
        self.track(pid, label)
        for d in descendants(pid):
            self.track(d, '%s (descendant of %d: %s)' % (
                label, pid, ' '.join(proc_cmdline(d)[:3])))

    def alive(self, pid):
        e = self.known.get(pid)
        return e is not None and pid_alive(pid, e[0])

    def living(self, pids=None):
        return [p for p in (self.known if pids is None else pids) if self.alive(p)]

    def kill_all(self, timeout=5):
        live = self.living()
        for p in live:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        wait_until(lambda: not self.living(live), timeout)
        return live


# ---- etcdctl ---------------------------------------------------------------------------------

def etcdctl(port, *args, timeout=15, input=None):
    """Run etcdctl (API v3) against 127.0.0.1:port: returns a CompletedProcess (text)."""
    cmd = [ETCDCTL, '--endpoints=127.0.0.1:%d' % port, '--dial-timeout=3s',
           '--command-timeout=5s'] + [str(a) for a in args]
    env = dict(os.environ, ETCDCTL_API='3')
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              input=input, env=env, stdin=None if input else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        out = e.stdout or ''  # bytes, even with text=True
        if isinstance(out, bytes):
            out = out.decode(errors='replace')
        return subprocess.CompletedProcess(cmd, -1, out, 'timed out: %s' % e)


def etcd_kvs(port, *range_args):
    """{key: value} of `etcdctl get RANGE_ARGS -w json`, or raise Failure."""
    r = etcdctl(port, 'get', *range_args, '-w', 'json')
    if r.returncode != 0:
        raise Failure('etcdctl get %s on port %d failed: %s' % (range_args, port, r.stderr.strip()))
    data = json.loads(r.stdout)
    return {base64.b64decode(kv['key']).decode(): base64.b64decode(kv.get('value', '')).decode()
            for kv in data.get('kvs', [])}


def etcd_put(port, key, value):
    r = etcdctl(port, 'put', key, value)
    return r.returncode == 0 and r.stdout.strip() == 'OK'


def etcd_get(port, key):
    """The value of key, None if absent; raises Failure when etcdctl fails."""
    return etcd_kvs(port, key).get(key)


def serves(port, key='probe', value=None):
    """The endpoint takes a put and returns it on get."""
    value = value or 'v%f' % time.time()
    return etcd_put(port, key, value) and etcdctl(port, 'get', '--print-value-only', key) \
        .stdout.strip() == value


def wait_serves(port, timeout=15, key='probe'):
    return wait_until(lambda: serves(port, key), timeout, 0.2)


# ---- the test suite --------------------------------------------------------------------------

class Suite:
    # timeout: a guard against a hang, not a measure: test_kube_source.py alone took 99 s
    # under ASan on an idle machine (2026-12-04), and ran out of 100 s in a CI run at -j2
    def __init__(self, name, timeout=300):
        self.name = name
        self.tmp = tempfile.mkdtemp(prefix='ep-%s-' % name)
        self.passed = 0
        self.failed = 0
        self.procs = Procs()
        self.popens = []
        self.logs = []           # (label, path, lines) to print on failure
        self.cleanups = []
        self.logs_shown = False
        self.log_marks = {}
        self.finished = False
        os.environ[MARKER_VAR] = self.tmp
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGALRM, self._on_alarm)
        signal.alarm(timeout)

    def _on_alarm(self, signum, frame):
        raise TimeoutError('the test script ran out of time')

    def _on_sigterm(self, signum, frame):
        raise SystemExit('SIGTERM')

    # -- prerequisites

    def require(self, *paths):
        missing = [p for p in paths if not os.access(p, os.X_OK)]
        if missing:
            print('# SKIP: missing %s' % ', '.join(missing))
            print('0 passed, 0 failed')
            shutil.rmtree(self.tmp, ignore_errors=True)
            sys.exit(SKIP)

    # -- reporting

    def check(self, cond, what, detail=None):
        if cond:
            self.passed += 1
            print('ok - %s' % what)
        else:
            self.failed += 1
            print('not ok - %s' % what)
            if detail is not None:
                for line in str(detail).rstrip().splitlines()[-15:]:
                    print('#   %s' % line)
            self.show_logs()
        sys.stdout.flush()
        return bool(cond)

    def require_check(self, cond, what, detail=None):
        if not self.check(cond, what, detail):
            e = Failure('giving up on this test: %s' % what)
            e.reported = True
            raise e

    def eq(self, got, want, what):
        return self.check(got == want, what, 'expected %r, got %r' % (want, got))

    def show_logs(self):
        """The lines each log got since the current test began (the last few of them)."""
        if self.logs_shown:
            return
        self.logs_shown = True
        for label, path, n in self.logs:
            text = read_text(path)[self.log_marks.get(path, 0):]
            lines = text.splitlines()[-n:]
            if lines:
                print('# --- last lines of %s (%s)' % (label, path))
                for line in lines:
                    print('#   %s' % line[:240])

    def run(self, fn, *args):
        """Run one test function; an exception counts as one failed check."""
        only = os.environ.get('EP_ONLY')
        if only and fn.__name__ not in only.split(','):
            print('# %s: not run (EP_ONLY=%s)' % (fn.__name__, only))
            return
        self.logs_shown = False
        self.log_marks = {path: len(read_text(path)) for _, path, _ in self.logs}
        print('# %s' % fn.__name__)
        sys.stdout.flush()
        try:
            fn(*args)
        except Failure as e:
            if e.reported:
                print('# %s' % e)
            else:
                self.check(False, '%s: %s' % (fn.__name__, e))
        except Exception as e:  # noqa: BLE001 - report anything as a failure
            tb = traceback.extract_tb(e.__traceback__)
            where = ', '.join('%s:%d' % (os.path.basename(f.filename), f.lineno) for f in tb[-3:])
            self.check(False, '%s raised %s: %s' % (fn.__name__, type(e).__name__, e),
                       'at %s' % where)

    # -- processes

    def popen(self, cmd, log=None, label=None, log_lines=25, **kw):
        """Start a process with stdout+stderr into log; tracked and killed at the end."""
        out = open(log, 'ab') if log else subprocess.DEVNULL
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.STDOUT, **kw)
        if log:
            out.close()
            if log_lines:
                self.logs.append((label or os.path.basename(cmd[0]), log, log_lines))
        self.popens.append(p)
        self.procs.track(p.pid, label or ' '.join(cmd[:2]))
        return p

    def leftovers(self):
        """Live processes (other than this one) started by this test: by the TMP dir in
        their command line or the marker in their environment."""
        found = []
        me = os.getpid()
        tmp_b = self.tmp.encode()
        marker = ('%s=%s' % (MARKER_VAR, self.tmp)).encode()
        for d in os.listdir('/proc'):
            if not d.isdigit() or int(d) == me:
                continue
            pid = int(d)
            try:
                with open('/proc/%d/cmdline' % pid, 'rb') as f:
                    cmd = f.read()
                try:
                    with open('/proc/%d/environ' % pid, 'rb') as f:
                        env = f.read().split(b'\0')
                except OSError:
                    env = []
            except OSError:
                continue
            if (tmp_b in cmd or marker in env) and pid_alive(pid):
                found.append((pid, cmd.replace(b'\0', b' ').decode(errors='replace')[:200]))
        return found

    def cleanup(self):
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception as e:  # noqa: BLE001
                print('# cleanup: %s' % e)
        self.cleanups = []
        # everything seen, including the descendants recorded along the way
        for p in self.popens:
            if p.poll() is None:
                self.procs.track_tree(p.pid, 'started process')
        killed = self.procs.kill_all()
        for p in self.popens:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        return killed

    SANITIZER_MARKS = ('ERROR: AddressSanitizer', 'ERROR: LeakSanitizer', 'runtime error: ')

    def sanitizer_reports(self):
        """Lines of AddressSanitizer, LeakSanitizer or UBSan reports in the logs of this test
        (every daemon's stderr goes to a log under self.tmp; workers share the supervisor's):
        a worker that ran into one may have been restarted without any test noticing."""
        found = []
        for root, _, files in os.walk(self.tmp):
            for f in files:
                if not f.endswith(('.log', '.out')):
                    continue
                path = os.path.join(root, f)
                try:
                    with open(path, errors='replace') as fh:
                        for i, line in enumerate(fh):
                            if any(m in line for m in self.SANITIZER_MARKS):
                                found.append('%s:%d: %s' % (path, i + 1, line.rstrip()[:300]))
                except OSError:
                    pass
        return found[:20]

    def finish(self):
        signal.alarm(0)
        self.finished = True
        try:
            killed = self.cleanup()
            if killed:
                print('# cleanup killed %d process(es) still running: %s' % (
                    len(killed), ', '.join(str(p) for p in killed)))
            wait_until(lambda: not self.leftovers(), 3)
            left = self.leftovers()
            self.check(not left, 'no process of this test is left',
                       '\n'.join('%d: %s' % x for x in left))
            reports = self.sanitizer_reports()
            self.check(not reports, 'no log of this test holds a sanitizer report (or a Go '
                       'runtime error)',
                       '\n'.join(reports))
            for pid, _ in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        finally:
            if self.failed == 0:
                shutil.rmtree(self.tmp, ignore_errors=True)
            else:
                print('# test files kept in %s' % self.tmp)
            print('%d passed, %d failed' % (self.passed, self.failed))
            sys.stdout.flush()
        sys.exit(1 if self.failed else 0)

    def main(self, body):
        """Run body(suite); any escape is one failure; then finish()."""
        try:
            body(self)
        except BaseException as e:  # noqa: BLE001 - includes the alarm and SIGTERM
            tb = traceback.extract_tb(e.__traceback__)
            where = ', '.join('%s:%d' % (os.path.basename(f.filename), f.lineno) for f in tb[-3:])
            self.check(False, 'test script aborted: %s: %s' % (type(e).__name__, e),
                       'at %s' % where)
        self.finish()


# ---- a real etcd -------------------------------------------------------------------------

class CoreEtcd:
    """A single-member etcd on free 127.0.0.1 ports with its data in the test's TMP; with
    ipv6, its client port also listens on [::1] (url6)."""

    def __init__(self, suite, name='core', ipv6=False):
        self.suite = suite
        self.name = name
        self.ipv6 = ipv6
        self.dir = os.path.join(suite.tmp, name)
        self.log = os.path.join(suite.tmp, '%s.log' % name)
        self.proc = None
        self.port = None

    @property
    def url(self):
        return 'http://127.0.0.1:%d' % self.port

    @property
    def url6(self):
        return 'http://[::1]:%d' % self.port

    def healthy(self):
        try:
            with urllib.request.urlopen(self.url + '/health', timeout=1) as r:
                return json.loads(r.read().decode()).get('health') == 'true'
        except Exception:  # noqa: BLE001
            return False

    def start(self, timeout=20):
        for attempt in range(3):
            self.port, peer = free_port(), free_port()
            purl = 'http://127.0.0.1:%d' % peer
            shutil.rmtree(self.dir, ignore_errors=True)
            self.proc = self.suite.popen(
                [ETCD, '--name', self.name, '--data-dir', self.dir,
                 '--listen-client-urls', self.url + (',' + self.url6 if self.ipv6 else ''),
                 '--advertise-client-urls', self.url,
                 '--listen-peer-urls', purl, '--initial-advertise-peer-urls', purl,
                 '--initial-cluster', '%s=%s' % (self.name, purl),
                 '--logger', 'zap', '--log-outputs', 'stderr'],
                log=self.log, label='etcd %s' % self.name, log_lines=6)
            if wait_until(lambda: self.proc.poll() is not None or self.healthy(), timeout):
                if self.proc.poll() is None:
                    self.suite.cleanups.append(self.stop)
                    return self
            self.stop()
        raise Failure('etcd does not start: see %s' % self.log)

    def stop(self, timeout=10):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kvs(self, *range_args):
        """Everything in the core (or what RANGE_ARGS select) as {key: value}."""
        return etcd_kvs(self.port, *(range_args or ('--from-key', '')))

    def put(self, key, value):
        if not etcd_put(self.port, key, value):
            raise Failure('cannot put %s into the core etcd' % key)

    def get(self, key):
        return etcd_get(self.port, key)


# ---- etcdproxyd -----------------------------------------------------------------------------

class Supervisor:
    """One etcdproxyd with its own directories under TMP/<name>."""

    def __init__(self, suite, core=None, name='sv', daemon=ETCDPROXYD, worker=WORKER,
                 plugin_dir=PLUGIN_DIR, backends=None, supervisor=None, extra=None):
        self.suite = suite
        self.core = core
        self.name = name
        self.daemon = daemon
        self.dir = os.path.join(suite.tmp, name)
        self.storages = os.path.join(self.dir, 'storages.d')
        self.runtime = os.path.join(self.dir, 'run')
        self.state = os.path.join(self.dir, 'state')
        self.conf = os.path.join(self.dir, 'etcdproxyd.json')
        self.sock = os.path.join(self.runtime, 'etcdproxyd.sock')
        self.log = os.path.join(self.dir, 'etcdproxyd.log')
        self.proc = None
        os.makedirs(self.storages, exist_ok=True)
        self.config = {
            'storages_dir': self.storages,
            'state_dir': self.state,
            'runtime_dir': self.runtime,
            'plugin_dir': plugin_dir,
            'worker': worker,
            'log_level': 'debug',
            'core_etcd': {'endpoints': [core.url if core else 'http://127.0.0.1:9'],
                          'ca_file': None, 'cert_file': None, 'key_file': None},
            'supervisor': {'stop_timeout': '4s', 'restart_backoff_initial': '100ms',
                           'restart_backoff_max': '1s', 'max_failures': 4,
                           'stable_after': '60s'},
            'backends': {'etcd': {'binary': ETCD, 'health_interval': '1s'}},
        }
        if supervisor:
            self.config['supervisor'].update(supervisor)
        if backends:
            self.config['backends'].update(backends)
        if extra:
            self.config.update(extra)
        self.write_config()

    # -- files

    def write_config(self, text=None):
        if text is not None:
            write_text(self.conf, text)
        else:
            # a comment, as people write them: the parser must take it
            write_text(self.conf, '// written by %s\n%s\n' % (
                os.path.basename(sys.argv[0]), json.dumps(self.config, indent=2)))

    def tenant_file(self, name):
        return os.path.join(self.storages, '%s.json' % name)

    def add_tenant(self, name, port=None, listen=None, backend=None, text=None, tls=None,
                   spec_extra=None):
        """Write storages.d/NAME.json; returns the port (None for a given listen or text).
        backend=None: EP_TEST_BACKEND when set to another backend than "etcd", else no
        "backend" field (the configuration's default).  tls=None: plaintext
        ({"enabled": false}), the TLS tests pass their own spec.tls."""
        if text is not None:
            write_text(self.tenant_file(name), text)
            return None
        if listen is None:
            port = port or free_port()
            listen = '127.0.0.1:%d' % port
        spec = {'listen': listen}
        if backend is None and not etcd_backend() and \
                not (self.config.get('defaults') or {}).get('backend'):
            backend = test_backend()  # EP_TEST_BACKEND, unless the test sets defaults.backend
        if backend:
            spec['backend'] = backend
        spec['tls'] = tls if tls is not None else {'enabled': False}
        spec.update(spec_extra or {})
        write_json(self.tenant_file(name), {
            'apiVersion': 'etcd.xmudrii.com/v1alpha1', 'kind': 'EtcdStorage',
            'metadata': {'name': name}, 'spec': spec})
        return port

    def remove_tenant(self, name):
        os.unlink(self.tenant_file(name))

    # -- the process

    def start(self, timeout=10):
        self.proc = self.suite.popen([self.daemon, '-c', self.conf, '-f'], log=self.log,
                                     label='etcdproxyd %s' % self.name)
        ok = wait_until(lambda: self.proc.poll() is not None or
                        (os.path.exists(self.sock) and self.ctl('status')[0] in (0, 4)), timeout)
        if not ok or self.proc.poll() is not None:
            raise Failure('etcdproxyd %s did not start (exit %s)' % (self.name, self.proc.poll()))
        return self

    @property
    def pid(self):
        return self.proc.pid

    def send(self, sig):
        os.kill(self.proc.pid, sig)

    def stop(self, sig=signal.SIGTERM, timeout=15):
        """Signal the daemon and wait: its exit code (None on timeout)."""
        if self.proc.poll() is None:
            self.observe()
            self.send(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_text(self):
        return read_text(self.log)

    # -- etcdproxyctl

    def ctl(self, *args, json_out=True, sock=None, timeout=15):
        """(rc, stdout, stderr, parsed JSON or None)."""
        cmd = [ETCDPROXYCTL, '-s', sock or self.sock] + (['-o', 'json'] if json_out else []) + \
            list(args)
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return -1, '', 'etcdproxyctl timed out', None
        data = None
        if json_out and r.stdout.strip():
            try:
                data = json.loads(r.stdout)
            except ValueError:
                data = None
        return r.returncode, r.stdout, r.stderr, data

    def status(self):
        """{name: tenant} from `status -o json` (also records worker and child PIDs)."""
        rc, out, err, data = self.ctl('status')
        if data is None or rc not in (0, 4):
            if self.proc is not None and self.proc.poll() is not None:
                raise Failure('etcdproxyd %s is gone: exit status %d%s' % (
                    self.name, self.proc.returncode,
                    ' (killed by signal %d)' % -self.proc.returncode
                    if self.proc.returncode < 0 else ''))
            raise Failure('etcdproxyctl status failed (rc %d): %s' % (rc, err.strip()))
        self._observe(data)
        return {t['name']: t for t in data['tenants']}

    def _observe(self, data):
        for t in data.get('tenants', []):
            if t.get('pid'):
                self.suite.procs.track_tree(int(t['pid']), 'worker of %s/%s' % (
                    self.name, t['name']))

    def observe(self):
        try:
            self.status()
        except Failure:
            pass
        if self.proc is not None and self.proc.poll() is None:
            self.suite.procs.track_tree(self.proc.pid, 'etcdproxyd %s' % self.name)

    def tenant(self, name):
        return self.status().get(name)

    def counters(self, name):
        """The tenant's backend counters as etcdproxyctl show has them ({} when none yet)."""
        rc, out, err, obj = self.ctl('show', name)
        return ((obj or {}).get('tenant') or obj or {}).get('counters') or {}

    def wait_tenant(self, name, pred, timeout=15, what='a condition'):
        """Poll until pred(tenant) holds: the tenant, or raise Failure with its last state."""
        last = [None]

        def probe():
            last[0] = self.status().get(name)
            return last[0] is not None and pred(last[0])
        if wait_until(probe, timeout):
            return last[0]
        raise Failure('tenant %s: no %s within %gs; last seen: %s' % (
            name, what, timeout, json.dumps(last[0])))

    def wait_state(self, name, state, timeout=15, pred=None):
        states = (state,) if isinstance(state, str) else tuple(state)
        return self.wait_tenant(
            name, lambda t: t['state'] in states and (pred is None or pred(t)), timeout,
            'state %s' % '/'.join(states))

    def wait_ready(self, *names, timeout=20):
        return {n: self.wait_state(n, 'ready', timeout) for n in names}

    def wait_gone(self, name, timeout=15):
        if wait_until(lambda: name not in self.status(), timeout):
            return True
        raise Failure('tenant %s still listed after %gs' % (name, timeout))

    def grpc_proxy(self, name, timeout=10, exclude=()):
        """PID of the tenant's `etcd grpc-proxy` child, found under its worker
        (the trampoline `etcdproxy-worker --exec-child` must have exec'ed)."""
        def find():
            t = self.status().get(name)
            if not t or not t.get('pid'):
                return None
            for c in proc_children(int(t['pid'])):
                cmd = proc_cmdline(c)
                if c not in exclude and cmd and cmd[0] == ETCD and 'grpc-proxy' in cmd:
                    self.suite.procs.track(c, 'grpc-proxy of %s/%s' % (self.name, name))
                    return c
            return None
        pid = wait_until(find, timeout)
        if pid is None:
            raise Failure('no grpc-proxy child found under the worker of %s' % name)
        return pid


# The orders of `etcdproxyd --check-config` and `-c CONF` the tests try: False is
# "-c CONF --check-config", True is "--check-config -c CONF" (the order the
# integration-test brief uses; etcdproxyd.8 says it checks the default file instead).
CHECK_CONFIG_ORDERS = (False, True)


def check_config(conf, daemon=ETCDPROXYD, option_first=True):
    """etcdproxyd --check-config: a CompletedProcess.  option_first puts --check-config
    before -c CONF, as documented; both orders must work."""
    args = ['--check-config', '-c', conf] if option_first else ['-c', conf, '--check-config']
    return subprocess.run([daemon] + args, capture_output=True, text=True, timeout=10,
                          stdin=subprocess.DEVNULL)


# ---- python etcd3 -----------------------------------------------------------------------

def _quiet_watch_threads(args, _default=threading.excepthook):
    # python-etcd3's watch thread dies noisily once its client is closed
    if args.thread is not None and args.thread.name.startswith('etcd3_watch_'):
        return
    _default(args)


threading.excepthook = _quiet_watch_threads


def etcd3_client(port):
    import etcd3  # python3-etcd3, Debian's /usr/bin/python3 only
    return etcd3.client(host='127.0.0.1', port=port, timeout=5)


def put_flood(ports, writers, seconds=None, tries=None, prefix='k', value='v'):
    """Puts of new keys from `writers` python-etcd3 clients (client i through ports[i % n]), as
    fast as answers come, for `seconds` or `tries` puts each, all starting together.
    Returns {'ok': acknowledged puts, 'errors': [the text of each failed one]}."""
    res = {'ok': 0, 'errors': []}
    lock = threading.Lock()
    start = threading.Barrier(writers)

    def run(i):
        c = etcd3_client(ports[i % len(ports)])
        try:
            start.wait()
            end = time.monotonic() + seconds if seconds else None
            n = 0
            while (end is None or time.monotonic() < end) and (tries is None or n < tries):
                try:
                    c.put('%s-%d-%d' % (prefix, i, n), value)
                    with lock:
                        res['ok'] += 1
                except Exception as e:  # noqa: BLE001 - the error is what is counted
                    with lock:
                        res['errors'].append(str(e)[:200])
                n += 1
        finally:
            c.close()
    ts = [threading.Thread(target=run, args=(i,)) for i in range(writers)]
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    return res


class Relay:
    """A TCP relay on 127.0.0.1 to a port (an etcd member) with the faults a test injects:
    cut (every connection reset, new ones refused), stall (bytes held, connections kept),
    delay (every chunk held for a while), slow reads (a trickle of bytes per second each way),
    blackhole (bytes swallowed, new connections accepted and never answered; when mended,
    the connections that lost bytes are reset, as TCP would give up on them) and mend."""

    def __init__(self, target_port):
        self.target = target_port
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(('127.0.0.1', 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.cut_ = False
        self.stalled = threading.Event()
        self.stalled.set()  # set: bytes flow
        self.delay_ = 0.0
        self.rate = 0  # bytes per second each way, 0: no limit
        self.hole = False
        self.lost = []  # connections that lost bytes into the blackhole
        self.socks = []
        self.live = set()  # the connection pairs both of whose pumps still run
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                a, _ = self.lsock.accept()
            except OSError:
                return
            if self.cut_:
                a.close()
                continue
            if self.hole:
                with self.lock:
                    self.socks.append(a)
                    self.lost.append(a)
                threading.Thread(target=self._swallow, args=(a,), daemon=True).start()
                continue
            try:
                b = socket.create_connection(('127.0.0.1', self.target), timeout=5)
                b.settimeout(None)
            except OSError:
                a.close()  # the member is down: so is this connection
                continue
            for z in (a, b):  # pass each write on as it comes, as a router does
                z.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.socks += [a, b]
                self.live.add((a, b))
            for x, y in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(x, y, (a, b)), daemon=True).start()

    def _swallow(self, x):
        try:
            while x.recv(65536):
                pass
        except OSError:
            pass
        with self.lock:
            self.socks = [z for z in self.socks if z is not x]
        x.close()

    def _pump(self, x, y, pair):
        try:
            while True:
                rate = self.rate
                d = x.recv(max(1, rate // 10) if rate else 65536)
                if not d:
                    break
                self.stalled.wait()
                if self.hole:
                    with self.lock:
                        self.lost += [x, y]
                    continue
                if self.delay_:
                    time.sleep(self.delay_)
                y.sendall(d)
                if rate:
                    time.sleep(len(d) / rate)
        except OSError:
            pass
        with self.lock:
            last = pair not in self.live  # the other pump is done: close the pair
            self.live.discard(pair)
        for z in (x, y):
            try:
                z.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if last:
            with self.lock:
                self.socks = [z for z in self.socks if z not in pair]
            for z in pair:
                z.close()

    def active(self):
        """The connections open through the relay."""
        with self.lock:
            return len(self.live)

    def cut(self):
        self.cut_ = True
        with self.lock:
            for z in self.socks:
                try:
                    z.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.socks = []

    def stall(self):
        """Hold every byte, keep every connection: a network that stops delivering."""
        self.stalled.clear()

    def delay(self, seconds):
        """Hold every chunk of bytes SECONDS before it goes on, each way."""
        self.delay_ = seconds

    def slow(self, rate):
        """Read RATE bytes per second each way on every connection: a peer that reads slowly."""
        self.rate = rate

    def blackhole(self):
        """Swallow every byte and every new connection, and say nothing."""
        self.hole = True

    def mend(self):
        self.delay_ = 0.0
        self.rate = 0
        self.cut_ = False
        self.stalled.set()
        if self.hole:
            self.hole = False
            with self.lock:
                lost, self.lost = self.lost, []
            for z in lost:
                try:
                    z.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.mend()
        self.cut()
        self.lsock.close()


SYSTEMD_START = '''#!/usr/bin/python3
import fcntl, os, sys
# systemd's side of a start with a file descriptor store: the fds at 3, 4, ... in order
fds = [int(x) for x in os.environ.pop('EP_TEST_FDS').split(',')]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]  # out of the way of 3, 4, ...
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
    os.set_inheritable(3 + i, True)
for fd in high + [fd for fd in fds if fd >= 3 + len(fds)]:
    try:
        os.close(fd)
    except OSError:
        pass
os.environ['LISTEN_FDS'] = str(len(fds))
os.environ['LISTEN_PID'] = str(os.getpid())
os.execv(sys.argv[1], sys.argv[1:])
'''


class FakeSystemd:
    """systemd's part of a file descriptor store, played by a test: the notify socket
    (READY=1, FDSTORE=1 keeping the fds, FDSTOREREMOVE=1), and a start of etcdproxyd with the
    stored fds in $LISTEN_FDS/$LISTEN_FDNAMES, as after Restart=."""

    def __init__(self, suite):
        self.suite = suite
        self.path = os.path.join(suite.tmp, 'notify.sock')
        self.wrapper = os.path.join(suite.tmp, 'systemd-start.py')
        write_text(self.wrapper, SYSTEMD_START, 0o755)
        suite.cleanups.append(self.close)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.store = {}  # name -> fd
        self.messages = []
        self.lock = threading.Lock()
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()

    def _run(self):
        while True:
            try:
                msg, anc, _, _ = self.sock.recvmsg(8192, socket.CMSG_SPACE(4 * 8))
            except OSError:
                return
            fds = array.array('i')
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
            fields = dict(x.split('=', 1) for x in msg.decode().split('\n') if '=' in x)
            with self.lock:
                self.messages.append(fields)
                name = fields.get('FDNAME', 'stored')
                if fields.get('FDSTORE') == '1' and fds:
                    old = self.store.pop(name, None)
                    self.store[name] = fds[0]
                    if old is not None and old != fds[0]:
                        os.close(old)
                    for extra in fds[1:]:
                        os.close(extra)
                elif fields.get('FDSTOREREMOVE') == '1':
                    old = self.store.pop(name, None)
                    if old is not None:
                        os.close(old)
                else:
                    for fd in fds:
                        os.close(fd)

    def names(self):
        with self.lock:
            return sorted(self.store)

    def close(self):
        self.sock.close()
        for fd in self.store.values():
            os.close(fd)
        self.store = {}

    def start(self, sv):
        """The first start of etcdproxyd SV under this systemd."""
        os.environ['NOTIFY_SOCKET'] = self.path
        try:
            sv.start()
        finally:
            del os.environ['NOTIFY_SOCKET']

    def restart(self, sv):
        """Start etcdproxyd SV again with the stored sockets (its previous process gone)."""
        names = self.names()
        fds = [self.store[n] for n in names]
        sv.proc = self.suite.popen([self.wrapper, sv.daemon, '-c', sv.conf, '-f'], log=sv.log,
                                   label='etcdproxyd %s (restarted)' % sv.name, pass_fds=fds,
                                   env=dict(os.environ, EP_TEST_FDS=','.join(map(str, fds)),
                                            LISTEN_FDNAMES=':'.join(names),
                                            NOTIFY_SOCKET=self.path))
        return sv.proc


class Watch:
    """A python-etcd3 watch collecting (type, key, value) in a list."""

    def __init__(self, client, key, **kw):
        self.events = []
        self.errors = []
        self.client = client
        self.id = client.add_watch_callback(key, self._cb, **kw)

    def _cb(self, resp):
        if isinstance(resp, Exception):
            self.errors.append(resp)
            return
        for ev in resp.events:
            kind = type(ev).__name__.replace('Event', '').upper()
            self.events.append((kind, ev.key.decode(), ev.value.decode()))

    def keys(self):
        return [k for _, k, _ in self.events]

    def wait_key(self, key, timeout=10):
        return wait_until(lambda: key in self.keys(), timeout)

    def cancel(self):
        try:
            self.client.cancel_watch(self.id)
        except Exception:  # noqa: BLE001
            pass
