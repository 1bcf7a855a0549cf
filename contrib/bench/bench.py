#!/usr/bin/python3
"""etcdproxy benchmark (issue 5): native vs stock vs direct etcd, as ratios, and how cost grows.

Run it through contrib/bench/run.sh, which installs the packages, builds the project and the
load generator, then calls this script.  Python standard library only.

What one run does, all on loopback:
  1. starts a core etcd (data on tmpfs), a supervisor with one "etcd"-backend tenant (stock)
     and one "native" tenant;
  2. the matrix: puts (256 B values), linearizable and serializable ranges, with 1 client and
     with 100 clients over 10 connections, on direct / stock / native, alternating the targets
     and rotating their order every round;  requests/s, average and p99 latency, CPU per
     request of the proxy process tree and of etcd, RSS and PSS of every proxy process idle
     and after load;
  3. watches (1,000 and 10,000 on one tenant): events/s and peak memory;
  4. payloads (256 B, 64 KiB, 1 MiB): puts and linearizable ranges;
  5. tenants (10, 100, 500 idle native tenants under one supervisor): total PSS, start to all
     ready, a reload that changes one tenant, kill -9 of one worker to its endpoint answering;
  6. writes results.md, results.json and gnuplot PNGs into the results directory and prints
     the Markdown.
Exit status 0 when every target answered every run, 1 otherwise.
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SRCDIR = os.path.abspath(os.path.join(HERE, '..', '..'))
sys.path.insert(0, os.path.join(SRCDIR, 'tests', 'integration'))
sys.dont_write_bytecode = True  # nothing written into the source tree
from h2raw import H2, grpc_msg, pb_bytes, varint  # noqa: E402
from procs import descendants  # noqa: E402
import eptest  # noqa: E402  (free_port, write_json: the test harness's own)
from eptest import free_port, write_json  # noqa: E402
ETCD = os.environ.get('EP_ETCD') or '/usr/bin/etcd'
ETCDCTL = os.environ.get('EP_ETCDCTL') or '/usr/bin/etcdctl'
CLK_TCK = os.sysconf('SC_CLK_TCK')
PAGE_KIB = os.sysconf('SC_PAGE_SIZE') // 1024

TARGETS = ('direct', 'stock', 'native')
TARGET_LABEL = {'direct': 'direct etcd', 'stock': 'stock (etcd grpc-proxy)',
                'native': 'native'}

# (op, clients, connections); op is put, range-l (linearizable) or range-s (serializable)
WORKLOADS = [('put', 1, 1), ('put', 100, 10),
             ('range-l', 1, 1), ('range-l', 100, 10),
             ('range-s', 1, 1), ('range-s', 100, 10)]

# Sizes of a full run and of a smoke run (--smoke).  Totals are requests per run.
FULL = {
    'rounds': 5,
    'total': {1: 3000, 100: 40000},
    'value_size': 256,
    'watches': [1000, 10000], 'watch_events': 100000,
    'payloads': [256, 65536, 1048576],
    # long enough that a run is not a handful of round trips (100 x 1 MiB took half a second)
    'payload_total': {256: 20000, 65536: 5000, 1048576: 400},
    'payload_clients': 10,
    'tenants': [10, 100, 500], 'kills': 3,
    'cost_rounds': 50000,
    'noisy_total': 3000, 'noisy_limit': 1000,
}
SMOKE = {
    'rounds': 2,
    'total': {1: 200, 100: 200},
    'value_size': 256,
    'watches': [100], 'watch_events': 500,
    'payloads': [256, 65536],
    'payload_total': {256: 100, 65536: 20},
    'payload_clients': 10,
    'tenants': [10], 'kills': 1,
    'cost_rounds': 2000,
    'noisy_total': 100, 'noisy_limit': 500,
}

MIB = 1024 * 1024


def log(msg):
    print('# ' + msg, file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ---- small utilities --------------------------------------------------------------------------

def wait_until(pred, timeout, interval=0.05):
    """The test harness's wait_until, polling more often."""
    return eptest.wait_until(pred, timeout, interval)


