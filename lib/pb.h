/*
 * Protobuf wire helpers: the one varint and field codec of the project (the
 * native backend's rewriter, its own requests to the core etcd, its local
 * answers).  Header-only and inline: the rewriter calls them for every field
 * of every message.  Reading is strict, as etcd's own decoder is: a varint
 * has at most 10 bytes and fits 64 bits, field number 0, tags above 32 bits
 * and the group wire types (3, 4) are malformed.  doc/wire.md section 1.
 */
#ifndef EP_PB_H
#define EP_PB_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum ep_pb_wire { EP_PB_VARINT = 0, EP_PB_I64 = 1, EP_PB_LEN = 2, EP_PB_I32 = 5 };

/* Bytes a varint of v takes (1 to 10). */
static inline unsigned ep_pb_varint_size(uint64_t v)
{
	unsigned n = 1;

	while (v >= 0x80) {
		v >>= 7;
		n++;
	}
	return n;
}

/* Write v at d (room for 10 bytes); returns the end. */
static inline uint8_t *ep_pb_put_varint(uint8_t *d, uint64_t v)
{
	while (v >= 0x80) {
		*d++ = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	*d++ = (uint8_t)v;
	return d;
}

/* Read a varint at *pp (advanced past it); -1 when malformed or cut short. */
static inline int ep_pb_get_varint(const uint8_t **pp, const uint8_t *end, uint64_t *v)
{
	const uint8_t *p = *pp;
	uint64_t r = 0;

	if (p < end && *p < 0x80) {
		*v = *p;
		*pp = p + 1;
		return 0;
	}
	for (unsigned i = 0; i < 10; i++) {
		uint8_t b;

		if (p >= end)
			return -1;
		b = *p++;
		if (i == 9 && b > 1)
			return -1;
		r |= (uint64_t)(b & 0x7f) << (7 * i);
		if (!(b & 0x80)) {
			*v = r;
			*pp = p;
			return 0;
		}
	}
	return -1;
}

/* A varint field (wire type 0); returns the end. */
static inline uint8_t *ep_pb_put_uint(uint8_t *d, unsigned field, uint64_t v)
{
	return ep_pb_put_varint(ep_pb_put_varint(d, (uint64_t)field << 3 | EP_PB_VARINT), v);
}

/* A length-delimited field (wire type 2); returns the end. */
static inline uint8_t *ep_pb_put_bytes(uint8_t *d, unsigned field, const void *data, size_t len)
{
	d = ep_pb_put_varint(ep_pb_put_varint(d, (uint64_t)field << 3 | EP_PB_LEN), len);
	if (len > 0)
		memcpy(d, data, len);
	return d + len;
}

/* One field as read by ep_pb_next_field(). */
struct ep_pb_field {
	const uint8_t *start;   /* its tag */
	const uint8_t *tag_end; /* where the value starts */
	uint32_t number;
	unsigned wire;          /* enum ep_pb_wire */
	uint64_t value;         /* VARINT: the value; LEN: the length */
	const uint8_t *data;    /* LEN: the payload */
	size_t len;             /* LEN: its length */
};

/*
 * Read the field at *pp (advanced past it): 1 and *f, 0 at the end of the
 * message, -1 when malformed.
 */
static inline int ep_pb_next_field(const uint8_t **pp, const uint8_t *end, struct ep_pb_field *f)
{
	const uint8_t *p = *pp;
	uint64_t tag;

	if (p >= end)
		return 0;
	f->start = p;
	f->data = NULL;
	f->len = 0;
	f->value = 0;
	if (ep_pb_get_varint(&p, end, &tag) < 0 || tag > UINT32_MAX || (tag >> 3) == 0)
		return -1;
	f->tag_end = p;
	f->number = (uint32_t)(tag >> 3);
	f->wire = (unsigned)(tag & 7);
	switch (f->wire) {
	case EP_PB_VARINT:
		if (ep_pb_get_varint(&p, end, &f->value) < 0)
			return -1;
		break;
	case EP_PB_LEN:
		if (ep_pb_get_varint(&p, end, &f->value) < 0 || f->value > (uint64_t)(end - p))
			return -1;
		f->data = p;
		f->len = (size_t)f->value;
		p += f->len;
		break;
	case EP_PB_I64:
		if (end - p < 8)
			return -1;
		p += 8;
		break;
	case EP_PB_I32:
		if (end - p < 4)
			return -1;
		p += 4;
		break;
	default:
		return -1;
	}
	*pp = p;
	return 1;
}

/* The first varint field `number` of a message (a ResponseHeader's revision, ...), or 0. */
static inline uint64_t ep_pb_find_varint(const uint8_t *msg, size_t len, uint32_t number)
{
	const uint8_t *p = msg, *end = msg + len;
	struct ep_pb_field f;

	while (ep_pb_next_field(&p, end, &f) > 0)
		if (f.number == number && f.wire == EP_PB_VARINT)
			return f.value;
	return 0;
}

#endif /* EP_PB_H */
