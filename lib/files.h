/*
 * Writing files so that a crash at any moment leaves either the old or the
 * new content, never a mix, and publishing sets of them the way the kubelet
 * updates a Secret volume.  Part of lib/libeputil.la with util.h, which the
 * programs and the plugins share.  Every function that can fail returns 0 or
 * a negative errno code and puts a malloc'ed, one-line reason into *error_r.
 */
#ifndef EP_FILES_H
#define EP_FILES_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- files ------------------------------------------------------------------------------ */

/*
 * Write path atomically: a temporary file in the same directory, written,
 * fsync'ed and given mode, then renamed over path, then the directory
 * fsync'ed.
 */
int ep_file_write_atomic(const char *path, const void *data, size_t len, mode_t mode,
			 char **error_r);

/* Read a whole file (at most max bytes) into a NUL-terminated malloc'ed buffer. */
int ep_file_read(const char *path, size_t max, char **data_r, size_t *len_r, char **error_r);

/* fsync a directory, so that renames and creations in it are durable. */
int ep_dir_sync(const char *dir, char **error_r);

/* mkdir -p with mode for the directories it creates. */
int ep_dir_make(const char *dir, mode_t mode, char **error_r);

/* Remove a directory tree (the files of a certificate generation); missing is fine. */
int ep_dir_remove_tree(const char *dir, char **error_r);

/* One file of a set published together. */
struct ep_pub_file {
	const char *name; /* "tls.crt" */
	const void *data;
	size_t len;
	mode_t mode;
};

/*
 * Publish a set of files into dir the way the kubelet updates a Secret
 * volume: the files go into a fresh hidden directory "..<time>.<n>", a
 * symlink "..data" is swapped to it with one rename, and each name is a
 * symlink "NAME -> ..data/NAME".  A reader that resolves ..data once and
 * opens the files in that directory gets one generation: the generation
 * just replaced is kept until the next publish, older ones are removed.  A
 * reader that opens NAME after NAME may straddle a swap.
 * dir is created (mode 0755) when missing.  *changed_r (may be NULL): 1 when
 * the content differed from what was published before, 0 when nothing was
 * written.
 */
int ep_publish_files(const char *dir, const struct ep_pub_file *files, size_t n,
		     int *changed_r, char **error_r);

/* *error_r = the formatted reason (malloc'ed); returns code. */
int ep_fail(char **error_r, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif /* EP_FILES_H */
