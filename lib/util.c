#include "build-config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <sys/socket.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>
#include "util.h"

static void __attribute__((noreturn)) out_of_memory(size_t size)
{
	fprintf(stderr, "etcdproxy: out of memory allocating %zu bytes\n", size);
	abort();
}

char *ep_strdup_vprintf(const char *fmt, va_list ap)
{
	va_list ap2;
	char *s;
	int n;

	va_copy(ap2, ap);
	n = vsnprintf(NULL, 0, fmt, ap2);
	va_end(ap2);
	if (n < 0) {
		/* only an invalid format or conversion gets here: a programming error */
		fprintf(stderr, "etcdproxy: vsnprintf(\"%s\") failed\n", fmt);
		abort();
	}
	s = ep_realloc(NULL, (size_t)n + 1);
	vsnprintf(s, (size_t)n + 1, fmt, ap);
	return s;
}

char *ep_strdup_printf(const char *fmt, ...)
{
	va_list ap;
	char *s;

	va_start(ap, fmt);
	s = ep_strdup_vprintf(fmt, ap);
	va_end(ap);
	return s;
}

char *ep_strdup(const char *s)
{
	size_t n;
	char *d;

	if (s == NULL)
		return NULL;
	n = strlen(s) + 1;
	d = ep_realloc(NULL, n);
	memcpy(d, s, n);
	return d;
}

void *ep_malloc0(size_t size)
{
	/* calloc(0) may return NULL, which would look like out-of-memory */
	void *p = calloc(1, size == 0 ? 1 : size);

	if (p == NULL)
		out_of_memory(size);
	return p;
}

void *ep_realloc(void *p, size_t size)
{
	void *q = realloc(p, size == 0 ? 1 : size);

	if (q == NULL)
		out_of_memory(size);
	return q;
}

/*
 * Durations follow Go's time.ParseDuration, so that values written for the
 * original Go controller mean the same here, including its limit of
 * 2^63-1 nanoseconds.
 */
#define NS_MAX ((uint64_t)INT64_MAX)

static const struct {
	const char *name;
	uint64_t ns;
} duration_units[] = {
	{ "ns", 1 },
	{ "us", 1000 },
	{ "\xc2\xb5s", 1000 }, /* U+00B5 micro sign */
	{ "\xce\xbcs", 1000 }, /* U+03BC Greek small mu */
	{ "ms", 1000000 },
	{ "s", 1000000000ull },
	{ "m", 60ull * 1000000000 },
	{ "h", 3600ull * 1000000000 },
};

static int is_digit(char c)
{
	return c >= '0' && c <= '9';
}

int ep_parse_duration_ms(const char *text, uint64_t *ms_r)
{
	const char *s = text;
	uint64_t total = 0;

	if (s == NULL || *s == '\0')
		return -EINVAL;
	if (strcmp(s, "0") == 0) {
		*ms_r = 0;
		return 0;
	}
	while (*s != '\0') {
		uint64_t v = 0, frac = 0, unit = 0;
		double scale = 1;
		int pre = 0, post = 0, overflowed = 0;
		const char *u;
		size_t ulen, i;

		for (; is_digit(*s); s++) {
			if (v > (NS_MAX - (uint64_t)(*s - '0')) / 10)
				return -EINVAL;
			v = v * 10 + (uint64_t)(*s - '0');
			pre = 1;
		}
		if (*s == '.') {
			/* digits past what a uint64_t holds cannot matter at nanosecond precision */
			for (s++; is_digit(*s); s++) {
				post = 1;
				if (overflowed || frac > (NS_MAX - 9) / 10) {
					overflowed = 1;
					continue;
				}
				frac = frac * 10 + (uint64_t)(*s - '0');
				scale *= 10;
			}
		}
		if (!pre && !post)
			return -EINVAL;
		u = s;
		while (*s != '\0' && *s != '.' && !is_digit(*s))
			s++;
		ulen = (size_t)(s - u);
		for (i = 0; i < sizeof(duration_units) / sizeof(duration_units[0]); i++) {
			if (strlen(duration_units[i].name) == ulen &&
			    memcmp(duration_units[i].name, u, ulen) == 0) {
				unit = duration_units[i].ns;
				break;
			}
		}
		if (unit == 0)
			return -EINVAL;
		if (v > NS_MAX / unit)
			return -EINVAL;
		v *= unit;
		if (frac > 0) {
			v += (uint64_t)((double)frac * ((double)unit / scale));
			if (v > NS_MAX)
				return -EINVAL;
		}
		if (v > NS_MAX - total)
			return -EINVAL;
		total += v;
	}
	/* a duration above zero never becomes 0, which often means "never" or "off" */
	*ms_r = total > 0 && total < 1000000 ? 1 : total / 1000000;
	return 0;
}

