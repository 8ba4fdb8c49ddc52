/* Log lines: quoting and escaping of untrusted values (quotes, backslashes,
 * control bytes, bytes that are not UTF-8, truncation between whole escapes),
 * and the JSON format: one object per line, escapes undone, no repeated key. */
#include "ferry/log.h"
#include "unit.h"

#include <fcntl.h>
#include <unistd.h>

static char got[8192];

/* Runs one ferry_log call with stderr on a pipe; the bytes written land in got. */
#define CAPTURE(call)                                                                      \
    do {                                                                                   \
        int fds_[2], saved_ = dup(STDERR_FILENO);                                          \
        ASSERT_TRUE(pipe(fds_) == 0 && saved_ >= 0);                                       \
        dup2(fds_[1], STDERR_FILENO);                                                      \
        call;                                                                              \
        dup2(saved_, STDERR_FILENO);                                                       \
        close(saved_);                                                                     \
        close(fds_[1]);                                                                    \
        ssize_t n_ = read(fds_[0], got, sizeof got - 1);                                   \
        close(fds_[0]);                                                                    \
        got[n_ > 0 ? n_ : 0] = '\0';                                                       \
    } while (0)

static void test_quote(void)
{
    char out[64];
    ASSERT_EQ_STR(ferry_log_quote("plain-word_1.2", out, sizeof out), "plain-word_1.2");
    ASSERT_EQ_STR(ferry_log_quote("caf\xc3\xa9", out, sizeof out), "caf\xc3\xa9");  /* UTF-8 */
    ASSERT_EQ_STR(ferry_log_quote("", out, sizeof out), "\"\"");
    ASSERT_EQ_STR(ferry_log_quote("a b", out, sizeof out), "\"a b\"");
    ASSERT_EQ_STR(ferry_log_quote("k=v", out, sizeof out), "\"k=v\"");
    ASSERT_EQ_STR(ferry_log_quote("a\nevent=x", out, sizeof out), "\"a\\x0aevent=x\"");
    ASSERT_EQ_STR(ferry_log_quote("q\"b\\", out, sizeof out), "\"q\\\"b\\\\\"");
    ASSERT_EQ_STR(ferry_log_quote("\xff\xc3(\x7f\x1b", out, sizeof out),
                  "\"\\xff\\xc3(\\x7f\\x1b\"");
    ASSERT_EQ_STR(ferry_log_quote("\xed\xa0\x80", out, sizeof out), "\"\\xed\\xa0\\x80\""); /* surrogate */
    /* truncated between whole escapes, still closed */
    ASSERT_EQ_STR(ferry_log_quote("ab\n\n\n", out, 10), "\"ab\\x0a\"");
    ASSERT_EQ_STR(ferry_log_escape("ab\n\"", out, 7), "ab\\x0a");
    ASSERT_EQ_STR(ferry_log_escape("x\"y", out, sizeof out), "x\\\"y");
}

static void test_text_line(void)
{
    char esc[64];
    ferry_log_set_json(false);
    CAPTURE(ferry_log(FERRY_LOG_INFO, "session.failed", "user=%s reason=\"%s\"",
                      ferry_log_quote("u\nts=1 level=error event=forged", esc, sizeof esc),
                      "fixed"));
    ASSERT_TRUE(strchr(got, '\n') == got + strlen(got) - 1);     /* one line */
    ASSERT_TRUE(strstr(got, " event=session.failed user=\"u\\x0ats=1 level=error "
                            "event=forged\" reason=\"fixed\"\n") != NULL);
}

static void test_json_line(void)
{
    char esc[64];
    ferry_log_set_json(true);
    CAPTURE(ferry_log(FERRY_LOG_WARN, "a.b", "user=%s level=forged event=forged k=1 k=2 v=\"%s\"",
                      ferry_log_quote("\"x\\\n\xff", esc, sizeof esc), "caf\xc3\xa9"));
    ferry_log_set_json(false);
    ASSERT_TRUE(strchr(got, '\n') == got + strlen(got) - 1);
    ASSERT_TRUE(strncmp(got, "{\"ts\":\"", 7) == 0);
    ASSERT_TRUE(strstr(got, "\",\"level\":\"warn\",\"event\":\"a.b\",\"user\":\"\\\"x\\\\\\u000a\\\\xff\","
                            "\"k\":\"1\",\"v\":\"caf\xc3\xa9\"}\n") != NULL);
    ASSERT_TRUE(strstr(got, "forged") == NULL);     /* a repeated key is dropped */
}

