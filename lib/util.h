/* Small helpers shared by the programs: strings, durations, files. */
#ifndef EP_UTIL_H
#define EP_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* malloc'ed printf; aborts on out-of-memory, like every allocation here. */
char *ep_strdup_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
char *ep_strdup_vprintf(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));
char *ep_strdup(const char *s); /* NULL stays NULL */
void *ep_malloc0(size_t size);
void *ep_realloc(void *p, size_t size);

/*
 * Parse a Go duration ("730h", "1h30m", "250ms", "10s", "1.5h") into
 * milliseconds, rounded down, except that a duration above zero is at
 * least 1 ms.  Units: ns us µs ms s m h; a sign is refused, "0" is allowed.
 * Returns 0 or -EINVAL (also on overflow).
 */
int ep_parse_duration_ms(const char *text, uint64_t *ms_r);

/* Format milliseconds the Go way, "1h2m3.5s", into buf. */
void ep_format_duration_ms(uint64_t ms, char *buf, size_t size);

/* mkdir -p with the given mode for the directories it creates. Returns 0 or -errno. */
int ep_mkdir_p(const char *path, unsigned mode);

/*
 * A listen address taken apart: "IPv4:PORT", "[IPv6]:PORT", "localhost:PORT"
 * (127.0.0.1) or "unix:/absolute/path".  The one parser of listen addresses,
 * for the programs and the plugins alike.
 */
struct ep_listen_addr {
	int family;                 /* AF_INET, AF_INET6 or AF_UNIX */
	char host[64];              /* as written, without brackets; "" for AF_UNIX */
	int port;                   /* 0 for AF_UNIX */
	const char *path;           /* AF_UNIX: points into the listen string */
	struct sockaddr_storage sa; /* the address to bind or connect to */
	socklen_t sa_len;
};

/* Returns 0, or -EINVAL with a static explanation in *why_r. */
int ep_listen_parse(const char *listen, struct ep_listen_addr *a, const char **why_r);

/* 1 for a loopback address (127.0.0.0/8, ::1, localhost) or a Unix socket. */
int ep_listen_is_local(const struct ep_listen_addr *a);

/*
 * Before binding a Unix socket at path: a socket left there by a killed
 * process is removed; anything else there is refused (-EEXIST and *error_r,
 * malloc'ed), never removed.
 */
int ep_listen_unix_prepare(const char *path, char **error_r);

/*
 * Create a listening socket for a listen address (see ep_listen_parse and
 * ep_listen_unix_prepare).  The fd is close-on-exec.  Returns 0 and *fd_r,
 * or a negative errno code and *error_r (malloc'ed), "cannot listen on ...".
 */
int ep_listen_bind(const char *listen, int *fd_r, char **error_r);

/*
 * Where path really is: the part of it that exists with its symbolic links
 * resolved (realpath), the rest with "." and ".." taken out.  Malloc'ed.
 */
char *ep_path_resolve(const char *path);

/* Monotonic milliseconds. */
uint64_t ep_now_ms(void);

/* Base64 (RFC 4648, with padding), as Kubernetes keeps Secret data and kubeconfig *-data. */
char *ep_base64_encode(const void *data, size_t len); /* NUL-terminated, malloc'ed */
/* Whitespace is skipped.  Returns 0 and a malloc'ed, NUL-terminated copy, or -EINVAL. */
int ep_base64_decode(const char *text, char **data_r, size_t *len_r);

/*
 * The "ca" certificate source's rule between its options and a tenant, judged
 * by the plugin when it starts and by the supervisor when it loads the tenant
 * (so that --check-config finds it): a new CA is published `grace` before it
 * signs, and must then sign for a while before the old one expires, so grace
 * is at most half of what is left of the CA's validity after its renewal point.
 * NULL when it fits, else the reason (malloc'ed).
 */
#define EP_CA_GRACE_DEFAULT_MS 600000
#define EP_CA_RENEW_FRACTION_DEFAULT (2.0 / 3.0)
char *ep_ca_grace_check(uint64_t grace_ms, uint64_t signing_validity_ms, double ca_renew_fraction);

/* t (seconds since the epoch) as RFC 3339 UTC, "2026-12-04T03:10:37Z"; size >= 21. */
void ep_time_format(int64_t t, char *buf, size_t size);

#endif /* EP_UTIL_H */