void ep_format_duration_ms(uint64_t ms, char *buf, size_t size)
{
	uint64_t sec = ms / 1000, frac = ms % 1000;
	uint64_t h = sec / 3600, m = sec / 60 % 60, s = sec % 60;
	char fracbuf[8] = "";
	size_t n = 0;
	int r;

	if (size == 0)
		return;
	if (ms < 1000) {
		/* Go writes "0s" for zero and "250ms" below a second */
		if (ms == 0)
			snprintf(buf, size, "0s");
		else
			snprintf(buf, size, "%llums", (unsigned long long)ms);
		return;
	}
	if (frac != 0) {
		snprintf(fracbuf, sizeof(fracbuf), ".%03llu", (unsigned long long)frac);
		n = strlen(fracbuf);
		while (fracbuf[n - 1] == '0')
			fracbuf[--n] = '\0';
	}
	buf[0] = '\0';
	n = 0;
	if (h > 0) {
		r = snprintf(buf, size, "%lluh", (unsigned long long)h);
		n = r < 0 ? 0 : (size_t)r;
	}
	if ((h > 0 || m > 0) && n < size) {
		r = snprintf(buf + n, size - n, "%llum", (unsigned long long)m);
		n += r < 0 ? 0 : (size_t)r;
	}
	if (n < size)
		snprintf(buf + n, size - n, "%llu%ss", (unsigned long long)s, fracbuf);
}

int ep_mkdir_p(const char *path, unsigned mode)
{
	struct stat st;
	char *copy, *p;
	int r = 0;

	if (path == NULL || *path == '\0')
		return -EINVAL;
	copy = ep_strdup(path);
	/* each prefix ending before a '/', then the whole path */
	for (p = copy + 1;; p++) {
		int last = *p == '\0';

		if (*p != '/' && !last)
			continue;
		if (p[-1] != '/') {
			*p = '\0';
			if (mkdir(copy, (mode_t)mode) < 0) {
				if (errno != EEXIST) {
					r = -errno;
					break;
				}
				if (stat(copy, &st) < 0) {
					r = -errno;
					break;
				}
				if (!S_ISDIR(st.st_mode)) {
					r = -ENOTDIR;
					break;
				}
			}
			if (!last)
				*p = '/';
		}
		if (last)
			break;
	}
	free(copy);
	return r;
}

char *ep_ca_grace_check(uint64_t grace_ms, uint64_t signing_validity_ms, double ca_renew_fraction)
{
	if ((double)grace_ms <= (double)signing_validity_ms * (1.0 - ca_renew_fraction) / 2)
		return NULL;
	return ep_strdup_printf("certs.ca.grace (%llu ms) is too long for a "
				"signingCertificateValidity of %llu ms: a new CA must sign for a while "
				"before the old one expires (at most half of the CA's last %d%%)",
				(unsigned long long)grace_ms, (unsigned long long)signing_validity_ms,
				(int)((1.0 - ca_renew_fraction) * 100 + 0.5));
}

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *ep_base64_encode(const void *data, size_t len)
{
	const unsigned char *p = data;
	char *out = ep_malloc0((len + 2) / 3 * 4 + 1), *o = out;

	for (size_t i = 0; i < len; i += 3) {
		unsigned v = (unsigned)p[i] << 16 | (i + 1 < len ? (unsigned)p[i + 1] << 8 : 0) |
			     (i + 2 < len ? p[i + 2] : 0);

		*o++ = b64[v >> 18 & 63];
		*o++ = b64[v >> 12 & 63];
		*o++ = i + 1 < len ? b64[v >> 6 & 63] : '=';
		*o++ = i + 2 < len ? b64[v & 63] : '=';
	}
	*o = '\0';
	return out;
}

