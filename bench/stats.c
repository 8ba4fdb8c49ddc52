/* Error table and id arrays for the load generator: see stats.h. */
#include "stats.h"

#include <stdlib.h>
#include <string.h>

static struct errcount *errtab_find(struct errtab *t, const char *key)
{
    for (unsigned i = 0; i < t->used; i++)
        if (strcmp(t->e[i].key, key) == 0)
            return &t->e[i];
    if (t->used == ERRTAB_MAX)
        return NULL;
    struct errcount *e = &t->e[t->used++];
    snprintf(e->key, sizeof e->key, "%s", key);
    return e;
}

void errtab_add(struct errtab *t, const char *key, uint64_t n, const char *sample)
{
    struct errcount *e = errtab_find(t, key);
    if (!e) {
        t->other += n;
        return;
    }
    e->n += n;
    if (!e->sample[0] && sample)
        snprintf(e->sample, sizeof e->sample, "%s", sample);
}

void errtab_note(struct errtab *t, const struct db_err *err)
{
    const char *key = err->kind == DB_ERR_CONNECT ? "connect"
                    : err->kind == DB_ERR_LOST    ? "lost"
                    : err->code[0]                ? err->code
                                                  : err->sqlstate;
    errtab_add(t, key, 1, err->msg);
}

void errtab_merge(struct errtab *into, const struct errtab *from)
{
    for (unsigned i = 0; i < from->used; i++)
        errtab_add(into, from->e[i].key, from->e[i].n, from->e[i].sample);
    into->other += from->other;
}

uint64_t errtab_total(const struct errtab *t)
{
    uint64_t n = t->other;
    for (unsigned i = 0; i < t->used; i++)
        n += t->e[i].n;
    return n;
}

static int is_sqlstate(const char *key)
{
    return strlen(key) == 5;
}

static uint64_t errtab_count(const struct errtab *t, const char *key)
{
    for (unsigned i = 0; i < t->used; i++)
        if (strcmp(t->e[i].key, key) == 0)
            return t->e[i].n;
    return 0;
}

/* "key":n for every SQLSTATE (full code, or its 2-character class when
 * class_only), classes summed in order of first appearance */
static void write_sqlstates(const struct errtab *t, FILE *out, int class_only)
{
    struct errtab classes = {0};
    for (unsigned i = 0; i < t->used; i++) {
        if (!is_sqlstate(t->e[i].key))
            continue;
        char key[6];
        snprintf(key, class_only ? 3 : 6, "%s", t->e[i].key);
        errtab_add(&classes, key, t->e[i].n, NULL);
    }
    fputc('{', out);
    for (unsigned i = 0; i < classes.used; i++)
        fprintf(out, "%s\"%s\":%llu", i ? "," : "", classes.e[i].key,
                (unsigned long long)classes.e[i].n);
    fputc('}', out);
}

/* "key":n for every driver code ("my1290"): neither a class nor a SQLSTATE */
static void write_codes(const struct errtab *t, FILE *out)
{
    fputc('{', out);
    int first = 1;
    for (unsigned i = 0; i < t->used; i++) {
        const char *k = t->e[i].key;
        if (is_sqlstate(k) || strcmp(k, "connect") == 0 || strcmp(k, "lost") == 0)
            continue;
        fprintf(out, "%s\"%s\":%llu", first ? "" : ",", k, (unsigned long long)t->e[i].n);
        first = 0;
    }
    fputc('}', out);
}

static void write_samples(const struct errtab *t, FILE *out)
{
    fputc('{', out);
    for (unsigned i = 0; i < t->used; i++) {
        fprintf(out, "%s\"%s\":", i ? "," : "", t->e[i].key);
        json_string(out, t->e[i].sample);
    }
    fputc('}', out);
}

void errtab_write_json(const struct errtab *t, FILE *out)
{
    fprintf(out, "{\"total\":%llu,\"connect\":%llu,\"lost\":%llu,\"other\":%llu,\"sqlstate\":",
            (unsigned long long)errtab_total(t), (unsigned long long)errtab_count(t, "connect"),
            (unsigned long long)errtab_count(t, "lost"), (unsigned long long)t->other);
    write_sqlstates(t, out, 0);
    fputs(",\"sqlstate_class\":", out);
    write_sqlstates(t, out, 1);
    fputs(",\"codes\":", out);
    write_codes(t, out);
    fputs(",\"samples\":", out);
    write_samples(t, out);
    fputc('}', out);
}

void idvec_push(struct idvec *iv, int64_t id)
{
    if (iv->n == iv->cap) {
        size_t cap = iv->cap ? iv->cap * 2 : 1024;
        int64_t *v = realloc(iv->v, cap * sizeof *v);
        if (!v) {
            fprintf(stderr, "loadgen: out of memory for write ids\n");
            exit(1);
        }
        iv->v = v;
        iv->cap = cap;
    }
    iv->v[iv->n++] = id;
}

void idvec_free(struct idvec *iv)
{
    free(iv->v);
    *iv = (struct idvec){0};
}

void json_string(FILE *out, const char *s)
{
    fputc('"', out);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(out, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(out, "\\u%04x", ch);
        else
            fputc(ch, out);
    }
    fputc('"', out);
}
