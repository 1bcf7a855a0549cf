#include "build-config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "backoff.h"
#include "sdnotify.h"
#include "util.h"

#define UNUSED __attribute__((unused))

/* ---- backoff ----------------------------------------------------------------- */

static void test_backoff_init(void **state UNUSED)
{
	struct ep_backoff b;

	memset(&b, 0x5a, sizeof(b));
	ep_backoff_init(&b, 100, 30000, 6);
	assert_int_equal(b.initial_ms, 100);
	assert_int_equal(b.max_ms, 30000);
	assert_int_equal(b.max_failures, 6);
	assert_int_equal(b.failures, 0);
}

static void test_backoff_doubling(void **state UNUSED)
{
	struct ep_backoff b;

	ep_backoff_init(&b, 100, 100000, 8);
	assert_int_equal(ep_backoff_fail(&b), 0); /* the first restart is immediate */
	assert_int_equal(ep_backoff_fail(&b), 100);
	assert_int_equal(b.failures, 2);
	assert_int_equal(ep_backoff_fail(&b), 200);
	assert_int_equal(ep_backoff_fail(&b), 400);
	assert_int_equal(ep_backoff_fail(&b), 800);
	assert_int_equal(ep_backoff_fail(&b), 1600);
	assert_int_equal(b.failures, 6);
}

static void test_backoff_cap(void **state UNUSED)
{
	struct ep_backoff b;

	ep_backoff_init(&b, 100, 1000, 100);
	assert_int_equal(ep_backoff_fail(&b), 0);
	assert_int_equal(ep_backoff_fail(&b), 100);
	assert_int_equal(ep_backoff_fail(&b), 200);
	assert_int_equal(ep_backoff_fail(&b), 400);
	assert_int_equal(ep_backoff_fail(&b), 800);
	assert_int_equal(ep_backoff_fail(&b), 1000);
	assert_int_equal(ep_backoff_fail(&b), 1000);
	/* many failures later the doubling has neither overflowed nor passed the cap */
	for (int i = 0; i < 90; i++)
		assert_int_equal(ep_backoff_fail(&b), 1000);
	assert_int_equal(b.failures, 97);

	/* a cap that is not a power-of-two multiple of the initial delay */
	ep_backoff_init(&b, 300, 1000, 10);
	assert_int_equal(ep_backoff_fail(&b), 0);
	assert_int_equal(ep_backoff_fail(&b), 300);
	assert_int_equal(ep_backoff_fail(&b), 600);
	assert_int_equal(ep_backoff_fail(&b), 1000);
	assert_int_equal(ep_backoff_fail(&b), 1000);

	/* initial == max: always the same delay */
	ep_backoff_init(&b, 500, 500, 10);
	assert_int_equal(ep_backoff_fail(&b), 0);
	assert_int_equal(ep_backoff_fail(&b), 500);
	assert_int_equal(ep_backoff_fail(&b), 500);

	/* a huge cap does not overflow the doubling */
	ep_backoff_init(&b, 1, UINT64_MAX / 2, 80);
	assert_int_equal(ep_backoff_fail(&b), 0);
	for (int i = 0; i < 63; i++)
		assert_int_equal(ep_backoff_fail(&b), (int64_t)(1ull << i));
	assert_int_equal(ep_backoff_fail(&b), (int64_t)(UINT64_MAX / 2));
}

static void test_backoff_give_up(void **state UNUSED)
{
	struct ep_backoff b;

	ep_backoff_init(&b, 100, 30000, 3);
	assert_int_equal(ep_backoff_fail(&b), 0);
	assert_int_equal(ep_backoff_fail(&b), 100);
	/* the third consecutive failure of three allowed: give up */
	assert_int_equal(ep_backoff_fail(&b), -1);
	assert_int_equal(b.failures, 3);
	/* and it stays given up without counting further */
	assert_int_equal(ep_backoff_fail(&b), -1);
	assert_int_equal(b.failures, 3);

	ep_backoff_init(&b, 100, 30000, 1);
	assert_int_equal(ep_backoff_fail(&b), -1);
}

