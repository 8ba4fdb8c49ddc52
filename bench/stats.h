/* Per-client counters the load generator merges at the end: errors by class
 * (connect, lost, or the server's SQLSTATE, with one sample message each) and
 * growable arrays of write ids. Owned by one thread each, so no locks. */
#ifndef BENCH_STATS_H
#define BENCH_STATS_H

#include <stdint.h>
#include <stdio.h>

#include "db.h"

#define ERRTAB_MAX 32

struct errcount {
    char key[12];       /* "connect", "lost", a 5-character SQLSTATE or a driver
                           code ("my1290") */
    uint64_t n;
    char sample[200];
};

struct errtab {
    struct errcount e[ERRTAB_MAX];
    unsigned used;
    uint64_t other;     /* errors of classes beyond ERRTAB_MAX */
};

void errtab_add(struct errtab *t, const char *key, uint64_t n, const char *sample);
void errtab_note(struct errtab *t, const struct db_err *err);
void errtab_merge(struct errtab *into, const struct errtab *from);
uint64_t errtab_total(const struct errtab *t);
/* {"total":N,"connect":N,"lost":N,"sqlstate":{...},"sqlstate_class":{...},
 *  "codes":{...},"samples":{...}} */
void errtab_write_json(const struct errtab *t, FILE *out);

struct idvec {
    int64_t *v;
    size_t n, cap;
};

void idvec_push(struct idvec *iv, int64_t id);
void idvec_free(struct idvec *iv);

void json_string(FILE *out, const char *s);

#endif