int ep_base64_decode(const char *text, char **data_r, size_t *len_r)
{
	char *out = ep_malloc0(strlen(text) / 4 * 3 + 4);
	size_t n = 0;
	unsigned v = 0, bits = 0, pad = 0;

	for (const char *p = text; *p; p++) {
		const char *k;

		if (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')
			continue;
		if (*p == '=') {
			pad++;
			continue;
		}
		if (pad > 0 || (k = strchr(b64, *p)) == NULL || *p == '\0')
			goto bad;
		v = v << 6 | (unsigned)(k - b64);
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[n++] = (char)(v >> bits & 0xff);
		}
	}
	if (pad > 2 || bits >= 6 || (v & ((1u << bits) - 1)) != 0)
		goto bad;
	out[n] = '\0';
	*data_r = out;
	*len_r = n;
	return 0;
bad:
	free(out);
	return -EINVAL;
}

uint64_t ep_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void ep_time_format(int64_t t, char *buf, size_t size)
{
	time_t tt = (time_t)t;
	struct tm tm;

	gmtime_r(&tt, &tm);
	strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int ep_listen_parse(const char *listen, struct ep_listen_addr *a, const char **why_r)
{
	const char *colon, *host = listen;
	size_t hlen;
	char *end;
	long port;
	int bracketed = 0;

	memset(a, 0, sizeof(*a));
	if (strncmp(listen, "unix:", 5) == 0) {
		struct sockaddr_un *sun = (struct sockaddr_un *)&a->sa;

		a->path = listen + 5;
		if (a->path[0] != '/') {
			*why_r = "a Unix socket needs an absolute path: \"unix:/run/etcdproxy/a.sock\"";
			return -EINVAL;
		}
		if (strlen(a->path) >= sizeof(sun->sun_path)) {
			*why_r = "the Unix socket path is longer than 107 bytes";
			return -EINVAL;
		}
		a->family = AF_UNIX;
		sun->sun_family = AF_UNIX;
		memcpy(sun->sun_path, a->path, strlen(a->path) + 1);
		a->sa_len = sizeof(*sun);
		return 0;
	}
	colon = strrchr(listen, ':');
	if (colon == NULL || colon == listen) {
		*why_r = "expected HOST:PORT (\"127.0.0.1:23790\", \"[::1]:23790\") or unix:PATH";
		return -EINVAL;
	}
	errno = 0;
	port = strtol(colon + 1, &end, 10);
	if (colon[1] < '0' || colon[1] > '9' || *end != '\0' || errno != 0 || port < 1 ||
	    port > 65535) {
		*why_r = "the port must be a number from 1 to 65535";
		return -EINVAL;
	}
	hlen = (size_t)(colon - listen);
	if (listen[0] == '[') {
		if (hlen < 3 || listen[hlen - 1] != ']') {
			*why_r = "an IPv6 address goes in brackets: \"[::1]:23790\"";
			return -EINVAL;
		}
		host++;
		hlen -= 2;
		bracketed = 1;
	}
	if (hlen >= sizeof(a->host)) {
		*why_r = "the host is too long";
		return -EINVAL;
	}
	memcpy(a->host, host, hlen);
	a->host[hlen] = '\0';
	a->port = (int)port;

	struct sockaddr_in *s4 = (struct sockaddr_in *)&a->sa;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&a->sa;

	if (!bracketed && (inet_pton(AF_INET, a->host, &s4->sin_addr) == 1 ||
			   strcmp(a->host, "localhost") == 0)) {
		if (strcmp(a->host, "localhost") == 0) /* one address, the one every client tries */
			s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		a->family = s4->sin_family = AF_INET;
		s4->sin_port = htons((uint16_t)port);
		a->sa_len = sizeof(*s4);
		return 0;
	}
	if (inet_pton(AF_INET6, a->host, &s6->sin6_addr) == 1) {
		/* "::1:2379" is itself an IPv6 address: without brackets the port is a guess */
		if (!bracketed) {
			*why_r = "an IPv6 address goes in brackets: \"[::1]:23790\"";
			return -EINVAL;
		}
		a->family = s6->sin6_family = AF_INET6;
		s6->sin6_port = htons((uint16_t)port);
		a->sa_len = sizeof(*s6);
		return 0;
	}
	memset(&a->sa, 0, sizeof(a->sa));
	*why_r = bracketed		     ? "only an IPv6 address goes in brackets: \"[::1]:23790\""
		 : strchr(a->host, ':') != NULL ? "an IPv6 address goes in brackets: \"[::1]:23790\""
						: "the host must be an IP address or \"localhost\"";
	return -EINVAL;
}

int ep_listen_is_local(const struct ep_listen_addr *a)
{
	const struct sockaddr_in *s4 = (const struct sockaddr_in *)&a->sa;
	const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&a->sa;

	if (a->family == AF_UNIX)
		return 1;
	if (a->family == AF_INET)
		return (ntohl(s4->sin_addr.s_addr) >> 24) == 127;
	return a->family == AF_INET6 && IN6_IS_ADDR_LOOPBACK(&s6->sin6_addr);
}

int ep_listen_unix_prepare(const char *path, char **error_r)
{
	struct stat st;

	if (lstat(path, &st) < 0)
		return 0;
	/* a socket left by a killed daemon or worker; anything else at that path is not ours */
	if (!S_ISSOCK(st.st_mode)) {
		*error_r = ep_strdup_printf("cannot listen on unix:%s: the path exists and is not a "
					    "socket; remove it or choose another", path);
		return -EEXIST;
	}
	unlink(path);
	return 0;
}

int ep_listen_bind(const char *addr, int *fd_r, char **error_r)
{
	struct ep_listen_addr a;
	const char *why;
	int fd = -1, one = 1, err;

	if (ep_listen_parse(addr, &a, &why) < 0) {
		*error_r = ep_strdup_printf("cannot listen on %s: %s", addr, why);
		return -EINVAL;
	}
	if (a.family == AF_UNIX && (err = ep_listen_unix_prepare(a.path, error_r)) < 0)
		return err;
	fd = socket(a.family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		goto fail;
	if (a.family != AF_UNIX)
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&a.sa, a.sa_len) < 0 || listen(fd, 511) < 0)
		goto fail;
	*fd_r = fd;
	return 0;
fail:
	err = errno;
	if (fd >= 0)
		close(fd);
	*error_r = ep_strdup_printf("cannot listen on %s: %s", addr, strerror(err));
	return -err;
}

