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

/* Appends s as a JSON string (quotes included); returns the new length. */
static size_t json_str(char *out, size_t o, size_t cap, const char *s, size_t n)
{
    if (o + 2 >= cap)
        return o;
    out[o++] = '"';
    for (size_t i = 0; i < n && o + 8 < cap; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            out[o++] = '\\';
            out[o++] = (char)ch;
        } else if (ch < 0x20) {
            o += (size_t)snprintf(out + o, cap - o, "\\u%04x", ch);
        } else {
            out[o++] = (char)ch;
        }
    }
    out[o++] = '"';
    return o;
}

/* Rewrites a text line "k=v k=\"v w\" …" (after ts/level/event) as JSON
 * fields. Values stay strings: logs are for reading, not arithmetic. */
static size_t kv_to_json(char *out, size_t o, size_t cap, const char *kv)
{
    const char *p = kv;
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
            for (p++; *p && *p != '"' && vlen < sizeof val - 1; p++) {
                if (*p == '\\' && p[1])
                    p++;
                val[vlen++] = *p;
            }
            if (*p == '"')
                p++;
        } else {
            while (*p && *p != ' ' && vlen < sizeof val - 1)
                val[vlen++] = *p++;
        }
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

void ferry_log(enum ferry_log_level lvl, const char *event, const char *fmt, ...)
{
    if (!ferry_log_enabled(lvl))
        return;
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
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
        va_end(ap);
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

const char *ferry_log_quote(const char *in, char *out, size_t outlen)
{
    bool plain = *in != '\0';
    for (const char *p = in; *p; p++)
        if (*p == ' ' || *p == '"' || *p == '=' || *p == '\\' || (unsigned char)*p < 0x20)
            plain = false;
    if (plain) {
        snprintf(out, outlen, "%s", in);
        return out;
    }
    size_t o = 0;
    if (outlen < 3) {
        if (outlen)
            out[0] = '\0';
        return out;
    }
    out[o++] = '"';
    for (const char *p = in; *p && o + 5 < outlen; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch == '"' || ch == '\\') {
            out[o++] = '\\';
            out[o++] = (char)ch;
        } else if (ch < 0x20) {
            o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", ch);
        } else {
            out[o++] = (char)ch;
        }
    }
    out[o++] = '"';
    out[o] = '\0';
    return out;
}
