/* systemd notification without libsystemd: one datagram to $NOTIFY_SOCKET. */
#ifndef EP_SDNOTIFY_H
#define EP_SDNOTIFY_H

#include <stdint.h>

/*
 * Send "READY=1", "STATUS=...", ... to $NOTIFY_SOCKET (path or abstract
 * "@name").  Returns 1 when sent, 0 when not running under systemd, or
 * -errno.
 */
int ep_sd_notify(const char *state);
int ep_sd_notifyf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The same with a file descriptor attached (SCM_RIGHTS), for "FDSTORE=1". */
int ep_sd_notify_fd(const char *state, int fd);

/* A socket systemd passed at start ($LISTEN_FDS, $LISTEN_FDNAMES). */
struct ep_sd_fd {
	int fd;
	char *name; /* "unknown" when systemd gave none */
};

/*
 * The sockets systemd passed to this process (fds 3, 4, ... when $LISTEN_PID
 * is ours), made close-on-exec; the variables are removed from the
 * environment.  Returns how many, with a malloc'ed array in *fds_r.
 */
size_t ep_sd_listen_fds(struct ep_sd_fd **fds_r);

/*
 * The watchdog interval in microseconds when systemd wants keep-alives for
 * this process ($WATCHDOG_USEC, and $WATCHDOG_PID if set names us), else 0.
 */
uint64_t ep_sd_watchdog_usec(void);

#endif /* EP_SDNOTIFY_H */