char *ep_path_resolve(const char *path)
{
	char *buf = ep_strdup(path), *real = NULL, *out, *comp, *save = NULL;
	size_t cut = strlen(buf), olen;

	/* the longest part that exists, with its symbolic links resolved */
	while (real == NULL) {
		char keep = buf[cut];

		buf[cut] = '\0';
		real = realpath(cut == 0 ? "/" : buf, NULL);
		buf[cut] = keep;
		if (real != NULL || cut == 0)
			break;
		while (cut > 0 && buf[cut - 1] != '/')
			cut--;
		while (cut > 0 && buf[cut - 1] == '/')
			cut--;
	}
	if (real == NULL)
		real = ep_strdup("/");
	olen = strlen(real);
	out = ep_malloc0(olen + strlen(buf + cut) + 2);
	memcpy(out, real, olen);
	free(real);
	/* the rest, which does not exist (yet): "." and ".." taken out by the letter */
	for (comp = strtok_r(buf + cut, "/", &save); comp != NULL; comp = strtok_r(NULL, "/", &save)) {
		if (strcmp(comp, ".") == 0)
			continue;
		if (strcmp(comp, "..") == 0) {
			char *slash = strrchr(out, '/');

			if (slash != NULL)
				*(slash == out ? slash + 1 : slash) = '\0';
			olen = strlen(out);
			continue;
		}
		if (olen > 1 || out[0] != '/')
			out[olen++] = '/';
		strcpy(out + olen, comp);
		olen += strlen(comp);
	}
	free(buf);
	return out;
}
