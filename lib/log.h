/*
 * One set of logging macros.  Every line carries the program, the tenant
 * (when there is one) and the subsystem; the level is a syslog level, given
 * to journald as a "<N>" prefix when stderr is the journal.
 *
 * Each .c file defines EP_LOG_SUBSYS before using the macros.
 */
#ifndef EP_LOG_H
#define EP_LOG_H

#include <stdarg.h>
#include "etcdproxy/plugin.h" /* enum ep_log_level */

enum ep_log_target {
	EP_LOG_TARGET_STDERR, /* plain lines on stderr (foreground, tests) */
	EP_LOG_TARGET_JOURNAL, /* stderr with "<N>" level prefixes (systemd) */
	EP_LOG_TARGET_SYSLOG, /* syslog(3) (daemonized) */
};

/*
 * Set up logging for this process.  ident: "etcdproxyd"; tenant: NULL or the
 * tenant name, added to every line.  The target is taken from $JOURNAL_STREAM
 * when target is EP_LOG_TARGET_STDERR and stderr is the journal.
 */
void ep_log_init(const char *ident, const char *tenant, enum ep_log_target target,
		 enum ep_log_level max_level);
void ep_log_set_level(enum ep_log_level max_level);
void ep_log_set_tenant(const char *tenant);
enum ep_log_level ep_log_get_level(void);
enum ep_log_target ep_log_get_target(void);

/* "err", "warning", "notice", "info", "debug" -> level; returns 0 or -EINVAL. */
int ep_log_level_parse(const char *name, enum ep_log_level *level_r);
const char *ep_log_level_name(enum ep_log_level level);

void ep_log(enum ep_log_level level, const char *subsys, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void ep_logv(enum ep_log_level level, const char *subsys, const char *fmt, va_list ap)
	__attribute__((format(printf, 3, 0)));

#define ep_err(...) ep_log(EP_LOG_ERR, EP_LOG_SUBSYS, __VA_ARGS__)
#define ep_warn(...) ep_log(EP_LOG_WARNING, EP_LOG_SUBSYS, __VA_ARGS__)
#define ep_notice(...) ep_log(EP_LOG_NOTICE, EP_LOG_SUBSYS, __VA_ARGS__)
#define ep_info(...) ep_log(EP_LOG_INFO, EP_LOG_SUBSYS, __VA_ARGS__)
#define ep_debug(...) ep_log(EP_LOG_DEBUG, EP_LOG_SUBSYS, __VA_ARGS__)

#endif /* EP_LOG_H */
