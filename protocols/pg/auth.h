/* PostgreSQL authentication: SCRAM-SHA-256 (RFC 5802 / RFC 7677) as server
 * (ferry verifying a client) and as client (ferry logging into a backend),
 * and MD5 both ways. Each SASL step is a pure function of the peer's message
 * and the exchange state; the caller moves the bytes in the
 * AuthenticationSASL* / SASLInitialResponse / SASLResponse messages.
 *
 * No channel binding: ferry terminates TLS, so it offers only SCRAM-SHA-256
 * and accepts the gs2 headers "n,," and "y,,"; a client asking for binding
 * ("p=") or an authorization identity is refused as malformed. Passwords are
 * used as given (no SASLprep): identical to PostgreSQL for ASCII passwords.
 * Secrets are wiped (OPENSSL_cleanse) when an exchange is cleared, compared
 * in constant time, and never logged. Thread: any (no shared state).
 */
#ifndef FERRY_PG_AUTH_H
#define FERRY_PG_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/codec.h"
#include "ferry/wbuf.h"

/* Results of the functions below. */
enum pg_auth_rc {
    PG_AUTH_RC_OK = 0,
    PG_AUTH_RC_MALFORMED = FERRY_BAD_MSG,   /* not a valid message: 08P01 */
    PG_AUTH_RC_REJECTED = -3,               /* wrong password / server proof: 28P01 */
    PG_AUTH_RC_INTERNAL = -4,               /* out of memory, no randomness, OpenSSL failure */
};

#define PG_SCRAM_MECHANISM "SCRAM-SHA-256"
#define PG_SCRAM_KEY_LEN 32
#define PG_SCRAM_SALT_MAX 64
#define PG_SCRAM_DEFAULT_ITERATIONS 4096
#define PG_SCRAM_MAX_ITERATIONS 10000000u   /* cap on what a server may ask of ferry */
#define PG_SCRAM_MSG_MAX 1024               /* longest SCRAM message handled */
#define PG_SCRAM_SALT_LEN 16                /* salts ferry makes (PostgreSQL's default) */
#define PG_SCRAM_MOCK_NONCE_LEN 32          /* server secret behind unknown users' salts */

/* What a server keeps per user (PostgreSQL's pg_authid.rolpassword form). */
struct pg_scram_secret {
    uint32_t iterations;
    uint8_t salt[PG_SCRAM_SALT_MAX];
    size_t salt_len;
    uint8_t stored_key[PG_SCRAM_KEY_LEN];
    uint8_t server_key[PG_SCRAM_KEY_LEN];
    bool mock;                              /* made up for an unknown user: never matches */
};

/* Parses "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>" (base64
 * fields). Returns PG_AUTH_RC_OK or PG_AUTH_RC_MALFORMED. */
int pg_scram_secret_parse(const char *verifier, struct pg_scram_secret *out);

/* Derives a secret from a password; salt NULL = 16 random bytes. */
int pg_scram_secret_from_password(const char *password, uint32_t iterations, const uint8_t *salt,
                                  size_t salt_len, struct pg_scram_secret *out);

/* PostgreSQL's scram_mock_salt(): SHA-256 over the user name and a server
 * secret (its "mock authentication nonce"), truncated to PG_SCRAM_SALT_LEN
 * bytes into salt. The same name gets the same salt while the secret lives,
 * as a configured user's does. PG_AUTH_RC_OK or PG_AUTH_RC_INTERNAL. */
int pg_scram_mock_salt(const uint8_t nonce[PG_SCRAM_MOCK_NONCE_LEN], const char *user,
                       uint8_t salt[PG_SCRAM_SALT_LEN]);

/* A secret for a user that does not exist: the mock salt, the given
 * iteration count and random keys, marked mock so that the exchange runs its
 * course and fails at the proof check like a wrong password. */
int pg_scram_secret_mock(const uint8_t nonce[PG_SCRAM_MOCK_NONCE_LEN], const char *user,
                         uint32_t iterations, struct pg_scram_secret *out);

/* Writes the verifier string for a secret (NUL-terminated); false if outlen
 * is too small (200 bytes always suffice). */
