/* Thin helpers over libxml2 for AWS query-protocol replies: parse a body
 * strictly and safely (no network, no entity expansion, no DTD), find
 * elements by local name with namespaces ignored (each service has its own
 * xmlns), and copy text into fixed-size fields with a clear error when a
 * value does not fit. Thread: any (libxml2 is initialised once, see below).
 */
#ifndef FERRY_AWS_XML_H
#define FERRY_AWS_XML_H

#include <stdbool.h>
#include <stddef.h>

#include <libxml/tree.h>

#define AWS_ERRMSG_MAX 192

/* Parses len bytes of XML. Returns the document (caller frees with
 * xmlFreeDoc) or NULL with a reason in err for malformed, truncated or empty
 * input. Never prints to stderr. */
xmlDocPtr aws_xml_parse(const void *body, size_t len, char err[AWS_ERRMSG_MAX]);

/* The document's root element when its local name is `name`, else NULL with
 * a reason in err. */
xmlNodePtr aws_xml_root(xmlDocPtr doc, const char *name, char err[AWS_ERRMSG_MAX]);

/* <action>Response/<action>Result of a query-protocol reply, or NULL with a
 * reason in err. */
xmlNodePtr aws_xml_result(xmlDocPtr doc, const char *action, char err[AWS_ERRMSG_MAX]);

/* Parses one item of a list into item (zeroed memory of the list's item
 * size). 0, or -1 with the reason in err. */
typedef int (*aws_xml_item_fn)(xmlNodePtr node, void *item, char err[AWS_ERRMSG_MAX]);

/* The common shape of every query-protocol list reply: parses body, finds
 * <action>Response/<action>Result, copies its child `token_name` (Marker,
 * NextToken) into token, and parses each `item` element under `list` with fn
 * into a calloc'd array (*items, *n; freed by the caller even on failure).
 * Returns 0, or -1 with the reason in err. */
int aws_xml_parse_list(const void *body, size_t len, const char *action, const char *token_name,
                       char *token, size_t toklen, const char *list, const char *item,
                       size_t item_size, void **items, size_t *n, aws_xml_item_fn fn,
                       char err[AWS_ERRMSG_MAX]);

/* calloc for a parsed list of n items (n may be 0); NULL with err on failure. */
void *aws_parse_calloc(size_t n, size_t size, char err[AWS_ERRMSG_MAX]);

/* First element child of parent whose local name is name; NULL if none (or
 * parent is NULL). */
xmlNodePtr aws_xml_child(xmlNodePtr parent, const char *name);

/* Next element sibling after node with the same local name as node. */
xmlNodePtr aws_xml_next(xmlNodePtr node);

/* Follows a '/'-separated path of local names from parent; NULL if any step
 * is missing. */
xmlNodePtr aws_xml_path(xmlNodePtr parent, const char *path);

/* Number of element children named name. */
size_t aws_xml_count(xmlNodePtr parent, const char *name);

/* Copies the text of child `name` of parent into out (NUL-terminated; "" when
 * the child is absent). Returns 1 if present, 0 if absent, -1 when the text
 * does not fit in outlen bytes (reason in err). */
int aws_xml_text(xmlNodePtr parent, const char *name, char *out, size_t outlen,
                 char err[AWS_ERRMSG_MAX]);

/* In a parser returning int with an `err` buffer in scope: copy child `name`
 * of node into the char array `field`, returning -1 from the caller when it
 * does not fit. */
#define AWS_XML_TEXT(node, name, field)                                         \
    do {                                                                        \
        if (aws_xml_text(node, name, field, sizeof field, err) < 0)             \
            return -1;                                                          \
    } while (0)

/* Like aws_xml_text but cuts an overlong text to fit (for messages that are
 * only logged). Returns true when the child is present and non-empty; out is
 * left unchanged when it is absent. */
bool aws_xml_text_cut(xmlNodePtr parent, const char *name, char *out, size_t outlen);

/* The same for the text of node itself. */
int aws_xml_node_text(xmlNodePtr node, char *out, size_t outlen, char err[AWS_ERRMSG_MAX]);

/* Child `name` as a boolean ("true"/"false"); absent = false. Returns 0, or
 * -1 for any other value (reason in err). */
int aws_xml_bool(xmlNodePtr parent, const char *name, bool *out, char err[AWS_ERRMSG_MAX]);

/* Child `name` as a long integer; absent leaves *out unchanged. 0 or -1. */
int aws_xml_long(xmlNodePtr parent, const char *name, long *out, char err[AWS_ERRMSG_MAX]);

#endif
