/*
 * The native backend's TLS, which is all its OpenSSL: TLS through memory BIOs
 * for both sides, and the TLS contexts for the clients and the core etcd.
 *
 * A module of its own (PLUGIN_DIR/native-tls.so), which backend-native.so
 * loads only when a tenant or the core etcd uses TLS, so that a plaintext
 * worker does not map OpenSSL (about 1.7 MiB of RSS, 0.4 MiB of it private
 * relocations).  It knows nothing of libuv: the records OpenSSL produced are
 * handed out (output, output_done) and written by native.c.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "ep-tls.h"
#include "native.h"

/* ---- TLS through memory BIOs ------------------------------------------------------------ */

static void t_tls_free(struct native_tls *t);

/* OpenSSL's first queued reason (static), the queue cleared. */
static const char *openssl_reason(void)
{
	static char buf[300];
	unsigned long e = ERR_get_error();
	const char *reason;

	ERR_clear_error();
	if (e == 0)
		return "TLS error";
	reason = ERR_reason_error_string(e);
	if (reason != NULL)
		return reason;
	ERR_error_string_n(e, buf, sizeof(buf));
	return buf;
}

static const char *t_tls_reason(const struct native_tls *t)
{
	static char buf[300];
	long v = t->ssl != NULL ? SSL_get_verify_result(t->ssl) : X509_V_OK;

	if (t->refusal != NULL) {
		ERR_clear_error();
		return t->refusal;
	}
	if (v != X509_V_OK) {
		ERR_clear_error();
		snprintf(buf, sizeof(buf), "certificate verify failed: %s",
			 X509_verify_cert_error_string(v));
		return buf;
	}
	return openssl_reason();
}

static int t_tls_start(struct native_tls *t, SSL_CTX *ctx, int server)
{
	memset(t, 0, sizeof(*t));
	t->ssl = SSL_new(ctx);
	if (t->ssl == NULL)
		return -1;
	t->rbio = BIO_new(BIO_s_mem());
	t->wbio = BIO_new(BIO_s_mem());
	if (t->rbio == NULL || t->wbio == NULL) {
		BIO_free(t->rbio);
		BIO_free(t->wbio);
		t_tls_free(t);
		return -1;
	}
	SSL_set_bio(t->ssl, t->rbio, t->wbio); /* the SSL owns both BIOs now */
	SSL_set_app_data(t->ssl, t);          /* for the handshake callbacks */
	if (server)
		SSL_set_accept_state(t->ssl);
	else
		SSL_set_connect_state(t->ssl);
	return 0;
}

static void t_tls_free(struct native_tls *t)
{
	SSL_free(t->ssl); /* and its BIOs; the context loses a reference */
	memset(t, 0, sizeof(*t));
}

static void t_tls_feed(struct native_tls *t, const uint8_t *data, size_t len)
{
	BIO_write(t->rbio, data, (int)len); /* a memory BIO takes everything */
}

static int t_tls_handshake(struct native_tls *t, const char **why_r)
{
	int r = SSL_do_handshake(t->ssl);

	if (r == 1) {
		t->handshake_done = 1;
		return 1;
	}
	r = SSL_get_error(t->ssl, r);
	if (r == SSL_ERROR_WANT_READ || r == SSL_ERROR_WANT_WRITE)
		return 0;
	*why_r = t_tls_reason(t);
	return -1;
}

static int t_tls_alpn_h2(const struct native_tls *t)
{
	const unsigned char *alpn = NULL;
	unsigned len = 0;

	SSL_get0_alpn_selected(t->ssl, &alpn, &len);
	return len == 2 && memcmp(alpn, "h2", 2) == 0;
}

static int t_tls_read(struct native_tls *t, native_plain_cb *deliver, void *ctx, const char **why_r)
{
	uint8_t plain[16384];

	for (;;) {
		int n = SSL_read(t->ssl, plain, sizeof(plain));

		if (n > 0) {
			if (deliver(ctx, plain, (size_t)n) < 0)
				return 1;
			continue;
		}
		n = SSL_get_error(t->ssl, n);
		if (n == SSL_ERROR_WANT_READ || n == SSL_ERROR_WANT_WRITE)
			return 0;
		*why_r = n == SSL_ERROR_ZERO_RETURN ? "the peer closed the TLS session"
						    : t_tls_reason(t);
		return -1;
	}
}

/* ---- TLS contexts ------------------------------------------------------------------------ */

/* "what: reason" of a common-code failure, which is replaced (both malloc'ed). */
static char *prefixed(const char *what, char *reason)
{
	char *s = ep_strdup_printf("%s: %s", what, reason);

	free(reason);
	return s;
}

