/* Test-only helpers shared by tests/unit/test_mysql_*.c and the fuzz target
 * (not part of ferry_mysql): hex decoding of captured packets, and a copy of
 * input placed right before a PROT_NONE page so that any over-read faults.
 */
#ifndef FERRY_MY_TEST_SUPPORT_H
#define FERRY_MY_TEST_SUPPORT_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Decodes hex (spaces ignored) into out; returns the byte count. */
static inline size_t my_test_unhex(const char *hex, uint8_t *out, size_t cap)
{
    size_t n = 0;
    for (const char *p = hex; p[0] && p[1] && n < cap;) {
        if (p[0] == ' ') {
            p++;
            continue;
        }
        char pair[3] = {p[0], p[1], 0};
        out[n++] = (uint8_t)strtoul(pair, NULL, 16);
        p += 2;
    }
    return n;
}

/* A region of `usable` bytes followed by a PROT_NONE page. */
struct my_guard {
    uint8_t *base;              /* owned mapping */
    size_t usable;              /* bytes before the guard page */
};

static inline int my_guard_init(struct my_guard *g, size_t usable)
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

static inline void my_guard_free(struct my_guard *g)
{
    munmap(g->base, g->usable + (size_t)sysconf(_SC_PAGESIZE));
}

/* Copies n bytes to end exactly at the guard page; returns the copy. */
static inline uint8_t *my_guard_place(struct my_guard *g, const void *p, size_t n)
{
    if (n > g->usable)
        abort();
    uint8_t *dst = g->base + g->usable - n;
    if (n)
        memcpy(dst, p, n);
    return dst;
}

#endif
