/* libxml2 access for AWS replies: strict parsing with every network and
 * entity feature off, and lookups by local name so that the per-service
 * namespaces never matter. Parsers in rds.c, cloudwatch.c, credentials.c and
 * awserror.c are written against these few calls only.
 */
#include "xml.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>

static pthread_once_t xml_once = PTHREAD_ONCE_INIT;

/* libxml2's global state must be set up once before threads parse. Its
 * default error handler prints to stderr (bypassing ferry's log); the
 * NOERROR/NOWARNING options below keep it quiet, per parse and per thread. */
static void xml_init(void)
{
    xmlInitParser();
}

xmlDocPtr aws_xml_parse(const void *body, size_t len, char err[AWS_ERRMSG_MAX])
{
    pthread_once(&xml_once, xml_init);
    if (len == 0) {
        snprintf(err, AWS_ERRMSG_MAX, "empty body");
        return NULL;
    }
    if (len > INT_MAX) {
        snprintf(err, AWS_ERRMSG_MAX, "body too large");
        return NULL;
    }
    /* No XML_PARSE_NOENT / DTDLOAD: entities stay unexpanded and nothing is
     * fetched; NONET as a second lock. */
    int opts = XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING | XML_PARSE_NOBLANKS;
    xmlDocPtr doc = xmlReadMemory(body, (int)len, "aws.xml", NULL, opts);
    if (!doc) {
        const xmlError *e = xmlGetLastError();
        snprintf(err, AWS_ERRMSG_MAX, "malformed XML%s%s", e && e->message ? ": " : "",
                 e && e->message ? e->message : "");
        size_t n = strlen(err);
        if (n && err[n - 1] == '\n')    /* libxml2 messages end with a newline */
            err[n - 1] = '\0';
        xmlResetLastError();
    }
    return doc;
}

static bool named(xmlNodePtr n, const char *name)
{
    return n->type == XML_ELEMENT_NODE && strcmp((const char *)n->name, name) == 0;
}

xmlNodePtr aws_xml_root(xmlDocPtr doc, const char *name, char err[AWS_ERRMSG_MAX])
{
    xmlNodePtr root = xmlDocGetRootElement(doc);
    if (!root || !named(root, name)) {
        snprintf(err, AWS_ERRMSG_MAX, "expected <%s>, got <%.64s>", name,
                 root ? (const char *)root->name : "");
        return NULL;
    }
    return root;
}

xmlNodePtr aws_xml_child(xmlNodePtr parent, const char *name)
{
    if (!parent)
        return NULL;
    for (xmlNodePtr c = parent->children; c; c = c->next)
        if (named(c, name))
            return c;
    return NULL;
}

xmlNodePtr aws_xml_next(xmlNodePtr node)
{
    for (xmlNodePtr c = node->next; c; c = c->next)
        if (named(c, (const char *)node->name))
            return c;
    return NULL;
}

xmlNodePtr aws_xml_path(xmlNodePtr parent, const char *path)
{
    char step[128];
    while (parent && *path) {
        size_t n = strcspn(path, "/");
        if (n >= sizeof step)
            return NULL;
        memcpy(step, path, n);
        step[n] = '\0';
        parent = aws_xml_child(parent, step);
        path += n + (path[n] == '/');
    }
    return parent;
}

size_t aws_xml_count(xmlNodePtr parent, const char *name)
{
    size_t n = 0;
    for (xmlNodePtr c = aws_xml_child(parent, name); c; c = aws_xml_next(c))
        n++;
    return n;
}

int aws_xml_node_text(xmlNodePtr node, char *out, size_t outlen, char err[AWS_ERRMSG_MAX])
{
    out[0] = '\0';
    if (!node)
        return 0;
    xmlChar *t = xmlNodeGetContent(node);
    size_t n = t ? strlen((const char *)t) : 0;
    if (n >= outlen) {
        snprintf(err, AWS_ERRMSG_MAX, "<%.64s> longer than %zu bytes", (const char *)node->name,
                 outlen - 1);
        xmlFree(t);
        return -1;
    }
    if (n)
        memcpy(out, t, n + 1);
    xmlFree(t);
    return 1;
}

