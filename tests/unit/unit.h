/* A small unit-test harness: TEST() functions registered in main via RUN(),
 * ASSERT macros that print both values and the line, and a summary line in
 * the "N passed, N failed" form that CI reads. */
#ifndef FERRY_UNIT_H
#define FERRY_UNIT_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int unit_failed_asserts;
static int unit_passed, unit_failed;

#define ASSERT_TRUE(c)                                                                     \
    do {                                                                                   \
        if (!(c)) {                                                                        \
            fprintf(stderr, "  %s:%d: assertion failed: %s\n", __FILE__, __LINE__, #c);    \
            unit_failed_asserts++;                                                         \
            return;                                                                        \
        }                                                                                  \
    } while (0)

#define ASSERT_EQ_INT(a, b)                                                                \
    do {                                                                                   \
        long long a_ = (long long)(a), b_ = (long long)(b);                                \
        if (a_ != b_) {                                                                    \
            fprintf(stderr, "  %s:%d: %s == %s: %lld != %lld\n", __FILE__, __LINE__, #a, #b, \
                    a_, b_);                                                               \
            unit_failed_asserts++;                                                         \
            return;                                                                        \
        }                                                                                  \
    } while (0)

#define ASSERT_EQ_STR(a, b)                                                                \
    do {                                                                                   \
        const char *a_ = (a), *b_ = (b);                                                   \
        if (!a_ || !b_ || strcmp(a_, b_) != 0) {                                           \
            fprintf(stderr, "  %s:%d: %s == %s:\n    got:  \"%s\"\n    want: \"%s\"\n",      \
                    __FILE__, __LINE__, #a, #b, a_ ? a_ : "(null)", b_ ? b_ : "(null)");    \
            unit_failed_asserts++;                                                         \
            return;                                                                        \
        }                                                                                  \
    } while (0)

#define RUN(fn)                                                                            \
    do {                                                                                   \
        int before_ = unit_failed_asserts;                                                 \
        fn();                                                                              \
        if (unit_failed_asserts == before_) {                                              \
            unit_passed++;                                                                 \
        } else {                                                                           \
            unit_failed++;                                                                 \
            fprintf(stderr, "FAIL %s\n", #fn);                                             \
        }                                                                                  \
    } while (0)

#define UNIT_DONE()                                                                        \
    do {                                                                                   \
        printf("%d passed, %d failed\n", unit_passed, unit_failed);                        \
        return unit_failed ? 1 : 0;                                                        \
    } while (0)

#endif
