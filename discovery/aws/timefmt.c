/* AWS time stamps: SigV4's compact X-Amz-Date and ISO-8601 UTC, both ways.
 * Kept apart from the signer so that credential and metric parsers share
 * one strict parser instead of each calling strptime with its quirks.
 */
#include "timefmt.h"

#include <ctype.h>
#include <stdio.h>
#include <time.h>

static void utc(int64_t epoch, struct tm *tm)
{
    time_t t = (time_t)epoch;
    gmtime_r(&t, tm);
}

void aws_amz_date(int64_t epoch, char out[AWS_AMZ_DATE_LEN + 1])
{
    struct tm tm;
    utc(epoch, &tm);
    strftime(out, AWS_AMZ_DATE_LEN + 1, "%Y%m%dT%H%M%SZ", &tm);
}

void aws_iso8601(int64_t epoch, char out[AWS_ISO8601_LEN + 1])
{
    struct tm tm;
    utc(epoch, &tm);
    strftime(out, AWS_ISO8601_LEN + 1, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Reads exactly n digits; -1 if any is not a digit. */
static int digits(const char **p, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++, (*p)++) {
        if (!isdigit((unsigned char)**p))
            return -1;
        v = v * 10 + (**p - '0');
    }
    return v;
}

static int expect(const char **p, char c)
{
    if (**p != c)
        return -1;
    (*p)++;
    return 0;
}

int aws_parse_iso8601(const char *s, int64_t *epoch)
{
    const char *p = s;
    struct tm tm = {0};
    int y = digits(&p, 4);
    if (y < 0 || expect(&p, '-') < 0)
        return -1;
    int mo = digits(&p, 2);
    if (mo < 1 || mo > 12 || expect(&p, '-') < 0)
        return -1;
    int d = digits(&p, 2);
    if (d < 1 || d > 31 || (*p != 'T' && *p != 't' && *p != ' '))
        return -1;
    p++;
    int h = digits(&p, 2);
    if (h < 0 || h > 23 || expect(&p, ':') < 0)
        return -1;
    int mi = digits(&p, 2);
    if (mi < 0 || mi > 59 || expect(&p, ':') < 0)
        return -1;
    int sec = digits(&p, 2);
    if (sec < 0 || sec > 60)
        return -1;
    if (*p == '.') {                    /* fractional seconds: dropped */
        p++;
        if (!isdigit((unsigned char)*p))
            return -1;
        while (isdigit((unsigned char)*p))
            p++;
    }
    long offset = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p == '-' ? -1 : 1;
        p++;
        int oh = digits(&p, 2);
        if (oh < 0 || oh > 23)
            return -1;
        if (*p == ':')
            p++;
        int om = digits(&p, 2);
        if (om < 0 || om > 59)
            return -1;
        offset = sign * (oh * 3600L + om * 60L);
    } else {
        return -1;                      /* no zone: refuse to guess local time */
    }
    if (*p != '\0')
        return -1;
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec;
    *epoch = (int64_t)timegm(&tm) - offset;
    return 0;
}