def median_min_max(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {'median': statistics.median(values), 'min': min(values), 'max': max(values),
            'n': len(values)}


def first_line(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (r.stdout or r.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return None


# ---- /proc: process trees, CPU, memory ------------------------------------------------------

def proc_stat(pid):
    """The fields of /proc/PID/stat after the command name, or None."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(')') + 2:].split()


def tree(pid):
    """pid and all its descendants."""
    return [pid] + descendants(pid)


def proc_name(pid):
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            args = [a.decode(errors='replace') for a in f.read().split(b'\0') if a]
    except OSError:
        return '?'
    if not args:
        return '?'
    name = os.path.basename(args[0])
    if name == 'etcd' and len(args) > 1 and args[1] == 'grpc-proxy':
        return 'etcd grpc-proxy'
    return name


def cpu_seconds(pids):
    """utime + stime of these processes (fields 14 and 15 of /proc/PID/stat), in seconds."""
    ticks = 0
    for p in pids:
        f = proc_stat(p)
        if f is not None:
            ticks += int(f[11]) + int(f[12])
    return ticks / CLK_TCK


def proc_counts(pids):
    """(sleeps, reads, writes) of these processes, counted by the kernel: voluntary context
    switches of every thread (/proc/PID/task/*/status; threads gone are not counted), read- and
    write-type system calls (syscr and syscw of /proc/PID/io).  None when /proc has no such
    numbers."""
    sleeps = reads = writes = 0
    try:
        for p in pids:
            for tid in os.listdir('/proc/%d/task' % p):
                with open('/proc/%d/task/%s/status' % (p, tid)) as f:
                    for line in f:
                        if line.startswith('voluntary_ctxt_switches:'):
                            sleeps += int(line.split()[1])
            with open('/proc/%d/io' % p) as f:
                for line in f:
                    k, _, v = line.partition(':')
                    if k == 'syscr':
                        reads += int(v)
                    elif k == 'syscw':
                        writes += int(v)
    except (OSError, ValueError):
        return None
    return sleeps, reads, writes


PF_KTHREAD = 0x00200000


class OtherLoad:
    """How much CPU the rest of the machine used during a run: other people's work.

    machine busy time (/proc/stat: all but idle, iowait and steal)
      - kernel threads (softirq and workqueue work, much of it done for our own traffic)
      - this script and every process under it (etcd, the supervisor, the workers, and the
        load generator, which has exited by then: RUSAGE_CHILDREN)
    as a share of all cores over the run.  Short-lived foreign processes count too."""

    def __init__(self):
        self.t0 = time.monotonic()
        self.state0 = self._state()

    @staticmethod
    def _state():
        with open('/proc/stat') as f:
            v = [int(x) for x in f.readline().split()[1:]]
        busy = sum(v[:8]) - v[3] - v[4] - v[7]
        kthreads, ours = 0, {}
        mine = set(tree(os.getpid())[1:])
        for name in os.listdir('/proc'):
            if not name.isdigit():
                continue
            f = proc_stat(int(name))
            if f is None:
                continue
            ticks = int(f[11]) + int(f[12])
            if int(f[6]) & PF_KTHREAD:
                kthreads += ticks
            elif int(name) in mine:
                ours[int(name)] = ticks
        t = os.times()
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        own = (t.user + t.system) + (r.ru_utime + r.ru_stime)
        return busy / CLK_TCK, kthreads / CLK_TCK, ours, own

    def share(self):
        busy1, k1, ours1, own1 = self._state()
        busy0, k0, ours0, own0 = self.state0
        wall = time.monotonic() - self.t0
        ours = own1 - own0 + sum(v - ours0.get(p, 0) for p, v in ours1.items()) / CLK_TCK
        other = (busy1 - busy0) - (k1 - k0) - ours
        return max(0.0, other) / (wall * (os.cpu_count() or 1)) if wall > 0 else None


def memory(pid):
    """{'rss_kib', 'pss_kib', 'hwm_kib'} of one process from smaps_rollup and status."""
    out = {}
    try:
        with open('/proc/%d/smaps_rollup' % pid) as f:
            for line in f:
                k, _, v = line.partition(':')
                if k in ('Rss', 'Pss'):
                    out[k.lower() + '_kib'] = int(v.split()[0])
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    out['hwm_kib'] = int(line.split()[1])
    except (OSError, ValueError):
        return None
    return out


def memory_sum(pids):
    tot = {'rss_kib': 0, 'pss_kib': 0}
    for p in pids:
        m = memory(p)
        if m:
            tot['rss_kib'] += m.get('rss_kib', 0)
            tot['pss_kib'] += m.get('pss_kib', 0)
    return tot


class PeakSampler:
    """Samples the summed RSS and PSS of a process tree every `interval` s in a thread."""

    def __init__(self, pids, interval=0.2):
        self.pids = list(pids)
        self.interval = interval
        self.peak = {'rss_kib': 0, 'pss_kib': 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while True:
            m = memory_sum(self.pids)
            for k in self.peak:
                self.peak[k] = max(self.peak[k], m[k])
            if self._stop.wait(self.interval):
                return

    def __enter__(self):
        if self.pids:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.pids:
            self._thread.join()


# ---- a tiny gRPC-over-h2c client: probes and the h2load request bodies -----------------------
def pb_true(field):
    return varint(field << 3) + b'\x01'


def kv_request(op, key, value=b''):
    """(path, protobuf message) of an etcd KV call: put, range-l or range-s."""
    if op == 'put':
        return '/etcdserverpb.KV/Put', pb_bytes(1, key) + pb_bytes(2, value)
    msg = pb_bytes(1, key)
    if op == 'range-s':
        msg += pb_true(7)  # RangeRequest.serializable
    return '/etcdserverpb.KV/Range', msg


def grpc_call(port, path, msg, timeout=2.0, host='127.0.0.1'):
    """True when the unary call got a reply message; a Trailers-Only reply, RST_STREAM,
    GOAWAY or a closed connection is no answer (the test suite's raw client, h2raw.py)."""
    try:
        c = H2(port, timeout=timeout, host=host)
    except OSError:
        return False
    try:
        sid = c.request(path, grpc_msg(msg), authority='%s:%d' % (host, port))
        st = c.wait_stream(sid, timeout)
        return st.ended and st.rst is None and len(st.data) >= 5
    except (OSError, ValueError):
        return False
    finally:
        c.close()


def probe(port, timeout=2.0):
    """One linearizable Range through the endpoint: does it answer?"""
    return grpc_call(port, *kv_request('range-l', b'bench/probe'), timeout=timeout)


# ---- processes this run started --------------------------------------------------------------

class Procs:
    """Every process the run started or saw, by PID and start time, so a reused PID is never
    signalled.  kill_all() ends whatever is left, by PID."""

    def __init__(self):
        self.known = {}

    def track(self, pid):
        f = proc_stat(pid)
        if f is not None and f[0] not in 'ZX':
            self.known.setdefault(pid, f[19])

    def track_tree(self, pid):
        for p in tree(pid):
            self.track(p)

    def alive(self, pid):
        f = proc_stat(pid)
        return f is not None and f[0] not in 'ZX' and self.known.get(pid) == f[19]

    def kill_all(self):
        live = [p for p in self.known if self.alive(p)]
        for p in live:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        wait_until(lambda: not any(self.alive(p) for p in live), 5)
        return live


PROCS = Procs()


class CoreEtcd:
    def __init__(self, workdir, logdir):
        self.dir = os.path.join(workdir, 'etcd')
        self.log = os.path.join(logdir, 'etcd.log')
        self.port = self.proc = None

    def start(self):
        self.port, peer = free_port(), free_port()
        url, purl = 'http://127.0.0.1:%d' % self.port, 'http://127.0.0.1:%d' % peer
        with open(self.log, 'ab') as lf:
            self.proc = subprocess.Popen(
                [ETCD, '--name', 'core', '--data-dir', self.dir,
                 '--listen-client-urls', url, '--advertise-client-urls', url,
                 '--listen-peer-urls', purl, '--initial-advertise-peer-urls', purl,
                 '--initial-cluster', 'core=%s' % purl,
                 '--quota-backend-bytes', str(4 * 1024 * MIB),
                 # kubeadm's value (etcd's default keeps 100,000 entries, 1 MiB values
                 # included, in memory)
                 '--snapshot-count', '10000',
                 '--logger', 'zap', '--log-outputs', 'stderr', '--log-level', 'warn'],
                stdin=subprocess.DEVNULL, stdout=lf, stderr=lf)
        PROCS.track(self.proc.pid)
        if not wait_until(lambda: self.proc.poll() is not None or probe(self.port, 1), 30, 0.1) \
                or self.proc.poll() is not None:
            raise BenchError('the core etcd did not start; see %s' % self.log)
        return self

    @property
    def url(self):
        return 'http://127.0.0.1:%d' % self.port

    def compact_and_defrag(self):
        """Housekeeping between payload runs (not measured): keep the database small."""
        r = etcdctl(self.port, 'endpoint', 'status', '-w', 'json')
        try:
            rev = json.loads(r.stdout)[0]['Status']['header']['revision']
        except (ValueError, KeyError, IndexError):
            return
        etcdctl(self.port, 'compact', str(rev), '--physical')
        etcdctl(self.port, 'defrag', timeout=120)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def etcdctl(port, *args, input=None, timeout=30):
    cmd = [ETCDCTL, '--endpoints=127.0.0.1:%d' % port, '--dial-timeout=5s',
           '--command-timeout=%ds' % timeout] + list(args)
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout + 10, input=input,
                              env=dict(os.environ, ETCDCTL_API='3'),
                              text=not isinstance(input, bytes))
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(cmd, -1, '', 'timed out: %s' % e)


class Supervisor:
    """One etcdproxyd with its own configuration and directories."""

    def __init__(self, build, workdir, logdir, name, core_url, extra=None):
        self.build = build
        self.dir = os.path.join(workdir, name)
        self.storages = os.path.join(self.dir, 'storages.d')
        self.runtime = os.path.join(self.dir, 'run')
        self.conf = os.path.join(self.dir, 'etcdproxyd.json')
        self.sock = os.path.join(self.runtime, 'etcdproxyd.sock')
        self.log = os.path.join(logdir, '%s.log' % name)
        self.proc = None
        os.makedirs(self.storages, exist_ok=True)
        write_json(self.conf, {
            'storages_dir': self.storages,
            'state_dir': os.path.join(self.dir, 'state'),
            'runtime_dir': self.runtime,
            'plugin_dir': os.path.join(build, 'plugins', '.libs'),
            'worker': os.path.join(build, 'worker', 'etcdproxy-worker'),
            'log_level': 'info',
            'core_etcd': {'endpoints': [core_url], 'ca_file': None, 'cert_file': None,
                          'key_file': None},
            'backends': {'etcd': {'binary': ETCD}},
            **(extra or {}),
        })

    def tenant_path(self, name):
        return os.path.join(self.storages, '%s.json' % name)

    def add_tenant(self, name, backend, port, policy=None, audit=None, rate_limit=None):
        spec = {'backend': backend, 'listen': '127.0.0.1:%d' % port, 'tls': {'enabled': False}}
        if rate_limit:
            spec['rateLimit'] = rate_limit
        if policy:
            spec['policy'] = policy
        if audit is not None:
            spec['audit'] = audit
        write_json(self.tenant_path(name), {
            'apiVersion': 'etcd.xmudrii.com/v1alpha1', 'kind': 'EtcdStorage',
            'metadata': {'name': name}, 'spec': spec})

    def start(self):
        with open(self.log, 'ab') as lf:
            self.proc = subprocess.Popen(
                [os.path.join(self.build, 'supervisor', 'etcdproxyd'), '-c', self.conf, '-f'],
                stdin=subprocess.DEVNULL, stdout=lf, stderr=lf)
        PROCS.track(self.proc.pid)
        if not wait_until(lambda: self.proc.poll() is not None or
                          (os.path.exists(self.sock) and self.status() is not None), 20) \
                or self.proc.poll() is not None:
            raise BenchError('etcdproxyd did not start; see %s' % self.log)
        return self

    def ctl(self, *args, timeout=60):
        cmd = [os.path.join(self.build, 'ctl', 'etcdproxyctl'), '-s', self.sock, '-o', 'json']
        try:
            return subprocess.run(cmd + list(args), capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return None

    def status(self):
        """{name: tenant} or None; remembers every worker and its children for the cleanup."""
        r = self.ctl('status')
        if r is None or r.returncode not in (0, 4):
            return None
        try:
            data = json.loads(r.stdout)
        except ValueError:
            return None
        tenants = {t['name']: t for t in data.get('tenants', [])}
        for t in tenants.values():
            if t.get('pid'):
                PROCS.track_tree(int(t['pid']))
        return tenants

    def wait_ready(self, names, timeout, interval=0.05):
        """Poll until every tenant in names is ready: the status, or raise."""
        last = [None]

        def all_ready():
            last[0] = self.status()
            return last[0] is not None and all(
                n in last[0] and last[0][n]['state'] == 'ready' for n in names)
        if wait_until(all_ready, timeout, interval):
            return last[0]
        bad = {n: (last[0] or {}).get(n, {}).get('state') for n in names
               if (last[0] or {}).get(n, {}).get('state') != 'ready'}
        raise BenchError('tenants not ready after %gs: %s; see %s' % (
            timeout, dict(list(bad.items())[:5]), self.log))

    def worker_pid(self, name):
        t = (self.status() or {}).get(name)
        return int(t['pid']) if t and t.get('pid') else None

    def stop(self, timeout=60):
        """SIGTERM and wait: the seconds it took, or None."""
        if not self.proc or self.proc.poll() is not None:
            return None
        self.status()
        t0 = time.monotonic()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None
        return time.monotonic() - t0


# ---- load generators ---------------------------------------------------------------------------

def parse_benchmark(text):
    """Figures of one `benchmark` report (pkg/report): the first summary after `section`."""
    out = {}
    m = re.search(r'Requests/sec:\s*([0-9.eE+-]+)', text)
    if m:
        out['rps'] = float(m.group(1))
    m = re.search(r'Average:\s*([0-9.eE+-]+) secs', text)
    if m:
        out['avg_ms'] = float(m.group(1)) * 1000
    m = re.search(r'^\s*50% in ([0-9.eE+-]+) secs', text, re.M)
    if m:
        out['p50_ms'] = float(m.group(1)) * 1000
    m = re.search(r'^\s*99% in ([0-9.eE+-]+) secs', text, re.M)
    if not m:  # under 100 requests the report has no 99% line: the slowest is the p99 then
        m = re.search(r'Slowest:\s*([0-9.eE+-]+) secs', text)
    if m:
        out['p99_ms'] = float(m.group(1)) * 1000
    m = re.search(r'Total:\s*([0-9.eE+-]+) secs', text)
    if m:
        out['duration_s'] = float(m.group(1))
    errors = 0
    m = re.search(r'Error distribution:\n((?:\s+\[\d+\].*\n?)+)', text)
    if m:
        errors = sum(int(x) for x in re.findall(r'\[(\d+)\]', m.group(1)))
    out['errors'] = errors
    return out


class BenchmarkTool:
    """etcd's tools/benchmark (3.4.23)."""
    name = 'benchmark'

    def __init__(self, path, logdir):
        self.path = path
        self.logdir = logdir
        info = os.path.join(os.path.dirname(path), 'benchmark.info')
        self.info = {}
        try:
            with open(info) as f:
                for line in f:
                    k, _, v = line.strip().partition('=')
                    self.info[k] = v
        except OSError:
            pass

    def describe(self):
        return 'etcd tools/benchmark 3.4.23: %s, built with %s against %s' % (
            self.info.get('source', '?'), self.info.get('go', '?'),
            self.info.get('libraries', '?'))

    def _run(self, port, clients, conns, args, logname, timeout=600):
        cmd = [self.path, '--endpoints', '127.0.0.1:%d' % port, '--clients', str(clients),
               '--conns', str(conns), '--dial-timeout', '10s', '--precise'] + args
        logpath = os.path.join(self.logdir, logname)
        with open(logpath, 'w') as lf:
            lf.write('$ %s\n' % ' '.join(cmd))
            lf.flush()
            try:
                r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=lf,
                                   stderr=subprocess.STDOUT, timeout=timeout)
                rc = r.returncode
            except subprocess.TimeoutExpired:
                rc = -1
        with open(logpath, errors='replace') as f:
            text = f.read().replace('\r', '\n')
        return rc, text

    def kv(self, port, op, clients, conns, total, value_size, key, logname, key_space=100000):
        if op == 'put':
            args = ['put', '--total', str(total), '--val-size', str(value_size),
                    '--key-size', '8', '--key-space-size', str(key_space)]
        else:
            args = ['range', key, '--total', str(total),
                    '--consistency', 'l' if op == 'range-l' else 's']
        rc, text = self._run(port, clients, conns, args, logname)
        out = parse_benchmark(text)
        if rc != 0 or 'rps' not in out:
            out['errors'] = max(out.get('errors', 0), 1)
            out['failure'] = 'exit status %d, see %s' % (rc, logname)
        return out

    def watch(self, port, watches, events, logname):
        """`benchmark watch`: `watches` watchers (100 per gRPC stream) on 100 keys, then puts
        until `events` events have been delivered."""
        keys = 100
        streams = max(1, watches // 100)
        per_stream = watches // streams
        puts = max(1, events * keys // watches)
        conns = min(10, streams)
        args = ['watch', '--streams', str(streams), '--watch-per-stream', str(per_stream),
                '--watched-key-total', str(keys), '--key-space-size', str(keys),
                '--sequential-keys', '--put-total', str(puts),
                '--put-rate', '1000000']  # "no limit" (Debian's x/time/rate refuses 0)
        rc, text = self._run(port, conns, conns, args, logname)
        create, _, events_text = text.partition('Watch events received summary')
        out = {'streams': streams, 'puts': puts, 'events': puts * watches // keys}
        c = parse_benchmark(create)
        e = parse_benchmark(events_text)
        out['create_per_s'] = c.get('rps')
        out['events_per_s'] = e.get('rps')
        out['events_s'] = e.get('duration_s')
        out['errors'] = (c.get('errors', 0) + e.get('errors', 0))
        if rc != 0 or out['events_per_s'] is None:
            out['errors'] = max(out['errors'], 1)
            out['failure'] = 'exit status %d, see %s' % (rc, logname)
        return out


class H2loadTool:
    """The fallback: h2load (nghttp2-client) sending raw gRPC frames: the same request again
    and again.  h2load reads HTTP statuses, not gRPC ones, so each target is first checked
    with one call through grpc_call(), and every reply must carry a message (the bytes of
    DATA received cover at least one gRPC frame per request).  No watches."""
    name = 'h2load'

    def __init__(self, path, logdir, note=None):
        self.path = path
        self.logdir = logdir
        self.note = note or 'etcd tools/benchmark not available'
        self.version = first_line([path, '--version']) or 'h2load'

    def describe(self):
        return '%s sending raw gRPC frames (FALLBACK: %s)' % (self.version, self.note)

    def kv(self, port, op, clients, conns, total, value_size, key, logname, key_space=1):
        path, msg = kv_request(op, ('bench/h2load-put' if op == 'put' else key).encode(),
                               b'v' * value_size)
        if not probe(port, 10):
            return {'errors': 1, 'failure': 'port %d does not answer a Range' % port}
        body = os.path.join(self.logdir, logname + '.body')
        reqlog = os.path.join(self.logdir, logname + '.requests')
        with open(body, 'wb') as f:
            f.write(grpc_msg(msg))
        # 100 clients over 10 connections: 10 connections of 10 concurrent streams each
        cmd = [self.path, '-n', str(total), '-c', str(conns), '-m', str(clients // conns),
               '-H', 'content-type: application/grpc', '-H', 'te: trailers',
               '-d', body, '--log-file', reqlog, 'http://127.0.0.1:%d%s' % (port, path)]
        logpath = os.path.join(self.logdir, logname)
        with open(logpath, 'w') as lf:
            lf.write('$ %s\n' % ' '.join(cmd))
            lf.flush()
            try:
                rc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=lf,
                                    stderr=subprocess.STDOUT, timeout=600).returncode
            except subprocess.TimeoutExpired:
                rc = -1
        with open(logpath, errors='replace') as f:
            text = f.read()
        out = {'errors': 0}
        m = re.search(r'finished in ([0-9.]+)(us|ms|s), ([0-9.]+) req/s', text)
        if m:
            out['duration_s'] = float(m.group(1)) / {'us': 1e6, 'ms': 1e3, 's': 1}[m.group(2)]
            out['rps'] = float(m.group(3))
        m = re.search(r'requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded', text)
        ok = int(m.group(3)) if m else 0
        out['errors'] = total - ok
        m = re.search(r'traffic: .*?, ([0-9.]+)([KMG]?)B \((\d+)\) data', text)
        if m and ok and int(m.group(3)) < 5 * ok:
            out['errors'] = total
            out['failure'] = 'replies carry no gRPC message (errors as trailers)'
        lat = []
        try:
            with open(reqlog) as f:
                for line in f:
                    cols = line.split('\t')
                    if len(cols) >= 3 and cols[1] != '-1':
                        lat.append(int(cols[2]) / 1000.0)
            os.unlink(reqlog)
            os.unlink(body)
        except OSError:
            pass
        if lat:
            lat.sort()
            out['avg_ms'] = sum(lat) / len(lat)
            out['p99_ms'] = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        if rc != 0 or 'rps' not in out:
            out['errors'] = max(out['errors'], 1)
            out.setdefault('failure', 'exit status %d, see %s' % (rc, logname))
        return out

    def watch(self, port, watches, events, logname):
        return None


# ---- the benchmark itself ----------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.cfg = dict(SMOKE if args.smoke else FULL)
        if args.rounds:
            self.cfg['rounds'] = args.rounds
        if args.tenants:
            self.cfg['tenants'] = [int(x) for x in args.tenants.split(',') if x]
        self.build = os.path.abspath(args.builddir)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%d-%H%M%S')
        self.outdir = os.path.abspath(os.path.join(
            args.results_dir, stamp + ('-smoke' if args.smoke else '')))
        self.logdir = os.path.join(self.outdir, 'logs')
        self.runlogdir = os.path.join(self.logdir, 'runs')
        os.makedirs(self.runlogdir, exist_ok=True)
        shm = '/dev/shm' if os.access('/dev/shm', os.W_OK) else None
        self.workdir = tempfile.mkdtemp(prefix='etcdproxy-bench.', dir=shm)
        if args.tool == 'h2load':
            self.tool = H2loadTool(args.tool_path or shutil.which('h2load'), self.runlogdir,
                                   args.tool_note)
        else:
            self.tool = BenchmarkTool(args.tool_path, self.runlogdir)
        self.result = {'meta': {}, 'kv': [], 'memory': {}, 'watches': [], 'payload': [],
                       'tenants': [], 'audit': [], 'noisy': [], 'failures': []}
        self.nrun = 0
        self.core = self.sv = None
        self.port = {}

    # -- helpers

    def fail(self, what):
        log('FAILED: ' + what)
        self.result['failures'].append(what)

    def proxy_pids(self, target):
        """The proxy process tree of a target: the worker and its children ([] for direct)."""
        if target == 'direct':
            return []
        pid = self.sv.worker_pid('bench-' + target)
        return tree(pid) if pid else []

    def measure(self, target, fn, sample_memory=False):
        """Run fn() and add CPU seconds of the proxy tree, etcd and the client to its dict."""
        pids = self.proxy_pids(target)
        epids = [self.core.proc.pid]
        c0, e0 = cpu_seconds(pids), cpu_seconds(epids)
        n0 = proc_counts(pids) if pids else None
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        other = OtherLoad()
        mem_pids = pids or epids
        with PeakSampler(mem_pids if sample_memory else []) as sampler:
            t0 = time.monotonic()
            out = fn()
            wall = time.monotonic() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        out['other_cpu_share'] = other.share()
        out['wall_s'] = wall
        out['proxy_cpu_s'] = cpu_seconds(pids) - c0 if pids else None
        n1 = proc_counts(pids) if n0 else None
        if n1:
            out['proxy_sleeps'], out['proxy_reads'], out['proxy_writes'] = (
                b - a for a, b in zip(n0, n1))
        out['etcd_cpu_s'] = cpu_seconds(epids) - e0
        out['client_cpu_s'] = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
        if sample_memory:
            out['peak_rss_kib'] = sampler.peak['rss_kib']
            out['peak_pss_kib'] = sampler.peak['pss_kib']
            out['memory_of'] = 'proxy tree' if pids else 'etcd'
        return out

    def logname(self, *parts):
        self.nrun += 1
        return '%03d-%s.txt' % (self.nrun, '-'.join(str(p) for p in parts))

    # -- setup

    def machine(self):
        cpu = '?'
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    cpu = line.split(':', 1)[1].strip()
                    break
        mem_kib = 0
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemTotal:'):
                    mem_kib = int(line.split()[1])
        os_name = '?'
        try:
            with open('/etc/os-release') as f:
                for line in f:
                    if line.startswith('PRETTY_NAME='):
                        os_name = line.split('=', 1)[1].strip().strip('"')
        except OSError:
            pass
        return {
            'cpu': cpu, 'cores': os.cpu_count(), 'memory_gib': round(mem_kib / 1024 / 1024, 1),
            'kernel': platform.release(), 'os': os_name,
            'loadavg_start': os.getloadavg(),
        }

    def versions(self):
        return {
            'etcd': first_line([ETCD, '--version']),
            'etcdproxy': first_line([os.path.join(self.build, 'supervisor', 'etcdproxyd'),
                                     '--version']),
            'source': first_line(['git', '-C', SRCDIR, 'describe', '--always', '--dirty']),
            'etcdproxy_built': datetime.datetime.fromtimestamp(max(
                os.path.getmtime(os.path.join(self.build, f)) for f in (
                    'supervisor/etcdproxyd', 'worker/etcdproxy-worker', 'plugins/.libs/backend-etcd.so',
                    'plugins/.libs/backend-native.so')),
                datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
            'load_generator': self.tool.describe(),
            'nghttp2': first_line(['dpkg-query', '-W', '-f=${Version}', 'libnghttp2-14']),
            'python': platform.python_version(),
        }

    def setup(self):
        self.core = CoreEtcd(self.workdir, self.logdir).start()
        log('core etcd on port %d' % self.core.port)
        self.audit_dir = os.path.join(self.workdir, 'audit')
        self.sv = Supervisor(self.build, self.workdir, self.logdir, 'supervisor', self.core.url,
                             extra={'audit': {'directory': self.audit_dir}})
        self.port = {'direct': self.core.port, 'stock': free_port(), 'native': free_port(),
                     'audit': free_port()}
        self.sv.add_tenant('bench-stock', 'etcd', self.port['stock'])
        self.sv.add_tenant('bench-native', 'native', self.port['native'])
        # the same backend with spec.audit: what the audit log costs a put
        self.sv.add_tenant('bench-audit', 'native', self.port['audit'], audit=True)
        self.sv.start()
        self.sv.wait_ready(['bench-stock', 'bench-native', 'bench-audit'], 60)
        for t in TARGETS:
            if not wait_until(lambda: probe(self.port[t]), 20, 0.2):
                raise BenchError('%s (port %d) does not answer a Range' % (t, self.port[t]))
        log('supervisor pid %d: stock on port %d, native on port %d' % (
            self.sv.proc.pid, self.port['stock'], self.port['native']))

    def snapshot_memory(self):
        """{target: [{'pid', 'process', 'rss_kib', 'pss_kib', 'hwm_kib'}]}; etcd for direct."""
        snap = {}
        for t in TARGETS:
            pids = self.proxy_pids(t) if t != 'direct' else [self.core.proc.pid]
            if not pids:
                self.fail('%s: no worker process to measure' % t)
            snap[t] = []
            for p in pids:
                m = memory(p)
                if m:
                    snap[t].append(dict(m, pid=p, process=proc_name(p)))
        return snap

    def machine_costs(self):
        """What this machine's kernel charges for a wake-up and a loopback write and read
        (costs.c, built here with the system's cc), measured while nothing else runs."""
        exe = os.path.join(self.workdir, 'ep-bench-costs')
        src = os.path.join(HERE, 'costs.c')
        r = subprocess.run(['cc', '-O2', '-Wall', '-Wextra', '-Werror', '-o', exe, src],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise BenchError('cannot build %s: %s' % (src, (r.stderr or r.stdout).strip()))
        r = subprocess.run([exe, str(self.cfg['cost_rounds'])], capture_output=True, text=True,
                           timeout=120)
        try:
            costs = json.loads(r.stdout)
        except ValueError:
            costs = None
        if r.returncode != 0 or not isinstance(costs, dict):
            raise BenchError('%s failed (exit %d): %s' % (exe, r.returncode,
                                                          (r.stderr or r.stdout).strip()))
        self.result['machine_costs'] = costs
        log('machine: a wake-up from idle costs %.1f us of CPU, a 256 B loopback write %.1f us, '
            'a read %.1f us' % (costs['wake_us'], costs['write_us'], costs['read_us']))

    def put_key(self, target, key, value):
        r = etcdctl(self.port[target], 'put', key, input=value, timeout=60)
        if r.returncode != 0:
            raise BenchError('cannot put %s through %s: %s' % (key, target, r.stderr))

    # -- the matrix

    def kv_matrix(self):
        cfg = self.cfg
        vsize = cfg['value_size']
        for t in TARGETS:
            self.put_key(t, 'bench/range', b'r' * vsize)
        # warm-up: connections, caches, the Go runtimes; not recorded
        for t in TARGETS:
            for op in ('put', 'range-l'):
                self.tool.kv(self.port[t], op, 10, 10, max(100, cfg['total'][1] // 4), vsize,
                             'bench/range', self.logname('warmup', t, op))
        for rnd in range(cfg['rounds']):
            order = TARGETS[rnd % 3:] + TARGETS[:rnd % 3]
            log('round %d/%d: targets in the order %s' % (rnd + 1, cfg['rounds'],
                                                           ', '.join(order)))
            for op, clients, conns in WORKLOADS:
                total = cfg['total'][clients]
                for t in order:
                    out = self.measure(t, lambda: self.tool.kv(
                        self.port[t], op, clients, conns, total, vsize, 'bench/range',
                        self.logname('r%d' % (rnd + 1), t, op, 'c%d' % clients)))
                    out.update(round=rnd + 1, target=t, op=op, clients=clients, conns=conns,
                               total=total, value_size=vsize)
                    self.per_request(out, total)
                    self.result['kv'].append(out)
                    if out.get('errors'):
                        self.fail('%s %s c%d round %d: %d errors %s' % (
                            t, op, clients, rnd + 1, out['errors'], out.get('failure', '')))
                    log('  %-6s %-7s c%-3d %9.0f req/s  avg %7.3f ms  p99 %7.3f ms' % (
                        t, op, clients, out.get('rps') or 0, out.get('avg_ms') or 0,
                        out.get('p99_ms') or 0))

    @staticmethod
    def per_request(out, total):
        done = total - min(total, out.get('errors') or 0)
        for k in ('proxy_cpu_s', 'etcd_cpu_s', 'client_cpu_s'):
            v = out.get(k)
            out[k[:-len('_s')] + '_us_per_req'] = v * 1e6 / done if v is not None and done \
                else None
        for k in ('proxy_sleeps', 'proxy_reads', 'proxy_writes'):
            v = out.get(k)
            out[k + '_per_req'] = v / done if v is not None and done else None

    # -- watches

    def watches(self):
        if self.tool.name != 'benchmark':
            self.result['watches_skipped'] = 'h2load cannot hold watches'
            return
        for rnd in range(self.cfg['rounds']):
            order = TARGETS[rnd % 3:] + TARGETS[:rnd % 3]
            for n in self.cfg['watches']:
                for t in order:
                    out = self.measure(t, lambda: self.tool.watch(
                        self.port[t], n, self.cfg['watch_events'],
                        self.logname('r%d' % (rnd + 1), t, 'watch', n)), sample_memory=True)
                    out.update(round=rnd + 1, target=t, watches=n)
                    self.result['watches'].append(out)
                    if out.get('errors'):
                        self.fail('%s %d watches round %d: %s' % (t, n, rnd + 1,
                                                                  out.get('failure', 'errors')))
                    log('  %-6s %5d watches: %8.0f events/s, peak RSS %s MiB' % (
                        t, n, out.get('events_per_s') or 0, round(out['peak_rss_kib'] / 1024, 1)))

    # -- payloads

    def payloads(self):
        cfg = self.cfg
        clients = cfg['payload_clients']
        for size in cfg['payloads']:
            for t in TARGETS:
                self.put_key(t, 'bench/payload-%d' % size, b'p' * size)
        for rnd in range(cfg['rounds']):
            order = TARGETS[rnd % 3:] + TARGETS[:rnd % 3]
            for size in cfg['payloads']:
                total = cfg['payload_total'][size]
                for op in ('put', 'range-l'):
                    for t in order:
                        # puts overwrite 10 keys, so that compaction can free the space
                        out = self.measure(t, lambda: self.tool.kv(
                            self.port[t], op, clients, clients, total, size,
                            'bench/payload-%d' % size,
                            self.logname('r%d' % (rnd + 1), t, op, size), key_space=10),
                            sample_memory=True)
                        out.update(round=rnd + 1, target=t, op=op, value_size=size,
                                   clients=clients, conns=clients, total=total)
                        self.per_request(out, total)
                        if out.get('rps'):
                            out['mib_per_s'] = out['rps'] * size / MIB
                        self.result['payload'].append(out)
                        if out.get('errors'):
                            self.fail('%s %s %d B round %d: %d errors %s' % (
                                t, op, size, rnd + 1, out['errors'], out.get('failure', '')))
                        log('  %-6s %-7s %7d B %8.0f req/s %7.1f MiB/s p99 %8.2f ms' % (
                            t, op, size, out.get('rps') or 0, out.get('mib_per_s') or 0,
                            out.get('p99_ms') or 0))
                if size >= 65536:
                    self.core.compact_and_defrag()

    # -- noisy neighbours

    def noisy(self):
        """Tenant B's single-client puts while tenant A runs 100 clients flat out: B alone,
        with A unlimited, with A under spec.rateLimit; the same on two stock tenants."""
        cfg = self.cfg
        limit = cfg['noisy_limit']
        sv = Supervisor(self.build, self.workdir, self.logdir, 'noisy', self.core.url)
        ports = {n: free_port() for n in ('na', 'nal', 'nb', 'sa', 'sb')}
        sv.add_tenant('na', 'native', ports['na'])
        sv.add_tenant('nal', 'native', ports['nal'], rate_limit={
            'requestsPerSecond': limit, 'burst': max(1, limit // 10), 'maxWait': '5s',
            'maxQueue': 100000})
        sv.add_tenant('nb', 'native', ports['nb'])
        sv.add_tenant('sa', 'etcd', ports['sa'])
        sv.add_tenant('sb', 'etcd', ports['sb'])
        scenarios = [('native', 'B alone', None, 'nb'), ('native', 'A unlimited', 'na', 'nb'),
                     ('native', 'A limited to %d/s' % limit, 'nal', 'nb'),
                     ('stock', 'B alone', None, 'sb'), ('stock', 'A unlimited', 'sa', 'sb')]
        try:
            sv.start()
            sv.wait_ready(list(ports), 60)
            for rnd in range(cfg['rounds']):
                for backend, what, a, b in scenarios:
                    noise = None
                    if a is not None:
                        # A floods until B is done; its own figures do not matter here
                        noise = subprocess.Popen(
                            [self.tool.path, '--endpoints', '127.0.0.1:%d' % ports[a],
                             '--clients', '100', '--conns', '10', '--dial-timeout', '10s',
                             'put', '--total', '100000000', '--val-size',
                             str(cfg['value_size']), '--key-size', '8'],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
                        PROCS.track(noise.pid)
                        time.sleep(1)  # A at full speed before B starts
                    try:
                        out = self.tool.kv(ports[b], 'put', 1, 1, cfg['noisy_total'],
                                           cfg['value_size'], 'bench/range',
                                           self.logname('noisy-r%d' % (rnd + 1), backend,
                                                        a or 'alone'))
                    finally:
                        if noise is not None:
                            noise.kill()
                            noise.wait()
                    out.update(round=rnd + 1, backend=backend, scenario=what)
                    self.result['noisy'].append(out)
                    log('  %-6s %-20s B: p50 %6.2f ms  p99 %6.2f ms' % (
                        backend, what, out.get('p50_ms') or 0, out.get('p99_ms') or 0))
        except BenchError as e:
            self.fail('noisy neighbours: %s' % e)
        finally:
            sv.stop(timeout=60)
            shutil.rmtree(sv.dir, ignore_errors=True)

    # -- the audit log's cost

    def audit_cost(self):
        """Puts through the native backend with and without spec.audit, alternating."""
        cfg = self.cfg
        vsize = cfg['value_size']
        pairs = ('native', 'audit')
        for t in pairs:  # warm-up
            self.tool.kv(self.port[t], 'put', 10, 10, max(100, cfg['total'][1] // 4), vsize,
                         'bench/range', self.logname('warmup-audit', t))
        for rnd in range(cfg['rounds']):
            for clients, conns in ((1, 1), (100, 10)):
                total = cfg['total'][clients]
                for t in (pairs if rnd % 2 == 0 else pairs[::-1]):
                    out = self.measure(t, lambda: self.tool.kv(
                        self.port[t], 'put', clients, conns, total, vsize, 'bench/range',
                        self.logname('audit-r%d' % (rnd + 1), t, 'c%d' % clients)))
                    out.update(round=rnd + 1, target=t, clients=clients, total=total)
                    self.per_request(out, total)
                    self.result['audit'].append(out)
                    if out.get('errors'):
                        self.fail('audit %s c%d round %d: %d errors' % (
                            t, clients, rnd + 1, out['errors']))
                    log('  %-6s put c%-3d %9.0f req/s  proxy CPU %6.1f us/put' % (
                        t, clients, out.get('rps') or 0, out.get('proxy_cpu_us_per_req') or 0))
        path = os.path.join(self.audit_dir, 'bench-audit.log')

        def count():
            try:
                with open(path, 'rb') as f:
                    return sum(1 for _ in f)
            except OSError:
                return 0
        # the last lines reach the file within the log's 200 ms flush
        want = max(100, cfg['total'][1] // 4) + sum(r['total'] for r in self.result['audit']
                                                    if r['target'] == 'audit')
        wait_until(lambda: count() >= want, 5, 0.1)
        lines = count()
        self.result['audit_lines'] = lines
        log('  audit log %s: %d lines' % (path, lines))

    # -- tenants

    def tenants(self):
        for n in self.cfg['tenants']:
            log('%d idle native tenants' % n)
            self.result['tenants'].append(self.tenant_scale(n))

    def tenant_scale(self, n):
        mport = free_port()
        sv = Supervisor(self.build, self.workdir, self.logdir, 'scale-%d' % n, self.core.url,
                        extra={'metrics': {'listen': '127.0.0.1:%d' % mport}})
        names = ['t%04d' % i for i in range(1, n + 1)]
        ports = {}
        for name in names:
            ports[name] = free_port()
            sv.add_tenant(name, 'native', ports[name])
        out = {'tenants': n}
        other = OtherLoad()
        try:
            t0 = time.monotonic()
            sv.start()
            sv.wait_ready(names, 60 + n * 0.5)
            out['start_to_ready_s'] = time.monotonic() - t0
            for name in (names[0], names[-1]):
                if not probe(ports[name], 5):
                    raise BenchError('tenant %s is ready but does not answer' % name)
            time.sleep(6)  # every worker has reported its counters once; memory settles

            # one scrape of /metrics covers every tenant
            times, size = [], 0
            for _ in range(20):
                t0 = time.monotonic()
                with urllib.request.urlopen('http://127.0.0.1:%d/metrics' % mport,
                                            timeout=10) as resp:
                    size = len(resp.read())
                times.append(time.monotonic() - t0)
            out['scrape_ms'] = statistics.median(times) * 1000
            out['scrape_max_ms'] = max(times) * 1000
            out['scrape_kib'] = size / 1024
            st = sv.status()
            workers = [int(st[x]['pid']) for x in names]
            sup = memory(sv.proc.pid) or {}
            wsum = memory_sum(workers)
            out.update(supervisor_pss_kib=sup.get('pss_kib'), supervisor_rss_kib=sup.get('rss_kib'),
                       workers_pss_kib=wsum['pss_kib'], workers_rss_kib=wsum['rss_kib'])
            out['total_pss_kib'] = (sup.get('pss_kib') or 0) + wsum['pss_kib']
            out['pss_per_tenant_kib'] = out['total_pss_kib'] / n

            # a reload that changes one tenant (its compaction policy)
            changed = names[0]
            old = {x: st[x]['pid'] for x in names}
            sv.add_tenant(changed, 'native', ports[changed], policy={'compaction': 'allow'})
            t0 = time.monotonic()
            r = sv.ctl('reload')
            out['reload_cmd_s'] = time.monotonic() - t0
            if r is None or r.returncode != 0:
                raise BenchError('etcdproxyctl reload failed: %s' % (r and r.stderr))

            def changed_ready():
                s = sv.status()
                return s if s and s[changed]['state'] == 'ready' and \
                    s[changed]['pid'] != old[changed] else None
            st = wait_until(changed_ready, 30, 0.01)
            if not st:
                raise BenchError('the changed tenant %s did not come back' % changed)
            out['reload_to_ready_s'] = time.monotonic() - t0
            out['reload_others_restarted'] = sum(1 for x in names[1:]
                                                 if st[x]['pid'] != old[x])
            if not probe(ports[changed], 5):
                raise BenchError('the changed tenant %s does not answer' % changed)

            # kill -9 of one worker, to its endpoint answering again
            kills = []
            for name in names[1:1 + self.cfg['kills']]:
                pid = sv.worker_pid(name)
                if not probe(ports[name], 5):
                    raise BenchError('tenant %s does not answer before the kill' % name)
                t0 = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                failed = 0
                while not probe(ports[name], 2):
                    failed += 1
                    if time.monotonic() - t0 > 30:
                        raise BenchError('tenant %s does not answer 30 s after kill -9' % name)
                kills.append({'tenant': name, 'answering_s': time.monotonic() - t0,
                              'failed_probes': failed})
            out['kill9'] = kills
            out['kill9_to_answering_s'] = statistics.median(k['answering_s'] for k in kills)
            out['kill9_failed_probes'] = sum(k['failed_probes'] for k in kills)
        except BenchError as e:
            self.fail('%d tenants: %s' % (n, e))
            out['error'] = str(e)
        finally:
            out['stop_s'] = sv.stop(timeout=120)
            out['other_cpu_share'] = other.share()
            shutil.rmtree(sv.dir, ignore_errors=True)
        log('  start %.2f s, PSS total %.1f MiB, reload %.3f s, kill -9 %.3f s' % (
            out.get('start_to_ready_s') or 0, (out.get('total_pss_kib') or 0) / 1024,
            out.get('reload_to_ready_s') or 0, out.get('kill9_to_answering_s') or 0))
        return out

    # -- the whole run

    def run(self):
        meta = self.result['meta']
        meta.update(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
                    mode='smoke' if self.args.smoke else 'full',
                    command=self.args.command or ' '.join(sys.argv),
                    machine=self.machine(), versions=self.versions(), config=self.cfg,
                    etcd_data='tmpfs (%s)' % self.workdir if self.workdir.startswith('/dev/shm')
                    else self.workdir)
        la = meta['machine']['loadavg_start'][0]
        if la > 0.5 * (os.cpu_count() or 1):
            log('warning: load average %.2f at start: the machine is busy, figures are noisy' % la)
        t_start = time.monotonic()
        try:
            self.setup()
            time.sleep(1)
            self.result['memory']['idle'] = self.snapshot_memory()
            self.machine_costs()
            if not self.args.skip_kv:
                self.kv_matrix()
            self.result['memory']['after_load'] = self.snapshot_memory()
            if not self.args.skip_watches:
                self.watches()
            if not self.args.skip_payload:
                self.payloads()
            if not self.args.skip_audit:
                self.audit_cost()
            self.result['memory']['after_all'] = self.snapshot_memory()
            self.sv.stop()
            self.sv = None
            if not self.args.skip_noisy and self.tool.name == 'benchmark':
                self.noisy()
            if not self.args.skip_tenants:
                self.tenants()
        except BenchError as e:
            self.fail(str(e))
        finally:
            if self.sv:
                self.sv.stop()
            if self.core:
                self.core.stop()
            left = PROCS.kill_all()
            if left:
                log('killed %d leftover process(es): %s' % (len(left), left))
            shutil.rmtree(self.workdir, ignore_errors=True)
        meta['machine']['loadavg_end'] = os.getloadavg()
        meta['duration_s'] = round(time.monotonic() - t_start, 1)
        self.summarize()
        write_json(os.path.join(self.outdir, 'results.json'), self.result)
        md = render_markdown(self.result)
        with open(os.path.join(self.outdir, 'results.md'), 'w') as f:
            f.write(md)
        plots(self.result, self.outdir)
        sys.stdout.write(md)
        sys.stdout.flush()
        a = self.args
        complete = not (a.smoke or a.skip_kv or a.skip_watches or a.skip_payload or
                        a.skip_tenants or a.skip_audit or a.skip_noisy or a.rounds or a.tenants or
                        self.result['failures'])
        if a.latest and complete:
            os.makedirs(os.path.dirname(os.path.abspath(a.latest)), exist_ok=True)
            shutil.copyfile(os.path.join(self.outdir, 'results.md'), a.latest)
            log('copied results.md to %s' % a.latest)
        log('results in %s' % self.outdir)
        return 0 if not self.result['failures'] else 1

    # -- medians and ratios

    def summarize(self):
        res = self.result
        summary = []
        for op, clients, conns in WORKLOADS:
            runs = [r for r in res['kv'] if r['op'] == op and r['clients'] == clients]
            if not runs:
                continue
            row = {'op': op, 'clients': clients, 'conns': conns, 'targets': {}, 'ratios': {}}
            for t in TARGETS:
                rs = [r for r in runs if r['target'] == t]
                row['targets'][t] = {k: median_min_max([r.get(k) for r in rs]) for k in
                                     ('rps', 'avg_ms', 'p99_ms', 'proxy_cpu_us_per_req',
                                      'etcd_cpu_us_per_req', 'client_cpu_us_per_req',
                                      'proxy_sleeps_per_req', 'proxy_reads_per_req',
                                      'proxy_writes_per_req')}
            # ratios per round (native and its reference ran next to each other), then medians
            for ref in ('direct', 'stock'):
                ratios = {}
                for k in ('rps', 'avg_ms', 'p99_ms', 'proxy_cpu_us_per_req'):
                    per_round = []
                    for rnd in sorted({r['round'] for r in runs}):
                        a = [r.get(k) for r in runs if r['round'] == rnd and r['target'] == 'native']
                        b = [r.get(k) for r in runs if r['round'] == rnd and r['target'] == ref]
                        if a and b and a[0] is not None and b[0]:
                            per_round.append(a[0] / b[0])
                    ratios[k] = median_min_max(per_round)
                row['ratios']['native/' + ref] = ratios
            summary.append(row)
        res['kv_summary'] = summary

        wsum = []
        for n in sorted({w['watches'] for w in res['watches']}):
            row = {'watches': n, 'targets': {}}
            for t in TARGETS:
                ws = [w for w in res['watches'] if w['watches'] == n and w['target'] == t]
                row['targets'][t] = {k: median_min_max([w.get(k) for w in ws]) for k in
                                     ('events_per_s', 'create_per_s', 'peak_rss_kib',
                                      'peak_pss_kib', 'proxy_cpu_s')}
            wsum.append(row)
        res['watches_summary'] = wsum

        psum = []
        for size in sorted({p['value_size'] for p in res['payload']}):
            for op in ('put', 'range-l'):
                row = {'value_size': size, 'op': op, 'targets': {}}
                for t in TARGETS:
                    ps = [p for p in res['payload'] if p['value_size'] == size and
                          p['op'] == op and p['target'] == t]
                    row['targets'][t] = {k: median_min_max([p.get(k) for p in ps]) for k in
                                         ('rps', 'mib_per_s', 'avg_ms', 'p99_ms',
                                          'proxy_cpu_us_per_req', 'peak_rss_kib')}
                psum.append(row)
        res['payload_summary'] = psum

        res['other_load'] = {part: median_min_max([r.get('other_cpu_share') for r in res[part]])
                             for part in ('kv', 'watches', 'payload', 'tenants') if res[part]}


# ---- output: Markdown ------------------------------------------------------------------------

def fmt(v, digits=0):
    if v is None:
        return '–'
    if digits == 0:
        return '{:,.0f}'.format(v)
    return '{:,.{d}f}'.format(v, d=digits)


def fmm(s, digits=0, minmax=True):
    """A median with its min–max: '1,234 (1,200–1,300)'."""
    if not s:
        return '–'
    if not minmax or s['n'] < 2:
        return fmt(s['median'], digits)
    return '%s (%s–%s)' % (fmt(s['median'], digits), fmt(s['min'], digits),
                          fmt(s['max'], digits))


def lat_digits(s):
    return 3 if s and s['median'] < 1 else 2


def workload_label(op, clients, conns):
    name = {'put': 'put', 'range-l': 'range (linearizable)',
            'range-s': 'range (serializable)'}[op]
    return '%s, %s' % (name, '1 client' if clients == 1 else
                       '%d clients / %d conns' % (clients, conns))


def render_markdown(res):
    meta = res['meta']
    m, v, cfg = meta['machine'], meta['versions'], meta['config']
    L = []
    L.append('# etcdproxy benchmark: native vs stock vs direct etcd')
    L.append('')
    L.append('- date: %s (%s run, %s s)' % (meta['date'], meta['mode'], meta.get('duration_s')))
    L.append('- machine: %s, %d cores, %.1f GiB, %s, Linux %s; load average %.2f at start, '
             '%.2f at end' % (m['cpu'], m['cores'], m['memory_gib'], m['os'], m['kernel'],
                              m['loadavg_start'][0], m.get('loadavg_end', [0])[0]))
    L.append('- versions: %s, built %s (source tree at %s); %s; load generator: %s; '
             'libnghttp2 %s' % (v['etcdproxy'], v.get('etcdproxy_built'), v.get('source') or '?',
                                v['etcd'], v['load_generator'], v['nghttp2']))
    L.append('- command: `%s`' % meta['command'])
    L.append('- setup: one core etcd (data on %s), one etcdproxyd with tenant `bench-stock` '
             '(backend `etcd`, i.e. `etcd grpc-proxy --namespace`) and tenant `bench-native` '
             '(backend `native`); everything on loopback, client and servers share the %d cores.'
             % ('tmpfs' if meta['etcd_data'].startswith('tmpfs') else 'disk', m['cores']))
    L.append('- %d rounds; in each round every workload runs on the three targets back to back, '
             'their order rotated per round. Figures are medians (min–max) over the rounds; '
             'ratios are computed per round, then their median (min–max).' % cfg['rounds'])
    other = res.get('other_load') or {}
    if other:
        L.append('- CPU used by everything else on the machine during the runs, as a share of all '
                 'cores (median, max): %s. Above a few percent, the figures are disturbed.' %
                 '; '.join('%s %.0f%%, %.0f%%' % ({'kv': 'requests'}.get(k, k),
                                                  100 * s['median'], 100 * s['max'])
                           for k, s in other.items() if s))
    mc = res.get('machine_costs')
    if mc:
        L.append('- what this machine\'s kernel charges a process (`contrib/bench/costs.c`, '
                 'measured with nothing else running): %.1f µs of CPU to sleep in epoll_wait and '
                 'be woken from idle by a peer, %.1f µs to write 256 B to loopback TCP, %.1f µs '
                 'to read them.' % (mc['wake_us'], mc['write_us'], mc['read_us']))
    if 'h2load' in v['load_generator']:
        L.append('')
        L.append('**Load generator: the h2load fallback** (%s). It repeats one raw gRPC request '
                 'per run (puts rewrite one key); latencies come from its per-request log; '
                 'watches are not measured.' % v['load_generator'].split('FALLBACK: ')[-1]
                 .rstrip(')'))
    if res['failures']:
        L.append('')
        L.append('**FAILURES (%d):**' % len(res['failures']))
        for f in res['failures']:
            L.append('- %s' % f)
    L.append('')

    if res.get('kv_summary'):
        L.append('## Requests (values of %d B; %s requests per run with 1 client, %s with 100)'
                 % (cfg['value_size'], fmt(cfg['total'][1]), fmt(cfg['total'][100])))
        L.append('')
        L.append('| workload | target | requests/s | average ms | p99 ms | proxy CPU µs/req '
                 '| etcd CPU µs/req | client CPU µs/req |')
        L.append('|---|---|---:|---:|---:|---:|---:|---:|')
        for row in res['kv_summary']:
            for t in TARGETS:
                s = row['targets'][t]
                L.append('| %s | %s | %s | %s | %s | %s | %s | %s |' % (
                    workload_label(row['op'], row['clients'], row['conns']), t, fmm(s['rps']),
                    fmm(s['avg_ms'], lat_digits(s['avg_ms'])),
                    fmm(s['p99_ms'], lat_digits(s['p99_ms'])),
                    fmm(s['proxy_cpu_us_per_req'], 1, False) if t != 'direct' else '–',
                    fmm(s['etcd_cpu_us_per_req'], 1, False),
                    fmm(s['client_cpu_us_per_req'], 1, False)))
        L.append('')
        L.append('### Ratios')
        L.append('')
        L.append('requests/s: higher is better for native; latency and CPU: lower is better.')
        L.append('')
        L.append('| workload | native/direct req/s | native/direct p99 | native/stock req/s '
                 '| native/stock avg | native/stock p99 | native/stock proxy CPU |')
        L.append('|---|---:|---:|---:|---:|---:|---:|')
        for row in res['kv_summary']:
            d, s = row['ratios']['native/direct'], row['ratios']['native/stock']
            L.append('| %s | %s | %s | %s | %s | %s | %s |' % (
                workload_label(row['op'], row['clients'], row['conns']),
                fmm(d['rps'], 2), fmm(d['p99_ms'], 2), fmm(s['rps'], 2), fmm(s['avg_ms'], 2),
                fmm(s['p99_ms'], 2), fmm(s['proxy_cpu_us_per_req'], 2)))
        L.append('')
        L.append('The stock proxy caches serializable ranges; the linearizable range is the one '
                 'that measures the hop.')
        L.append('')
        L.append('### What the proxies ask of the kernel, per request')
        L.append('')
        L.append('Counted by the kernel for the proxy process tree: sleeps are voluntary context '
                 'switches of all its threads, reads and writes its read- and write-type system '
                 'calls (/proc/PID/io).')
        L.append('')
        L.append('| workload | target | proxy CPU µs/req | sleeps/req | reads/req | writes/req |')
        L.append('|---|---|---:|---:|---:|---:|')
        for row in res['kv_summary']:
            for t in ('stock', 'native'):
                s = row['targets'][t]
                L.append('| %s | %s | %s | %s | %s | %s |' % (
                    workload_label(row['op'], row['clients'], row['conns']), t,
                    fmm(s['proxy_cpu_us_per_req'], 1, False),
                    fmm(s.get('proxy_sleeps_per_req'), 2), fmm(s.get('proxy_reads_per_req'), 2),
                    fmm(s.get('proxy_writes_per_req'), 2)))
        L.append('')

    mem = res.get('memory') or {}
    if mem.get('idle'):
        L.append('## Memory of the proxy processes (KiB)')
        L.append('')
        L.append('| target | process | RSS idle | PSS idle | RSS after load | PSS after load '
                 '| RSS after all | PSS after all | peak RSS (VmHWM) |')
        L.append('|---|---|---:|---:|---:|---:|---:|---:|---:|')
        for t in TARGETS:
            for i, p in enumerate(mem['idle'].get(t, [])):
                def pick(phase, k):
                    lst = mem.get(phase, {}).get(t, [])
                    return lst[i].get(k) if i < len(lst) else None
                L.append('| %s | %s | %s | %s | %s | %s | %s | %s | %s |' % (
                    t, p['process'] if t != 'direct' else 'core etcd (no proxy; for reference)', fmt(p.get('rss_kib')), fmt(p.get('pss_kib')),
                    fmt(pick('after_load', 'rss_kib')), fmt(pick('after_load', 'pss_kib')),
                    fmt(pick('after_all', 'rss_kib')), fmt(pick('after_all', 'pss_kib')),
                    fmt(pick('after_all', 'hwm_kib'))))
        L.append('')
        L.append('"After all" follows the watch and payload runs. etcd\'s own memory grows with '
                 'the data written (its database is mapped from tmpfs, and its raft log keeps '
                 'recent entries in memory).')
        L.append('')

    if res.get('watches_summary'):
        L.append('## Watches (one tenant; 100 watchers per gRPC stream, on 100 keys; about %s '
                 'events per run)' % fmt(cfg['watch_events']))
        L.append('')
        L.append('| watches | target | events/s delivered | watches created/s | peak RSS MiB '
                 '| peak PSS MiB |')
        L.append('|---:|---|---:|---:|---:|---:|')
        for row in res['watches_summary']:
            for t in TARGETS:
                s = row['targets'][t]
                rss = s['peak_rss_kib'] and {k: (x / 1024 if k != 'n' else x)
                                             for k, x in s['peak_rss_kib'].items()}
                pss = s['peak_pss_kib'] and {k: (x / 1024 if k != 'n' else x)
                                             for k, x in s['peak_pss_kib'].items()}
                if t == 'direct':
                    rss = pss = None
                L.append('| %s | %s | %s | %s | %s | %s |' % (
                    fmt(row['watches']), t, fmm(s['events_per_s']), fmm(s['create_per_s']),
                    fmm(rss, 1, False), fmm(pss, 1, False)))
        L.append('')
        L.append('Memory is the peak of the proxy process tree, sampled every 0.2 s during the '
                 'run (etcd\'s for direct is in results.json). The stock proxy coalesces watchers of one key into one '
                 'upstream watch; the native proxy keeps every watch stream 1:1.')
        L.append('')
    elif res.get('watches_skipped'):
        L.append('## Watches')
        L.append('')
        L.append('Not measured: %s.' % res['watches_skipped'])
        L.append('')

    if res.get('payload_summary'):
        L.append('## Payload sizes (%d clients over %d connections)' % (
            cfg['payload_clients'], cfg['payload_clients']))
        L.append('')
        L.append('| value | op | target | requests/s | MiB/s | average ms | p99 ms '
                 '| proxy CPU µs/req | peak RSS MiB |')
        L.append('|---:|---|---|---:|---:|---:|---:|---:|---:|')
        for row in res['payload_summary']:
            for t in TARGETS:
                s = row['targets'][t]
                rss = s['peak_rss_kib'] and {k: (x / 1024 if k != 'n' else x)
                                             for k, x in s['peak_rss_kib'].items()}
                if t == 'direct':
                    rss = None
                L.append('| %s | %s | %s | %s | %s | %s | %s | %s | %s |' % (
                    size_label(row['value_size']), row['op'], t, fmm(s['rps']),
                    fmm(s['mib_per_s'], 1, False), fmm(s['avg_ms'], 2, False),
                    fmm(s['p99_ms'], 2, False),
                    fmm(s['proxy_cpu_us_per_req'], 1, False) if t != 'direct' else '–',
                    fmm(rss, 1, False)))
        L.append('')

    if res.get('noisy'):
        L.append('## Noisy neighbours (tenant B: 1 client putting; tenant A: 100 clients flat out)')
        L.append('')
        L.append('| backend | scenario | B p50 ms | B p99 ms | B p99 against alone |')
        L.append('|---|---|---:|---:|---:|')
        alone = {}
        for backend in ('native', 'stock'):
            seen = []
            for r in res['noisy']:
                if r['backend'] == backend and r['scenario'] not in seen:
                    seen.append(r['scenario'])
            for sc in seen:
                rows = [r for r in res['noisy'] if r['backend'] == backend and
                        r['scenario'] == sc and r.get('p99_ms')]
                if not rows:
                    continue
                p50 = statistics.median(r.get('p50_ms') or 0 for r in rows)
                p99 = statistics.median(r['p99_ms'] for r in rows)
                if sc == 'B alone':
                    alone[backend] = p99
                L.append('| %s | %s | %s | %s | %s |' % (
                    backend, sc, fmt(p50, 2), fmt(p99, 2),
                    fmt(p99 / alone[backend], 2) if alone.get(backend) else '–'))
        L.append('')
        L.append('Medians of %d rounds. A and B are tenants of one etcdproxyd on one core etcd; '
                 '"limited" is A with spec.rateLimit.' % cfg['rounds'])
        L.append('')

    if res.get('audit'):
        L.append('## What the audit log costs (native backend, puts, spec.audit on against off)')
        L.append('')
        L.append('| clients | without audit req/s | with audit req/s | ratio | proxy CPU us/put '
                 'without | with |')
        L.append('|---:|---:|---:|---:|---:|---:|')
        for clients in (1, 100):
            rows = {t: [r for r in res['audit'] if r['clients'] == clients and r['target'] == t]
                    for t in ('native', 'audit')}
            if not rows['native'] or not rows['audit']:
                continue
            rps = {t: statistics.median(r.get('rps') or 0 for r in rows[t]) for t in rows}
            cpu = {t: [r['proxy_cpu_us_per_req'] for r in rows[t]
                       if r.get('proxy_cpu_us_per_req') is not None] for t in rows}
            L.append('| %d | %s | %s | %s | %s | %s |' % (
                clients, fmt(rps['native']), fmt(rps['audit']),
                fmt(rps['audit'] / rps['native'], 3) if rps['native'] else '–',
                fmt(statistics.median(cpu['native']), 1) if cpu['native'] else '–',
                fmt(statistics.median(cpu['audit']), 1) if cpu['audit'] else '–'))
        L.append('')
        L.append('Medians of %d rounds, the two tenants alternating in one supervisor; the '
                 'audit log got %s lines.' % (cfg['rounds'], res.get('audit_lines', '?')))
        L.append('')

    if res.get('tenants'):
        L.append('## How cost grows with tenants (idle native tenants, one supervisor)')
        L.append('')
        L.append('| tenants | start to all ready s | supervisor PSS KiB | workers PSS KiB '
                 '| PSS per tenant KiB | workers RSS KiB | reload (one changed) s '
                 '| others restarted | kill -9 to answering s | failed probes | stop s '
                 '| /metrics scrape ms (max) | scrape KiB |')
        L.append('|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
        for row in res['tenants']:
            if row.get('error'):
                L.append('| %d | error: %s |||||||||||' % (row['tenants'], row['error']))
                continue
            L.append('| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s (%s) | %s |' % (
                row['tenants'], fmt(row['start_to_ready_s'], 2),
                fmt(row['supervisor_pss_kib']), fmt(row['workers_pss_kib']),
                fmt(row['pss_per_tenant_kib']), fmt(row['workers_rss_kib']),
                fmt(row['reload_to_ready_s'], 3), row['reload_others_restarted'],
                fmt(row['kill9_to_answering_s'], 3), row['kill9_failed_probes'],
                fmt(row.get('stop_s'), 2), fmt(row.get('scrape_ms'), 1),
                fmt(row.get('scrape_max_ms'), 1), fmt(row.get('scrape_kib'))))
        L.append('')
        L.append('Reload: `etcdproxyctl reload` after one tenant file changed, to that tenant '
                 'ready with a new worker. Kill -9: SIGKILL of one worker to a linearizable '
                 'Range through its endpoint answering again (median of %d tenants); the '
                 'supervisor restarts a worker at once after its first failure (the backoff, '
                 '`restart_backoff_initial`, applies from the second one on). The listening '
                 'socket stays open meanwhile, so a probe waits in its backlog rather than '
                 'being refused. A failed probe is a request that was refused, reset or not '
                 'answered within 2 s meanwhile.'
                 % cfg['kills'])
        L.append('')
    return '\n'.join(L) + '\n'


def size_label(n):
    if n >= MIB:
        return '%d MiB' % (n // MIB)
    if n >= 1024:
        return '%d KiB' % (n // 1024)
    return '%d B' % n


# ---- output: gnuplot -----------------------------------------------------------------------

def plots(res, outdir):
    gp = shutil.which('gnuplot')
    if not gp:
        log('no gnuplot (package gnuplot-nox): no plots')
        res['plots'] = []
        return
    made = []
    data = os.path.join(outdir, 'plotdata')
    os.makedirs(data, exist_ok=True)

    def run(name, script):
        path = os.path.join(outdir, name)
        r = subprocess.run([gp], input='set terminal pngcairo size 1100,600 font ",10"\n'
                           'set output "%s"\n%s' % (path, script), text=True,
                           capture_output=True, timeout=60)
        if r.returncode == 0 and os.path.exists(path):
            made.append(name)
        else:
            log('gnuplot %s failed: %s' % (name, r.stderr.strip()))

    short = {'put': 'put', 'range-l': 'range lin', 'range-s': 'range ser'}
    if res.get('kv_summary'):
        rows = []
        for row in res['kv_summary']:
            label = '"%s %s"' % (short[row['op']], 'c1' if row['clients'] == 1 else
                                 'c%d/%d' % (row['clients'], row['conns']))
            cols = [label]
            for k in ('rps', 'avg_ms', 'p99_ms'):
                for t in TARGETS:
                    s = row['targets'][t][k] or {'median': 0, 'min': 0, 'max': 0}
                    cols += ['%g' % s['median'], '%g' % s['min'], '%g' % s['max']]
            rows.append(' '.join(cols))
        with open(os.path.join(data, 'kv.dat'), 'w') as f:
            f.write('# workload, then for rps, avg_ms, p99_ms: direct, stock, native '
                    '(median min max)\n' + '\n'.join(rows) + '\n')
        dat = os.path.join(data, 'kv.dat')
        hist = ('set style data histogram\nset style histogram errorbars gap 2 lw 1\n'
                'set style fill solid 0.6 border -1\nset grid ytics\nset key top right\n'
                'set xtics rotate by -20\n')

        def bars(base):
            return ', '.join("'%s' using %d:%d:%d%s title '%s'" % (
                dat, base + 3 * i, base + 3 * i + 1, base + 3 * i + 2,
                ':xtic(1)' if i == 0 else '', TARGET_LABEL[t]) for i, t in enumerate(TARGETS))
        run('throughput.png', hist + 'set title "Requests per second (median, min–max)"\n'
            'set ylabel "requests/s"\nset yrange [0:*]\nplot %s\n' % bars(2))
        run('latency.png', hist + 'set multiplot layout 1,2\nset logscale y\n'
            'set title "Average latency (ms)"\nset ylabel "ms"\nplot %s\n'
            'set title "p99 latency (ms)"\nplot %s\nunset multiplot\n' % (bars(11), bars(20)))

    ten = [t for t in res.get('tenants', []) if not t.get('error')]
    if ten:
        with open(os.path.join(data, 'tenants.dat'), 'w') as f:
            f.write('# tenants supervisor_pss_mib workers_pss_mib total_pss_mib '
                    'workers_rss_mib\n')
            for t in ten:
                f.write('%d %g %g %g %g\n' % (
                    t['tenants'], t['supervisor_pss_kib'] / 1024, t['workers_pss_kib'] / 1024,
                    t['total_pss_kib'] / 1024, t['workers_rss_kib'] / 1024))
        dat = os.path.join(data, 'tenants.dat')
        run('memory-tenants.png',
            'set title "Memory against tenant count (idle native tenants)"\n'
            'set xlabel "tenants"\nset ylabel "MiB"\nset logscale xy\nset grid\n'
            'set key bottom right\nset xrange [5:1000]\nset xtics (%s)\n'
            "plot '%s' using 1:4 with linespoints lw 2 title 'PSS: supervisor + workers', "
            "'' using 1:3 with linespoints title 'PSS: workers', "
            "'' using 1:2 with linespoints title 'PSS: supervisor', "
            "'' using 1:5 with linespoints dt 2 title 'RSS: workers (sum, counts shared pages "
            "again and again)'\n" % (', '.join(str(t['tenants']) for t in ten), dat))

    if res.get('payload_summary'):
        rows = []
        for row in res['payload_summary']:
            cols = ['"%s %s"' % (size_label(row['value_size']), short[row['op']])]
            for t in TARGETS:
                s = row['targets'][t]['mib_per_s'] or {'median': 0}
                cols.append('%g' % s['median'])
            rows.append(' '.join(cols))
        with open(os.path.join(data, 'payload.dat'), 'w') as f:
            f.write('# payload, MiB/s: direct stock native\n' + '\n'.join(rows) + '\n')
        dat = os.path.join(data, 'payload.dat')
        run('payload.png', 'set style data histogram\nset style histogram cluster gap 2\n'
            'set style fill solid 0.6 border -1\nset grid ytics\nset logscale y\n'
            'set title "Throughput by value size (MiB/s, median)"\nset ylabel "MiB/s"\n'
            'plot ' + ', '.join("'%s' using %d%s title '%s'" % (
                dat, 2 + i, ':xtic(1)' if i == 0 else '', TARGET_LABEL[t])
                for i, t in enumerate(TARGETS)) + '\n')
    res['plots'] = made
    write_json(os.path.join(outdir, 'results.json'), res)


# ---- main -------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--builddir', required=True, help='the etcdproxy build directory')
    ap.add_argument('--tool', choices=('benchmark', 'h2load'), default='benchmark')
    ap.add_argument('--tool-path', help='the benchmark (or h2load) binary')
    ap.add_argument('--tool-note', help='why h2load is used (printed in the header)')
    ap.add_argument('--smoke', action='store_true', help='tiny totals, a few seconds')
    ap.add_argument('--results-dir', default=os.path.join(HERE, 'results'),
                    help='parent of the <timestamp> directory (default contrib/bench/results)')
    ap.add_argument('--latest', help='copy results.md here after a complete full run '
                    '(no --smoke, --skip-*, --rounds or --tenants, no failure)')
    ap.add_argument('--rounds', type=int, help='rounds (default 5, smoke 2)')
    ap.add_argument('--tenants', help='tenant counts, comma-separated (default 10,100,500)')
    ap.add_argument('--skip-kv', action='store_true')
    ap.add_argument('--skip-watches', action='store_true')
    ap.add_argument('--skip-payload', action='store_true')
    ap.add_argument('--skip-tenants', action='store_true')
    ap.add_argument('--skip-audit', action='store_true')
    ap.add_argument('--skip-noisy', action='store_true')
    ap.add_argument('--command', help='the command line to print in the header')
    args = ap.parse_args()
    if args.tool == 'benchmark' and not args.tool_path:
        ap.error('--tool benchmark needs --tool-path')
    if args.tool == 'h2load' and not (args.tool_path or shutil.which('h2load')):
        ap.error('no h2load (package nghttp2-client)')

    def on_signal(signum, frame):
        raise KeyboardInterrupt('signal %d' % signum)
    signal.signal(signal.SIGTERM, on_signal)
    bench = Bench(args)
    try:
        return bench.run()
    except KeyboardInterrupt:
        PROCS.kill_all()
        shutil.rmtree(bench.workdir, ignore_errors=True)
        log('interrupted')
        return 130


if __name__ == '__main__':
    sys.exit(main())
