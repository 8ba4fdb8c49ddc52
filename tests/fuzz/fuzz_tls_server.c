/* libFuzzer target for the TLS engine's server side: the input is fed, in
 * pieces whose size the first byte picks, to a fresh engine on a context
 * with a real certificate, which is read, written to and shut down as a
 * session would. Invariants: no crash, leak or over-read; an error is sticky
 * and has a reason; the bytes held never pass the limit. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/tls.h"
#include "tls_testpki.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { LIMIT = 64 * 1024 };

static struct ferry_tls_ctx *server_ctx;   /* lives for the whole run */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    struct tls_testpki pki;
    char err[256];
    if (tls_testpki_make(&pki) != 0)
        abort();
    server_ctx = ferry_tls_server_ctx_new(pki.server_cert, pki.server_key, FERRY_TLS_V1_2, NULL,
                                          NULL, err, sizeof err);
    tls_testpki_remove(&pki);   /* the context holds what it read */
    if (!server_ctx)
        abort();
    return 0;
}

static void drain(struct ferry_tls *t)
{
    uint8_t out[4096];
    while (ferry_tls_take_out_buf(t, out, sizeof out))
        ;
}

/* Reads until the engine wants more; returns its last result. */
static ssize_t read_all(struct ferry_tls *t)
{
    uint8_t plain[4096];
    ssize_t n;
    while ((n = ferry_tls_read(t, plain, sizeof plain)) > 0)
        if ((size_t)n > sizeof plain)
            abort();
    if (n == FERRY_TLS_ERROR && !ferry_tls_error(t)[0])
        abort();                /* every failure has a reason */
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t piece = (size_t)data[0] * 16 + 1;
    data++, size--;
    char err[256];
    struct ferry_tls *t = ferry_tls_new(server_ctx, NULL, err, sizeof err);
    if (!t)
        abort();
    ferry_tls_set_limit(t, LIMIT);
    ssize_t last = 0;
    for (size_t off = 0; off < size && last == 0; off += piece) {
        size_t n = size - off < piece ? size - off : piece;
        if (ferry_tls_feed(t, data + off, n) != 0) {
            last = FERRY_TLS_ERROR;
            break;
        }
        last = read_all(t);
        if (ferry_tls_buffered(t) > 2 * LIMIT)
            abort();
        drain(t);
    }
    if (last == FERRY_TLS_ERROR && ferry_tls_read(t, err, sizeof err) != FERRY_TLS_ERROR)
        abort();                /* sticky */
    (void)ferry_tls_write(t, "reply", 5);
    (void)ferry_tls_shutdown(t);
    drain(t);
    ferry_tls_free(t);
    return 0;
}
