/* Form-urlencoded bodies for the AWS query protocol (RDS, CloudWatch, STS)
 * and the RFC 3986 percent-encoder shared with the SigV4 canonicaliser: AWS
 * signs exactly these bytes, so there is one encoder, not two.
 */
#include "form.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_' || c == '.' || c == '~';
}

void aws_uri_encode(struct ferry_wbuf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (unreserved(c)) {
            ferry_wbuf_u8(b, c);
        } else {
            char esc[3] = {'%', hex[c >> 4], hex[c & 15]};
            ferry_wbuf_put(b, esc, 3);
        }
    }
}

void aws_form_begin(struct ferry_wbuf *b, const char *action, const char *version)
{
    ferry_wbuf_put(b, "Action=", 7);
    aws_uri_encode(b, action, strlen(action));
    ferry_wbuf_put(b, "&Version=", 9);
    aws_uri_encode(b, version, strlen(version));
}

void aws_form_add(struct ferry_wbuf *b, const char *name, const char *value)
{
    ferry_wbuf_u8(b, '&');
    ferry_wbuf_put(b, name, strlen(name));
    ferry_wbuf_u8(b, '=');
    aws_uri_encode(b, value, strlen(value));
}

void aws_form_addf(struct ferry_wbuf *b, const char *value, const char *name_fmt, ...)
{
    char name[256];
    va_list ap;
    va_start(ap, name_fmt);
    int n = vsnprintf(name, sizeof name, name_fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof name) {
        b->failed = true;               /* a truncated member path would be a wrong request */
        return;
    }
    aws_form_add(b, name, value);
}
