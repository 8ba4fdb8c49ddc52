/* Structured key=value log lines on stderr, one write(2) per line so that
 * worker threads never interleave. The level is a process-wide atomic.
 */
#include "ferry/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int log_level = FERRY_LOG_INFO;
static int log_json;

void ferry_log_set_json(bool json)
{
    __atomic_store_n(&log_json, json ? 1 : 0, __ATOMIC_RELAXED);
}

/* Length of the valid UTF-8 sequence at s (n bytes available), or 0 when
 * the bytes there are not one (overlong, surrogate, past U+10FFFF, cut). */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len = c < 0x80 ? 1 : c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3
               : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
    if (!len || len > n)
        return 0;
    for (size_t i = 1; i < len; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    if ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] > 0x9f) || (c == 0xf0 && s[1] < 0x90) ||
        (c == 0xf4 && s[1] > 0x8f))
        return 0;
    return len;
}

/* Appends s as a JSON string (quotes included); returns the new length.
 * Control bytes become \u00XX; bytes that are not UTF-8 become the text
 * "\xNN" (JSON has no raw bytes), as in the text format. */
static size_t json_str(char *out, size_t o, size_t cap, const char *s, size_t n)
{
    if (o + 2 >= cap)
        return o;
    out[o++] = '"';
    for (size_t i = 0; i < n && o + 8 < cap;) {
        const unsigned char *u = (const unsigned char *)s + i;
        size_t len = utf8_len(u, n - i);
        if (len > 1) {
            if (o + len + 8 >= cap)
                break;
            memcpy(out + o, u, len);
            o += len, i += len;
            continue;
        }
        unsigned char ch = u[0];
        if (ch == '"' || ch == '\\') {
            out[o++] = '\\';
            out[o++] = (char)ch;
        } else if (ch < 0x20 || ch == 0x7f) {
            o += (size_t)snprintf(out + o, cap - o, "\\u%04x", ch);
        } else if (!len) {
            o += (size_t)snprintf(out + o, cap - o, "\\\\x%02x", ch);
        } else {
            out[o++] = (char)ch;
        }
        i++;
    }
    out[o++] = '"';
    return o;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* Rewrites a text line "k=v k=\"v w\" …" (after ts/level/event) as JSON
 * fields, undoing ferry_log_escape in quoted values. Values stay strings:
 * logs are for reading, not arithmetic. A key already written is dropped,
 * so nothing can override ts, level or event. */
static size_t kv_to_json(char *out, size_t o, size_t cap, const char *kv)
{
    const char *p = kv;
    struct { const char *k; size_t n; } seen[64];
    size_t nseen = 0;
    while (*p && o + 16 < cap) {
        while (*p == ' ')
            p++;
        const char *k = p;
        while (*p && *p != '=' && *p != ' ')
            p++;
        size_t klen = (size_t)(p - k);
        if (!klen || *p != '=') {
            while (*p && *p != ' ')
                p++;
            continue;
        }
        p++;
        char val[1024];
        size_t vlen = 0;
        if (*p == '"') {
            /* the whole quoted value is consumed, even past what val holds */
            for (p++; *p && *p != '"'; p++) {
                char ch = *p;
                if (*p == '\\' && p[1] == 'x' && hexval(p[2]) >= 0 && hexval(p[3]) >= 0) {
                    ch = (char)(hexval(p[2]) << 4 | hexval(p[3]));
                    p += 3;
                } else if (*p == '\\' && p[1]) {
                    ch = *++p;
                }
                if (vlen < sizeof val)
                    val[vlen++] = ch;
            }
            if (*p == '"')
                p++;
        } else {
            while (*p && *p != ' ') {
                if (vlen < sizeof val)
                    val[vlen++] = *p;
                p++;
            }
        }
        bool dup = false;
        for (size_t i = 0; i < nseen && !dup; i++)
            dup = seen[i].n == klen && memcmp(seen[i].k, k, klen) == 0;
        if (dup)
            continue;
        if (nseen < sizeof seen / sizeof seen[0])
            seen[nseen].k = k, seen[nseen++].n = klen;
        out[o++] = ',';
        o = json_str(out, o, cap, k, klen);
        out[o++] = ':';
        o = json_str(out, o, cap, val, vlen);
    }
    return o;
}

void ferry_log_set_level(enum ferry_log_level lvl)
{
    __atomic_store_n(&log_level, (int)lvl, __ATOMIC_RELAXED);
}

bool ferry_log_enabled(enum ferry_log_level lvl)
{
    return (int)lvl >= __atomic_load_n(&log_level, __ATOMIC_RELAXED);
}

/* One whole line: the caller's text (fmt + ap) and then tail (NULL: none). */
static void log_line(enum ferry_log_level lvl, const char *event, const char *tail,
                     const char *fmt, va_list ap)
{
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s event=%s",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, ferry_log_level_name(lvl), event);
    if (n < 0)
        return;
    if (fmt && *fmt && (size_t)n < sizeof line - 2) {
        line[n++] = ' ';
        int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
        if (m > 0)
            n += m;
    }
    if (tail && (size_t)n < sizeof line - 2) {
        int m = snprintf(line + n, sizeof line - (size_t)n, "%s", tail);
        if (m > 0)
            n += m;
    }
    if ((size_t)n > sizeof line - 2)
        n = (int)sizeof line - 2;   /* truncated: still one whole line */
    line[n] = '\0';
    if (__atomic_load_n(&log_json, __ATOMIC_RELAXED)) {
        char js[4096];
        size_t o = 0;
        js[o++] = '{';
        o = kv_to_json(js, o, sizeof js - 3, line);
        js[1] = '{';    /* the first field's comma becomes the brace */
        memmove(js, js + 1, o - 1);
        o--;
        js[o++] = '}';
        js[o++] = '\n';
        ssize_t w = write(STDERR_FILENO, js, o);
        (void)w;
        return;
    }
    line[n++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w;    /* nowhere to report a failed log write */
}

void ferry_log(enum ferry_log_level lvl, const char *event, const char *fmt, ...)
{
    if (!ferry_log_enabled(lvl))
        return;
    va_list ap;
    va_start(ap, fmt);
    log_line(lvl, event, NULL, fmt, ap);
    va_end(ap);
}

/* ---- rate limiting ---- */

static uint64_t monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t (*log_clock)(void) = monotonic_ms;

void ferry_log_set_clock(uint64_t (*now_ms)(void))
{
    log_clock = now_ms ? now_ms : monotonic_ms;
}

bool ferry_log_limit_pass(struct ferry_log_limit *l, uint64_t now_ms, uint64_t *suppressed)
{
    uint64_t next = __atomic_load_n(&l->next_ms, __ATOMIC_RELAXED);
    /* one thread wins the slot; the others (and everyone until next) count */
    if ((next && now_ms < next) ||
        !__atomic_compare_exchange_n(&l->next_ms, &next, now_ms + FERRY_LOG_LIMIT_MS, false,
                                     __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
        __atomic_add_fetch(&l->suppressed, 1, __ATOMIC_RELAXED);
        return false;
    }
    *suppressed = __atomic_exchange_n(&l->suppressed, 0, __ATOMIC_RELAXED);
    return true;
}

void ferry_log_limited(struct ferry_log_limit *l, enum ferry_log_level lvl, const char *event,
                       const char *fmt, ...)
{
    uint64_t dropped = 0;
    if (!ferry_log_enabled(lvl) || !ferry_log_limit_pass(l, log_clock(), &dropped))
        return;
    char tail[48] = "";
    if (dropped)
        snprintf(tail, sizeof tail, " suppressed=%llu", (unsigned long long)dropped);
    va_list ap;
    va_start(ap, fmt);
    log_line(lvl, event, tail, fmt, ap);
    va_end(ap);
}

const char *ferry_log_escape(const char *in, char *out, size_t outlen)
{
    if (!outlen)
        return out;
    size_t o = 0, n = strlen(in);
    for (size_t i = 0; i < n;) {
        const unsigned char *u = (const unsigned char *)in + i;
        size_t len = utf8_len(u, n - i);
        bool raw = len > 1 || (len == 1 && *u >= 0x20 && *u != 0x7f && *u != '"' && *u != '\\');
        size_t need = raw ? len : *u == '"' || *u == '\\' ? 2 : 4;
        if (o + need >= outlen)
            break;      /* truncated between two whole characters or escapes */
        if (raw)
            memcpy(out + o, u, len), i += len, o += len;
        else if (*u == '"' || *u == '\\')
            out[o++] = '\\', out[o++] = (char)*u, i++;
        else
            o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", *u), i++;
    }
    out[o] = '\0';
    return out;
}

const char *ferry_log_quote(const char *in, char *out, size_t outlen)
{
    bool plain = *in != '\0';
    size_t n = strlen(in);
    for (size_t i = 0; i < n && plain;) {
        const unsigned char *u = (const unsigned char *)in + i;
        size_t len = utf8_len(u, n - i);
        plain = len > 1 || (len == 1 && *u > 0x20 && *u != 0x7f && *u != '"' && *u != '=' &&
                            *u != '\\');
        i += len ? len : 1;
    }
    if (plain && n < outlen) {
        memcpy(out, in, n + 1);
        return out;
    }
    if (outlen < 3) {
        if (outlen)
            out[0] = '\0';
        return out;
    }
    out[0] = '"';
    ferry_log_escape(in, out + 1, outlen - 2);
    size_t o = strlen(out);
    out[o++] = '"';
    out[o] = '\0';
    return out;
}
