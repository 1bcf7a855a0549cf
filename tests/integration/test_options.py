#!/usr/bin/python3
"""One duration syntax and one option checker for the global file and every plugin:

  - etcdproxyd --check-config takes "500us" (and "90000000us") in every duration setting,
    of the daemon and of each plugin;
  - it judges the plugins' options with the plugins' own tables, read through
    etcdproxy-worker --describe-options: a bad value is one line with file:line:column that
    names the key and the value, an unknown plugin section is an error, and it exits 1;
  - a tenant started with what --check-config passed runs ("90000000us" for the native
    backend's idle_timeout, which used to fail the tenant);
  - a tenant whose plugin options are wrong (a daemon started without the check) fails
    with the same line, naming the key and the value, and is not retried;
  - certs.ca.grace too long for a tenant's signingCertificateValidity is found by
    --check-config, and such a tenant is refused at load (no worker), the others run."""

import json
import os
import re
import sys

sys.dont_write_bytecode = True  # nothing written into the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eptest  # noqa: E402

DURATIONS = {
    'supervisor': ['stop_timeout', 'restart_backoff_initial', 'restart_backoff_max',
                   'stable_after'],
    'defaults': ['signingCertificateValidity', 'servingCertificateValidity',
                 'clientCertificateValidity'],
}
PLUGIN_DURATIONS = {
    ('backends', 'native'): ['idle_timeout', 'drain_timeout', 'credentials_poll_interval'],
    ('backends', 'etcd'): ['health_interval'],
    ('certs', 'ca'): ['grace'],
}


def position(path, needle):
    """line:column of the first occurrence of needle in the file (errors point at the key)."""
    with open(path) as f:
        for i, line in enumerate(f):
            c = line.find(needle)
            if c >= 0:
                return '%d:%d' % (i + 1, c + 1)
    raise AssertionError('%s not in %s' % (needle, path))


def write(sv, config):
    with open(sv.conf, 'w') as f:
        json.dump(config, f, indent=2)


def test_durations(s, sv):
    for value in ('500us', '90000000us', '1500\u00b5s'):
        cfg = json.loads(json.dumps(sv.config))
        for section, keys in DURATIONS.items():
            cfg.setdefault(section, {})
            for k in keys:
                cfg[section][k] = value
        for (section, name), keys in PLUGIN_DURATIONS.items():
            cfg.setdefault(section, {}).setdefault(name, {})
            for k in keys:
                cfg[section][name][k] = value
        cfg.setdefault('certs', {})['files'] = {'poll_interval': '100ms'}
        write(sv, cfg)
        r = eptest.check_config(sv.conf)
        s.check(r.returncode == 0 and 'OK' in r.stdout,
                'etcdproxyd --check-config takes "%s" in every duration setting of the daemon '
                'and of the plugins' % value, (r.returncode, r.stdout, r.stderr))


def test_bad_options(s, sv):
    cfg = json.loads(json.dumps(sv.config))
    cfg['backends']['native'] = {'idle_timeout': 'bogus'}
    cfg['backends']['nativ'] = {}
    cfg['certs'] = {'ca': {'key_type': 'dsa'}, 'files': {'poll_interval': '50ms'}}
    write(sv, cfg)
    r = eptest.check_config(sv.conf)
    want = [
        '%s:%s: backends.native.idle_timeout: expected a duration such as "5s", "500ms" or '
        '"1h30m" ("0s": never close an idle connection), got "bogus"' % (
            sv.conf, position(sv.conf, '"idle_timeout"')),
        '%s:%s: backends.nativ: no backend named "nativ" (%s/backend-nativ.so: No such file '
        'or directory)' % (sv.conf, position(sv.conf, '"nativ"'), eptest.PLUGIN_DIR),
        '%s:%s: certs.ca.key_type: expected one of "ecdsa-p256", "rsa-2048" (of every key '
        'the CA makes), got "dsa"' % (sv.conf, position(sv.conf, '"key_type"')),
        '%s:%s: certs.files.poll_interval: expected a duration such as "5s", "500ms" or '
        '"1h30m" of at least 100ms (between checks of the files for changes), got "50ms"' % (
            sv.conf, position(sv.conf, '"poll_interval"')),
    ]
    lines = r.stderr.splitlines()
    s.check(r.returncode == 1, 'etcdproxyd --check-config exits 1 for bad plugin options',
            (r.returncode, r.stdout, r.stderr))
    for w in want:
        s.check(w in lines, 'it prints: %s' % w.split(': ', 1)[1][:90], r.stderr)
    cfg['backends']['native'] = {'max_message': 10, 'colour': 'blue'}
    del cfg['backends']['nativ']
    del cfg['certs']
    write(sv, cfg)
    r = eptest.check_config(sv.conf)
    s.check(r.returncode == 1 and
            'backends.native.max_message: expected an integer from 1024 to 67108864 (bytes: '
            'the largest request message), got 10' in r.stderr,
            'an integer out of range: the range and the value', r.stderr)
    cfg['backends']['native'] = {'colour': 'blue'}
    write(sv, cfg)
    r = eptest.check_config(sv.conf)
    s.check(r.returncode == 1 and re.search(
        r':\d+:\d+: backends\.native: unknown key "colour" \(expected one of: max_message, '
        r'max_streams, upstreams, idle_timeout, drain_timeout, credentials_poll_interval, '
        r'compaction\)', r.stderr), 'an unknown key: every key the plugin knows', r.stderr)


