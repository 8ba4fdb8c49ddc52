/* MySQL authentication: mysql_native_password and caching_sha2_password,
 * both as a client (ferry logging into a backend) and as a server (ferry
 * authenticating its clients in terminated mode), including
 * caching_sha2_password full authentication (cleartext over TLS, or RSA-OAEP
 * with the server's public key). Pure: OpenSSL only, no I/O. Secrets are
 * compared in constant time and wiped from stack buffers.
 * Outputs go to a caller-owned struct ferry_wbuf as raw payload bytes (not
 * packets); the session frames them with the right sequence id.
 */
#ifndef FERRY_MY_AUTH_H
#define FERRY_MY_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "codec.h"

enum { MY_SHA1_LEN = 20, MY_SHA256_LEN = 32 };

#define MY_PLUGIN_NATIVE "mysql_native_password"
#define MY_PLUGIN_SHA2   "caching_sha2_password"

/* caching_sha2_password AuthMoreData bytes. */
enum {
    MY_SHA2_REQUEST_KEY = 0x02,     /* client asks for the RSA public key */
    MY_SHA2_FAST_OK = 0x03,         /* server: fast authentication succeeded */
    MY_SHA2_FULL_AUTH = 0x04,       /* server: send the password in full */
};

/* What ferry knows about a user's password. Any of the forms may be set;
 * verification uses the plaintext if present, else the stage-2 hashes. */
struct my_secret {
    const char *password;           /* borrowed plaintext, or NULL */
    size_t password_len;
    bool has_native;                /* native_stage2 is set */
    uint8_t native_stage2[MY_SHA1_LEN];     /* SHA1(SHA1(pw)): mysql.user "*HEX" */
    bool has_sha2;                  /* sha2_stage2 is set */
    uint8_t sha2_stage2[MY_SHA256_LEN];     /* SHA256(SHA256(pw)) */
};

/* Fills every form from a plaintext password (borrowed: must outlive s).
 * 0 or -1 (OpenSSL failure). */
int my_secret_from_password(struct my_secret *s, const char *pw, size_t len);

/* Sets the native stage-2 hash from mysql.user's "*" + 40 hex digits.
 * 0 or -1 (malformed). Other fields are left as they are. */
int my_secret_set_native_hash(struct my_secret *s, const char *star_hex);

/* ---- scrambles (client side) and their checks (server side) ------------- */

/* SHA1(pw) XOR SHA1(scramble + SHA1(SHA1(pw))). An empty password gives an
 * empty response instead (callers send 0 bytes): returns the length, 0 or 20. */
size_t my_native_scramble(const char *pw, size_t len, const uint8_t scramble[MY_SCRAMBLE_LEN],
                          uint8_t out[MY_SHA1_LEN]);

/* SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) + scramble); 0 or 32 as above. */
size_t my_sha2_scramble(const char *pw, size_t len, const uint8_t scramble[MY_SCRAMBLE_LEN],
                        uint8_t out[MY_SHA256_LEN]);

/* True if resp proves knowledge of the secret's password. */
bool my_native_verify(const struct my_secret *s, const uint8_t scramble[MY_SCRAMBLE_LEN],
                      const uint8_t *resp, size_t n);
bool my_sha2_verify_fast(const struct my_secret *s, const uint8_t scramble[MY_SCRAMBLE_LEN],
                         const uint8_t *resp, size_t n);
/* A cleartext password (a trailing NUL, as clients send it, is ignored). */
bool my_cleartext_verify(const struct my_secret *s, const uint8_t *pw, size_t n);

/* ---- RSA (caching_sha2_password full authentication without TLS) -------- */

/* Encrypts (pw + NUL) XOR scramble with RSA-OAEP (SHA-1, as MySQL's
 * RSA_PKCS1_OAEP_PADDING) under a PEM "PUBLIC KEY"; appends the ciphertext
 * to out. 0 or -1 (bad key, password too long for the key). */
int my_sha2_rsa_encrypt(const uint8_t *pem, size_t pem_len, const char *pw, size_t len,
                        const uint8_t scramble[MY_SCRAMBLE_LEN], struct ferry_wbuf *out);

/* Decrypts with the private key and undoes the XOR; appends the password
 * (without its NUL) to out. 0 or -1. */
int my_sha2_rsa_decrypt(EVP_PKEY *key, const uint8_t *in, size_t n,
                        const uint8_t scramble[MY_SCRAMBLE_LEN], struct ferry_wbuf *out);

/* Appends the PEM "PUBLIC KEY" of key to out. 0 or -1. */
int my_rsa_public_pem(EVP_PKEY *key, struct ferry_wbuf *out);

/* ---- ferry as a client (logging into a backend) ------------------------- */

struct my_auth_client {
    const char *password;           /* borrowed */
    size_t password_len;
    bool tls;                       /* the backend leg is encrypted */
    bool may_reveal;                /* full authentication may send the password in a
                                       form the server reads (cleartext over TLS, RSA
                                       under its key): it is verified, or the config
                                       allows it. Else MY_AUTH_CLIENT_INSECURE. */
    const uint8_t *server_key;      /* borrowed PEM public key, or NULL: ask the server */
    size_t server_key_len;
    bool sha2;                      /* current plugin is caching_sha2_password */
    uint8_t scramble[MY_SCRAMBLE_LEN];
};

/* The auth response for plugin (from the greeting, or an AuthSwitchRequest:
 * then data is its plugin data). Appends it to out. 0, or -1 for a plugin
 * ferry does not speak or a scramble shorter than 20 bytes. */
int my_auth_client_start(struct my_auth_client *c, struct ferry_slice plugin,
                         struct ferry_slice data, struct ferry_wbuf *out);

/* my_auth_client_more() refused full authentication (!may_reveal). */
#define MY_AUTH_CLIENT_INSECURE (-2)

/* An AuthMoreData from the backend (data after 0x01). Appends what to send
 * back to out; *reply is false when nothing is to be sent (fast auth OK:
 * wait for OK). 0, -1 (unexpected data, RSA failure), or
 * MY_AUTH_CLIENT_INSECURE (full authentication asked of a server the
 * password must not be revealed to). */
int my_auth_client_more(struct my_auth_client *c, struct ferry_slice data,
                        struct ferry_wbuf *out, bool *reply);

/* ---- ferry as a server (authenticating a client) ------------------------ */

enum my_auth_step { MY_AUTH_STEP_FIRST, MY_AUTH_STEP_FULL };

struct my_auth_server {
    const struct my_secret *secret; /* borrowed */
    bool sha2;                      /* plugin announced: caching_sha2 (else native) */
    bool tls;                       /* the client leg is encrypted */
    EVP_PKEY *key;                  /* borrowed RSA key pair, or NULL: no RSA exchange */
    uint8_t scramble[MY_SCRAMBLE_LEN];  /* the one ferry sent */
    enum my_auth_step step;
};

enum my_auth_verdict {
    MY_AUTH_DENIED = -1,            /* send ERR 1045 (28000) and close */
    MY_AUTH_CONTINUE = 0,           /* send out as AuthMoreData, wait for the client */
    MY_AUTH_OK = 1,                 /* send out as AuthMoreData if non-empty, then OK */
};

/* One client auth packet (the HandshakeResponse41 auth response first, then
 * each AuthMoreData answer). out receives AuthMoreData bytes. */
enum my_auth_verdict my_auth_server_step(struct my_auth_server *s, const uint8_t *resp, size_t n,
                                         struct ferry_wbuf *out);

#endif
