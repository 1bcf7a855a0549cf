/*
 * What the plugins share about certificates: loading and checking PEM
 * material with precise messages (and, through ep-util.h, the rest).
 *
 * Linked into the plugins as a convenience library (plugins/libepcommon.la);
 * nothing here is part of the public plugin SDK.  Every function that can
 * fail returns 0 or a negative errno code and puts a malloc'ed,
 * one-line reason into *error_r ("FILE: what is wrong").
 */
#ifndef EP_PLUGIN_COMMON_TLS_H
#define EP_PLUGIN_COMMON_TLS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "files.h"
#include "util.h"

/* ---- PEM material ------------------------------------------------------------------------ */

/*
 * Load every certificate of a PEM file (a chain, leaf first, or a bundle).
 * At least one certificate; anything that is not a certificate block is an
 * error with its reason.
 */
int ep_pem_load_certs(const char *path, STACK_OF(X509) **certs_r, char **error_r);

/* The same from memory; what names the source in messages. */
int ep_pem_parse_certs(const char *pem, size_t len, const char *what, STACK_OF(X509) **certs_r,
		       char **error_r);

/* Load one private key (PKCS#8, traditional RSA or EC) from a PEM file. */
int ep_pem_load_key(const char *path, EVP_PKEY **key_r, char **error_r);
int ep_pem_parse_key(const char *pem, size_t len, const char *what, EVP_PKEY **key_r,
		     char **error_r);

/* PEM text of a certificate or key (malloc'ed, NUL-terminated, *len_r without the NUL). */
char *ep_pem_cert(X509 *cert, size_t *len_r);
char *ep_pem_key(EVP_PKEY *key, size_t *len_r);

/* ---- checks ------------------------------------------------------------------------------ */

/* 0 when key is the private key of cert; else "<cert_what> and <key_what> do not match". */
int ep_tls_check_pair(X509 *cert, EVP_PKEY *key, const char *cert_what, const char *key_what,
		      char **error_r);

/*
 * 0 when cert is valid at now (seconds since the epoch): not before its
 * notBefore, not after its notAfter.  The message says which bound and the
 * date ("expired on 2026-11-23 10:00:00 UTC").
 */
int ep_tls_check_time(X509 *cert, int64_t now, const char *what, char **error_r);

/*
 * Verify chain[0] for purpose ("ssl_server", "ssl_client", or NULL for any)
 * with chain[1..] as untrusted intermediates, against the trusted
 * certificates in roots (NULL: only chain itself, which then must end in a
 * self-signed certificate).  The message carries OpenSSL's reason and the
 * depth at which it failed.
 */
int ep_tls_verify(STACK_OF(X509) *chain, STACK_OF(X509) *roots, const char *purpose,
		  const char *what, char **error_r);

/* ---- facts for messages and etcdproxyctl show ------------------------------------------- */

/* notBefore / notAfter in seconds since the epoch. */
int64_t ep_x509_not_before(X509 *cert);
int64_t ep_x509_not_after(X509 *cert);
/* The subject or issuer as one line, "CN=a,O=etcdproxy" (malloc'ed). */
char *ep_x509_subject(X509 *cert);
char *ep_x509_issuer(X509 *cert);
/* The serial number in lower-case hex without leading zeros (malloc'ed). */
char *ep_x509_serial_hex(X509 *cert);
/* 1 when the two certificates are byte for byte the same. */
int ep_x509_equal(X509 *a, X509 *b);

#endif /* EP_PLUGIN_COMMON_TLS_H */
