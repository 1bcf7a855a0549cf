#!/usr/bin/python3
"""Large Puts of a tenant with a write quota: the worker's CPU per put and its peak RSS.

  EP_BUILDDIR=build /usr/bin/python3 contrib/bench/quota-put.py [--rounds 3] [--total 400]
      [--kib 1024] [--tool PATH]

Starts a core etcd and one native tenant whose spec.quota counts writes (maxKeys and
maxBytes, both far above what the run writes), then runs etcd's benchmark tool, 10 clients,
TOTAL puts of KIB KiB values over 100 keys per round. Prints per round the puts per second,
the worker's CPU per put (utime + stime from /proc/PID/stat) and its peak RSS (VmHWM), and at
the end the tenant's usage and its puts_streamed counter. Such a tenant's large Puts stream
(doc/native-backend.md, "Large messages"); its worker also receives each value again through
the watch that keeps its usage current. The benchmark tool is the one contrib/bench/run.sh
builds (build-benchmark.sh, cached in ~/.cache/etcdproxy-bench/benchmark)."""

import argparse
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRCDIR = os.path.abspath(os.path.join(HERE, '..', '..'))
sys.path.insert(0, os.path.join(SRCDIR, 'tests', 'integration'))
sys.dont_write_bytecode = True  # nothing written into the source tree
import eptest  # noqa: E402


def cpu_seconds(pid):
    fields = open('/proc/%d/stat' % pid).read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def peak_rss_mib(pid):
    with open('/proc/%d/status' % pid) as f:
        return int(re.search(r'VmHWM:\s+(\d+)', f.read()).group(1)) / 1024


def body(s, args):
    core = eptest.CoreEtcd(s).start()
    sv = eptest.Supervisor(s, core)
    sv.config['log_level'] = 'info'
    sv.write_config()
    port = sv.add_tenant('q', backend='native', spec_extra={
        'quota': {'maxKeys': 1000000, 'maxBytes': 1 << 50}})
    sv.start()
    sv.wait_ready('q')
    pid = sv.tenant('q')['pid']
    s.check(eptest.wait_until(lambda: sv.counters('q').get('quota_state') == 'counted', 15,
                              0.3), 'the tenant\'s usage is counted', sv.counters('q'))
    cmd = [args.tool, '--endpoints', '127.0.0.1:%d' % port, '--clients', '10', '--conns', '10',
           'put', '--key-size', '8', '--val-size', str(args.kib * 1024), '--total',
           str(args.total), '--key-space-size', '100']
    for rnd in range(args.rounds):
        before = cpu_seconds(pid)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
        used = cpu_seconds(pid) - before
        m = re.search(r'Requests/sec:\s+([0-9.]+)', r.stdout)
        if r.returncode != 0 or m is None:
            raise eptest.Failure('benchmark failed: %s' % (r.stdout + r.stderr)[-500:])
        print('round %d: %.1f puts per second, worker CPU %.2f ms per put, peak RSS %.1f MiB'
              % (rnd + 1, float(m.group(1)), used / args.total * 1e3, peak_rss_mib(pid)),
              flush=True)
    time.sleep(6)  # the worker reports its counters every 5 s
    k = sv.counters('q')
    print('usage: %s keys, %s bytes; puts_streamed %s of %d' % (
        k.get('quota_keys'), k.get('quota_bytes'), k.get('puts_streamed'),
        args.rounds * args.total))
    s.eq(sv.stop(), 0, 'etcdproxyd exits 0 on SIGTERM')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--total', type=int, default=400, help='puts per round')
    ap.add_argument('--kib', type=int, default=1024, help='value size in KiB')
    ap.add_argument('--tool', default=os.path.expanduser('~/.cache/etcdproxy-bench/benchmark'),
                    help="etcd's benchmark tool")
    args = ap.parse_args()
    if not os.access(args.tool, os.X_OK):
        sys.exit('quota-put: no benchmark tool at %s (contrib/bench/build-benchmark.sh)'
                 % args.tool)
    s = eptest.Suite('quota-put', timeout=3600)
    s.require(eptest.ETCD, eptest.ETCDPROXYD, eptest.WORKER)
    s.main(lambda suite: body(suite, args))


if __name__ == '__main__':
    main()
