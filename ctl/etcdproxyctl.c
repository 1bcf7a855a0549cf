/*
 * etcdproxyctl: talk to etcdproxyd over its control socket.
 *
 * Exit codes: 0 done (status: every tenant ready); 1 the daemon refused or
 * failed the command; 2 usage; 3 the daemon is not running or not reachable;
 * 4 status: some tenant is not ready.
 */
#include "build-config.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define EP_LOG_SUBSYS "ctl"
#include "config.h"
#include "ctl.h"
#include "ipc.h"
#include "util.h"

static void usage(FILE *out)
{
	fprintf(out,
		"Usage: etcdproxyctl [-s SOCKET | -c CONFIG] [-o table|json] COMMAND\n"
		"Commands:\n"
		"  status         the daemon and every tenant (exit 4 when one is not ready)\n"
		"  list           tenant names, states and listen addresses\n"
		"  show NAME      everything about one tenant\n"
		"  reload         re-read the configuration (like SIGHUP) and say what changed\n"
		"  restart NAME   restart one tenant's worker (also a failed one)\n"
		"  rotate NAME    start a rotation of the tenant's CAs and certificates now\n"
		"  issue-client-cert NAME --cn CN --out DIR\n"
		"                 issue an extra client certificate into DIR (tls.crt, tls.key,\n"
		"                 ca.crt)\n"
		"Data commands (they talk to core_etcd of the configuration themselves):\n"
		"  export NAME [--out FILE]\n"
		"                 the tenant's keys at one revision, as JSON lines (etcdproxyctl(8))\n"
		"  import NAME --from-file FILE [--force]\n"
		"  import NAME --from-etcd URL [--prefix P] [--cacert F --cert F --key F] [--force]\n"
		"                 into an empty tenant (--force: also a tenant with keys), in\n"
		"                 batches under --max-request-bytes (default 1572864, etcd's)\n"
		"  purge NAME [--yes]\n"
		"                 delete the keys of a tenant that no longer runs and revoke its\n"
		"                 leases (asks first, on a terminal, unless --yes)\n"
		"Options:\n"
		"  -s, --socket SOCKET  control socket (default: control_socket of the config)\n"
		"  -c, --config FILE    global configuration to find the socket in (default %s)\n"
		"  -o, --output FORMAT  table (default) or json\n",
		EP_DEFAULT_CONFIG);
}

static const char *str(const cJSON *o, const char *key, const char *dflt)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	return cJSON_IsString(v) ? v->valuestring : dflt;
}

static double num(const cJSON *o, const char *key, double dflt)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

/* A number of seconds in the tenant object, as "2d3h", "1h5m", "3m20s" or "42s"; "-" if none. */
static void fmt_seconds(const cJSON *t, const char *key, char *buf, size_t size)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(t, key);
	unsigned long s;

	if (!cJSON_IsNumber(v)) {
		snprintf(buf, size, "-");
		return;
	}
	s = (unsigned long)v->valuedouble;
	if (s >= 86400)
		snprintf(buf, size, "%lud%luh", s / 86400, s % 86400 / 3600);
	else if (s >= 3600)
		snprintf(buf, size, "%luh%lum", s / 3600, s % 3600 / 60);
	else if (s >= 60)
		snprintf(buf, size, "%lum%lus", s / 60, s % 60);
	else
		snprintf(buf, size, "%lus", s);
}

static void fmt_pid(const cJSON *t, char *buf, size_t size)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(t, "pid");

	if (cJSON_IsNumber(v))
		snprintf(buf, size, "%ld", (long)v->valuedouble);
	else
		snprintf(buf, size, "-");
}

