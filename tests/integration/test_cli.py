#!/usr/bin/python3
"""etcdproxyctl and etcdproxyd on the command line: exit codes, output formats,
--version, --check-config, the control socket, refused start-ups, and the
listen addresses the etcd backend refuses."""

import json
import os
import stat
import subprocess
import sys

sys.dont_write_bytecode = True  # nothing written into the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eptest  # noqa: E402
from eptest import ETCDPROXYCTL, ETCDPROXYD  # noqa: E402


def run(*cmd, timeout=10):
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_no_daemon(s):
    sock = os.path.join(s.tmp, 'nothing-here', 'etcdproxyd.sock')
    for cmd in (['status'], ['list'], ['reload'], ['show', 'a'], ['restart', 'a']):
        r = run(ETCDPROXYCTL, '-s', sock, *cmd)
        s.check(r.returncode == 3 and 'not running' in r.stderr and sock in r.stderr,
                'etcdproxyctl %s without a daemon: exit 3, says it is not running' % cmd[0],
                (r.returncode, r.stderr))
    r = run(ETCDPROXYCTL, '-c', os.path.join(s.tmp, 'no-such.json'), 'status')
    s.eq(r.returncode, 3, 'etcdproxyctl -c MISSING.json status: exit 3')


def test_usage(s):
    sock = os.path.join(s.tmp, 'nothing-here.sock')
    for args in ([], ['frobnicate'], ['show'], ['show', 'a', 'b'], ['restart'], ['status', 'x'],
                 ['reload', 'x'], ['-o', 'yaml', 'status'], ['--no-such-option', 'status']):
        r = run(ETCDPROXYCTL, '-s', sock, *args)
        s.check(r.returncode == 2 and r.stderr.strip(), 'etcdproxyctl %s: usage error, exit 2' %
                ' '.join(args or ['(nothing)']), (r.returncode, r.stderr))
    r = run(ETCDPROXYCTL, '--help')
    s.check(r.returncode == 0 and 'Usage' in r.stdout, 'etcdproxyctl --help: exit 0, usage')
    r = run(ETCDPROXYD, '--no-such-option')
    s.eq(r.returncode, 2, 'etcdproxyd --no-such-option: exit 2')


def test_versions(s):
    r = run(ETCDPROXYD, '--version')
    s.check(r.returncode == 0 and r.stdout.startswith('etcdproxyd ') and
            any(c.isdigit() for c in r.stdout), 'etcdproxyd --version', r.stdout + r.stderr)
    r = run(ETCDPROXYCTL, '--version')
    s.check(r.returncode == 0 and r.stdout.startswith('etcdproxyctl '), 'etcdproxyctl --version',
            r.stdout + r.stderr)


def test_check_config_ok(s, sv):
    for first in eptest.CHECK_CONFIG_ORDERS:
        r = eptest.check_config(sv.conf, option_first=first)
        s.check(r.returncode == 0 and 'OK' in r.stdout and '1 tenant' in r.stdout,
                'etcdproxyd %s: exit 0, OK' % ('--check-config -c CONF' if first else
                                               '-c CONF --check-config'), r.stdout + r.stderr)


def test_check_config_files(s):
    # well-formed, but the files it names are not there
    conf = os.path.join(s.tmp, 'missing-files.json')
    os.makedirs(os.path.join(s.tmp, 'empty.d'), exist_ok=True)
    eptest.write_json(conf, {
        'storages_dir': os.path.join(s.tmp, 'empty.d'),
        'runtime_dir': os.path.join(s.tmp, 'mf-run'), 'state_dir': os.path.join(s.tmp, 'mf-state'),
        'worker': '/nonexistent/etcdproxy-worker', 'plugin_dir': eptest.PLUGIN_DIR,
        'core_etcd': {'endpoints': ['http://127.0.0.1:2379'], 'ca_file': '/nonexistent/ca.pem',
                      'cert_file': None, 'key_file': None}})
    r = eptest.check_config(conf, option_first=False)
    s.check(r.returncode == 1 and '/nonexistent/etcdproxy-worker' in r.stderr and
            '/nonexistent/ca.pem' in r.stderr, '--check-config: a missing worker and ca_file '
            'fail the check, both named', (r.returncode, r.stdout, r.stderr))


