// C helpers of the RBD binding (included by the cgo preambles of the
// package; static, so each cgo file gets its own copy).
#ifndef RINGBLK_RBD_H
#define RINGBLK_RBD_H
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/uio.h>
#include <rados/librados.h>
#include <rbd/librbd.h>

enum { RB_READ = 0, RB_WRITE = 1, RB_FLUSH = 2, RB_DISCARD = 3, RB_ZEROES = 4 };

static inline int rb_submit(rbd_image_t img, int op, uint64_t off, uint64_t len,
		const struct iovec *iov, int iovcnt, uintptr_t tag, int zflags) {
	rbd_completion_t c;
	int r = rbd_aio_create_completion((void *)tag, NULL, &c);
	if (r < 0)
		return r;
	switch (op) {
	case RB_READ:
		r = rbd_aio_readv(img, iov, iovcnt, off, c);
		break;
	case RB_WRITE:
		r = rbd_aio_writev(img, iov, iovcnt, off, c);
		break;
	case RB_FLUSH:
		r = rbd_aio_flush(img, c);
		break;
	case RB_DISCARD:
		r = rbd_aio_discard(img, off, len, c);
		break;
	case RB_ZEROES:
		r = rbd_aio_write_zeroes(img, off, len, c, zflags, 0);
		break;
	default:
		r = -EINVAL;
	}
	if (r < 0)
		rbd_aio_release(c);
	return r;
}

// rb_sub is one operation of a plugged batch (rb_submit_batch).
struct rb_sub {
	uint64_t off, len;
	const struct iovec *iov;
	uintptr_t tag;
	int op, iovcnt, zflags, ret;
};

// rb_submit_batch starts n operations with one call from Go; each entry's
// ret is rb_submit's result for it.
static inline void rb_submit_batch(rbd_image_t img, struct rb_sub *s, int n) {
	for (int i = 0; i < n; i++)
		s[i].ret = rb_submit(img, s[i].op, s[i].off, s[i].len, s[i].iov, s[i].iovcnt,
				s[i].tag, s[i].zflags);
}

static inline int rb_reap(rbd_image_t img, rbd_completion_t *comps, uintptr_t *tags,
		int64_t *rets, int n) {
	int got = rbd_poll_io_events(img, comps, n);
	for (int i = 0; i < got; i++) {
		tags[i] = (uintptr_t)rbd_aio_get_arg(comps[i]);
		rets[i] = rbd_aio_get_return_value(comps[i]);
		rbd_aio_release(comps[i]);
	}
	return got;
}

struct rb_extent { uint64_t off, len; int exists; };

struct rb_diff { struct rb_extent *ext; int n, cap; };

static inline int rb_diff_cb(uint64_t off, size_t len, int exists, void *arg) {
	struct rb_diff *d = arg;
	if (d->n == d->cap)
		return 1; // enough: stop the iteration
	d->ext[d->n].off = off;
	d->ext[d->n].len = len;
	d->ext[d->n].exists = exists;
	d->n++;
	return 0;
}

// rb_diff lists up to cap allocated extents of [off, off+len).
static inline int rb_diff(rbd_image_t img, uint64_t off, uint64_t len, int whole_object,
		struct rb_extent *ext, int cap) {
	struct rb_diff d = { ext, 0, cap };
	int r = rbd_diff_iterate2(img, NULL, off, len, 1, whole_object, rb_diff_cb, &d);
	if (r < 0 && r != -1 && d.n == 0)
		return r;
	return d.n;
}

static inline int rb_snap_list(rbd_image_t img, rbd_snap_info_t *snaps, int *max) {
	return rbd_snap_list(img, snaps, max);
}

#endif
