#!/usr/bin/python3
"""The metrics and health endpoints (global metrics.listen), against a real etcd, etcdctl,
and a real Prometheus server with its promtool:

  - /healthz; /readyz, ?verbose and /readyz/NAME, which fail with a tenant that is not
    ready and pass again without it; other paths 404, other methods 405;
  - /metrics: etcdproxy_requests_total counts the puts made with etcdctl exactly, the
    latency histogram agrees with it, an open etcdctl watch shows as a watch stream, a
    client without a certificate as a TLS failure with its reason, the serving
    certificate's expiry is the one the server presents, RSS of etcdproxyd and the
    workers; after kill -9 of a worker its counts go on from where they were;
    `promtool check metrics` on a scrape reports nothing;
  - a real Prometheus scrapes etcdproxyd: its HTTP API shows the tenant's
    etcdproxy_requests_total grow after more puts, it loads the shipped alert rules, and
    every query of the shipped Grafana dashboard evaluates there and names series that
    a scrape has;
  - the shipped alert rules pass `promtool check rules` and their unit tests
    (`promtool test rules`)."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import yaml

sys.dont_write_bytecode = True  # nothing written into the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eptest  # noqa: E402
from eptest import wait_until  # noqa: E402

PROMETHEUS = '/usr/bin/prometheus'
PROMTOOL = '/usr/bin/promtool'
CONTRIB = os.path.join(eptest.SRCDIR, 'contrib')
RULES = os.path.join(CONTRIB, 'prometheus', 'etcdproxy-alerts.yml')
RULES_TEST = os.path.join(CONTRIB, 'prometheus', 'etcdproxy-alerts.test.yml')
DASHBOARD = os.path.join(CONTRIB, 'grafana', 'etcdproxy-dashboard.json')


class T:
    pass


def http(port, path, method='GET'):
    """(status, body text) of a request to 127.0.0.1:port."""
    req = urllib.request.Request('http://127.0.0.1:%d%s' % (port, path), method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e)


def scrape(t):
    st, text = http(t.mport, '/metrics')
    if st != 200:
        raise eptest.Failure('/metrics answered %d: %s' % (st, text[:300]))
    return text


def series(text, name, **labels):
    """The values of the samples of name whose labels include the given ones."""
    out = []
    for line in text.splitlines():
        if line.startswith('#'):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$', line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(3) or ''))
        if all(have.get(k) == v for k, v in labels.items()):
            out.append(float(m.group(4)))
    return out


def value(text, name, **labels):
    v = series(text, name, **labels)
    return v[0] if len(v) == 1 else None


def puts(port, n, prefix):
    for i in range(n):
        r = eptest.etcdctl(port, 'put', '%s%d' % (prefix, i), 'v')
        if r.returncode != 0:
            raise eptest.Failure('etcdctl put: %s' % r.stderr)


def test_health(s, t):
    s.eq(http(t.mport, '/healthz'), (200, 'ok'), '/healthz: 200 ok')
    s.eq(http(t.mport, '/readyz'), (200, 'ok'), '/readyz: 200 ok with every tenant ready')
    st, body = http(t.mport, '/readyz?verbose')
    s.check(st == 200 and '[+]tenant a ok' in body and '[+]tenant t ok' in body and
            'readyz check passed' in body, '/readyz?verbose lists every tenant', body)
    s.eq(http(t.mport, '/readyz/a'), (200, 'ok'), '/readyz/a: 200 ok')
    s.eq(http(t.mport, '/readyz/nope')[0], 404, '/readyz/nope: 404')
    s.eq(http(t.mport, '/nothing')[0], 404, 'another path: 404')
    s.eq(http(t.mport, '/metrics', method='POST')[0], 405, 'POST: 405')

    # a tenant that cannot start: /readyz fails and says which, the others stay ready
    t.sv.add_tenant('bad', text='{"apiVersion": "etcd.xmudrii.com/v1alpha1"')
    s.eq(t.sv.ctl('reload')[0], 0, 'etcdproxyctl reload with a broken tenant file')
    st, body = http(t.mport, '/readyz')
    s.check(st == 503 and '[-]tenant bad failed' in body and 'readyz check failed' in body
            and 'tenant a' not in body, '/readyz: 503, naming the tenant that is not ready',
            (st, body))
    st, body = http(t.mport, '/readyz?verbose')
    s.check(st == 503 and '[+]tenant a ok' in body and '[-]tenant bad failed' in body,
            '/readyz?verbose: the ready ones and the failed one', body)
    st, body = http(t.mport, '/readyz/bad')
    s.check(st == 503 and 'failed' in body, '/readyz/bad: 503 with the state and why', body)
    s.eq(http(t.mport, '/readyz/a'), (200, 'ok'), '/readyz/a stays 200')
    text = scrape(t)
    s.eq((value(text, 'etcdproxy_tenant_ready', tenant='bad'),
          value(text, 'etcdproxy_tenant_state', tenant='bad', state='failed'),
          value(text, 'etcdproxy_tenant_ready', tenant='a')), (0, 1, 1),
         'etcdproxy_tenant_ready and _state say the same')
    t.sv.remove_tenant('bad')
    s.eq(t.sv.ctl('reload')[0], 0, 'reload without it')
    s.eq(http(t.mport, '/readyz'), (200, 'ok'), '/readyz: 200 again')


def test_counters(s, t):
    base = value(scrape(t), 'etcdproxy_requests_total', tenant='a', method='Put', code='OK') or 0
    puts(t.port_a, 7, 'c')
    s.check(wait_until(lambda: value(scrape(t), 'etcdproxy_requests_total', tenant='a',
                                     method='Put', code='OK') == base + 7, 15, 0.5),
            'etcdproxy_requests_total{tenant="a",method="Put",code="OK"} counts the 7 puts '
            'exactly (at the next report of the worker)',
            series(scrape(t), 'etcdproxy_requests_total', tenant='a'))
    text = scrape(t)
    count = value(text, 'etcdproxy_request_duration_seconds_count', tenant='a', method='Put')
    inf = value(text, 'etcdproxy_request_duration_seconds_bucket', tenant='a', method='Put',
                le='+Inf')
    buckets = series(text, 'etcdproxy_request_duration_seconds_bucket', tenant='a',
                     method='Put')
    total = sum(series(text, 'etcdproxy_requests_total', tenant='a', method='Put'))
    s.check(count == inf == total and buckets == sorted(buckets) and
            value(text, 'etcdproxy_request_duration_seconds_sum', tenant='a', method='Put') > 0,
            'the Put latency histogram: cumulative buckets, +Inf = _count = the calls',
            (count, inf, total, buckets))
    s.check(value(text, 'etcdproxy_received_bytes_total', tenant='a') > 0 and
            value(text, 'etcdproxy_sent_bytes_total', tenant='a') > 0,
            'bytes in and out are counted')
    s.check(value(text, 'etcdproxy_process_resident_memory_bytes', process='supervisor') > 0
            and value(text, 'etcdproxy_process_resident_memory_bytes', process='worker',
                      tenant='a') > 0, 'RSS of etcdproxyd and of the worker')
    version = subprocess.run([eptest.ETCDPROXYD, '--version'], capture_output=True,
                             text=True).stdout.split()[1]
    s.eq(value(text, 'etcdproxy_build_info', version=version), 1,
         'etcdproxy_build_info names the version of etcdproxyd --version')

    r = subprocess.run([PROMTOOL, 'check', 'metrics'], input=text, capture_output=True,
                       text=True, timeout=30)
    s.check(r.returncode == 0 and r.stdout.strip() == '' and r.stderr.strip() == '',
            'promtool check metrics on a scrape reports nothing', r.stdout + r.stderr)

    # an open watch stream
    w = t.s.popen([eptest.ETCDCTL, '--endpoints=127.0.0.1:%d' % t.port_a, 'watch', 'w'],
                  env=dict(os.environ, ETCDCTL_API='3'), label='etcdctl watch')
    s.check(wait_until(lambda: value(scrape(t), 'etcdproxy_open_watch_streams',
                                     tenant='a') == 1, 15, 0.5),
            'an etcdctl watch shows as one open watch stream')
    w.send_signal(signal.SIGTERM)
    w.wait(10)
    s.check(wait_until(lambda: value(scrape(t), 'etcdproxy_open_watch_streams',
                                     tenant='a') == 0, 15, 0.5), 'and is gone after it ended')
    s.check(wait_until(lambda: value(scrape(t), 'etcdproxy_requests_total', tenant='a',
                                     method='Watch', code='Canceled') == 1, 15, 0.5) and
            value(scrape(t), 'etcdproxy_request_duration_seconds_count', tenant='a',
                  method='Watch') == 1,
            'the watch its client ended counts as one call, Canceled, with its duration',
            series(scrape(t), 'etcdproxy_requests_total', tenant='a'))

    # a client without a certificate, against the TLS tenant
    subprocess.run(['openssl', 's_client', '-alpn', 'h2', '-connect', '127.0.0.1:%d' % t.port_t],
                   input=b'', capture_output=True, timeout=15)
    s.check(wait_until(lambda: (value(scrape(t), 'etcdproxy_tls_handshake_failures_total',
                                      tenant='t', reason='no_client_certificate') or 0) >= 1,
                       15, 0.5),
            'a TLS client without a certificate counts as a handshake failure, reason '
            'no_client_certificate',
            series(scrape(t), 'etcdproxy_tls_handshake_failures_total', tenant='t'))

    # the serving certificate's expiry is the one the server presents
    r = subprocess.run(['openssl', 's_client', '-alpn', 'h2', '-connect',
                        '127.0.0.1:%d' % t.port_t], input=b'', capture_output=True, timeout=15)
    x = subprocess.run(['openssl', 'x509', '-noout', '-enddate', '-serial'],
                       input=r.stdout.decode(errors='replace'), capture_output=True, text=True,
                       timeout=10)
    m = re.search(r'notAfter=(.*)', x.stdout)
    serial = re.search(r'serial=([0-9A-F]+)', x.stdout)
    presented = time.mktime(time.strptime(m.group(1).strip(), '%b %d %H:%M:%S %Y GMT')) - \
        time.timezone if m else None
    got = series(scrape(t), 'etcdproxy_certificate_expiry_timestamp_seconds', tenant='t',
                 certificate='serving')
    s.check(presented is not None and serial and got == [presented],
            'etcdproxy_certificate_expiry_timestamp_seconds{certificate="serving"} is the '
            'notAfter of the certificate the tenant presents', (got, presented, x.stdout))
    text = scrape(t)
    s.check(len(series(text, 'etcdproxy_certificate_expiry_timestamp_seconds', tenant='t',
                       certificate='serving-ca')) >= 1 and
            len(series(text, 'etcdproxy_certificate_expiry_timestamp_seconds', tenant='t',
                       certificate='client-ca')) >= 1 and
            len(series(text, 'etcdproxy_certificate_expiry_timestamp_seconds', tenant='t',
                       certificate='client')) == 1,
            'and every CA and client certificate in use has its series',
            series(text, 'etcdproxy_certificate_expiry_timestamp_seconds', tenant='t'))

    # kill -9 of the worker: the counts go on
    before = value(scrape(t), 'etcdproxy_requests_total', tenant='a', method='Put', code='OK')
    pid = t.sv.tenant('a')['pid']
    os.kill(pid, signal.SIGKILL)
    s.check(wait_until(lambda: (t.sv.tenant('a') or {}).get('pid') not in (None, pid) and
                       t.sv.tenant('a')['state'] == 'ready', 15), 'the worker is back')
    puts(t.port_a, 3, 'after')
    s.check(wait_until(lambda: value(scrape(t), 'etcdproxy_requests_total', tenant='a',
                                     method='Put', code='OK') == before + 3, 15, 0.5),
            'after kill -9 of the worker etcdproxy_requests_total goes on from %d to %d' % (
                before, before + 3),
            series(scrape(t), 'etcdproxy_requests_total', tenant='a'))
    s.eq(value(scrape(t), 'etcdproxy_worker_restarts_total', tenant='a'), 1,
         'etcdproxy_worker_restarts_total counts the restart')


def prom_query(t, q):
    st, body = http(t.pport, '/api/v1/query?query=' + urllib.parse.quote(q))
    return json.loads(body) if body.startswith('{') else {'status': 'error', 'error': body}


def prom_value(t, q):
    r = prom_query(t, q)
    res = (r.get('data') or {}).get('result') or []
    return float(res[0]['value'][1]) if len(res) == 1 else None


def test_prometheus(s, t):
    d = os.path.join(t.s.tmp, 'prometheus')
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, 'prometheus.yml')
    with open(conf, 'w') as f:
        f.write('global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n'
                'rule_files:\n  - %s\n'
                'scrape_configs:\n  - job_name: etcdproxy\n    static_configs:\n'
                '      - targets: ["127.0.0.1:%d"]\n' % (RULES, t.mport))
    t.pport = eptest.free_port()
    t.s.popen([PROMETHEUS, '--config.file=' + conf, '--storage.tsdb.path=' + os.path.join(d, 'data'),
               '--web.listen-address=127.0.0.1:%d' % t.pport, '--log.level=warn'],
              log=os.path.join(d, 'prometheus.log'), label='prometheus')
    s.check(wait_until(lambda: http(t.pport, '/-/ready')[0] == 200, 60, 0.5),
            'a real Prometheus starts')
    q = 'etcdproxy_requests_total{tenant="a",method="Put",code="OK"}'
    puts(t.port_a, 1, 'first')
    s.check(wait_until(lambda: prom_value(t, q) is not None, 30, 0.5),
            'Prometheus scrapes etcdproxyd: its API has %s' % q, prom_query(t, q))
    v1 = prom_value(t, q)
    puts(t.port_a, 5, 'p')
    s.check(wait_until(lambda: (prom_value(t, q) or 0) >= v1 + 5, 30, 0.5),
            'and sees it grow by the 5 puts made with etcdctl (%s -> %s)' % (v1, prom_value(t, q)))
    st, body = http(t.pport, '/api/v1/rules')
    groups = json.loads(body)['data']['groups'] if st == 200 else []
    rules = [r for g in groups for r in g['rules']]
    s.check(len(rules) == n_rules() and all(r.get('health') == 'ok' for r in rules),
            'Prometheus loaded the shipped alert rules and evaluates them without error',
            [(r.get('name'), r.get('health'), r.get('lastError')) for r in rules])

    # the dashboard: every query evaluates, every series it names exists
    dash = json.load(open(DASHBOARD))
    exprs = [tg['expr'] for p in dash['panels'] for tg in p.get('targets', [])]
    text = scrape(t)
    families = set(re.findall(r'^# TYPE (\S+)', text, re.M))
    bad = []
    for e in exprs:
        qe = e.replace('$__rate_interval', '1m').replace('$instance', '.*').replace(
            '$tenant', '.*')
        r = prom_query(t, qe)
        if r.get('status') != 'success':
            bad.append((e, r.get('error')))
        for name in re.findall(r'\b(etcdproxy_[a-z_]+)', e):
            base = re.sub(r'_(bucket|sum|count)$', '', name)
            if name not in families and base not in families:
                bad.append((e, 'no series %s in a scrape' % name))
    s.check(exprs and not bad, 'the %d queries of the Grafana dashboard evaluate in Prometheus '
            'and name series that exist' % len(exprs), bad)


def n_rules():
    """The alert rules the shipped file holds."""
    with open(RULES) as f:
        return sum(len(g['rules']) for g in yaml.safe_load(f)['groups'])


def test_rules(s, t):
    r = subprocess.run([PROMTOOL, 'check', 'rules', RULES], capture_output=True, text=True,
                       timeout=60)
    s.check(r.returncode == 0 and 'SUCCESS: %d rules found' % n_rules() in r.stdout,
            'promtool check rules on the shipped alert rules', r.stdout + r.stderr)
    r = subprocess.run([PROMTOOL, 'test', 'rules', RULES_TEST], capture_output=True, text=True,
                       timeout=60)
    s.check(r.returncode == 0 and 'SUCCESS' in r.stdout,
            'promtool test rules: each alert fires when it should, with its text',
            r.stdout + r.stderr)


def test_crowd(s, t):
    """Half-sent requests of one peer keep neither another peer out nor itself for long."""
    def healthz_from(source):
        r = subprocess.run(['curl', '-s', '-m', '3', '--interface', source, '-o', '/dev/null',
                            '-w', '%{http_code}', 'http://127.0.0.1:%d/healthz' % t.mport],
                           capture_output=True, text=True, timeout=10)
        return r.stdout

    crowd = []
    try:
        for _ in range(80):
            c = socket.socket()
            c.bind(('127.0.0.2', 0))
            c.settimeout(5)
            c.connect(('127.0.0.1', t.mport))
            c.sendall(b'GET /metrics HTTP/1.1\r\nHost: x\r\n')  # no end of headers
            crowd.append(c)
        time.sleep(1)
        s.eq(healthz_from('127.0.0.3'), '200', '80 half-sent requests from 127.0.0.2: a probe '
             'from 127.0.0.3 is answered')
        s.check(wait_until(lambda: healthz_from('127.0.0.2') == '200', 20, 1),
                'and one from 127.0.0.2 itself once they timed out (10 s), though still open')
    finally:
        for c in crowd:
            c.close()


def body(s):
    t = T()
    t.s = s
    core = eptest.CoreEtcd(s).start()
    t.mport = eptest.free_port()
    t.sv = eptest.Supervisor(s, core, extra={'metrics': {'listen': '127.0.0.1:%d' % t.mport}},
                             supervisor={'restart_backoff_initial': '0s'})
    t.port_a = t.sv.add_tenant('a', backend='native')
    t.port_t = t.sv.add_tenant('t', backend='native', tls={
        'source': 'ca', 'clientCertificates': [
            {'name': 'api', 'outputDir': os.path.join(s.tmp, 't-client')}]})
    t.sv.start()
    t.sv.wait_ready('a', 't')
    s.check(wait_until(lambda: http(t.mport, '/healthz')[0] == 200, 10),
            'etcdproxyd serves /healthz on metrics.listen')
    for fn in (test_health, test_counters, test_crowd, test_prometheus, test_rules):
        s.run(fn, s, t)
    s.eq(t.sv.stop(), 0, 'etcdproxyd exits 0 on SIGTERM')


if __name__ == '__main__':
    s = eptest.Suite('metrics', timeout=300)
    s.require(eptest.ETCD, eptest.ETCDCTL, eptest.ETCDPROXYD, eptest.ETCDPROXYCTL, eptest.WORKER,
              PROMETHEUS, PROMTOOL)
    s.main(body)
