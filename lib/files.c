/*
 * Files that a crash at any moment leaves whole (files.h).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* vasprintf */
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "files.h"
#include "util.h"

#define fail ep_fail

int ep_fail(char **error_r, int code, const char *fmt, ...)
{
	va_list ap;
	char *s;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		abort();
	va_end(ap);
	*error_r = s;
	return code;
}
/* ---- files ------------------------------------------------------------------------------ */

static int write_all(int fd, const void *data, size_t len)
{
	const char *p = data;

	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int ep_dir_sync(const char *dir, char **error_r)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int r = 0;

	if (fd < 0)
		return fail(error_r, -errno, "%s: %s", dir, strerror(errno));
	if (fsync(fd) < 0)
		r = fail(error_r, -errno, "%s: fsync: %s", dir, strerror(errno));
	close(fd);
	return r;
}

static char *dir_of(const char *path)
{
	const char *slash = strrchr(path, '/');

	if (slash == NULL)
		return strdup(".");
	if (slash == path)
		return strdup("/");
	return strndup(path, (size_t)(slash - path));
}

int ep_file_write_atomic(const char *path, const void *data, size_t len, mode_t mode,
			 char **error_r)
{
	char *tmp = ep_strdup_printf("%s.tmp.%ld", path, (long)getpid());
	char *dir;
	int fd, r;

	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
	if (fd < 0) {
		r = fail(error_r, -errno, "%s: %s", tmp, strerror(errno));
		free(tmp);
		return r;
	}
	/* the umask must not widen or narrow what the caller asked for */
	if (fchmod(fd, mode) < 0 || (r = write_all(fd, data, len)) < 0 || fsync(fd) < 0) {
		r = fail(error_r, -errno, "%s: %s", tmp, strerror(errno));
		close(fd);
		unlink(tmp);
		free(tmp);
		return r;
	}
	if (close(fd) < 0 || rename(tmp, path) < 0) {
		r = fail(error_r, -errno, "%s: %s", path, strerror(errno));
		unlink(tmp);
		free(tmp);
		return r;
	}
	free(tmp);
	dir = dir_of(path);
	r = ep_dir_sync(dir, error_r);
	free(dir);
	return r;
}

int ep_file_read(const char *path, size_t max, char **data_r, size_t *len_r, char **error_r)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	char *buf;
	size_t len = 0;
	int r;

	if (fd < 0)
		return fail(error_r, -errno, "%s: %s", path, strerror(errno));
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		r = fail(error_r, S_ISREG(st.st_mode) ? -errno : -EINVAL, "%s: %s", path,
			 S_ISREG(st.st_mode) ? strerror(errno) : "not a regular file");
		close(fd);
		return r;
	}
	buf = malloc(max + 1);
	if (buf == NULL)
		abort();
	for (;;) {
		ssize_t n = read(fd, buf + len, max + 1 - len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = fail(error_r, -errno, "%s: %s", path, strerror(errno));
			free(buf);
			close(fd);
			return r;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (len > max) {
			free(buf);
			close(fd);
			return fail(error_r, -EFBIG, "%s: larger than %zu bytes", path, max);
		}
	}
	close(fd);
	buf[len] = '\0';
	*data_r = buf;
	if (len_r != NULL)
		*len_r = len;
	return 0;
}

int ep_dir_make(const char *dir, mode_t mode, char **error_r)
{
	int r = ep_mkdir_p(dir, mode);

	return r < 0 ? fail(error_r, r, "%s: cannot create the directory: %s", dir, strerror(-r)) : 0;
}

int ep_dir_remove_tree(const char *dir, char **error_r)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int r = 0;

	if (d == NULL) {
		if (errno == ENOENT)
			return 0;
		return fail(error_r, -errno, "%s: %s", dir, strerror(errno));
	}
	while (r == 0 && (e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		char *p = ep_strdup_printf("%s/%s", dir, e->d_name);
		struct stat st;

		if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
			r = ep_dir_remove_tree(p, error_r);
		else if (unlink(p) < 0 && errno != ENOENT)
			r = fail(error_r, -errno, "%s: %s", p, strerror(errno));
		free(p);
	}
	closedir(d);
	if (r == 0 && rmdir(dir) < 0 && errno != ENOENT)
		r = fail(error_r, -errno, "%s: %s", dir, strerror(errno));
	return r;
}

