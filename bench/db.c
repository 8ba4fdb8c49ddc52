/* What the database drivers share: filling in a classified error. */
#include "db.h"

#include <stdio.h>
#include <string.h>

void db_err_set(struct db_err *err, enum db_err_kind kind, const char *sqlstate, const char *msg)
{
    err->kind = kind;
    snprintf(err->sqlstate, sizeof err->sqlstate, "%s", sqlstate ? sqlstate : "");
    err->code[0] = '\0';
    snprintf(err->msg, sizeof err->msg, "%s", msg ? msg : "");
    /* libpq messages end in a newline; keep samples on one line */
    for (char *p = err->msg; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    size_t n = strlen(err->msg);
    while (n > 0 && err->msg[n - 1] == ' ')
        err->msg[--n] = '\0';
}