static int print_status(const cJSON *reply, int full)
{
	const cJSON *d = cJSON_GetObjectItemCaseSensitive(reply, "daemon");
	const cJSON *tenants = cJSON_GetObjectItemCaseSensitive(reply, "tenants");
	const cJSON *t, *k;
	int not_ready = 0;

	if (full) {
		printf("etcdproxyd %s, pid %ld, up %lds, config %s\n", str(d, "version", "?"),
		       (long)num(d, "pid", 0), (long)num(d, "uptime_s", 0), str(d, "config", "?"));
		printf("tenants: %d, ready: %d, failed: %d%s\n", (int)num(d, "tenants", 0),
		       (int)num(d, "ready", 0), (int)num(d, "failed", 0),
		       cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(d, "shutting_down"))
			       ? " (shutting down)"
			       : "");
		if (str(d, "last_reload_error", NULL) != NULL)
			printf("last reload refused: %s\n", str(d, "last_reload_error", ""));
		k = cJSON_GetObjectItemCaseSensitive(d, "kubernetes");
		if (k != NULL) {
			printf("kubernetes: %s, %s, %d EtcdStorage%s, resourceVersion %s (%s)\n",
			       cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(k, "synced"))
				       ? "in sync" : "not in sync yet",
			       str(k, "state", "?"), (int)num(k, "objects", 0),
			       (int)num(k, "objects", 0) == 1 ? "" : "s",
			       str(k, "resource_version", "-"), str(k, "connection", "?"));
			if (str(k, "last_error", NULL) != NULL)
				printf("kubernetes: last error: %s\n", str(k, "last_error", ""));
		}
		printf("\n%-24s %-8s %-22s %-24s %-8s %-10s %-8s %-8s %s\n", "NAME", "BACKEND",
		       "LISTEN", "PREFIX", "PID", "STATE", "RESTARTS", "UPTIME", "LAST ERROR");
	} else {
		printf("%-24s %-10s %s\n", "NAME", "STATE", "LISTEN");
	}
	cJSON_ArrayForEach(t, tenants)
	{
		char pid[24], up[24], age[24];
		const char *state = str(t, "state", "?");

		if (strcmp(state, "ready") != 0)
			not_ready = 1;
		if (!full) {
			printf("%-24s %-10s %s\n", str(t, "name", "?"), state, str(t, "listen", "-"));
			continue;
		}
		fmt_pid(t, pid, sizeof(pid));
		fmt_seconds(t, "uptime_s", up, sizeof(up));
		fmt_seconds(t, "last_error_age_s", age, sizeof(age));
		/* when it happened: an error from before a tenant became ready reads as history */
		printf("%-24s %-8s %-22s %-24s %-8s %-10s %-8d %-8s %s%s%s\n", str(t, "name", "?"),
		       str(t, "backend", "-"), str(t, "listen", "-"), str(t, "prefix", "-"), pid,
		       state, (int)num(t, "restarts", 0), up,
		       str(t, "last_error", NULL) != NULL ? age : "",
		       str(t, "last_error", NULL) != NULL ? " ago: " : "", str(t, "last_error", "-"));
	}
	return not_ready ? EXIT_NOT_READY : EXIT_DONE;
}