bool aws_xml_text_cut(xmlNodePtr parent, const char *name, char *out, size_t outlen)
{
    xmlNodePtr node = aws_xml_child(parent, name);
    xmlChar *t = node ? xmlNodeGetContent(node) : NULL;
    size_t n = t ? strlen((const char *)t) : 0;
    if (n) {
        if (n >= outlen)
            n = outlen - 1;
        memcpy(out, t, n);
        out[n] = '\0';
    }
    xmlFree(t);
    return n > 0;
}

int aws_xml_text(xmlNodePtr parent, const char *name, char *out, size_t outlen,
                 char err[AWS_ERRMSG_MAX])
{
    return aws_xml_node_text(aws_xml_child(parent, name), out, outlen, err);
}

int aws_xml_bool(xmlNodePtr parent, const char *name, bool *out, char err[AWS_ERRMSG_MAX])
{
    char v[8];
    int rc = aws_xml_text(parent, name, v, sizeof v, err);
    *out = false;
    if (rc == 0)
        return 0;
    if (rc > 0 && strcmp(v, "true") == 0) {
        *out = true;
        return 0;
    }
    if (rc > 0 && strcmp(v, "false") == 0)
        return 0;
    snprintf(err, AWS_ERRMSG_MAX, "<%s> is not true or false", name);
    return -1;
}

int aws_xml_long(xmlNodePtr parent, const char *name, long *out, char err[AWS_ERRMSG_MAX])
{
    char v[24];
    int rc = aws_xml_text(parent, name, v, sizeof v, err);
    if (rc <= 0)
        return rc;
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end) {
        snprintf(err, AWS_ERRMSG_MAX, "<%s> is not an integer", name);
        return -1;
    }
    *out = x;
    return 0;
}

xmlNodePtr aws_xml_result(xmlDocPtr doc, const char *action, char err[AWS_ERRMSG_MAX])
{
    char name[96];
    snprintf(name, sizeof name, "%sResponse", action);
    xmlNodePtr root = aws_xml_root(doc, name, err);
    if (!root)
        return NULL;
    snprintf(name, sizeof name, "%sResult", action);
    xmlNodePtr res = aws_xml_child(root, name);
    if (!res)
        snprintf(err, AWS_ERRMSG_MAX, "<%s> missing", name);
    return res;
}

void *aws_parse_calloc(size_t n, size_t size, char err[AWS_ERRMSG_MAX])
{
    void *p = calloc(n ? n : 1, size);
    if (!p)
        snprintf(err, AWS_ERRMSG_MAX, "out of memory");
    return p;
}

int aws_xml_parse_list(const void *body, size_t len, const char *action, const char *token_name,
                       char *token, size_t toklen, const char *list, const char *item,
                       size_t item_size, void **items, size_t *n, aws_xml_item_fn fn,
                       char err[AWS_ERRMSG_MAX])
{
    *items = NULL;
    *n = 0;
    token[0] = '\0';
    xmlDocPtr doc = aws_xml_parse(body, len, err);
    if (!doc)
        return -1;
    int rc = -1;
    xmlNodePtr res = aws_xml_result(doc, action, err);
    if (!res || aws_xml_text(res, token_name, token, toklen, err) < 0)
        goto done;
    xmlNodePtr l = aws_xml_child(res, list);
    char *arr = aws_parse_calloc(aws_xml_count(l, item), item_size, err);
    if (!arr)
        goto done;
    *items = arr;
    for (xmlNodePtr c = aws_xml_child(l, item); c; c = aws_xml_next(c))
        if (fn(c, arr + item_size * (*n)++, err) < 0)
            goto done;
    rc = 0;
done:
    xmlFreeDoc(doc);
    return rc;
}
