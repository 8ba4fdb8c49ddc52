/* Recognises `KILL [CONNECTION|QUERY] <id>` in COM_QUERY text, so that the
 * session can replace the ferry connection id a client sees with the
 * backend's id. A tiny lexer: words, digits, ';', and comments treated as
 * blanks (the contents of executable comments are read as code, since the
 * server runs them).
 */
#include "codec.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

struct lexer {
    const uint8_t *p;           /* view: next character */
    const uint8_t *end;
};

static bool starts_with(const struct lexer *lx, const char *s)
{
    size_t n = strlen(s);
    return (size_t)(lx->end - lx->p) >= n && memcmp(lx->p, s, n) == 0;
}

/* Skips to just past `stop` (or to the end). */
static void skip_past(struct lexer *lx, const char *stop)
{
    size_t n = strlen(stop);
    while (lx->p < lx->end && !starts_with(lx, stop))
        lx->p++;
    lx->p = (size_t)(lx->end - lx->p) >= n ? lx->p + n : lx->end;
}

/* Skips one blank or comment; false when the next character is code. */
static bool skip_one_blank(struct lexer *lx)
{
    if (lx->p >= lx->end)
        return false;
    if (isspace(*lx->p)) {
        lx->p++;
    } else if (starts_with(lx, "/*!")) {        /* executable: its body is code */
        lx->p += 3;
        while (lx->p < lx->end && isdigit(*lx->p))
            lx->p++;
    } else if (starts_with(lx, "*/")) {         /* end of an executable comment */
        lx->p += 2;
    } else if (starts_with(lx, "/*")) {
        skip_past(lx, "*/");
    } else if (*lx->p == '#' || (starts_with(lx, "--") && (lx->end - lx->p == 2 ||
                                                         isspace(lx->p[2])))) {
        skip_past(lx, "\n");
    } else {
        return false;
    }
    return true;
}

static void skip_blanks(struct lexer *lx)
{
    while (skip_one_blank(lx))
        ;
}

/* Reads one word (letters, digits, '_'); empty at an operator or the end. */
static struct ferry_slice next_word(struct lexer *lx)
{
    skip_blanks(lx);
    const uint8_t *start = lx->p;
    while (lx->p < lx->end && (isalnum(*lx->p) || *lx->p == '_'))
        lx->p++;
    return (struct ferry_slice){start, (size_t)(lx->p - start)};
}

static bool word_is(struct ferry_slice w, const char *kw)
{
    return w.len == strlen(kw) && strncasecmp((const char *)w.p, kw, w.len) == 0;
}

/* A decimal id that fits in 64 bits; false otherwise. */
static bool parse_id(struct ferry_slice w, uint64_t *id)
{
    if (w.len == 0)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < w.len; i++) {
        if (!isdigit(w.p[i]) || v > (UINT64_MAX - (uint64_t)(w.p[i] - '0')) / 10)
            return false;
        v = v * 10 + (uint64_t)(w.p[i] - '0');
    }
    *id = v;
    return true;
}

/* After the id: only blanks and semicolons may remain. */
static bool only_blanks_left(struct lexer *lx)
{
    for (;;) {
        skip_blanks(lx);
        if (lx->p < lx->end && *lx->p == ';')
            lx->p++;
        else
            return lx->p == lx->end;
    }
}

enum my_kill_kind my_kill_parse(const uint8_t *sql, size_t n, uint64_t *id)
{
    struct lexer lx = {sql, sql + n};
    *id = 0;
    if (!word_is(next_word(&lx), "KILL"))
        return MY_KILL_NONE;
    enum my_kill_kind kind = MY_KILL_CONNECTION;
    struct ferry_slice w = next_word(&lx);
    if (word_is(w, "QUERY") || word_is(w, "CONNECTION")) {
        kind = word_is(w, "QUERY") ? MY_KILL_QUERY : MY_KILL_CONNECTION;
        w = next_word(&lx);
    }
    if (!parse_id(w, id) || !only_blanks_left(&lx)) {
        *id = 0;
        return MY_KILL_UNPARSED;
    }
    return kind;
}