def test_runs_what_check_passed(s, core):
    sv = eptest.Supervisor(s, core, name='ok',
                           backends={'native': {'idle_timeout': '90000000us',
                                                'drain_timeout': '500us'}})
    port = sv.add_tenant('a', backend='native')
    r = eptest.check_config(sv.conf)
    s.check(r.returncode == 0, '--check-config passes idle_timeout "90000000us"', r.stderr)
    sv.start()
    sv.wait_ready('a')
    s.check(eptest.wait_serves(port), 'and the native tenant serves with it')
    s.eq(sv.stop(), 0, 'that etcdproxyd exits 0 on SIGTERM')


def test_tenant_fails_naming_key(s, core):
    sv = eptest.Supervisor(s, core, name='bad', backends={'native': {'idle_timeout': 'bogus'}})
    sv.add_tenant('b', backend='native')
    sv.start()
    t = sv.wait_state('b', 'failed')
    err = t['last_error'] or ''
    s.check('backends.native.idle_timeout: expected a duration' in err and
            'got "bogus"' in err and 'exited with code 78' in err,
            'a tenant with a bad native option fails: its last error names the key and the '
            'value', err)
    s.eq(sv.stop(), 0, 'that etcdproxyd exits 0 on SIGTERM')


def test_ca_grace_against_validity(s, core):
    sv = eptest.Supervisor(s, core, name='grace', extra={'certs': {'ca': {'grace': '2h'}}})
    sv.add_tenant('short', tls={'source': 'ca'},
                  spec_extra={'signingCertificateValidity': '6h'})
    sv.add_tenant('long', tls={'source': 'ca'},
                  spec_extra={'signingCertificateValidity': '12h'})
    r = eptest.check_config(sv.conf)
    want = ('spec.signingCertificateValidity: certs.ca.grace (7200000 ms) is too long for a '
            'signingCertificateValidity of 21600000 ms')
    s.check(r.returncode == 1 and want in r.stderr and 'short.json:' in r.stderr and
            'long.json' not in r.stderr,
            '--check-config finds a grace too long for one tenant\'s signing validity, and '
            'names that tenant\'s file and key', (r.returncode, r.stderr))
    sv.start()
    t = sv.wait_state('short', 'failed')
    s.check(want in (t['last_error'] or '') and not t.get('pid'),
            'that tenant is refused at load with the same line, and no worker starts', t)
    sv.wait_ready('long')
    s.eq(sv.stop(), 0, 'that etcdproxyd exits 0 on SIGTERM')


def body(s):
    core = eptest.CoreEtcd(s).start()
    sv = eptest.Supervisor(s, core, name='check')
    sv.add_tenant('a', backend='native')
    for fn, args in ((test_durations, (s, sv)), (test_bad_options, (s, sv)),
                     (test_runs_what_check_passed, (s, core)),
                     (test_tenant_fails_naming_key, (s, core)),
                     (test_ca_grace_against_validity, (s, core))):
        s.run(fn, *args)


if __name__ == '__main__':
    s = eptest.Suite('options')
    s.require(eptest.ETCD, eptest.ETCDCTL, eptest.ETCDPROXYD, eptest.ETCDPROXYCTL, eptest.WORKER)
    s.main(body)
