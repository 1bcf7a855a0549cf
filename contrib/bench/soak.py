#!/usr/bin/python3
"""A soak of the native backend: many watch streams over many tenants under a steady write
load, with the memory of etcdproxyd and its workers sampled all along.

  EP_BUILDDIR=build /usr/bin/python3 contrib/bench/soak.py [--tenants 100]
      [--watches 10000] [--minutes 10] [--put-rate 100] [--out DIR]

Each tenant gets one HTTP/2 connection carrying watches/tenants Watch streams on one key;
puts go round the tenants at put-rate per second, so every put reaches each watcher of its
tenant.  Every 10 s the supervisor's and every worker's RSS (and PSS) are read from /proc.
The run writes DIR/soak.csv, DIR/soak.png (gnuplot) and DIR/soak.md, and fails when the
memory of the last third of the run is more than 10% above the middle third's (growth that
does not level off), when a watch stream ended, or when events went missing."""

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRCDIR = os.path.abspath(os.path.join(HERE, '..', '..'))
sys.path.insert(0, os.path.join(SRCDIR, 'tests', 'integration'))
sys.dont_write_bytecode = True  # nothing written into the source tree
import eptest  # noqa: E402
from h2raw import H2, grpc_msg, pb_bytes  # noqa: E402


def rss(pid):
    """(rss_kib, pss_kib) of a process, (0, 0) when it is gone."""
    try:
        with open('/proc/%d/smaps_rollup' % pid) as f:
            vals = dict(line.split(':', 1) for line in f if ':' in line)
        return (int(vals['Rss'].split()[0]), int(vals['Pss'].split()[0]))
    except (OSError, KeyError, ValueError):
        return (0, 0)


def count_messages(st):
    """Whole gRPC messages in a stream's data, which is then emptied of them."""
    n, pos, data = 0, 0, st.data
    while len(data) - pos >= 5:
        size = int.from_bytes(data[pos + 1:pos + 5], 'big')
        if len(data) - pos < 5 + size:
            break
        pos += 5 + size
        n += 1
    del data[:pos]
    return n