def test_broken_global_startup(s):
    bad = os.path.join(s.tmp, 'broken.json')
    # line 2, column 18: a value is missing
    eptest.write_text(bad, '{\n  "log_level": ,\n  "runtime_dir": "%s/broken-run"\n}\n' % s.tmp)
    r = run(ETCDPROXYD, '-c', bad, '-f')
    s.check(r.returncode == 1 and bad + ':2:' in r.stderr, 'etcdproxyd with a JSON syntax error '
            'in its file: exit 1, file:line:col on stderr', (r.returncode, r.stderr))
    r = eptest.check_config(bad, option_first=False)
    s.check(r.returncode == 1 and bad + ':2:' in r.stderr, '--check-config on it: exit 1, '
            'file:line:col', (r.returncode, r.stderr))
    # a well-formed file with a wrong key: line 3, column 3
    eptest.write_text(bad, '{\n  "log_level": "debug",\n  "no_such_key": 1\n}\n')
    r = run(ETCDPROXYD, '-c', bad, '-f')
    s.check(r.returncode == 1 and bad + ':3:3' in r.stderr and 'no_such_key' in r.stderr,
            'etcdproxyd with an unknown key: exit 1, file:line:col and the key',
            (r.returncode, r.stderr))
    s.check(not os.path.exists(os.path.join(s.tmp, 'broken-run')),
            'it created no runtime directory')


def test_status_ready(s, sv):
    rc, out, err, data = sv.ctl('status')
    s.eq(rc, 0, 'status with every tenant ready: exit 0')
    s.check(data and data.get('ok') is True and data['daemon']['pid'] == sv.pid and
            data['daemon']['tenants'] == 1 and data['daemon']['ready'] == 1,
            'status -o json: ok, daemon pid, counts', out)
    t = data['tenants'][0] if data and data.get('tenants') else {}
    want = {'name', 'state', 'backend', 'listen', 'prefix', 'pid', 'restarts', 'last_error',
            'uptime_s', 'healthy', 'file'}
    s.check(want <= set(t), 'a tenant in status -o json has every field', sorted(t))
    rc, out, err, _ = sv.ctl('status', json_out=False)
    s.eq(rc, 0, 'status (table): exit 0')
    rc, out, err, _ = sv.ctl('list', json_out=False)
    s.check(rc == 0 and 'NAME' in out and 'STATE' in out and 'a ' in out and 'ready' in out,
            'list (table): exit 0 with the tenant', out + err)
    r = run(ETCDPROXYCTL, '-c', sv.conf, '-o', 'json', 'status')
    s.check(r.returncode == 0 and json.loads(r.stdout)['daemon']['pid'] == sv.pid,
            'etcdproxyctl -c CONFIG finds the socket from the configuration', r.stderr)


def test_socket_mode(s, sv):
    st = os.stat(sv.sock)
    s.check(stat.S_ISSOCK(st.st_mode), 'the control socket is a socket')
    s.eq(oct(stat.S_IMODE(st.st_mode)), oct(0o660), 'the control socket has mode 0660')


def test_second_daemon(s, sv):
    r = run(ETCDPROXYD, '-c', sv.conf, '-f')
    s.check(r.returncode == 1 and 'already' in r.stderr, 'a second etcdproxyd on the same socket: '
            'exit 1, "already"', (r.returncode, r.stderr[-500:]))
    s.check(os.path.exists(sv.sock) and sv.ctl('status')[0] == 0,
            'the first one still answers on its socket')
    s.eq(sv.log_text().count('started worker'), 1, 'the second one started no worker')


def test_bad_listen(s, sv, ports):
    sv.add_tenant('far', listen='10.1.2.3:2379')
    # the etcd backend by name: this is its refusal, whatever EP_TEST_BACKEND says
    sv.add_tenant('sock', listen='unix:%s/sock.sock' % s.tmp, backend='etcd')
    rc, out, err, data = sv.ctl('reload')
    s.check(rc == 0 and data and sorted(data['added']) == ['far', 'sock'],
            'reload adds far and sock', (rc, out, err))
    t = sv.wait_state('far', 'failed', timeout=5)
    s.check('loopback' in (t['last_error'] or '') and sv.tenant_file('far') in t['last_error'],
            'a non-loopback listen (10.1.2.3:2379): failed, the message says loopback and the file',
            t['last_error'])
    t = sv.wait_state('sock', 'failed', timeout=5)
    s.check('TCP only' in (t['last_error'] or '') and sv.tenant_file('sock') in t['last_error'],
            'a unix: listen with the etcd backend: failed, "TCP only"', t['last_error'])
    s.check(sv.status()['a']['state'] == 'ready' and eptest.serves(ports['a']),
            'the other tenant stays ready and serves')
    r = eptest.check_config(sv.conf, option_first=False)
    s.check(r.returncode == 1 and 'far.json' in r.stderr and 'sock.json' in r.stderr,
            '--check-config names both files', r.stderr)


