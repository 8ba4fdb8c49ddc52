/* `ferry version`: what this binary is, and the libraries it runs with
 * (asked at run time where the library can say, else as built against). */
#include <curl/curl.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <libxml/xmlversion.h>
#include <mariadb_version.h>
#include <microhttpd.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <uv.h>

#include "ferry/ctl.h"
#include "ferry/version.h"
#include "ferry_git_commit.h"

int ferry_version_main(bool as_json)
{
    if (!as_json) {
        printf("ferry %s (commit %s; libuv %s)\n", FERRY_VERSION, FERRY_GIT_COMMIT,
               uv_version_string());
        return 0;
    }
    char pq[32];
    int v = PQlibVersion();     /* 150004 = 15.4 (10 and later) */
    snprintf(pq, sizeof pq, "%d.%d", v / 10000, v % 10000);
    json_t *doc = json_pack(
        "{s:s, s:s, s:{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s}}", "version", FERRY_VERSION,
        "git_commit", FERRY_GIT_COMMIT,
        "libraries",
        "libuv", uv_version_string(),
        "openssl", OpenSSL_version(OPENSSL_VERSION),
        "libpq", pq,
        "mariadb_connector_c", MARIADB_PACKAGE_VERSION,
        "jansson", jansson_version_str(),
        "libmicrohttpd", MHD_get_version(),
        "libcurl", curl_version_info(CURLVERSION_NOW)->version,
        "libxml2", LIBXML_DOTTED_VERSION);
    char *text = doc ? json_dumps(doc, JSON_INDENT(2)) : NULL;
    json_decref(doc);
    if (!text) {
        fprintf(stderr, "ferry: version: out of memory\n");
        return 1;
    }
    printf("%s\n", text);
    free(text);
    return 0;
}