def body(s, args):
    core = eptest.CoreEtcd(s).start()
    sv = eptest.Supervisor(s, core, supervisor={'stable_after': '10s'})
    sv.config['log_level'] = 'info'
    sv.write_config()
    names = ['t%03d' % i for i in range(args.tenants)]
    ports = {n: sv.add_tenant(n, backend='native') for n in names}
    sv.start(timeout=60)
    sv.wait_ready(*names, timeout=120)
    per = max(1, args.watches // args.tenants)
    conns, streams = {}, {}
    create = grpc_msg(pb_bytes(1, pb_bytes(1, b'soak')))  # WatchRequest {create {key "soak"}}
    for n in names:
        h = H2(ports[n], window=1 << 24)
        conns[n] = h
        streams[n] = [h.request('/etcdserverpb.Watch/Watch',
                                create, end=False) for _ in range(per)]
        h.pump(0.01)
    writers = {n: eptest.etcd3_client(ports[n]) for n in names}
    samples, events, puts = [], 0, 0
    t0 = time.monotonic()
    end = t0 + args.minutes * 60
    next_sample, next_put = t0, t0
    i = 0
    try:
        while time.monotonic() < end:
            now = time.monotonic()
            while next_put <= now:
                n = names[i % len(names)]
                writers[n].put('soak', str(i))
                puts += 1
                i += 1
                next_put += 1.0 / args.put_rate
            for n in names:
                h = conns[n]
                h.pump(0.0005, max_bytes=1 << 20)
                for sid in streams[n]:
                    events += count_messages(h.stream(sid))
            if now >= next_sample:
                st = sv.status()
                sup = rss(sv.pid)
                w = [rss(t['pid']) for t in st.values() if t.get('pid')]
                samples.append((now - t0, sup[0], sup[1], sum(x[0] for x in w),
                                sum(x[1] for x in w), max([x[0] for x in w] or [0])))
                next_sample += 10
    finally:
        for c in writers.values():
            c.close()
    ended = sum(1 for n in names for sid in streams[n] if conns[n].stream(sid).ended)
    events -= per * args.tenants  # each stream's first message says it was created
    for h in conns.values():
        h.close()
    os.makedirs(args.out, exist_ok=True)
    csv = os.path.join(args.out, 'soak.csv')
    with open(csv, 'w') as f:
        f.write('seconds,supervisor_rss_kib,supervisor_pss_kib,workers_rss_kib,'
                'workers_pss_kib,largest_worker_rss_kib\n')
        for row in samples:
            f.write('%.0f,%d,%d,%d,%d,%d\n' % row)
    png = os.path.join(args.out, 'soak.png')
    subprocess.run(['gnuplot', '-e', (
        "set terminal png size 900,500; set output '%s'; set datafile separator ',';"
        "set key outside bottom center horizontal;"
        "set key autotitle columnhead; set xlabel 'seconds'; set ylabel 'MiB';"
        "plot '%s' using 1:($4/1024) with lines title 'workers RSS (sum)', "
        "'' using 1:($5/1024) with lines title 'workers PSS (sum)', "
        "'' using 1:($2/1024) with lines title 'etcdproxyd RSS', "
        "'' using 1:($6/1024) with lines title 'largest worker RSS'") % (png, csv)],
        check=False, capture_output=True)
    third = max(1, len(samples) // 3)
    mid = samples[third:2 * third] or samples
    last = samples[2 * third:] or samples

    def mean(rows, k):
        return sum(r[k] for r in rows) / len(rows)
    growth_w = mean(last, 4) / max(1, mean(mid, 4)) - 1
    growth_s = mean(last, 1) / max(1, mean(mid, 1)) - 1
    want = puts * per
    report = os.path.join(args.out, 'soak.md')
    with open(report, 'w') as f:
        f.write('# Soak: %d tenants, %d watch streams, %d puts/s for %g minutes\n\n' % (
            args.tenants, per * args.tenants, args.put_rate, args.minutes))
        f.write('- puts %d, events received %d of %d expected; watch streams ended: %d\n' % (
            puts, events, want, ended))
        f.write('- workers PSS (sum): %.1f MiB in the middle third, %.1f MiB in the last '
                '(%+.1f%%)\n' % (mean(mid, 4) / 1024, mean(last, 4) / 1024, 100 * growth_w))
        f.write('- etcdproxyd RSS: %.1f MiB in the middle third, %.1f MiB in the last '
                '(%+.1f%%)\n' % (mean(mid, 1) / 1024, mean(last, 1) / 1024, 100 * growth_s))
        f.write('- samples every 10 s: soak.csv; plot: soak.png\n')
    with open(report) as f:
        for line in f:
            print('# ' + line.rstrip(), flush=True)
    s.check(ended == 0, 'no watch stream ended (%d streams)' % (per * args.tenants))
    s.check(events >= 0.99 * want, 'the watchers received %d of %d events' % (events, want))
    s.check(growth_w <= 0.10, 'the workers\' memory is flat: %+.1f%% from the middle third to '
            'the last' % (100 * growth_w))
    s.check(growth_s <= 0.10, 'etcdproxyd\'s memory is flat: %+.1f%%' % (100 * growth_s))
    s.eq(sv.stop(timeout=60), 0, 'etcdproxyd exits 0 on SIGTERM')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--tenants', type=int, default=100)
    ap.add_argument('--watches', type=int, default=10000)
    ap.add_argument('--minutes', type=float, default=10)
    ap.add_argument('--put-rate', type=float, default=100)
    ap.add_argument('--out', default=os.path.join(HERE, 'results', 'soak-' +
                                                  time.strftime('%Y%m%d-%H%M%S')))
    args = ap.parse_args()
    s = eptest.Suite('soak', timeout=int(args.minutes * 60) + 600)
    s.require(eptest.ETCD, eptest.ETCDPROXYD, eptest.WORKER)
    s.main(lambda suite: body(suite, args))


if __name__ == '__main__':
    main()
