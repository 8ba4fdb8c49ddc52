/* Structured logging: one line per event, "ts=… level=… event=… key=value…".
 *
 * Values are passed pre-formatted by the caller in the printf tail, so call
 * sites read as the line they produce:
 *     ferry_log(FERRY_LOG_INFO, "listener.bound", "name=%s bind=%s", name, addr);
 * Each line goes out in one write(2), so lines from different threads never
 * interleave. Never pass passwords or secrets: there is no redaction here.
 */
#ifndef FERRY_LOG_H
#define FERRY_LOG_H

#include <stdint.h>

#include "ferry/config.h"

void ferry_log_set_level(enum ferry_log_level lvl);
/* json: one JSON object per line, the key=value pairs as its fields */
void ferry_log_set_json(bool json);
bool ferry_log_enabled(enum ferry_log_level lvl);

void ferry_log(enum ferry_log_level lvl, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Every value that does not come from ferry itself or its config (names and
 * text from clients, servers, HTTP requests, AWS) goes through one of these,
 * so that it cannot end the line or add keys. Both write at most outlen bytes
 * (NUL included), truncating between whole characters, and return out.
 *
 * ferry_log_escape: the text for inside "…": '"' and '\\' get a backslash;
 * control bytes, DEL and bytes that are not UTF-8 become \xNN.
 * ferry_log_quote: a whole value: as is when it is a plain word, else
 * "…" escaped as above (empty, spaces, '=', quotes, '\\', control bytes, DEL,
 * bytes that are not UTF-8). */
const char *ferry_log_escape(const char *in, char *out, size_t outlen);
const char *ferry_log_quote(const char *in, char *out, size_t outlen);

/* Room for an escaped or quoted value of a string of n bytes. */
#define FERRY_LOG_QUOTED_MAX(n) (4 * (n) + 3)

/* Rate limiting for lines a peer can trigger at will (accept failures,
 * refusals, login timeouts): one line per cause per second, however many
 * threads log it. One zero-initialised ferry_log_limit per cause, shared by
 * every thread (its fields are atomics); no setup, no teardown. */
struct ferry_log_limit {
    uint64_t next_ms;       /* atomic: no line before this (monotonic ms); 0 = never logged */
    uint64_t suppressed;    /* atomic: lines dropped since the last one written */
};

#define FERRY_LOG_LIMIT_MS 1000u

/* The decision alone, at now_ms: true when a line may go out now (then
 * *suppressed gets the number of lines dropped since the previous one and
 * the count starts again); false when this one is dropped (counted). Any
 * thread. */
bool ferry_log_limit_pass(struct ferry_log_limit *l, uint64_t now_ms, uint64_t *suppressed);

/* ferry_log() through limiter l at the log clock's time: a line that passes
 * gets " suppressed=N" appended when N lines of its cause were dropped
 * since the previous one (within the last second or so). Any thread. */
void ferry_log_limited(struct ferry_log_limit *l, enum ferry_log_level lvl, const char *event,
                       const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* The clock ferry_log_limited() reads (monotonic milliseconds); NULL
 * restores CLOCK_MONOTONIC. For tests; set it before any thread logs. */
void ferry_log_set_clock(uint64_t (*now_ms)(void));

#endif
