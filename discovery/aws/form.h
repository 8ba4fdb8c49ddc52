/* AWS query-protocol request bodies (application/x-www-form-urlencoded) and
 * the RFC 3986 percent-encoding that both they and the SigV4 canonical forms
 * use. Builders write into a ferry_wbuf (sticky failure: check b->failed once
 * at the end). Pure; thread: owner of the buffer.
 */
#ifndef FERRY_AWS_FORM_H
#define FERRY_AWS_FORM_H

#include <stddef.h>

#include "ferry/wbuf.h"

/* Appends s[0..n) percent-encoded: the unreserved set A-Z a-z 0-9 - _ . ~ as
 * is, every other byte as %XX (uppercase hex; so space is %20, never '+'). */
void aws_uri_encode(struct ferry_wbuf *b, const char *s, size_t n);

/* Starts a body "Action=<action>&Version=<version>". */
void aws_form_begin(struct ferry_wbuf *b, const char *action, const char *version);

/* Appends "&<name>=<value>" with the value percent-encoded. name is written
 * as is: query-protocol member paths (Filters.Filter.1.Name) are unreserved. */
void aws_form_add(struct ferry_wbuf *b, const char *name, const char *value);

/* Same, for a name built printf-style (list members: "X.member.%zu.Id"). */
void aws_form_addf(struct ferry_wbuf *b, const char *value, const char *name_fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
