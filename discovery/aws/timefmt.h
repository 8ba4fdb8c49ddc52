/* Time formats AWS uses: the SigV4 X-Amz-Date stamp and ISO-8601 UTC
 * timestamps (query-protocol parameters, credential expirations, metric
 * datapoints). Pure functions; thread: any.
 */
#ifndef FERRY_AWS_TIMEFMT_H
#define FERRY_AWS_TIMEFMT_H

#include <stddef.h>
#include <stdint.h>

#define AWS_AMZ_DATE_LEN 16     /* "YYYYMMDDTHHMMSSZ" */
#define AWS_ISO8601_LEN 20      /* "YYYY-MM-DDTHH:MM:SSZ" */

/* Writes "YYYYMMDDTHHMMSSZ" and its NUL (out holds >= 17 bytes). */
void aws_amz_date(int64_t epoch, char out[AWS_AMZ_DATE_LEN + 1]);

/* Writes "YYYY-MM-DDTHH:MM:SSZ" and its NUL (out holds >= 21 bytes). */
void aws_iso8601(int64_t epoch, char out[AWS_ISO8601_LEN + 1]);

/* Parses an ISO-8601 UTC timestamp as AWS sends it: "2024-01-15T12:00:00Z",
 * with optional fractional seconds and a "Z", "+00:00" or "+0000" style
 * offset. Returns 0 and sets *epoch, or -1 if s is not such a timestamp. */
int aws_parse_iso8601(const char *s, int64_t *epoch);

#endif