static void print_show(const cJSON *reply)
{
	const cJSON *t = cJSON_GetObjectItemCaseSensitive(reply, "tenant");
	const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(t, "config");
	char pid[24], up[24];

	fmt_pid(t, pid, sizeof(pid));
	fmt_seconds(t, "uptime_s", up, sizeof(up));
	printf("name:        %s\n", str(t, "name", "?"));
	printf("file:        %s\n", str(t, "file", "-"));
	printf("state:       %s%s\n", str(t, "state", "?"),
	       cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(t, "healthy")) ? " (healthy)" : "");
	printf("backend:     %s\n", str(t, "backend", "-"));
	printf("listen:      %s\n", str(t, "listen", "-"));
	printf("endpoint:    %s\n", str(t, "endpoint", "-"));
	printf("prefix:      %s\n", str(t, "prefix", "-"));
	printf("worker pid:  %s\n", pid);
	printf("uptime:      %s\n", up);
	printf("restarts:    %d (consecutive failures: %d)\n", (int)num(t, "restarts", 0),
	       (int)num(t, "consecutive_failures", 0));
	if (str(t, "last_error", NULL) != NULL) {
		char age[24];

		fmt_seconds(t, "last_error_age_s", age, sizeof(age));
		printf("last error:  %s (at %s, %s ago)\n", str(t, "last_error", "-"),
		       str(t, "last_error_at", "?"), age);
	} else {
		printf("last error:  -\n");
	}
	const cJSON *certs = cJSON_GetObjectItemCaseSensitive(t, "certificates");
	const cJSON *c;
	if (cJSON_GetArraySize(certs) > 0)
		printf("certificates:\n");
	cJSON_ArrayForEach(c, certs)
	{
		if (str(c, "error", NULL) != NULL) {
			printf("  %-10s %s\n", str(c, "role", "error"), str(c, "error", ""));
			continue;
		}
		printf("  %-10s %s\n", str(c, "role", "?"), str(c, "subject", "?"));
		if (str(c, "not_before", NULL) != NULL)
			printf("  %-10s serial %s, valid %s to %s%s%s\n", "", str(c, "serial", "?"),
			       str(c, "not_before", "?"), str(c, "not_after", "?"),
			       str(c, "state", NULL) ? ", " : "", str(c, "state", ""));
		else
			printf("  %-10s serial %s, until %s%s%s\n", "", str(c, "serial", "?"),
			       str(c, "not_after", "?"), str(c, "state", NULL) ? ", " : "",
			       str(c, "state", ""));
		printf("  %-10s signed by %s\n", "", str(c, "issuer", "?"));
	}
	const cJSON *counters = cJSON_GetObjectItemCaseSensitive(t, "counters");
	if (str(counters, "quota_state", NULL) != NULL) {
		/* spec.quota: usage against the limits, as the worker counted them */
		static const char *const what[][2] = { { "quota_keys", "quota_max_keys" },
						       { "quota_bytes", "quota_max_bytes" },
						       { "quota_leases", "quota_max_leases" } };
		static const char *const unit[] = { "keys", "bytes", "leases" };

		printf("quota:      ");
		for (size_t i = 0; i < 3; i++) {
			double used = num(counters, what[i][0], -1), max = num(counters, what[i][1], 0);

			if (max > 0 && used >= 0)
				printf(" %.0f of %.0f %s (%.0f%%),", used, max, unit[i], used * 100 / max);
			else if (max > 0)
				printf(" ? of %.0f %s,", max, unit[i]);
		}
		printf(" %s; %.0f refused\n", str(counters, "quota_state", "?"),
		       num(counters, "quota_refused", 0));
	}
	if (counters != NULL) {
		char *text = cJSON_Print(counters);

		printf("counters (the backend's, every 5 s):\n%s\n", text);
		free(text);
	}
	if (cfg != NULL) {
		char *text = cJSON_Print(cfg);

		printf("configuration sent to the worker:\n%s\n", text);
		free(text);
	}
}

static void print_reload(const cJSON *reply)
{
	static const char *const keys[] = { "added", "removed", "changed", "unchanged" };

	printf("reloaded:");
	for (size_t i = 0; i < 4; i++) {
		const cJSON *a = cJSON_GetObjectItemCaseSensitive(reply, keys[i]), *e;
		int first = 1;

		printf(" %s %d", keys[i], cJSON_GetArraySize(a));
		cJSON_ArrayForEach(e, a)
		{
			if (i < 3 && cJSON_IsString(e)) {
				printf("%s%s", first ? " (" : ", ", e->valuestring);
				first = 0;
			}
		}
		if (!first)
			printf(")");
		printf(i < 3 ? "," : "\n");
	}
}

static int connect_socket(const char *path);

int ctl_request(const char *sock, cJSON *req, cJSON **reply_r, const char **why_r)
{
	int fd = connect_socket(sock), r;
	uint8_t type;

	*reply_r = NULL;
	*why_r = NULL;
	if (fd < 0) {
		*why_r = strerror(errno);
		return -1;
	}
	r = ep_ipc_write_frame_fd(fd, EP_MSG_CTL_REQUEST, req);
	if (r == 0)
		r = ep_ipc_read_frame_fd(fd, 30000, &type, reply_r, why_r);
	close(fd);
	if (r < 0) {
		if (*why_r == NULL)
			*why_r = strerror(-r);
		return -1;
	}
	return 0;
}

