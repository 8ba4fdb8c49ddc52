/* Intrusive doubly-linked list (the model is libuv's src/queue.h): the node
 * lives inside the owning struct, container_of gets back to it. A list head
 * is a node that points to itself when empty.
 */
#ifndef FERRY_LIST_H
#define FERRY_LIST_H

#include <stdbool.h>
#include <stddef.h>

struct ferry_list {
    struct ferry_list *prev, *next;
};

#define ferry_container_of(ptr, type, field) ((type *)((char *)(ptr) - offsetof(type, field)))

static inline void ferry_list_init(struct ferry_list *h) { h->prev = h->next = h; }
static inline bool ferry_list_empty(const struct ferry_list *h) { return h->next == h; }

static inline void ferry_list_insert_tail(struct ferry_list *h, struct ferry_list *n)
{
    n->next = h;
    n->prev = h->prev;
    h->prev->next = n;
    h->prev = n;
}

static inline void ferry_list_remove(struct ferry_list *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}

#endif
