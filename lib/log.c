#include "build-config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

static const char *log_ident = "etcdproxy";
static char log_tenant[64];
static enum ep_log_target log_target = EP_LOG_TARGET_STDERR;
static enum ep_log_level log_max = EP_LOG_INFO;

static const char *const level_names[] = {
	[EP_LOG_ERR] = "err",   [EP_LOG_WARNING] = "warning", [EP_LOG_NOTICE] = "notice",
	[EP_LOG_INFO] = "info", [EP_LOG_DEBUG] = "debug",
};

/* systemd sets $JOURNAL_STREAM to "DEV:INODE" of the stream stderr is connected to. */
static int stderr_is_journal(void)
{
	const char *js = getenv("JOURNAL_STREAM");
	struct stat st;
	unsigned long long dev, ino;

	if (js == NULL || sscanf(js, "%llu:%llu", &dev, &ino) != 2)
		return 0;
	if (fstat(STDERR_FILENO, &st) < 0)
		return 0;
	return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void ep_log_init(const char *ident, const char *tenant, enum ep_log_target target,
		 enum ep_log_level max_level)
{
	log_ident = ident;
	ep_log_set_tenant(tenant);
	log_max = max_level;
	if (target == EP_LOG_TARGET_STDERR && stderr_is_journal())
		target = EP_LOG_TARGET_JOURNAL;
	log_target = target;
	if (target == EP_LOG_TARGET_SYSLOG)
		openlog(ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
}

void ep_log_set_level(enum ep_log_level max_level) { log_max = max_level; }
enum ep_log_level ep_log_get_level(void) { return log_max; }
enum ep_log_target ep_log_get_target(void) { return log_target; }

void ep_log_set_tenant(const char *tenant)
{
	snprintf(log_tenant, sizeof(log_tenant), "%s", tenant != NULL ? tenant : "");
}

int ep_log_level_parse(const char *name, enum ep_log_level *level_r)
{
	for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
		if (level_names[i] != NULL && strcmp(level_names[i], name) == 0) {
			*level_r = (enum ep_log_level)i;
			return 0;
		}
	}
	return -EINVAL;
}

const char *ep_log_level_name(enum ep_log_level level)
{
	if ((size_t)level < sizeof(level_names) / sizeof(level_names[0]) && level_names[level])
		return level_names[level];
	return "unknown";
}

void ep_logv(enum ep_log_level level, const char *subsys, const char *fmt, va_list ap)
{
	char msg[2048];
	char prefix[128];
	int saved_errno = errno;

	if (level > log_max)
		return;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	if (log_tenant[0] != '\0')
		snprintf(prefix, sizeof(prefix), "tenant %s: %s", log_tenant, subsys);
	else
		snprintf(prefix, sizeof(prefix), "%s", subsys);

	switch (log_target) {
	case EP_LOG_TARGET_SYSLOG:
		syslog((int)level, "%s: %s", prefix, msg);
		break;
	case EP_LOG_TARGET_JOURNAL:
		fprintf(stderr, "<%d>%s[%ld]: %s: %s\n", (int)level, log_ident, (long)getpid(),
			prefix, msg);
		break;
	case EP_LOG_TARGET_STDERR: {
		struct timespec ts;
		struct tm tm;
		char when[32];

		clock_gettime(CLOCK_REALTIME, &ts);
		localtime_r(&ts.tv_sec, &tm);
		strftime(when, sizeof(when), "%H:%M:%S", &tm);
		fprintf(stderr, "%s.%03ld %s[%ld] %s: %s: %s\n", when, ts.tv_nsec / 1000000,
			log_ident, (long)getpid(), ep_log_level_name(level), prefix, msg);
		break;
	}
	}
	errno = saved_errno;
}

void ep_log(enum ep_log_level level, const char *subsys, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	ep_logv(level, subsys, fmt, ap);
	va_end(ap);
}