/* Trust every certificate of a PEM bundle (instead of the system's CAs). */
static int trust_bundle(SSL_CTX *ctx, const char *what, const char *path, int client_ca_list,
			char **error_r)
{
	STACK_OF(X509) *cas = NULL;
	X509_STORE *store = SSL_CTX_get_cert_store(ctx);
	int r = ep_pem_load_certs(path, &cas, error_r);

	if (r < 0) {
		*error_r = prefixed(what, *error_r);
		return r;
	}
	for (int i = 0; i < sk_X509_num(cas); i++) {
		X509 *x = sk_X509_value(cas, i);

		X509_STORE_add_cert(store, x); /* a duplicate is fine */
		/* the CA names a client is told to choose its certificate by */
		if (client_ca_list)
			SSL_CTX_add_client_CA(ctx, x);
	}
	ERR_clear_error();
	sk_X509_pop_free(cas, X509_free);
	return 0;
}

/*
 * The certificate chain (leaf first) and its key: both readable PEM, the key
 * the leaf's, the leaf valid now.  Read once and used as read, so what is
 * checked is what is served.
 */
static int use_pair(SSL_CTX *ctx, const char *cert_what, const char *cert_file,
		    const char *key_what, const char *key_file, char **error_r)
{
	STACK_OF(X509) *chain = NULL, *rest = NULL;
	EVP_PKEY *key = NULL;
	X509 *leaf;
	char *cw = ep_strdup_printf("%s %s", cert_what, cert_file);
	char *kw = ep_strdup_printf("%s %s", key_what, key_file);
	int r;

	r = ep_pem_load_certs(cert_file, &chain, error_r);
	if (r < 0) {
		*error_r = prefixed(cert_what, *error_r);
		goto out;
	}
	r = ep_pem_load_key(key_file, &key, error_r);
	if (r < 0) {
		*error_r = prefixed(key_what, *error_r);
		goto out;
	}
	leaf = sk_X509_value(chain, 0);
	r = ep_tls_check_pair(leaf, key, cw, kw, error_r);
	if (r < 0)
		goto out;
	/* X509_cmp_current_time: -1 before now, 1 after now, 0 unreadable */
	if (X509_cmp_current_time(X509_get0_notBefore(leaf)) >= 0) {
		char when[32];

		ep_time_format(ep_x509_not_before(leaf), when, sizeof(when));
		*error_r = ep_strdup_printf("%s: the certificate is not valid yet (not before %s)", cw,
				   when);
		r = -EINVAL;
		goto out;
	}
	if (X509_cmp_current_time(X509_get0_notAfter(leaf)) <= 0) {
		char when[32];

		ep_time_format(ep_x509_not_after(leaf), when, sizeof(when));
		*error_r = ep_strdup_printf("%s: the certificate expired on %s", cw, when);
		r = -EINVAL;
		goto out;
	}
	rest = sk_X509_new_null();
	for (int i = 1; i < sk_X509_num(chain); i++)
		sk_X509_push(rest, sk_X509_value(chain, i));
	if (SSL_CTX_use_cert_and_key(ctx, leaf, key, rest, 1) != 1) {
		*error_r = ep_strdup_printf("%s: OpenSSL refuses it: %s", cw, openssl_reason());
		r = -EINVAL;
	}
out:
	ERR_clear_error();
	sk_X509_free(rest); /* the certificates belong to chain */
	sk_X509_pop_free(chain, X509_free);
	EVP_PKEY_free(key);
	free(cw);
	free(kw);
	return r;
}

/* ALPN list of the client's hello: 1 when "h2" is in it. */
static int alpn_list_has_h2(const unsigned char *p, size_t len)
{
	while (len > 0) {
		size_t l = p[0];

		if (l + 1 > len)
			return 0;
		if (l == 2 && memcmp(p + 1, "h2", 2) == 0)
			return 1;
		p += l + 1;
		len -= l + 1;
	}
	return 0;
}

/* A client without ALPN h2 is refused before any work on certificates, with the reason. */
static int on_client_hello(SSL *ssl, int *alert, void *arg)
{
	struct native_tls *t = SSL_get_app_data(ssl);
	const unsigned char *ext;
	size_t len;

	if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_application_layer_protocol_negotiation, &ext,
				      &len) != 1) {
		t->refusal = "the client did not offer ALPN h2 (no ALPN at all): gRPC needs HTTP/2";
	} else if (len < 2 || (size_t)(ext[0] << 8 | ext[1]) != len - 2 ||
		   !alpn_list_has_h2(ext + 2, len - 2)) {
		t->refusal = "the client did not offer ALPN h2 (only other protocols): gRPC needs "
			     "HTTP/2";
	} else {
		return SSL_CLIENT_HELLO_SUCCESS;
	}
	*alert = SSL_AD_NO_APPLICATION_PROTOCOL;
	return SSL_CLIENT_HELLO_ERROR;
}

