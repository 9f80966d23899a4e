/* SPDX-License-Identifier: Apache-2.0 */
/* The serving side: listening sockets, worker threads (each with its own
 * loop, httpd per address and HTTP client), and the request pipeline that
 * turns an exchange into a routed, authenticated plugin call. */
#ifndef LG_SERVER_H
#define LG_SERVER_H

#include <stddef.h>

#include "runtime.h"

/* Binds every server.listen address (SO_REUSEPORT, one socket per worker;
 * port 0 picks one port shared by all workers), logs "listening on
 * http://HOST:PORT" for each, and registers the core's routes. Thread: main,
 * before plugins are initialised (so routes collide loudly). */
int lg_server_prepare(struct lg_runtime *rt, char *err, size_t errlen);
/* Starts the worker threads. Thread: main. */
int lg_server_start(struct lg_runtime *rt, char *err, size_t errlen);
/* Stops accepting; busy exchanges go on. Thread: main. */
void lg_server_stop_accepting(struct lg_runtime *rt);
/* Exchanges in progress across all workers. Thread: any. */
size_t lg_server_busy(struct lg_runtime *rt);
/* Returns once every worker has run what was posted to it before: a
 * worker that was in a host call with old state has left it. Thread: main. */
void lg_server_sync(struct lg_runtime *rt);
/* Ends every exchange still open (their close callbacks run) and frees the
 * workers' HTTP clients, while the workers keep running. Thread: main. */
void lg_server_close_exchanges(struct lg_runtime *rt);
/* Closes what is left, stops and joins the workers, frees. Thread: main. */
void lg_server_free(struct lg_runtime *rt);

#endif
