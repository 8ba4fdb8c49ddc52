/* Builds the throwaway PKI of tls_testpki.h: EC P-256 keys, a CA, a server
 * certificate for localhost and 127.0.0.1, an expired one, and an unrelated
 * CA, as PEM files in a temporary directory. */
#include "tls_testpki.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define DAY (24L * 3600)

static int add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, issuer, cert, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    int ok = ext && X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    return ok ? 0 : -1;
}

static int add_exts(X509 *cert, X509 *issuer, bool is_ca)
{
    if (is_ca)
        return add_ext(cert, issuer, NID_basic_constraints, "critical,CA:TRUE") |
               add_ext(cert, issuer, NID_key_usage, "critical,keyCertSign,cRLSign");
    return add_ext(cert, issuer, NID_basic_constraints, "CA:FALSE") |
           add_ext(cert, issuer, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1") |
           add_ext(cert, issuer, NID_ext_key_usage, "serverAuth");
}

/* A certificate for key named cn, valid from..to seconds from now, signed
 * by issuer/issuer_key, or by itself when issuer is NULL. */
static X509 *make_cert(EVP_PKEY *key, const char *cn, bool is_ca, long from, long to,
                       X509 *issuer, EVP_PKEY *issuer_key)
{
    static long serial;
    X509 *x = X509_new();
    if (!x)
        return NULL;
    X509_NAME *name = X509_get_subject_name(x);
    int ok = X509_set_version(x, X509_VERSION_3) &&
             ASN1_INTEGER_set(X509_get_serialNumber(x), ++serial) &&
             X509_gmtime_adj(X509_getm_notBefore(x), from) &&
             X509_gmtime_adj(X509_getm_notAfter(x), to) && X509_set_pubkey(x, key) &&
             X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn,
                                        -1, -1, 0) &&
             X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name) &&
             add_exts(x, issuer ? issuer : x, is_ca) == 0 &&
             X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256());
    if (!ok) {
        X509_free(x);
        return NULL;
    }
    return x;
}

static int write_pem(const char *path, X509 *cert, EVP_PKEY *key)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    int ok = cert ? PEM_write_X509(f, cert)
                  : PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
    return (fclose(f) == 0 && ok) ? 0 : -1;
}

static void set_paths(struct tls_testpki *p)
{
    snprintf(p->ca, sizeof p->ca, "%s/ca.pem", p->dir);
    snprintf(p->other_ca, sizeof p->other_ca, "%s/other-ca.pem", p->dir);
    snprintf(p->server_cert, sizeof p->server_cert, "%s/server.pem", p->dir);
    snprintf(p->server_key, sizeof p->server_key, "%s/server.key", p->dir);
    snprintf(p->expired_cert, sizeof p->expired_cert, "%s/expired.pem", p->dir);
    snprintf(p->expired_key, sizeof p->expired_key, "%s/expired.key", p->dir);
}

/* A leaf signed by ca/ca_key, written with its key. */
static int write_leaf(const char *cert_path, const char *key_path, long from, long to, X509 *ca,
                      EVP_PKEY *ca_key)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *cert = key ? make_cert(key, "ferry-test-server", false, from, to, ca, ca_key) : NULL;
    int rc = cert && write_pem(cert_path, cert, NULL) == 0 && write_pem(key_path, NULL, key) == 0
                 ? 0 : -1;
    X509_free(cert);
    EVP_PKEY_free(key);
    return rc;
}

static int write_all(const struct tls_testpki *p)
{
    EVP_PKEY *ca_key = EVP_EC_gen("P-256"), *other_key = EVP_EC_gen("P-256");
    X509 *ca = ca_key ? make_cert(ca_key, "ferry test CA", true, -DAY, 30 * DAY, NULL, NULL) : NULL;
    X509 *other = other_key ? make_cert(other_key, "other CA", true, -DAY, 30 * DAY, NULL, NULL)
                            : NULL;
    int rc = -1;
    if (ca && other && write_pem(p->ca, ca, NULL) == 0 && write_pem(p->other_ca, other, NULL) == 0 &&
        write_leaf(p->server_cert, p->server_key, -DAY, DAY, ca, ca_key) == 0 &&
        write_leaf(p->expired_cert, p->expired_key, -10 * DAY, -5 * DAY, ca, ca_key) == 0)
        rc = 0;
    X509_free(ca);
    X509_free(other);
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(other_key);
    return rc;
}

int tls_testpki_make(struct tls_testpki *p)
{
    snprintf(p->dir, sizeof p->dir, "/tmp/ferry-tls-XXXXXX");
    if (!mkdtemp(p->dir)) {
        perror("mkdtemp");
        return -1;
    }
    set_paths(p);
    if (write_all(p) != 0) {
        fprintf(stderr, "tls_testpki: could not write the test certificates in %s\n", p->dir);
        tls_testpki_remove(p);
        return -1;
    }
    return 0;
}

void tls_testpki_remove(const struct tls_testpki *p)
{
    const char *files[] = {p->ca, p->other_ca, p->server_cert, p->server_key, p->expired_cert,
                           p->expired_key};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        unlink(files[i]);
    rmdir(p->dir);
}
