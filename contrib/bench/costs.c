/*
 * What the kernel charges a process on this machine for the three things a
 * proxy does for every batch of requests, so that a proxy's CPU per request
 * can be read against the machine it was measured on (a virtual machine may
 * charge several times what bare metal does for a wake-up):
 *
 *   wake_us   one sleep in epoll_wait and the wake-up by a peer's write, on
 *             top of the write, epoll_wait and read themselves; measured
 *             with the machine otherwise idle, so the waking CPU may have to
 *             leave its idle state first
 *   write_us  one write(2) of 256 bytes to a loopback TCP connection
 *             (TCP_NODELAY), including the receive path the kernel runs in
 *             the writer's context on loopback
 *   read_us   one read(2) of 256 bytes from such a connection
 *
 *   ep-bench-costs [ROUNDS]     prints one JSON object
 *
 * CPU is the process's own (getrusage: the same sum the kernel reports in
 * /proc/PID/stat) where it sleeps, wall time where it never does.  Built and
 * run by bench.py; a plain program, not a libuv one.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHUNK 256
#define BURST 16 /* writes queued before they are read back */

static void die(const char *what)
{
	fprintf(stderr, "ep-bench-costs: %s: %s\n", what, strerror(errno));
	exit(1);
}

static double cpu_s(void)
{
	struct rusage r;

	if (getrusage(RUSAGE_SELF, &r) != 0)
		die("getrusage");
	return (double)(r.ru_utime.tv_sec + r.ru_stime.tv_sec) +
	       (double)(r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6;
}

static double wall_s(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void put(int fd, const void *b, size_t n)
{
	if (write(fd, b, n) != (ssize_t)n)
		die("write");
}

static void get(int fd, void *b, size_t n)
{
	size_t got = 0;

	while (got < n) {
		ssize_t r = read(fd, (char *)b + got, n - got);
		if (r <= 0)
			die("read");
		got += (size_t)r;
	}
}

static void wait_in(int ep)
{
	struct epoll_event ev;

	while (epoll_wait(ep, &ev, 1, -1) != 1)
		if (errno != EINTR)
			die("epoll_wait");
}

static int watch(int ep, int fd)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };

	if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0)
		die("epoll_ctl");
	return fd;
}

/*
 * A ping-pong with another process over a socketpair: each round trip this
 * side writes a byte, sleeps until the answer, reads it.  Then the same
 * calls without the sleep (the byte is already there), and the difference.
 */
static double wake_us(long rounds)
{
	int sv[2], loop[2], ep = epoll_create1(0);
	char b = 0;
	pid_t pid;

	if (ep < 0 || socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0 ||
	    socketpair(AF_UNIX, SOCK_STREAM, 0, loop) != 0)
		die("socketpair");
	pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		for (long i = 0; i < rounds; i++) {
			get(sv[1], &b, 1);
			put(sv[1], &b, 1);
		}
		_exit(0);
	}
	close(sv[1]);
	watch(ep, sv[0]);
	double c0 = cpu_s();
	for (long i = 0; i < rounds; i++) {
		put(sv[0], &b, 1);
		wait_in(ep);
		get(sv[0], &b, 1);
	}
	double slept = cpu_s() - c0;
	if (waitpid(pid, NULL, 0) != pid)
		die("waitpid");
	close(sv[0]);

	int ep2 = epoll_create1(0);

	if (ep2 < 0)
		die("epoll_create1");
	watch(ep2, loop[0]);
	c0 = cpu_s();
	for (long i = 0; i < rounds; i++) {
		put(loop[1], &b, 1);
		wait_in(ep2);
		get(loop[0], &b, 1);
	}
	double awake = cpu_s() - c0;
	close(loop[0]);
	close(loop[1]);
	close(ep);
	close(ep2);
	return (slept - awake) * 1e6 / (double)rounds;
}

/* One loopback TCP connection; BURST writes of CHUNK bytes, then BURST reads. */
static void tcp_us(long rounds, double *write_r, double *read_r)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t alen = sizeof a;
	int l = socket(AF_INET, SOCK_STREAM, 0), c = socket(AF_INET, SOCK_STREAM, 0), s, one = 1;
	char b[CHUNK];
	double tw = 0, tr = 0;

	memset(b, 'x', sizeof b);
	if (l < 0 || c < 0 || bind(l, (struct sockaddr *)&a, sizeof a) != 0 ||
	    getsockname(l, (struct sockaddr *)&a, &alen) != 0 || listen(l, 1) != 0 ||
	    connect(c, (struct sockaddr *)&a, sizeof a) != 0)
		die("loopback connection");
	s = accept(l, NULL, NULL);
	if (s < 0 || setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0)
		die("accept");
	for (long i = 0; i < rounds / BURST; i++) {
		double t0 = wall_s();
		for (int k = 0; k < BURST; k++)
			put(c, b, sizeof b);
		double t1 = wall_s();
		for (int k = 0; k < BURST; k++)
			get(s, b, sizeof b);
		tw += t1 - t0;
		tr += wall_s() - t1;
	}
	close(c);
	close(s);
	close(l);
	*write_r = tw * 1e6 / (double)(rounds / BURST * BURST);
	*read_r = tr * 1e6 / (double)(rounds / BURST * BURST);
}

int main(int argc, char **argv)
{
	long rounds = argc > 1 ? strtol(argv[1], NULL, 10) : 50000;
	double w, r, wake;

	if (argc > 2 || rounds < BURST) {
		fprintf(stderr, "usage: ep-bench-costs [ROUNDS >= %d]\n", BURST);
		return 2;
	}
	wake = wake_us(rounds);
	tcp_us(rounds, &w, &r);
	printf("{\"rounds\": %ld, \"wake_us\": %.2f, \"write_us\": %.2f, \"read_us\": %.2f}\n",
	       rounds, wake, w, r);
	return 0;
}
