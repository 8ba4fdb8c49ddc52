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

int main(void)
{
    RUN(test_quote);
    RUN(test_text_line);
    RUN(test_json_line);
    RUN(test_json_long_value);
    UNIT_DONE();
}
