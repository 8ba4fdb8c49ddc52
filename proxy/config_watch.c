/* Watching the config file (watch_config): inotify on the directory that
 * holds the config path, because Kubernetes updates a ConfigMap volume by
 * renaming a new `..data` symlink over the old one (ferry.json ->
 * ..data/ferry.json): the file's own inode never changes, and a watch on it
 * would follow the old copy. Any event in the directory (re)starts a short
 * timer, so a burst of events becomes one look; the look hashes the content
 * of the resolved file and calls back only when it differs from the last
 * content seen. Main thread only.
 */
#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "proxy.h"

enum { DEBOUNCE_MS = 200 };

struct px_config_watch {
    uv_fs_event_t event;
    uv_timer_t debounce;
    int open_handles;           /* closed handles still to be called back */
    char *path;                 /* the config path as given (may be a symlink) */
    char *dir;                  /* the directory watched */
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned digest_len;        /* 0: the content has not been read */
    void (*on_change)(void *arg);
    void *arg;
};

/* SHA-256 of the file path resolves to; false when it cannot be read. */
static bool hash_file(const char *path, unsigned char *md, unsigned *mdlen)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return false;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    bool ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1;
    unsigned char buf[8192];
    size_t n;
    while (ok && (n = fread(buf, 1, sizeof buf, f)) > 0)
        ok = EVP_DigestUpdate(ctx, buf, n) == 1;
    ok = ok && !ferror(f) && EVP_DigestFinal_ex(ctx, md, mdlen) == 1;
    EVP_MD_CTX_free(ctx);
    fclose(f);
    return ok;
}

static void on_debounced(uv_timer_t *t)
{
    struct px_config_watch *w = t->data;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    /* unreadable (being replaced, or removed): wait for the next event */
    if (!hash_file(w->path, md, &mdlen))
        return;
    if (mdlen == w->digest_len && memcmp(md, w->digest, mdlen) == 0)
        return;
    memcpy(w->digest, md, mdlen);
    w->digest_len = mdlen;
    char esc[FERRY_LOG_QUOTED_MAX(256)];
    ferry_log(FERRY_LOG_INFO, "config.changed", "path=\"%s\" action=reload",
              ferry_log_escape(w->path, esc, sizeof esc));
    w->on_change(w->arg);
}

static void on_event(uv_fs_event_t *h, const char *filename, int events, int status)
{
    (void)filename;
    (void)events;
    (void)status;
    struct px_config_watch *w = h->data;
    uv_timer_start(&w->debounce, on_debounced, DEBOUNCE_MS, 0);
}

static void watch_free(struct px_config_watch *w)
{
    free(w->path);
    free(w->dir);
    free(w);
}

static void on_closed(uv_handle_t *h)
{
    struct px_config_watch *w = h->data;
    if (--w->open_handles == 0)
        watch_free(w);
}

struct px_config_watch *px_config_watch_start(uv_loop_t *loop, const char *path,
                                              void (*on_change)(void *), void *arg)
{
    struct px_config_watch *w = calloc(1, sizeof *w);
    char *copy = strdup(path);
    if (!w || !copy) {
        free(copy);
        free(w);
        ferry_log(FERRY_LOG_ERROR, "config.watch_failed", "error=\"out of memory\"");
        return NULL;
    }
    w->path = strdup(path);
    w->dir = strdup(dirname(copy));
    free(copy);
    w->on_change = on_change;
    w->arg = arg;
    char esc[FERRY_LOG_QUOTED_MAX(256)];
    if (!w->path || !w->dir) {
        watch_free(w);
        ferry_log(FERRY_LOG_ERROR, "config.watch_failed", "error=\"out of memory\"");
        return NULL;
    }
    /* the content in force now: the baseline a change is measured from */
    px_config_watch_rebase(w);
    uv_timer_init(loop, &w->debounce);
    w->debounce.data = w;
    w->open_handles = 1;
    uv_fs_event_init(loop, &w->event);
    w->event.data = w;
    w->open_handles++;
    int rc = uv_fs_event_start(&w->event, on_event, w->dir, 0);
    if (rc != 0) {
        ferry_log(FERRY_LOG_WARN, "config.watch_failed",
                  "dir=\"%s\" error=\"%s\" action=\"reload with SIGHUP or POST /v1/reload\"",
                  ferry_log_escape(w->dir, esc, sizeof esc), uv_strerror(rc));
        px_config_watch_stop(w);
        return NULL;
    }
    ferry_log(FERRY_LOG_INFO, "config.watching", "dir=\"%s\"",
              ferry_log_escape(w->dir, esc, sizeof esc));
    return w;
}

void px_config_watch_rebase(struct px_config_watch *w)
{
    if (w && !hash_file(w->path, w->digest, &w->digest_len))
        w->digest_len = 0;
}

void px_config_watch_stop(struct px_config_watch *w)
{
    if (!w)
        return;
    uv_close((uv_handle_t *)&w->debounce, on_closed);
    uv_close((uv_handle_t *)&w->event, on_closed);
}