static void test_backoff_reset(void **state UNUSED)
{
	struct ep_backoff b;

	ep_backoff_init(&b, 100, 30000, 3);
	assert_int_equal(ep_backoff_fail(&b), 0);
	assert_int_equal(ep_backoff_fail(&b), 100);
	ep_backoff_reset(&b);
	assert_int_equal(b.failures, 0);
	assert_int_equal(b.initial_ms, 100);
	assert_int_equal(b.max_ms, 30000);
	assert_int_equal(b.max_failures, 3);
	/* an immediate restart again, and the count starts again */
	assert_int_equal(ep_backoff_fail(&b), 0);
	assert_int_equal(ep_backoff_fail(&b), 100);
	assert_int_equal(ep_backoff_fail(&b), -1);

	/* a reset after giving up allows new attempts */
	ep_backoff_reset(&b);
	assert_int_equal(ep_backoff_fail(&b), 0);
}

/* ---- sd_notify ------------------------------------------------------------------ */

struct notify_fixture {
	char *dir;
	char *path;
	int fd;
};

static int notify_setup(void **state)
{
	struct notify_fixture *f = ep_malloc0(sizeof(*f));
	char tmpl[] = "/tmp/ep-test-notify-XXXXXX";

	f->fd = -1;
	*state = f;
	if (mkdtemp(tmpl) == NULL)
		return -1;
	f->dir = ep_strdup(tmpl);
	f->path = ep_strdup_printf("%s/notify", f->dir);
	unsetenv("NOTIFY_SOCKET");
	unsetenv("WATCHDOG_USEC");
	unsetenv("WATCHDOG_PID");
	return 0;
}

static int notify_teardown(void **state)
{
	struct notify_fixture *f = *state;

	if (f->fd >= 0)
		close(f->fd);
	if (f->path != NULL)
		unlink(f->path);
	if (f->dir != NULL)
		rmdir(f->dir);
	free(f->path);
	free(f->dir);
	free(f);
	unsetenv("NOTIFY_SOCKET");
	unsetenv("WATCHDOG_USEC");
	unsetenv("WATCHDOG_PID");
	return 0;
}

/* A bound SOCK_DGRAM socket with a receive timeout, so that a lost datagram fails, not hangs. */
static int bind_dgram(const struct sockaddr_un *sa, socklen_t len)
{
	struct timeval tv = { .tv_sec = 5 };
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	if (bind(fd, (const struct sockaddr *)sa, len) != 0)
		fail_msg("bind: %s", strerror(errno));
	assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
	return fd;
}

static void expect_datagram(int fd, const char *text)
{
	char buf[600];
	ssize_t n = recv(fd, buf, sizeof(buf) - 1, 0);

	if (n < 0) {
		fail_msg("no datagram arrived: %s", strerror(errno));
		return;
	}
	buf[n] = '\0';
	assert_int_equal((size_t)n, strlen(text));
	assert_string_equal(buf, text);
}

static void test_notify_unset(void **state UNUSED)
{
	assert_int_equal(ep_sd_notify("READY=1"), 0);
	assert_int_equal(ep_sd_notifyf("STATUS=%d tenants", 3), 0);
	setenv("NOTIFY_SOCKET", "", 1);
	assert_int_equal(ep_sd_notify("READY=1"), 0);
}

static void test_notify_path(void **state)
{
	struct notify_fixture *f = *state;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	assert_true(strlen(f->path) < sizeof(sa.sun_path));
	strcpy(sa.sun_path, f->path);
	f->fd = bind_dgram(&sa, sizeof(sa));

	setenv("NOTIFY_SOCKET", f->path, 1);
	assert_int_equal(ep_sd_notify("READY=1"), 1);
	expect_datagram(f->fd, "READY=1");
	assert_int_equal(ep_sd_notifyf("STATUS=%u tenants, %s", 2u, "all running"), 1);
	expect_datagram(f->fd, "STATUS=2 tenants, all running");
}

