"""Test certificates made with the openssl CLI, for the TLS tests (the files source, the
native and etcd backends): a CA that issues server and client certificates with any
validity period, past ones included, so that an expired certificate is a real one; and
the TLS clients those tests use on a tenant's port (etcdctl, openssl s_client).

Serials are lower-case hex as `openssl x509 -serial` prints them (leading zeros kept)."""

import os
import subprocess

from eptest import ETCDCTL, Failure

OPENSSL = '/usr/bin/openssl'

OPENSSL_CNF = """\
[ ca ]
default_ca = ca_default
[ ca_default ]
dir = %(dir)s
database = $dir/index.txt
new_certs_dir = $dir/new
serial = $dir/serial
default_md = sha256
default_days = 30
policy = policy_any
unique_subject = no
copy_extensions = none
[ policy_any ]
commonName = supplied
[ req ]
distinguished_name = req_dn
prompt = no
[ req_dn ]
CN = unused
[ v3_ca ]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[ server ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ client ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
"""


def openssl(*args, input=None):
    """Run openssl; its stdout, or raise Failure with the end of its stderr."""
    r = subprocess.run([OPENSSL] + list(args), capture_output=True, text=True, timeout=30,
                       input=input, stdin=None if input is not None else subprocess.DEVNULL)
    if r.returncode != 0:
        raise Failure('openssl %s failed: %s' % (' '.join(args[:2]), r.stderr.strip()[-400:]))
    return r.stdout


class CA:
    """A CA made with `openssl req -x509`, issuing with `openssl ca`, which takes any
    validity period (an expired certificate is one whose period is over).  Files live in
    TMP/pki/NAME; .crt and .key are the CA's own."""

    def __init__(self, tmp, name):
        self.name = name
        self.dir = os.path.join(tmp, 'pki', name)
        os.makedirs(os.path.join(self.dir, 'new'))
        self.cnf = os.path.join(self.dir, 'openssl.cnf')
        with open(self.cnf, 'w') as f:
            f.write(OPENSSL_CNF % {'dir': self.dir})
        open(os.path.join(self.dir, 'index.txt'), 'w').close()
        with open(os.path.join(self.dir, 'serial'), 'w') as f:
            f.write('%08x\n' % (0x1000 + sum(map(ord, name)) * 0x100))
        self.key = os.path.join(self.dir, 'ca.key')
        self.crt = os.path.join(self.dir, 'ca.crt')
        openssl('req', '-x509', '-config', self.cnf, '-extensions', 'v3_ca', '-newkey', 'ec',
                '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', self.key,
                '-out', self.crt, '-subj', '/CN=%s' % name, '-days', '30')

    def issue(self, cn, ext='server', start=None, end=None, key=None):
        """(cert, key) paths of a new certificate: ext "server" or "client"; start/end as
        YYYYMMDDHHMMSSZ; key: an existing key file to certify instead of a new one."""
        base = os.path.join(self.dir, '%s-%s' % (cn, len(os.listdir(self.dir))))
        csr = base + '.csr'
        if key is None:
            key = base + '.key'
            openssl('req', '-new', '-config', self.cnf, '-newkey', 'ec', '-pkeyopt',
                    'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', csr,
                    '-subj', '/CN=%s' % cn)
        else:
            openssl('req', '-new', '-config', self.cnf, '-key', key, '-out', csr,
                    '-subj', '/CN=%s' % cn)
        args = ['ca', '-batch', '-config', self.cnf, '-cert', self.crt, '-keyfile', self.key,
                '-in', csr, '-out', base + '.crt', '-extensions', ext, '-notext']
        if start:
            args += ['-startdate', start]
        if end:
            args += ['-enddate', end]
        openssl(*args)
        return base + '.crt', key


def new_key(path):
    """A new P-256 key in path; returns path."""
    openssl('genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:prime256v1',
            '-out', path)
    return path


def serial_of(path):
    """The serial of the certificate in path, lower-case hex."""
    return openssl('x509', '-in', path, '-noout', '-serial').strip().split('=', 1)[1].lower()


# ---- TLS clients ------------------------------------------------------------------------------

def etcdctl_tls(port, ca=None, cert=None, key=None, *args, timeout=15, quick=False,
                scheme='https'):
    """etcdctl on 127.0.0.1:port with --cacert ca and --cert/--key (each when given); a
    CompletedProcess (returncode -1 on a timeout).  quick: for a call that is expected to
    fail (short timeouts)."""
    cmd = [ETCDCTL, '--endpoints=%s://127.0.0.1:%d' % (scheme, port),
           '--dial-timeout=%s' % ('1s' if quick else '3s'),
           '--command-timeout=%s' % ('2s' if quick else '5s')]
    cmd += ['--cacert', ca] if ca else []
    cmd += ['--cert', cert, '--key', key] if cert else []
    try:
        return subprocess.run(cmd + list(args), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL,
                              env=dict(os.environ, ETCDCTL_API='3'))
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, -1, '', 'etcdctl timed out')


def served_serial(port, cert, key, *args):
    """The serial of the certificate a new TLS connection to 127.0.0.1:port gets (openssl
    s_client presenting cert and key, with more s_client options in args, such as -alpn h2),
    or None."""
    try:
        r = subprocess.run([OPENSSL, 's_client', '-connect', '127.0.0.1:%d' % port, '-cert', cert,
                            '-key', key] + list(args), capture_output=True, timeout=10,
                           stdin=subprocess.DEVNULL)
        x = subprocess.run([OPENSSL, 'x509', '-noout', '-serial'], input=r.stdout,
                           capture_output=True, timeout=10)
    except subprocess.TimeoutExpired:
        return None
    out = x.stdout.decode(errors='replace').strip()
    return out.split('=', 1)[1].lower() if x.returncode == 0 and '=' in out else None
