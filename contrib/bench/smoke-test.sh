#!/bin/sh
# Smoke test of the benchmark (issue 5): `contrib/bench/run.sh --smoke` into a scratch results
# directory, then check that every output exists and parses and that every target answered.
# Ends with "N passed, M failed"; exit 0 only when nothing failed.
#
# The load generator: etcd's benchmark tool when it is cached (no network needed) or can be
# built; else the h2load fallback, announced loudly here and in the results.  Neither: run.sh
# fails, and so does this test.  EP_BENCH_SMOKE_TOOL=h2load|benchmark forces one of them.
#
# Environment: EP_BUILDDIR (set by make check) is the build to measure; without it run.sh builds
# into <top>/build/bench.  Nothing is written into the source tree.
set -u
here=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp -d "${TMPDIR:-/tmp}/etcdproxy-bench-smoke.XXXXXX")
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok: $*"; }
bad() { failed=$((failed + 1)); echo "FAIL: $*"; }

tool_opt=""
[ -n "${EP_BENCH_SMOKE_TOOL:-}" ] && tool_opt="--tool=$EP_BENCH_SMOKE_TOOL"

echo "# contrib/bench/run.sh --smoke $tool_opt --results-dir $out"
start=$(date +%s)
# shellcheck disable=SC2086
"$here/run.sh" --smoke $tool_opt --results-dir "$out" >"$out/stdout.txt" 2>"$out/stderr.txt"
rc=$?
echo "# run.sh took $(($(date +%s) - start)) s"
if [ $rc = 0 ]; then
	ok "run.sh --smoke exited 0"
else
	bad "run.sh --smoke exited $rc; its stderr ends with:"
	tail -30 "$out/stderr.txt" | sed 's/^/    /'
fi
dir=$(find "$out" -mindepth 1 -maxdepth 1 -type d -name '*-smoke' | head -1)
if grep -qs 'h2load fallback' "$dir/results.md"; then
	echo "#"
	echo "# WARNING: this smoke run measured with the h2load FALLBACK, not etcd's benchmark tool:"
	grep -hE 'FALLBACK|build-benchmark' "$out/stderr.txt" "$dir/results.md" | sed 's/^/#   /'
	echo "#"
fi
if [ -n "$dir" ]; then
	ok "results directory $(basename "$dir")"
else
	bad "no <timestamp>-smoke results directory under $out"
	dir=$out/missing
fi
for f in results.md results.json; do
	if [ -s "$dir/$f" ]; then ok "$f exists"; else bad "$f missing or empty"; fi
done
if [ -s "$out/stdout.txt" ] && [ -s "$dir/results.md" ] && cmp -s "$out/stdout.txt" "$dir/results.md"; then
	ok "the table on stdout is results.md"
else
	bad "stdout differs from results.md"
fi

# the contents: every target answered every part
/usr/bin/python3 - "$dir" >"$out/checks.txt" 2>&1 <<'EOF'
import json, os, sys
d = sys.argv[1]
passed = failed = 0
def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
        print('ok: ' + what)
    else:
        failed += 1
        print('FAIL: ' + what)
try:
    res = json.load(open(os.path.join(d, 'results.json')))
except (OSError, ValueError) as e:
    print('FAIL: results.json does not parse: %s' % e)
    print('counts: 0 1')
    sys.exit(0)
check(True, 'results.json parses')
targets = ('direct', 'stock', 'native')
meta = res.get('meta', {})
check(meta.get('machine', {}).get('cpu') and meta.get('machine', {}).get('cores'),
      'header: CPU model and cores')
v = meta.get('versions', {})
check(v.get('etcd') and v.get('etcdproxy') and v.get('load_generator'),
      'header: versions (%s)' % v.get('load_generator'))
h2load = 'h2load' in (v.get('load_generator') or '')
check(not res.get('failures'), 'no failures%s' % (
    '' if not res.get('failures') else ': ' + '; '.join(res['failures'][:5])))
rows = res.get('kv_summary', [])
check(len(rows) == 6, '6 workloads (put, linearizable and serializable range; 1 and 100 clients)')
for row in rows:
    for t in targets:
        s = row['targets'][t]
        check(s['rps'] and s['rps']['median'] > 0 and s['avg_ms'] and s['p99_ms'],
              '%s c%d on %s: requests/s, average and p99' % (row['op'], row['clients'], t))
    check(row['ratios']['native/direct']['rps'] and row['ratios']['native/stock']['rps'],
          '%s c%d: ratios native/direct and native/stock' % (row['op'], row['clients']))