static int on_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
			  const unsigned char *in, unsigned inlen, void *arg)
{
	static const unsigned char h2[] = { 'h', '2' };

	if (!alpn_list_has_h2(in, inlen))
		return SSL_TLSEXT_ERR_ALERT_FATAL;
	*out = h2;
	*outlen = 2;
	return SSL_TLSEXT_ERR_OK;
}

static SSL_CTX *t_server_ctx(const struct ep_tls_material *m, char **error_r)
{
	static const unsigned char sid_ctx[] = "etcdproxy-native";
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

	if (ctx == NULL) {
		*error_r = ep_strdup_printf("cannot create a TLS context: %s",
				   openssl_reason());
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
	/* resumed sessions are verified sessions; a new context has new ticket keys */
	SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
	SSL_CTX_set_client_hello_cb(ctx, on_client_hello, NULL);
	SSL_CTX_set_alpn_select_cb(ctx, on_alpn_select, NULL);
	if (use_pair(ctx, "certFile", m->cert_file, "keyFile", m->key_file, error_r) < 0 ||
	    trust_bundle(ctx, "clientCAFile", m->client_ca_file, 1, error_r) < 0) {
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

static SSL_CTX *t_client_ctx(const struct ep_core_etcd *core, char **error_r)
{
	static const unsigned char alpn[] = { 2, 'h', '2' };
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

	if (ctx == NULL) {
		*error_r = ep_strdup_printf("cannot create a TLS context: %s",
				   openssl_reason());
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn));
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	if (core->ca_file != NULL) {
		if (trust_bundle(ctx, "core_etcd.ca_file", core->ca_file, 0, error_r) < 0)
			goto fail;
	} else {
		SSL_CTX_set_default_verify_paths(ctx);
	}
	if ((core->cert_file != NULL) != (core->key_file != NULL)) {
		*error_r = ep_strdup_printf("core_etcd: cert_file and key_file go together (%s is missing)",
				   core->cert_file == NULL ? "cert_file" : "key_file");
		goto fail;
	}
	if (core->cert_file != NULL && use_pair(ctx, "core_etcd.cert_file", core->cert_file,
						"core_etcd.key_file", core->key_file, error_r) < 0)
		goto fail;
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

static void t_ctx_free(SSL_CTX *ctx)
{
	SSL_CTX_free(ctx);
}

/* Towards the core etcd: an IP in its SANs, or the host name (and SNI). */
static void t_tls_set_peer(struct native_tls *t, const char *host)
{
	unsigned char tmp[16];

	if (inet_pton(AF_INET, host, tmp) == 1 || inet_pton(AF_INET6, host, tmp) == 1) {
		X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), host);
	} else {
		SSL_set_tlsext_host_name(t->ssl, host);
		SSL_set1_host(t->ssl, host);
	}
}

/* memory BIOs: SSL_write takes everything at once, the records wait in wbio */
static int t_tls_encrypt(struct native_tls *t, const uint8_t *data, size_t len, const char **why_r)
{
	if (SSL_write(t->ssl, data, (int)len) != (int)len) {
		*why_r = t_tls_reason(t);
		return -EPROTO;
	}
	return 0;
}

static size_t t_tls_output(struct native_tls *t, const uint8_t **data_r)
{
	char *data;
	long have = BIO_get_mem_data(t->wbio, &data);

	*data_r = (const uint8_t *)data;
	return have > 0 ? (size_t)have : 0;
}

static void t_tls_output_done(struct native_tls *t)
{
	(void)BIO_reset(t->wbio); /* a read-write memory BIO: emptied */
}

static int t_tls_peer(const struct native_tls *t, char **subject_r, char **serial_r)
{
	X509 *cert = t->ssl != NULL ? SSL_get0_peer_certificate(t->ssl) : NULL;

	if (cert == NULL)
		return -1;
	*subject_r = ep_x509_subject(cert);
	*serial_r = ep_x509_serial_hex(cert);
	return 0;
}

__attribute__((visibility("default"))) const struct native_tls_ops ep_native_tls_ops = {
	.abi = NATIVE_TLS_ABI,
	.server_ctx = t_server_ctx,
	.client_ctx = t_client_ctx,
	.ctx_free = t_ctx_free,
	.start = t_tls_start,
	.set_peer = t_tls_set_peer,
	.free = t_tls_free,
	.feed = t_tls_feed,
	.handshake = t_tls_handshake,
	.alpn_h2 = t_tls_alpn_h2,
	.read = t_tls_read,
	.encrypt = t_tls_encrypt,
	.output = t_tls_output,
	.output_done = t_tls_output_done,
	.reason = t_tls_reason,
	.peer = t_tls_peer,
};
