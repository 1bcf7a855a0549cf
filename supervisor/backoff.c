#include "build-config.h"

#include "backoff.h"

void ep_backoff_init(struct ep_backoff *b, uint64_t initial_ms, uint64_t max_ms,
		     unsigned max_failures)
{
	b->initial_ms = initial_ms;
	b->max_ms = max_ms;
	b->max_failures = max_failures;
	b->failures = 0;
}

int64_t ep_backoff_fail(struct ep_backoff *b)
{
	uint64_t delay = b->initial_ms;

	if (b->failures < b->max_failures)
		b->failures++;
	if (b->failures >= b->max_failures)
		return -1;
	/* a crash after a good run is rare: its clients are back at once */
	if (b->failures == 1)
		return 0;
	for (unsigned i = 2; i < b->failures && delay < b->max_ms; i++)
		delay *= 2;
	if (delay > b->max_ms)
		delay = b->max_ms;
	return (int64_t)delay;
}

void ep_backoff_reset(struct ep_backoff *b)
{
	b->failures = 0;
}
