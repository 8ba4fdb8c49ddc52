/* Test-only helpers shared by tests/unit/test_mysql_*.c and the fuzz target
 * (not part of ferry_mysql): hex decoding of captured packets. The guard page
 * the tests also use is tests/unit/guard.h, shared with the PostgreSQL tests.
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

#endif
