/* Log-linear latency histogram (HdrHistogram-like): values in nanoseconds,
 * 32 linear sub-buckets per power of two, so any value is kept within ~3 %.
 * One histogram per client thread, merged at the end; no locks. */
#ifndef BENCH_HIST_H
#define BENCH_HIST_H

#include <stdint.h>
#include <stdio.h>

#define HIST_SUB_BITS 5
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_BUCKETS ((64 - HIST_SUB_BITS + 1) * HIST_SUB)

struct hist {
    uint64_t count[HIST_BUCKETS];
    uint64_t n, sum, min, max;
};

void hist_init(struct hist *h);
void hist_record(struct hist *h, uint64_t value);
void hist_merge(struct hist *into, const struct hist *from);
/* value at quantile q in [0, 1]: the midpoint of its bucket, within min..max */
uint64_t hist_quantile(const struct hist *h, double q);
/* lower bound and width of bucket i */
void hist_bucket_range(unsigned i, uint64_t *lower, uint64_t *width);
/* JSON array of the non-empty buckets: [[lower_us, upper_us, count], ...] */
void hist_write_json(const struct hist *h, FILE *out);

#endif