/* A quoted value longer than the converter's value buffer is consumed whole:
 * its tail never turns into keys. */
static void test_json_long_value(void)
{
    char big[1600], esc[FERRY_LOG_QUOTED_MAX(sizeof big)];
    memset(big, 'a', sizeof big);
    strcpy(big + 1200, "\" event=forged x=\"");
    ferry_log_set_json(true);
    CAPTURE(ferry_log(FERRY_LOG_INFO, "e", "v=%s after=1", ferry_log_quote(big, esc, sizeof esc)));
    ferry_log_set_json(false);
    ASSERT_TRUE(strchr(got, '\n') == got + strlen(got) - 1);
    ASSERT_TRUE(strstr(got, "\"event\":\"forged\"") == NULL && strstr(got, "\"x\":") == NULL);
    ASSERT_TRUE(strstr(got, ",\"after\":\"1\"}\n") != NULL);
}

/* ---- rate limiting, on a clock the test moves ---- */

static uint64_t fake_now;

static uint64_t fake_clock(void)
{
    return fake_now;
}

/* The decision: the first line passes, then at most one per second, and
 * the one that passes says how many were dropped before it. */
static void test_limit_pass(void)
{
    struct ferry_log_limit l = {0};
    uint64_t dropped = 99;
    ASSERT_TRUE(ferry_log_limit_pass(&l, 0, &dropped));     /* time 0 is a time too */
    ASSERT_EQ_INT(dropped, 0);
    for (uint64_t t = 0; t < 1000; t += 10)
        ASSERT_TRUE(!ferry_log_limit_pass(&l, t, &dropped));
    ASSERT_TRUE(ferry_log_limit_pass(&l, 1000, &dropped));
    ASSERT_EQ_INT(dropped, 100);
    ASSERT_TRUE(!ferry_log_limit_pass(&l, 1999, &dropped));
    ASSERT_TRUE(ferry_log_limit_pass(&l, 60000, &dropped));  /* a quiet minute later */
    ASSERT_EQ_INT(dropped, 1);
    ASSERT_TRUE(ferry_log_limit_pass(&l, 61000, &dropped));
    ASSERT_EQ_INT(dropped, 0);
}

/* The lines: 10,000 attempts over 2.5 s write 3 lines (at 5000, 6000 and
 * 7000 ms); the 2nd and 3rd carry the count of those dropped since the one
 * before; another cause is not held up meanwhile. */
static void test_limited_lines(void)
{
    static struct ferry_log_limit emfile, other;
    ferry_log_set_json(false);
    ferry_log_set_clock(fake_clock);
    int lines = 0;
    static char seen[3][sizeof got];
    for (int i = 0; i < 10000; i++) {
        fake_now = 5000 + (uint64_t)i / 4;      /* 4 attempts per ms */
        CAPTURE(ferry_log_limited(&emfile, FERRY_LOG_WARN, "listener.accept_failed",
                                  "listener=pg error=%s", "EMFILE"));
        if (got[0]) {
            ASSERT_TRUE(lines < 3);
            memcpy(seen[lines++], got, sizeof got);
        }
    }
    CAPTURE(ferry_log_limited(&other, FERRY_LOG_WARN, "listener.accept_failed", "error=%s", "x"));
    ferry_log_set_clock(NULL);
    ASSERT_TRUE(strstr(got, " event=listener.accept_failed error=x\n") != NULL);
    ASSERT_EQ_INT(lines, 3);
    ASSERT_TRUE(strstr(seen[0], " event=listener.accept_failed listener=pg error=EMFILE\n"));
    ASSERT_TRUE(strstr(seen[1], " listener=pg error=EMFILE suppressed=3999\n"));
    ASSERT_TRUE(strstr(seen[2], " listener=pg error=EMFILE suppressed=3999\n"));
    ASSERT_TRUE(strchr(seen[1], '\n') == seen[1] + strlen(seen[1]) - 1);  /* one line */
}

int main(void)
{
    RUN(test_quote);
    RUN(test_text_line);
    RUN(test_json_line);
    RUN(test_json_long_value);
    RUN(test_limit_pass);
    RUN(test_limited_lines);
    UNIT_DONE();
}
