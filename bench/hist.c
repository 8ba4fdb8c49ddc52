/* Log-linear latency histogram: see hist.h. Bucket i < 32 holds the value i;
 * above, each power of two [2^m, 2^(m+1)) is split into 32 equal buckets. */
#include "hist.h"

#include <string.h>

static unsigned bucket_of(uint64_t v)
{
    if (v < HIST_SUB)
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - HIST_SUB_BITS;
    return (shift + 1) * HIST_SUB + (unsigned)((v >> shift) - HIST_SUB);
}

void hist_bucket_range(unsigned i, uint64_t *lower, uint64_t *width)
{
    if (i < HIST_SUB) {
        *lower = i;
        *width = 1;
        return;
    }
    unsigned shift = i / HIST_SUB - 1;
    *lower = (uint64_t)(HIST_SUB + i % HIST_SUB) << shift;
    *width = (uint64_t)1 << shift;
}

void hist_init(struct hist *h)
{
    memset(h, 0, sizeof *h);
    h->min = UINT64_MAX;
}

void hist_record(struct hist *h, uint64_t value)
{
    h->count[bucket_of(value)]++;
    h->n++;
    h->sum += value;
    if (value < h->min)
        h->min = value;
    if (value > h->max)
        h->max = value;
}

void hist_merge(struct hist *into, const struct hist *from)
{
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        into->count[i] += from->count[i];
    into->n += from->n;
    into->sum += from->sum;
    if (from->min < into->min)
        into->min = from->min;
    if (from->max > into->max)
        into->max = from->max;
}

static uint64_t clamp(uint64_t v, uint64_t lo, uint64_t hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

uint64_t hist_quantile(const struct hist *h, double q)
{
    if (h->n == 0)
        return 0;
    uint64_t rank = (uint64_t)(q * (double)h->n + 0.999999);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->count[i];
        if (seen >= rank) {
            uint64_t lower, width;
            hist_bucket_range(i, &lower, &width);
            return clamp(lower + width / 2, h->min, h->max);
        }
    }
    return h->max;
}

void hist_write_json(const struct hist *h, FILE *out)
{
    const char *sep = "";
    fputc('[', out);
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        if (h->count[i] == 0)
            continue;
        uint64_t lower, width;
        hist_bucket_range(i, &lower, &width);
        fprintf(out, "%s[%.3f,%.3f,%llu]", sep, (double)lower / 1e3,
                (double)(lower + width) / 1e3, (unsigned long long)h->count[i]);
        sep = ",";
    }
    fputc(']', out);
}