static void test_notify_abstract(void **state)
{
	struct notify_fixture *f = *state;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char name[64];
	socklen_t len;

	/* "@name" means sun_path "\0name", with the length covering exactly the name */
	snprintf(name, sizeof(name), "@ep-test-notify-%ld", (long)getpid());
	memcpy(sa.sun_path + 1, name + 1, strlen(name) - 1);
	len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(name));
	f->fd = bind_dgram(&sa, len);

	setenv("NOTIFY_SOCKET", name, 1);
	assert_int_equal(ep_sd_notify("READY=1"), 1);
	expect_datagram(f->fd, "READY=1");
	assert_int_equal(ep_sd_notify("STOPPING=1"), 1);
	expect_datagram(f->fd, "STOPPING=1");
}

static void test_notify_errors(void **state)
{
	struct notify_fixture *f = *state;

	/* nobody listens there */
	setenv("NOTIFY_SOCKET", f->path, 1);
	assert_int_equal(ep_sd_notify("READY=1"), -ENOENT);
	/* neither a path nor an abstract name */
	setenv("NOTIFY_SOCKET", "relative/notify", 1);
	assert_int_equal(ep_sd_notify("READY=1"), -EINVAL);
	/* longer than sun_path */
	char *longpath = ep_malloc0(200);
	memset(longpath, 'x', 150);
	longpath[0] = '/';
	setenv("NOTIFY_SOCKET", longpath, 1);
	assert_int_equal(ep_sd_notify("READY=1"), -EINVAL);
	free(longpath);
}

static void test_watchdog(void **state UNUSED)
{
	char pid[32];

	assert_int_equal(ep_sd_watchdog_usec(), 0);

	setenv("WATCHDOG_USEC", "30000000", 1);
	assert_int_equal(ep_sd_watchdog_usec(), 30000000);

	snprintf(pid, sizeof(pid), "%ld", (long)getpid());
	setenv("WATCHDOG_PID", pid, 1);
	assert_int_equal(ep_sd_watchdog_usec(), 30000000);

	/* meant for another process (our parent, say) */
	snprintf(pid, sizeof(pid), "%ld", (long)getpid() + 1);
	setenv("WATCHDOG_PID", pid, 1);
	assert_int_equal(ep_sd_watchdog_usec(), 0);
	if (getpid() != 1) {
		setenv("WATCHDOG_PID", "1", 1);
		assert_int_equal(ep_sd_watchdog_usec(), 0);
	}

	/* WATCHDOG_PID alone asks for nothing */
	unsetenv("WATCHDOG_USEC");
	snprintf(pid, sizeof(pid), "%ld", (long)getpid());
	setenv("WATCHDOG_PID", pid, 1);
	assert_int_equal(ep_sd_watchdog_usec(), 0);
}

int main(void)
{
	const struct CMUnitTest backoff_tests[] = {
		cmocka_unit_test(test_backoff_init),
		cmocka_unit_test(test_backoff_doubling),
		cmocka_unit_test(test_backoff_cap),
		cmocka_unit_test(test_backoff_give_up),
		cmocka_unit_test(test_backoff_reset),
	};
	const struct CMUnitTest sdnotify_tests[] = {
		cmocka_unit_test_setup_teardown(test_notify_unset, notify_setup, notify_teardown),
		cmocka_unit_test_setup_teardown(test_notify_path, notify_setup, notify_teardown),
		cmocka_unit_test_setup_teardown(test_notify_abstract, notify_setup,
						notify_teardown),
		cmocka_unit_test_setup_teardown(test_notify_errors, notify_setup, notify_teardown),
		cmocka_unit_test_setup_teardown(test_watchdog, notify_setup, notify_teardown),
	};
	int failed;

	failed = cmocka_run_group_tests_name("backoff", backoff_tests, NULL, NULL);
	failed += cmocka_run_group_tests_name("sdnotify", sdnotify_tests, NULL, NULL);
	return failed;
}