/* 1 when dir/..data/NAME holds exactly these bytes for every file. */
static int published_same(const char *dir, const struct ep_pub_file *files, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		char *p = ep_strdup_printf("%s/..data/%s", dir, files[i].name);
		char *data, *err = NULL;
		size_t len;
		int same;

		if (ep_file_read(p, files[i].len + 1, &data, &len, &err) < 0) {
			free(err);
			free(p);
			return 0;
		}
		same = len == files[i].len && memcmp(data, files[i].data, len) == 0;
		free(data);
		free(p);
		if (!same)
			return 0;
	}
	return 1;
}

int ep_publish_files(const char *dir, const struct ep_pub_file *files, size_t n, int *changed_r,
		     char **error_r)
{
	static unsigned seq;
	struct timespec ts;
	char *gen, *gen_name, *tmp_link, *data_link;
	char prev[256]; /* the generation ..data pointed to before: kept until the next switch */
	ssize_t prev_len;
	DIR *d;
	struct dirent *e;
	int r;

	if (changed_r != NULL)
		*changed_r = 0;
	if ((r = ep_dir_make(dir, 0755, error_r)) < 0)
		return r;
	if (published_same(dir, files, n))
		goto links; /* content unchanged: only make sure the name links exist */

	clock_gettime(CLOCK_REALTIME, &ts);
	gen_name = ep_strdup_printf("..%lld.%09ld.%ld.%u", (long long)ts.tv_sec, ts.tv_nsec, (long)getpid(),
			   seq++);
	gen = ep_strdup_printf("%s/%s", dir, gen_name);
	if (mkdir(gen, 0755) < 0) {
		r = fail(error_r, -errno, "%s: %s", gen, strerror(errno));
		goto out_gen;
	}
	for (size_t i = 0; i < n; i++) {
		char *p = ep_strdup_printf("%s/%s", gen, files[i].name);

		r = ep_file_write_atomic(p, files[i].data, files[i].len, files[i].mode, error_r);
		free(p);
		if (r < 0)
			goto out_gen;
	}
	if ((r = ep_dir_sync(gen, error_r)) < 0)
		goto out_gen;
	tmp_link = ep_strdup_printf("%s/..data_tmp", dir);
	data_link = ep_strdup_printf("%s/..data", dir);
	prev_len = readlink(data_link, prev, sizeof(prev) - 1);
	prev[prev_len > 0 ? prev_len : 0] = '\0';
	unlink(tmp_link);
	if (symlink(gen_name, tmp_link) < 0 || rename(tmp_link, data_link) < 0) {
		r = fail(error_r, -errno, "%s: %s", data_link, strerror(errno));
		unlink(tmp_link);
		free(tmp_link);
		free(data_link);
		goto out_gen;
	}
	free(tmp_link);
	free(data_link);
	if (changed_r != NULL)
		*changed_r = 1;
	r = ep_dir_sync(dir, error_r);
	if (r < 0)
		goto out_gen;

	/*
	 * older generations, but for the one just replaced: a reader that resolved
	 * ..data a moment before the switch still opens its files (one generation)
	 */
	d = opendir(dir);
	while (d != NULL && (e = readdir(d)) != NULL) {
		if (strncmp(e->d_name, "..", 2) != 0 || strcmp(e->d_name, "..") == 0 ||
		    strcmp(e->d_name, gen_name) == 0 || strcmp(e->d_name, prev) == 0 ||
		    strncmp(e->d_name, "..data", 6) == 0)
			continue;
		char *old = ep_strdup_printf("%s/%s", dir, e->d_name), *err = NULL;

		ep_dir_remove_tree(old, &err);
		free(err);
		free(old);
	}
	if (d != NULL)
		closedir(d);
	free(gen);
	free(gen_name);

links:
	for (size_t i = 0; i < n; i++) {
		char *p = ep_strdup_printf("%s/%s", dir, files[i].name);
		char *target = ep_strdup_printf("..data/%s", files[i].name);
		char buf[256];
		ssize_t len = readlink(p, buf, sizeof(buf) - 1);

		if (len < 0 || (size_t)len != strlen(target) || memcmp(buf, target, (size_t)len) != 0) {
			char *tmp = ep_strdup_printf("%s/.%s.tmp", dir, files[i].name);

			unlink(tmp);
			if (symlink(target, tmp) < 0 || rename(tmp, p) < 0) {
				r = fail(error_r, -errno, "%s: %s", p, strerror(errno));
				unlink(tmp);
				free(tmp);
				free(p);
				free(target);
				return r;
			}
			free(tmp);
			if (changed_r != NULL)
				*changed_r = 1;
		}
		free(p);
		free(target);
	}
	return ep_dir_sync(dir, error_r);

out_gen: {
	char *ignored = NULL;

	ep_dir_remove_tree(gen, &ignored);
	free(ignored);
}
	free(gen);
	free(gen_name);
	return r;
}
