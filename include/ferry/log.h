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

#include "ferry/config.h"

void ferry_log_set_level(enum ferry_log_level lvl);
/* json: one JSON object per line, the key=value pairs as its fields */
void ferry_log_set_json(bool json);
bool ferry_log_enabled(enum ferry_log_level lvl);

void ferry_log(enum ferry_log_level lvl, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Quotes a value for a key=value line when it holds spaces, quotes or
 * control bytes; returns out. */
const char *ferry_log_quote(const char *in, char *out, size_t outlen);

#endif
