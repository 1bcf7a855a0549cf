#!/usr/bin/python3
"""The plugin SDK out of tree: `make install prefix=TMP/prefix`, check the installed
layout, build tests/sdk/backend-hello.c against the installed etcdproxy/plugin.h
with the installed pkg-config file, and serve a tenant with it through the
INSTALLED worker (standalone, then under the installed etcdproxyd)."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys

sys.dont_write_bytecode = True  # nothing written into the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eptest  # noqa: E402
from eptest import BUILDDIR, SRCDIR, wait_until  # noqa: E402

LAYOUT = ['sbin/etcdproxyd', 'bin/etcdproxyctl', 'libexec/etcdproxy/etcdproxy-worker',
          'lib/etcdproxy/backend-etcd.so', 'include/etcdproxy/plugin.h',
          'lib/pkgconfig/etcdproxy-plugin.pc', 'etc/etcdproxy/etcdproxyd.json',
          'share/man/man8/etcdproxyd.8']
EXECUTABLES = ['sbin/etcdproxyd', 'bin/etcdproxyctl', 'libexec/etcdproxy/etcdproxy-worker']
PROGRAMS = ['supervisor/etcdproxyd', 'ctl/etcdproxyctl', 'worker/etcdproxy-worker',
            'plugins/backend-etcd.la', 'etcdproxy-plugin.pc']
# what the install without the data files (man pages, etc/) consists of
PARTIAL_INSTALL = ['install-binPROGRAMS', 'install-sbinPROGRAMS', 'install-pkglibexecPROGRAMS',
                   'install-pkglibLTLIBRARIES', 'install-sdkincludeHEADERS',
                   'install-pkgconfigDATA']


def make_env():
    # a make running this test must not hand its jobserver or command-line variables down
    env = dict(os.environ)
    for v in ('MAKEFLAGS', 'MFLAGS', 'MAKELEVEL', 'MAKEOVERRIDES', 'DESTDIR'):
        env.pop(v, None)
    return env


def run(cmd, timeout=60, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, **kw)


def test_install(s, st):
    # build with the configured paths first: `make install prefix=...` must only install
    r = run(['make', '-C', BUILDDIR, 'all'], timeout=240, env=make_env())
    if not s.check(r.returncode == 0, 'make all in %s' % BUILDDIR, r.stdout + r.stderr):
        r = run(['make', '-C', BUILDDIR] + PROGRAMS, timeout=240, env=make_env())
        s.require_check(r.returncode == 0, 'make %s (fallback)' % ' '.join(PROGRAMS),
                        r.stdout + r.stderr)
    p = st.prefix
    paths = ['prefix=' + p, 'exec_prefix=' + p, 'sysconfdir=' + p + '/etc']
    r = run(['make', '-C', BUILDDIR, 'install'] + paths, timeout=120, env=make_env())
    s.check(r.returncode == 0, 'make install prefix=TMP/prefix', (r.stdout + r.stderr))
    if r.returncode != 0:
        # go on with the programs, the plugin and the SDK so that the plugin is still tested
        r = run(['make', '-C', BUILDDIR] + PARTIAL_INSTALL + paths, timeout=120, env=make_env())
        s.require_check(r.returncode == 0, 'make %s (fallback)' % ' '.join(PARTIAL_INSTALL),
                        r.stdout + r.stderr)
    for f in LAYOUT:
        s.check(os.path.isfile(os.path.join(p, f)), 'installed: %s' % f)
    for f in EXECUTABLES:
        s.check(os.access(os.path.join(p, f), os.X_OK), 'executable: %s' % f)
    r = run([os.path.join(p, 'sbin/etcdproxyd'), '--version'])
    s.check(r.returncode == 0 and r.stdout.startswith('etcdproxyd '),
            'the installed etcdproxyd runs', r.stdout + r.stderr)


def test_build_plugin(s, st):
    p = st.prefix
    env = dict(os.environ, PKG_CONFIG_PATH=os.path.join(p, 'lib', 'pkgconfig'))
    # the .pc file carries the configure-time prefix: point it at this install
    r = run(['pkg-config', '--define-variable=prefix=' + p, '--cflags', '--libs',
             'etcdproxy-plugin'], env=env)
    s.require_check(r.returncode == 0, 'pkg-config --cflags --libs etcdproxy-plugin',
                    r.stdout + r.stderr)
    flags = st.flags = r.stdout.split()
    s.check('-I%s/include' % p in flags, 'the cflags name the installed include directory', flags)
    os.makedirs(st.plugins, exist_ok=True)
    so = os.path.join(st.plugins, 'backend-hello.so')
    r = run(['cc', '-Wall', '-Wextra', '-Werror', '-o', so,
             os.path.join(SRCDIR, 'tests', 'sdk', 'backend-hello.c')] + flags, env=env)
    s.require_check(r.returncode == 0 and os.path.isfile(so), 'backend-hello.c builds against the '
                    'installed SDK with -Wall -Wextra -Werror', r.stdout + r.stderr)
    r = run(['nm', '-D', '--defined-only', so])
    syms = [l.split()[-1] for l in r.stdout.splitlines() if l.strip()]
    s.eq([x for x in syms if not x.startswith('_')], ['ep_plugin_descriptor'],
         'the plugin exports ep_plugin_descriptor only')


def write_config(st, name):
    os.makedirs(os.path.join(st.tmp, name, 'storages.d'), exist_ok=True)
    conf = os.path.join(st.tmp, name, 'etcdproxyd.json')
    eptest.write_json(conf, {
        'storages_dir': os.path.join(st.tmp, name, 'storages.d'),
        'state_dir': os.path.join(st.tmp, name, 'state'),
        'runtime_dir': os.path.join(st.tmp, name, 'run'),
        'plugin_dir': st.plugins,
        'worker': os.path.join(st.prefix, 'libexec/etcdproxy/etcdproxy-worker'),
        'log_level': 'debug',
        'core_etcd': {'endpoints': ['http://127.0.0.1:9'], 'ca_file': None,
                      'cert_file': None, 'key_file': None},
        'defaults': {'backend': 'hello'},
    })
    return conf


def greeting(port):
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=2) as c:
            c.settimeout(2)
            data = b''
            while not data.endswith(b'\n'):
                chunk = c.recv(256)
                if not chunk:
                    break
                data += chunk
            return data.decode(errors='replace')
    except OSError as e:
        return 'error: %s' % e


def test_standalone(s, st):
    conf = write_config(st, 'standalone')
    port = eptest.free_port()
    tenant = os.path.join(st.tmp, 'standalone', 'storages.d', 'greeter.json')
    eptest.write_json(tenant, {'apiVersion': 'etcd.xmudrii.com/v1alpha1', 'kind': 'EtcdStorage',
                               'metadata': {'name': 'greeter'},
                               'spec': {'backend': 'hello', 'listen': '127.0.0.1:%d' % port,
                                        'tls': {'enabled': False}}})
    log = os.path.join(st.tmp, 'standalone', 'worker.log')
    worker = os.path.join(st.prefix, 'libexec/etcdproxy/etcdproxy-worker')
    p = s.popen([worker, '--standalone', '-c', conf, tenant], log=log,
                label='installed worker, standalone')
    ready = 'ready: serving /greeter/ on 127.0.0.1:%d' % port
    s.require_check(wait_until(lambda: ready in eptest.read_text(log) or p.poll() is not None, 10)
                    and p.poll() is None, 'the installed worker loads backend-hello and logs '
                    '"%s"' % ready)
    s.eq(greeting(port), 'hello greeter /greeter/\n', 'the port answers with the plugin\'s greeting')
    p.send_signal(signal.SIGTERM)
    try:
        rc = p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        rc = None
    s.eq(rc, 0, 'SIGTERM: the standalone worker exits 0')
    text = eptest.read_text(log)
    s.check('backend-hello: stopped' in text and 'exiting with code 0' in text,
            'the plugin\'s stop() ran and called stopped()', text)
    s.check(not eptest.port_open(port), 'the port is closed')


def test_supervised(s, st):
    # the installed etcdproxyd, with the installed worker and the hello plugin only
    sv = eptest.Supervisor(s, None, name='supervised',
                           daemon=os.path.join(st.prefix, 'sbin/etcdproxyd'),
                           worker=os.path.join(st.prefix, 'libexec/etcdproxy/etcdproxy-worker'),
                           plugin_dir=st.plugins, extra={'defaults': {'backend': 'hello'}})
    port = sv.add_tenant('greeter')  # the backend comes from defaults.backend
    sv.start()
    t = sv.wait_ready('greeter')['greeter']
    s.check(t['backend'] == 'hello' and t['prefix'] == '/greeter/',
            'the installed etcdproxyd runs greeter with the hello backend', t)
    s.eq(greeting(port), 'hello greeter /greeter/\n', 'greeter answers')
    s.eq(sv.stop(), 0, 'the installed etcdproxyd exits 0 on SIGTERM')
    s.check(not eptest.port_open(port), 'the port is closed')


def test_options(s, st):
    """An out-of-tree plugin's option table: the installed etcdproxyd --check-config judges
    backends.hello by it (through the installed worker), and the worker parses it."""
    daemon = os.path.join(st.prefix, 'sbin/etcdproxyd')
    conf = write_config(st, 'options')
    with open(conf) as f:
        cfg = json.load(f)
    cfg['backends'] = {'hello': {'greting': 'hi'}}
    eptest.write_json(conf, cfg)
    r = eptest.check_config(conf, daemon=daemon)
    s.check(r.returncode == 1 and re.search(
        r'etcdproxyd\.json:\d+:\d+: backends\.hello: unknown key "greting" \(expected one of: '
        r'greeting\)', r.stderr),
        'the installed etcdproxyd --check-config judges the plugin\'s options by its table, '
        'with line and column', (r.returncode, r.stderr))
    cfg['backends'] = {'hello': {'greeting': ''}}
    eptest.write_json(conf, cfg)
    r = eptest.check_config(conf, daemon=daemon)
    s.check(r.returncode == 1 and 'backends.hello.greeting: expected a non-empty string (the '
            'first word of every answer), got ""' in r.stderr, 'and a value of the wrong kind',
            r.stderr)

    sv = eptest.Supervisor(s, None, name='options', daemon=daemon,
                           worker=os.path.join(st.prefix, 'libexec/etcdproxy/etcdproxy-worker'),
                           plugin_dir=st.plugins, extra={'defaults': {'backend': 'hello'}})
    sv.config['backends'] = {'hello': {'greeting': 'hi'}}
    sv.write_config()
    r = eptest.check_config(sv.conf, daemon=daemon)
    s.check(r.returncode == 0, '--check-config passes backends.hello.greeting "hi"', r.stderr)
    port = sv.add_tenant('greeter')
    sv.start()
    sv.wait_ready('greeter')
    s.eq(greeting(port), 'hi greeter /greeter/\n', 'the worker parsed the option for the plugin')
    s.eq(sv.stop(), 0, 'that etcdproxyd exits 0 on SIGTERM')


# start() opens a handle and then calls host->fail() before returning: the worker must
# still stop the backend, or the handle keeps it alive
FAIL_IN_START = r'''
#include <stdlib.h>
#include <etcdproxy/plugin.h>

struct st { struct ep_host *host; uv_timer_t timer; };

static void tick(uv_timer_t *t) { (void)t; }
static void closed(uv_handle_t *h) { struct st *s = h->data; s->host->stopped(s->host); }
static int init(struct ep_host *host, void **state_r, const char **error_r)
{
	struct st *s = calloc(1, sizeof(*s));

	(void)error_r;
	if (s == NULL)
		return -12;
	s->host = host;
	*state_r = s;
	return 0;
}
static int start(void *state, const char **error_r)
{
	struct st *s = state;

	(void)error_r;
	uv_timer_init(s->host->loop, &s->timer);
	s->timer.data = s;
	uv_timer_start(&s->timer, tick, 1000, 1000);
	s->host->fail(s->host, 0, "failstart: cannot go on");
	return 0;
}
static void stop(void *state, int graceful)
{
	struct st *s = state;

	(void)graceful;
	if (!uv_is_closing((uv_handle_t *)&s->timer))
		uv_close((uv_handle_t *)&s->timer, closed);
}
static void fini(void *state) { free(state); }
static const struct ep_backend_ops ops = { .start = start, .stop = stop };
EP_PLUGIN_EXPORT const struct ep_plugin EP_PLUGIN_SYMBOL = {
	.abi_version = EP_PLUGIN_ABI_VERSION, .kind = EP_PLUGIN_BACKEND, .name = "failstart",
	.description = "calls fail() inside start()", .init = init, .fini = fini, .ops = &ops,
};
'''


def test_fail_in_start(s, st):
    src = os.path.join(st.tmp, 'backend-failstart.c')
    so = os.path.join(st.plugins, 'backend-failstart.so')
    eptest.write_text(src, FAIL_IN_START)
    r = run(['cc', '-Wall', '-Wextra', '-Werror', '-o', so, src] + st.flags)
    s.require_check(r.returncode == 0, 'backend-failstart.c builds', r.stdout + r.stderr)
    conf = write_config(st, 'failstart')
    tenant = os.path.join(st.tmp, 'failstart', 'storages.d', 'f.json')
    eptest.write_json(tenant, {'apiVersion': 'etcd.xmudrii.com/v1alpha1', 'kind': 'EtcdStorage',
                               'metadata': {'name': 'f'},
                               'spec': {'backend': 'failstart',
                                        'listen': '127.0.0.1:%d' % eptest.free_port(),
                                        'tls': {'enabled': False}}})
    log = os.path.join(st.tmp, 'failstart', 'worker.log')
    worker = os.path.join(st.prefix, 'libexec/etcdproxy/etcdproxy-worker')
    p = s.popen([worker, '--standalone', '-c', conf, tenant], log=log,
                label='installed worker, failstart')
    try:
        rc = p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        rc = None
    s.eq(rc, 69, 'a backend that calls fail() inside start(): the worker stops it and exits 69')
    s.check('failstart: cannot go on' in eptest.read_text(log), 'and logs the reason',
            eptest.read_text(log))


class State:
    pass


def body(s):
    st = State()
    st.tmp = s.tmp
    st.prefix = os.path.join(s.tmp, 'prefix')
    st.plugins = os.path.join(s.tmp, 'plugins')
    s.run(test_install, s, st)
    if not os.path.exists(os.path.join(st.prefix, 'include/etcdproxy/plugin.h')):
        return
    s.run(test_build_plugin, s, st)
    if not os.path.exists(os.path.join(st.plugins, 'backend-hello.so')):
        return
    s.run(test_standalone, s, st)
    s.run(test_supervised, s, st)
    s.run(test_options, s, st)
    s.run(test_fail_in_start, s, st)


if __name__ == '__main__':
    s = eptest.Suite('sdk')
    s.require(eptest.ETCDPROXYD, eptest.ETCDPROXYCTL, eptest.WORKER,
              *[shutil.which(x) or '/nonexistent/' + x for x in ('make', 'cc', 'pkg-config', 'nm')])
    s.main(body)