kv = res.get('kv', [])
check(all(r.get('etcd_cpu_us_per_req') is not None for r in kv) and
      all(r.get('proxy_cpu_us_per_req') is not None for r in kv if r['target'] != 'direct'),
      'CPU per request of etcd and of the proxy trees')
proxied = [r for r in kv if r['target'] != 'direct']
check(proxied and all(r.get('proxy_reads_per_req', 0) > 0 and r.get('proxy_writes_per_req', 0) > 0
                      and r.get('proxy_sleeps_per_req') is not None for r in proxied),
      'sleeps, reads and writes per request of the proxy trees')
mc = res.get('machine_costs') or {}
check(all(isinstance(mc.get(k), (int, float)) for k in ('wake_us', 'write_us', 'read_us')) and
      mc['write_us'] > 0 and mc['read_us'] > 0,
      'machine costs: wake-up, loopback write and read (%s)' % mc)
mem = res.get('memory', {})
for phase in ('idle', 'after_load'):
    check(all(mem.get(phase, {}).get(t) and all(p.get('pss_kib') for p in mem[phase][t])
              for t in targets), 'RSS and PSS of every proxy process, %s' % phase)
check(any(p['process'] == 'etcd grpc-proxy' for p in mem.get('idle', {}).get('stock', [])),
      'the stock tree includes its etcd grpc-proxy')
if h2load:
    check(res.get('watches_skipped'), 'watches: skipped with the h2load fallback, and said so')
else:
    ws = res.get('watches_summary', [])
    check(ws and all(w['targets'][t]['events_per_s'] and w['targets'][t]['events_per_s']['median'] > 0
                     for w in ws for t in targets), 'watches: events/s on every target')
    check(ws and all(w['targets'][t]['peak_rss_kib'] for w in ws for t in targets),
          'watches: memory')
ps = res.get('payload_summary', [])
check(sorted({p['value_size'] for p in ps}) == [256, 65536], 'payloads 256 B and 64 KiB')
check(ps and all(p['targets'][t]['rps'] and p['targets'][t]['rps']['median'] > 0
                 for p in ps for t in targets), 'payloads: every target answered')
ten = res.get('tenants', [])
check(ten and ten[0].get('tenants') == 10 and not ten[0].get('error'), '10 tenants ran')
if ten:
    t = ten[0]
    for k in ('start_to_ready_s', 'total_pss_kib', 'reload_to_ready_s', 'kill9_to_answering_s',
              'scrape_ms', 'scrape_kib'):
        check(isinstance(t.get(k), (int, float)) and t[k] > 0, 'tenants: %s = %s' % (k, t.get(k)))
    check(t.get('reload_others_restarted') == 0, 'reload restarted only the changed tenant')
au = res.get('audit', [])
check({(r['target'], r['clients']) for r in au} == {(t, c) for t in ('native', 'audit')
                                                    for c in (1, 100)} and
      all((r.get('rps') or 0) > 0 and not r.get('errors') for r in au),
      'audit: puts with and without spec.audit, 1 and 100 clients')
check(res.get('audit_lines', 0) >= sum(r['total'] for r in au if r['target'] == 'audit'),
      'audit: a line per put with audit (%s lines)' % res.get('audit_lines'))
nz = res.get('noisy', [])
check(nz and all(r.get('p99_ms') and not r.get('errors') for r in nz) and
      {r['backend'] for r in nz} == {'native', 'stock'},
      'noisy neighbours: B\'s latency alone, beside an unlimited and a limited A, native and stock')
md = open(os.path.join(d, 'results.md')).read()
for head in ('## Requests', '### Ratios', '### What the proxies ask of the kernel', '## Memory',
             '## Payload', '## Noisy neighbours', '## What the audit log costs',
             '## How cost grows'):
    check(head in md, 'results.md has "%s"' % head)
for png in ('throughput.png', 'latency.png', 'memory-tenants.png'):
    p = os.path.join(d, png)
    try:
        sig = open(p, 'rb').read(8)
    except OSError:
        sig = b''
    check(sig == b'\x89PNG\r\n\x1a\n', '%s is a PNG (gnuplot, package gnuplot-nox)' % png)
print('counts: %d %d' % (passed, failed))
EOF
grep -v '^counts: ' "$out/checks.txt"
counts=$(sed -n 's/^counts: //p' "$out/checks.txt")
if [ -n "$counts" ]; then
	passed=$((passed + ${counts% *}))
	failed=$((failed + ${counts#* }))
else
	bad "the checks of results.json did not finish"
fi

if [ $failed = 0 ]; then
	rm -rf "$out"
else
	echo "# outputs kept in $out"
fi
echo "$passed passed, $failed failed"
[ $failed = 0 ]
