/* A copy of test input placed right before a PROT_NONE page, so that any
 * over-read by the code under test faults at once (picohttpparser's
 * technique). Shared by the codec unit tests. */
#ifndef FERRY_TEST_GUARD_H
#define FERRY_TEST_GUARD_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* A region of `usable` bytes followed by a PROT_NONE page. */
struct test_guard {
    uint8_t *base;              /* owned mapping */
    size_t usable;              /* bytes before the guard page */
};

static inline int test_guard_init(struct test_guard *g, size_t usable)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    usable = (usable + page - 1) / page * page;
    void *m = mmap(NULL, usable + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return -1;
    if (mprotect((uint8_t *)m + usable, page, PROT_NONE) != 0)
        return -1;
    g->base = m;
    g->usable = usable;
    return 0;
}

static inline void test_guard_free(struct test_guard *g)
{
    munmap(g->base, g->usable + (size_t)sysconf(_SC_PAGESIZE));
}

/* Copies n bytes to end exactly at the guard page; returns the copy. */
static inline uint8_t *test_guard_place(struct test_guard *g, const void *p, size_t n)
{
    if (n > g->usable)
        abort();
    uint8_t *dst = g->base + g->usable - n;
    if (n)
        memcpy(dst, p, n);
    return dst;
}

#endif
