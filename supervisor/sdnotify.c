#include "build-config.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "sdnotify.h"

/* The notify socket's address: 1 and *sa, *salen; 0 when not under systemd; -EINVAL. */
static int notify_address(struct sockaddr_un *sa, socklen_t *salen)
{
	const char *path = getenv("NOTIFY_SOCKET");
	size_t plen;

	if (path == NULL || path[0] == '\0')
		return 0;
	plen = strlen(path);
	if ((path[0] != '/' && path[0] != '@') || plen >= sizeof(sa->sun_path))
		return -EINVAL;
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	memcpy(sa->sun_path, path, plen);
	if (path[0] == '@')
		sa->sun_path[0] = '\0'; /* abstract namespace */
	*salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen + (path[0] == '/'));
	return 1;
}

int ep_sd_notify_fd(const char *state, int fd)
{
	struct sockaddr_un sa;
	socklen_t salen;
	struct iovec iov = { (void *)state, strlen(state) };
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int))];
	} ctl;
	struct msghdr msg = { 0 };
	struct cmsghdr *c;
	int s, r = notify_address(&sa, &salen);

	if (r <= 0)
		return r;
	memset(&ctl, 0, sizeof(ctl));
	msg.msg_name = &sa;
	msg.msg_namelen = salen;
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	msg.msg_control = ctl.buf;
	msg.msg_controllen = sizeof(ctl.buf);
	c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -errno;
	r = sendmsg(s, &msg, MSG_NOSIGNAL) < 0 ? -errno : 1;
	close(s);
	return r;
}

size_t ep_sd_listen_fds(struct ep_sd_fd **fds_r)
{
	const char *pid = getenv("LISTEN_PID"), *count = getenv("LISTEN_FDS");
	const char *names = getenv("LISTEN_FDNAMES");
	struct ep_sd_fd *fds;
	long n;

	*fds_r = NULL;
	if (pid == NULL || count == NULL || strtol(pid, NULL, 10) != (long)getpid()) {
		unsetenv("LISTEN_PID");
		unsetenv("LISTEN_FDS");
		unsetenv("LISTEN_FDNAMES");
		return 0;
	}
	n = strtol(count, NULL, 10);
	if (n <= 0 || n > 65536) {
		unsetenv("LISTEN_PID");
		unsetenv("LISTEN_FDS");
		unsetenv("LISTEN_FDNAMES");
		return 0;
	}
	fds = calloc((size_t)n, sizeof(*fds));
	if (fds == NULL)
		abort();
	for (long i = 0; i < n; i++) {
		const char *colon = names != NULL ? strchr(names, ':') : NULL;
		size_t len = names == NULL ? 0 : colon != NULL ? (size_t)(colon - names) : strlen(names);

		fds[i].fd = 3 + (int)i;
		fcntl(fds[i].fd, F_SETFD, FD_CLOEXEC);
		fds[i].name = strndup(names != NULL && len > 0 ? names : "unknown",
				      names != NULL && len > 0 ? len : 7);
		if (fds[i].name == NULL)
			abort();
		names = colon != NULL ? colon + 1 : NULL;
	}
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_FDNAMES");
	*fds_r = fds;
	return (size_t)n;
}

int ep_sd_notify(const char *state)
{
	struct sockaddr_un sa;
	socklen_t salen;
	int fd, r = notify_address(&sa, &salen);

	if (r <= 0)
		return r;
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa, salen) < 0)
		r = -errno;
	close(fd);
	return r;
}

int ep_sd_notifyf(const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	return ep_sd_notify(buf);
}

uint64_t ep_sd_watchdog_usec(void)
{
	const char *usec = getenv("WATCHDOG_USEC");
	const char *pid = getenv("WATCHDOG_PID");

	if (usec == NULL)
		return 0;
	if (pid != NULL && strtol(pid, NULL, 10) != (long)getpid())
		return 0;
	return strtoull(usec, NULL, 10);
}