static int connect_socket(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd;

	if (strlen(path) >= sizeof(sa.sun_path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = errno;

		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "config", required_argument, NULL, 'c' },
		{ "output", required_argument, NULL, 'o' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ "cn", required_argument, NULL, 'N' },
		{ "out", required_argument, NULL, 'O' },
		{ "from-file", required_argument, NULL, 'F' },
		{ "from-etcd", required_argument, NULL, 'E' },
		{ "prefix", required_argument, NULL, 'P' },
		{ "cacert", required_argument, NULL, 'A' },
		{ "cert", required_argument, NULL, 'C' },
		{ "key", required_argument, NULL, 'K' },
		{ "max-request-bytes", required_argument, NULL, 'M' },
		{ "force", no_argument, NULL, 'f' },
		{ "yes", no_argument, NULL, 'y' },
		{ NULL, 0, NULL, 0 },
	};
	struct data_opts d = { 0 };
	int data_opt = 0;
	const char *cn = NULL, *out = NULL;
	char *out_abs = NULL;
	const char *sock = NULL, *config = EP_DEFAULT_CONFIG, *cmd, *name = NULL, *why = NULL;
	char *sock_alloc = NULL;
	int json = 0, opt, fd, r, code;
	uint8_t type;
	cJSON *req, *reply;

	while ((opt = getopt_long(argc, argv, "s:c:o:h", longopts, NULL)) != -1) {
		switch (opt) {
		case 's': sock = optarg; break;
		case 'c': config = optarg; break;
		case 'o':
			if (strcmp(optarg, "json") == 0)
				json = 1;
			else if (strcmp(optarg, "table") != 0) {
				fprintf(stderr, "etcdproxyctl: -o takes table or json\n");
				return EXIT_USAGE;
			}
			break;
		case 'V': printf("etcdproxyctl %s\n", PACKAGE_VERSION); return 0;
		case 'N': cn = optarg; break;
		case 'O': out = optarg; break;
		case 'F': d.from_file = optarg; data_opt = 1; break;
		case 'E': d.from_etcd = optarg; data_opt = 1; break;
		case 'P': d.prefix = optarg; data_opt = 1; break;
		case 'A': d.cacert = optarg; data_opt = 1; break;
		case 'C': d.cert = optarg; data_opt = 1; break;
		case 'K': d.key = optarg; data_opt = 1; break;
		case 'f': d.force = 1; data_opt = 1; break;
		case 'y': d.yes = 1; data_opt = 1; break;
		case 'M':
			if (ep_parse_quantity(optarg, &d.max_request) < 0 || d.max_request < 4096) {
				fprintf(stderr, "etcdproxyctl: --max-request-bytes: expected a size of "
						"at least 4096 bytes, such as 1572864 or \"1Mi\"\n");
				return EXIT_USAGE;
			}
			data_opt = 1;
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return EXIT_USAGE;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return EXIT_USAGE;
	}
	cmd = argv[optind++];
	if (strcmp(cmd, "export") == 0 || strcmp(cmd, "import") == 0 || strcmp(cmd, "purge") == 0) {
		if (optind != argc - 1) {
			fprintf(stderr, "etcdproxyctl: %s needs exactly one tenant name\n", cmd);
			return EXIT_USAGE;
		}
		if (cn != NULL || (out != NULL && strcmp(cmd, "export") != 0) ||
		    (strcmp(cmd, "import") != 0 && (d.from_file || d.from_etcd || d.prefix ||
						     d.cacert || d.cert || d.key || d.force ||
						     d.max_request)) ||
		    (strcmp(cmd, "purge") != 0 && d.yes)) {
			fprintf(stderr, "etcdproxyctl: an option that does not belong to %s\n", cmd);
			return EXIT_USAGE;
		}
		d.config = config;
		d.sock = sock;
		d.out = out;
		return ctl_data(cmd, argv[optind], &d);
	}
	if (data_opt) {
		fprintf(stderr, "etcdproxyctl: an option of the data commands given to %s\n", cmd);
		return EXIT_USAGE;
	}
	if ((cn != NULL || out != NULL) && strcmp(cmd, "issue-client-cert") != 0) {
		fprintf(stderr, "etcdproxyctl: --cn and --out belong to issue-client-cert\n");
		return EXIT_USAGE;
	}
	if (strcmp(cmd, "issue-client-cert") == 0) {
		if (optind != argc - 1 || cn == NULL || out == NULL || cn[0] == '\0' ||
		    out[0] == '\0') {
			fprintf(stderr, "etcdproxyctl: issue-client-cert needs a tenant name, --cn CN "
					"and --out DIR\n");
			return EXIT_USAGE;
		}
		name = argv[optind];
		/* the worker writes it, from another working directory */
		if (out[0] != '/') {
			char cwd[4096];

			if (getcwd(cwd, sizeof(cwd)) == NULL) {
				fprintf(stderr, "etcdproxyctl: cannot resolve %s: %s\n", out,
					strerror(errno));
				return EXIT_USAGE;
			}
			out = out_abs = ep_strdup_printf("%s/%s", cwd, out);
		}
	} else if (strcmp(cmd, "show") == 0 || strcmp(cmd, "restart") == 0 ||
		   strcmp(cmd, "rotate") == 0) {
		if (optind != argc - 1) {
			fprintf(stderr, "etcdproxyctl: %s needs exactly one tenant name\n", cmd);
			return EXIT_USAGE;
		}
		name = argv[optind];
	} else if (strcmp(cmd, "status") == 0 || strcmp(cmd, "list") == 0 ||
		   strcmp(cmd, "reload") == 0) {
		if (optind != argc) {
			fprintf(stderr, "etcdproxyctl: %s takes no argument\n", cmd);
			return EXIT_USAGE;
		}
	} else {
		fprintf(stderr, "etcdproxyctl: unknown command \"%s\"\n", cmd);
		usage(stderr);
		return EXIT_USAGE;
	}

	if (sock == NULL) {
		struct ep_global_config *g;
		char *error;

		if (ep_global_config_load(config, &g, &error) < 0) {
			fprintf(stderr, "etcdproxyctl: cannot find the control socket: %s\n"
					"(give it with -s SOCKET)\n", error);
			free(error);
			return EXIT_NO_DAEMON;
		}
		sock = sock_alloc = ep_strdup(g->control_socket);
		ep_global_config_free(g);
	}
	fd = connect_socket(sock);
	if (fd < 0) {
		fprintf(stderr, "etcdproxyctl: etcdproxyd is not running (cannot connect to %s: %s)\n",
			sock, strerror(errno));
		free(sock_alloc);
		return EXIT_NO_DAEMON;
	}

	req = cJSON_CreateObject();
	cJSON_AddStringToObject(req, "command", cmd);
	if (name != NULL)
		cJSON_AddStringToObject(req, "name", name);
	if (cn != NULL) {
		cJSON_AddStringToObject(req, "cn", cn);
		cJSON_AddStringToObject(req, "out", out);
	}
	r = ep_ipc_write_frame_fd(fd, EP_MSG_CTL_REQUEST, req);
	cJSON_Delete(req);
	if (r == 0)
		r = ep_ipc_read_frame_fd(fd, 30000, &type, &reply, &why);
	close(fd);
	if (r < 0) {
		fprintf(stderr, "etcdproxyctl: no answer from etcdproxyd on %s: %s\n", sock,
			why ? why : strerror(-r));
		free(sock_alloc);
		return EXIT_NO_DAEMON;
	}
	free(sock_alloc);

	if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(reply, "ok"))) {
		if (json) {
			char *text = cJSON_Print(reply);

			printf("%s\n", text);
			free(text);
		}
		fprintf(stderr, "etcdproxyctl: %s\n", str(reply, "error", "the daemon refused"));
		cJSON_Delete(reply);
		return EXIT_REFUSED;
	}
	code = EXIT_DONE;
	if (json) {
		char *text = cJSON_Print(reply);

		printf("%s\n", text);
		free(text);
		if (strcmp(cmd, "status") == 0) {
			const cJSON *t;

			cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(reply, "tenants"))
			if (strcmp(str(t, "state", ""), "ready") != 0)
				code = EXIT_NOT_READY;
		}
	} else if (strcmp(cmd, "status") == 0) {
		code = print_status(reply, 1);
	} else if (strcmp(cmd, "list") == 0) {
		print_status(reply, 0);
	} else if (strcmp(cmd, "show") == 0) {
		print_show(reply);
	} else if (strcmp(cmd, "reload") == 0) {
		print_reload(reply);
	} else if (strcmp(cmd, "restart") == 0) {
		printf("restarting %s\n", name);
	} else if (strcmp(cmd, "rotate") == 0) {
		printf("rotation of %s started: new CAs are published now, certificates follow "
		       "after the grace period (etcdproxyctl show %s)\n", name, name);
	} else if (strcmp(cmd, "issue-client-cert") == 0) {
		const cJSON *res = cJSON_GetObjectItemCaseSensitive(reply, "result");

		printf("issued %s (serial %s, valid until %s) into %s\n", str(res, "subject", cn),
		       str(res, "serial", "?"), str(res, "not_after", "?"), str(res, "dir", out));
	}
	cJSON_Delete(reply);
	free(out_abs);
	return code;
}