def test_not_ready(s, sv):
    rc, out, err, data = sv.ctl('status')
    s.check(rc == 4 and data and data['daemon']['failed'] == 2,
            'status -o json with failed tenants: exit 4, failed 2', (rc, err))
    rc, out, err, _ = sv.ctl('status', json_out=False)
    s.eq(rc, 4, 'status (table) with failed tenants: exit 4')
    lines = out.splitlines()
    header = next((l for l in lines if l.startswith('NAME')), '')
    cols = ['NAME', 'BACKEND', 'LISTEN', 'PREFIX', 'PID', 'STATE', 'RESTARTS', 'UPTIME']
    s.check(all(c in header.split() for c in cols), 'the table has the columns ' + ' '.join(cols),
            out)
    a = sv.status()['a']
    row = next((l.split() for l in lines if l.split()[:1] == ['a']), [])
    s.check(row[1:6] == [eptest.test_backend(), a['listen'], '/a/', str(a['pid']), 'ready'],
            'the table row of a: backend, listen, prefix, pid, state', row)
    s.check(any(l.split()[:1] == ['far'] and 'failed' in l.split() for l in lines),
            'the table row of far says failed', out)
    rc, out, err, _ = sv.ctl('list', json_out=False)
    s.eq(rc, 0, 'list exits 0 even with failed tenants')


def test_show_restart(s, sv):
    rc, out, err, data = sv.ctl('show', 'a')
    s.check(rc == 0 and data and data['tenant']['name'] == 'a' and
            data['tenant']['state'] == 'ready' and data['tenant'].get('config'),
            'show a -o json: exit 0, the tenant with its configuration', (rc, err))
    rc, out, err, _ = sv.ctl('show', 'a', json_out=False)
    s.check(rc == 0 and 'name:' in out and 'prefix:      /a/' in out, 'show a (text)', out)
    for cmd in ('show', 'restart'):
        rc, out, err, data = sv.ctl(cmd, 'nosuch')
        s.check(rc == 1 and 'nosuch' in err, '%s nosuch: exit 1 with a message' % cmd,
                (rc, err))
        s.check(data is not None and data.get('ok') is False, '%s nosuch -o json: ok false' % cmd,
                out)
    rc, out, err, _ = sv.ctl('restart', 'far', json_out=False)
    s.check(rc == 1 and 'fixed' in err, 'restart of a tenant with a broken file: exit 1, '
            'says to fix the file', (rc, err))


def test_all_ready_again(s, sv):
    sv.remove_tenant('far')
    sv.remove_tenant('sock')
    rc, out, err, _ = sv.ctl('reload', json_out=False)
    s.check(rc == 0 and 'removed 2' in out, 'reload (text): exit 0, "removed 2"', out + err)
    sv.wait_gone('far')
    sv.wait_gone('sock')
    rc, out, err, _ = sv.ctl('status')
    s.eq(rc, 0, 'status exits 0 again once every tenant is ready')


def body(s):
    for fn in (test_no_daemon, test_usage, test_versions):
        s.run(fn, s)
    core = eptest.CoreEtcd(s).start()
    s.run(test_broken_global_startup, s)
    s.run(test_check_config_files, s)
    sv = eptest.Supervisor(s, core)
    ports = {'a': sv.add_tenant('a')}
    s.run(test_check_config_ok, s, sv)
    sv.start()
    sv.wait_ready('a')
    s.run(test_status_ready, s, sv)
    s.run(test_socket_mode, s, sv)
    s.run(test_second_daemon, s, sv)
    s.run(test_bad_listen, s, sv, ports)
    s.run(test_not_ready, s, sv)
    s.run(test_show_restart, s, sv)
    s.run(test_all_ready_again, s, sv)
    s.eq(sv.stop(), 0, 'etcdproxyd exits 0 on SIGTERM')


if __name__ == '__main__':
    s = eptest.Suite('cli')
    s.require(eptest.ETCD, eptest.ETCDCTL, eptest.ETCDPROXYD, eptest.ETCDPROXYCTL, eptest.WORKER)
    s.main(body)
