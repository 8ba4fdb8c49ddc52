/* A throwaway PKI for the TLS tests and the TLS fuzzer: PEM files written
 * into a fresh mkdtemp directory, made with the OpenSSL C API at test time
 * (nothing secret is committed, nothing expires in the repository). */
#ifndef FERRY_TLS_TESTPKI_H
#define FERRY_TLS_TESTPKI_H

struct tls_testpki {
    char dir[64];               /* the mkdtemp directory */
    char ca[128];               /* test CA certificate */
    char other_ca[128];         /* a CA that signed nothing here */
    char server_cert[128];      /* by ca; SAN DNS:localhost, IP:127.0.0.1; valid now */
    char server_key[128];
    char expired_cert[128];     /* by ca; same SAN; expired five days ago */
    char expired_key[128];
};

/* Creates the directory and every file. 0, or -1 with a message on stderr
 * (what was created is removed). */
int tls_testpki_make(struct tls_testpki *pki);
/* Removes the files and the directory. */
void tls_testpki_remove(const struct tls_testpki *pki);

#endif