bool pg_scram_secret_format(const struct pg_scram_secret *s, char *out, size_t outlen);

/* ---- server side: ferry verifies a client ------------------------------------- */

struct pg_scram_server {
    struct pg_scram_secret secret;          /* copy; wiped by pg_scram_server_clear() */
    char cbind_flag;                        /* 'n' or 'y' from the client's gs2 header */
    char client_first_bare[PG_SCRAM_MSG_MAX];
    size_t client_first_bare_len;
    char server_first[PG_SCRAM_MSG_MAX];
    size_t server_first_len;
    size_t nonce_len;                       /* combined nonce = server_first + 2 */
    int step;                               /* 0 start, 1 server-first sent, 2 done */
};

/* Starts an exchange against secret (for an unknown user, pass
 * pg_scram_secret_mock()'s so the client cannot tell: it will simply fail). */
void pg_scram_server_init(struct pg_scram_server *s, const struct pg_scram_secret *secret);

/* Reads the client-first-message (SASLInitialResponse data) and appends the
 * server-first-message to out. server_nonce: printable nonce text, NULL = 18
 * random bytes in base64 (as PostgreSQL). */
int pg_scram_server_first(struct pg_scram_server *s, const uint8_t *client_first, size_t n,
                          const char *server_nonce, struct ferry_wbuf *out);

/* Reads the client-final-message (SASLResponse data), checks the proof, and
 * on success appends the server-final-message (for AuthenticationSASLFinal).
 * PG_AUTH_RC_REJECTED = wrong password. */
int pg_scram_server_final(struct pg_scram_server *s, const uint8_t *client_final, size_t n,
                          struct ferry_wbuf *out);

void pg_scram_server_clear(struct pg_scram_server *s);

/* ---- client side: ferry logs into a backend -------------------------------------- */

struct pg_scram_client {
    char client_first_bare[PG_SCRAM_MSG_MAX];
    size_t client_first_bare_len;
    size_t client_nonce_len;                /* the nonce ends client_first_bare */
    uint8_t server_signature[PG_SCRAM_KEY_LEN]; /* expected in server-final */
    int step;                               /* 0 start, 1 first sent, 2 final sent, 3 verified */
};

/* Appends the client-first-message ("n,,n=<user>,r=<nonce>") to out. user:
 * "" for PostgreSQL, which uses the startup packet's user. nonce: printable
 * text, NULL = 18 random bytes in base64. */
int pg_scram_client_first(struct pg_scram_client *c, const char *user, const char *nonce,
                          struct ferry_wbuf *out);

/* Reads the server-first-message (AuthenticationSASLContinue data) and
 * appends the client-final-message with the proof. password is only read. */
int pg_scram_client_final(struct pg_scram_client *c, const char *password, const uint8_t *server_first,
                          size_t n, struct ferry_wbuf *out);

/* Checks the server-final-message (AuthenticationSASLFinal data):
 * PG_AUTH_RC_OK when the server proved it knows the secret. */
int pg_scram_client_verify(struct pg_scram_client *c, const uint8_t *server_final, size_t n);

void pg_scram_client_clear(struct pg_scram_client *c);

/* ---- MD5 --------------------------------------------------------------------------- */

#define PG_MD5_LEN 35                       /* "md5" + 32 hex digits */

/* The stored form: "md5" + md5hex(password + user). out: PG_MD5_LEN + 1. */
void pg_md5_stored(const char *user, const char *password, char *out);

/* The client's answer to AuthenticationMD5Password:
 * "md5" + md5hex(md5hex(password + user) + salt). out: PG_MD5_LEN + 1. */
void pg_md5_response(const char *user, const char *password, const uint8_t salt[4], char *out);

/* Checks a client's PasswordMessage text against what ferry keeps for the
 * user: an "md5…" stored hash or a plaintext password. */
int pg_md5_verify(const char *kept, const char *user, const uint8_t salt[4], const uint8_t *response,
                  size_t n);

/* Fills buf with n cryptographically random bytes (salts, nonces, cancel
 * keys). PG_AUTH_RC_OK or PG_AUTH_RC_INTERNAL. */
int pg_auth_random(void *buf, size_t n);

#endif
