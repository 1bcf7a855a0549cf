#!/usr/bin/python3
"""One very large Range answer, direct and through a native tenant, with the worker's memory.

  EP_BUILDDIR=build /usr/bin/python3 contrib/bench/big-range.py [--mib 40] [--rounds 5]
      [--tool PATH]

Writes MIB keys of 1 MiB each (random bytes) at the root of a core etcd started for the run
and the same under the tenant's prefix, then times linearizable Ranges of all of them in one
answer with etcd's benchmark tool (10 Ranges per round, one client), alternating direct etcd
and the tenant. Prints each round's average, the median ratio tenant/direct, and the worker's
peak RSS (VmHWM) against the answer's size. Issue 19's target: within 1.2 times direct, and a
peak RSS under 3 times the answer. The benchmark tool is the one contrib/bench/run.sh builds
(build-benchmark.sh, cached in ~/.cache/etcdproxy-bench/benchmark)."""

import argparse
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SRCDIR = os.path.abspath(os.path.join(HERE, '..', '..'))
sys.path.insert(0, os.path.join(SRCDIR, 'tests', 'integration'))
sys.dont_write_bytecode = True  # nothing written into the source tree
import eptest  # noqa: E402


def average(tool, port, mib):
    """Seconds per Range of the MIB keys, as the benchmark tool reports its average."""
    r = subprocess.run([tool, '--endpoints', '127.0.0.1:%d' % port, '--clients', '1',
                        '--conns', '1', 'range', 'k000', 'k%03d' % mib, '--consistency', 'l',
                        '--total', '10'], capture_output=True, text=True, timeout=600)
    m = re.search(r'Average:\s+([0-9.]+) secs', r.stdout)
    if r.returncode != 0 or m is None:
        raise eptest.Failure('benchmark failed: %s' % (r.stdout + r.stderr)[-500:])
    return float(m.group(1))


def peak_rss_kib(pid):
    with open('/proc/%d/status' % pid) as f:
        return int(re.search(r'VmHWM:\s+(\d+)', f.read()).group(1))


def body(s, args):
    core = eptest.CoreEtcd(s).start()
    sv = eptest.Supervisor(s, core)
    sv.config['log_level'] = 'info'
    sv.write_config()
    port = sv.add_tenant('big', backend='native')
    sv.start()
    sv.wait_ready('big')
    pid = sv.tenant('big')['pid']
    c = eptest.etcd3_client(core.port)
    try:
        for i in range(args.mib):
            v = os.urandom(1 << 20)
            c.put('k%03d' % i, v)
            c.put('/big/k%03d' % i, v)
    finally:
        c.close()
    before = peak_rss_kib(pid)
    ratios = []
    for rnd in range(args.rounds):
        d = average(args.tool, core.port, args.mib)
        t = average(args.tool, port, args.mib)
        ratios.append(t / d)
        print('round %d: direct %.3f s, tenant %.3f s, ratio %.2f' % (rnd + 1, d, t, t / d),
              flush=True)
    peak = peak_rss_kib(pid)
    print('median ratio tenant/direct: %.2f (target at most 1.2)' % statistics.median(ratios))
    print('worker peak RSS: %.1f MiB before, %.1f MiB after, for a %d MiB answer (%.2f times; '
          'target under 3)' % (before / 1024, peak / 1024, args.mib,
                               peak / 1024 / args.mib))
    s.eq(sv.stop(), 0, 'etcdproxyd exits 0 on SIGTERM')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--mib', type=int, default=40, help='keys of 1 MiB in the answer')
    ap.add_argument('--rounds', type=int, default=5)
    ap.add_argument('--tool', default=os.path.expanduser('~/.cache/etcdproxy-bench/benchmark'),
                    help="etcd's benchmark tool")
    args = ap.parse_args()
    if not os.access(args.tool, os.X_OK):
        sys.exit('big-range: no benchmark tool at %s (contrib/bench/build-benchmark.sh)'
                 % args.tool)
    s = eptest.Suite('big-range', timeout=1800)
    s.require(eptest.ETCD, eptest.ETCDPROXYD, eptest.WORKER)
    s.main(lambda suite: body(suite, args))


if __name__ == '__main__':
    main()
