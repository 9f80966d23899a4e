/* SPDX-License-Identifier: Apache-2.0 */
/* rag: the chat "search" tool (spec §10.5). A chat completion whose tools
 * hold {"type": "search", ...search arguments} is searched with its last
 * user message; that message is then rewritten into a grounded prompt (the
 * chunks found, numbered, and the rule to answer only from them), the
 * search tool is taken out of the tools, and the reply (or a stream's
 * first event) carries "search_results": the chunks the answer stands on.
 * Other calls pass untouched, after one scan of the raw body. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "../common/api.h"
#include "rag.h"

#define CHAT_ENDPOINT "/v1/chat/completions"

static const char grounded_rules[] =
	"Answer the question below only from the documents above, in the language of the "
	"question. Cite the documents you use by their number, like [1]. If the documents "
	"do not hold the answer, say \"I don't know.\" and nothing else.";
static const char no_documents[] =
	"No documents were found for the question below. Say \"No document answers this "
	"question.\" and nothing else.";

struct chat {
	struct rag *r;
	struct lg_req *req;
	json_t *body;           /* the call's body, rewritten in place */
	json_t *message;        /* the last user message (in body) */
	size_t tool;            /* the search tool's index in body.tools */
	json_t *tool_args;      /* the search arguments (args point into it) */
	struct rag_search_args args;
};

static void chat_free(struct chat *c)
{
	json_decref(c->body);
	json_decref(c->tool_args);
	free(c);
}

/* The text of a message's content: a string, or the text parts of a list. */
static char *content_text(const json_t *content)
{
	const json_t *part;
	size_t i, len = 0;
	char *out;

	if (json_is_string(content))
		return strdup(json_string_value(content));
	if (!json_is_array(content))
		return NULL;
	json_array_foreach(content, i, part)
		len += json_string_length(json_object_get(part, "text")) + 1;
	out = calloc(1, len + 1);
	if (!out)
		return NULL;
	json_array_foreach(content, i, part) {
		const char *t = json_string_value(json_object_get(part, "text"));

		if (t) {
			if (*out)
				strcat(out, "\n");
			strcat(out, t);
		}
	}
	return out;
}

/* The documents, numbered, the rules, then the question. */
static char *grounded_prompt(const char *query, const json_t *results)
{
	size_t len = strlen(query) + sizeof grounded_rules + sizeof no_documents + 64, i;
	const json_t *res;
	char *out, *p;

	json_array_foreach(results, i, res)
		len += json_string_length(json_object_get(json_object_get(res, "chunk"),
							  "content")) + 32;
	out = malloc(len);
	if (!out)
		return NULL;
	p = out;
	if (json_array_size(results) == 0) {
		p += sprintf(p, "%s\n\n", no_documents);
	} else {
		p += sprintf(p, "Documents:\n\n");
		json_array_foreach(results, i, res)
			p += sprintf(p, "[%zu] %s\n\n", i + 1, json_string_value(
				     json_object_get(json_object_get(res, "chunk"), "content")) ?: "");
		p += sprintf(p, "%s\n\n", grounded_rules);
	}
	sprintf(p, "Question: %s", query);
	return out;
}

/* The body without the search tool (and without "tools" if it was the
 * only one, since an empty list is refused by providers). */
static int strip_tool(struct chat *c)
{
	json_t *tools = json_object_get(c->body, "tools");

	if (json_array_remove(tools, c->tool) < 0)
		return -EINVAL;
	if (json_array_size(tools) == 0) {
		json_object_del(c->body, "tools");
		json_object_del(c->body, "tool_choice");
	}
	return 0;
}

static int chat_rewrite(struct chat *c, const char *data)
{
	const struct lg_host *h = c->r->host;
	json_t *results = json_loads(data, 0, NULL);
	char *prompt = NULL, *body = NULL;
	int rc = -ENOMEM;

	if (!results)
		goto out;
	prompt = grounded_prompt(c->args.query, results);
	if (!prompt || json_object_set_new(c->message, "content", json_string(prompt)) < 0)
		goto out;
	rc = strip_tool(c);
	if (rc < 0)
		goto out;
	body = json_dumps(c->body, JSON_COMPACT);
	rc = body ? h->call_set_body(c->req, (struct lg_str){ body, strlen(body) }) : -ENOMEM;
	if (rc == 0)
		rc = h->call_reply_member(c->req, "search_results",
					  (struct lg_str){ data, strlen(data) });
out:
	free(body);
	free(prompt);
	json_decref(results);
	return rc;
}

static void chat_searched(void *arg, int status, const char *error, const char *data)
{
	struct chat *c = arg;
	struct rag *r = c->r;
	const struct lg_host *h = r->host;
	struct lg_req *req = c->req;
	int rc;

	if (status != 200) {
		h->reply_error(req, status, "%s", error);
		chat_free(c);
		h->resume(req, LG_HOOK_DONE);
		return;
	}
	rc = chat_rewrite(c, data);
	chat_free(c);
	if (rc < 0) {
		h->log(r->self, LG_LOG_ERROR, "search tool: the call cannot be rewritten (%d)", rc);
		h->reply_error(req, 500, API_INTERNAL_ERROR);
		h->resume(req, LG_HOOK_DONE);
		return;
	}
	h->resume(req, LG_HOOK_OK);
}

/* The index of the first {"type": "search"} of @tools, or -1. */
static long search_tool(const json_t *tools)
{
	const json_t *t;
	size_t i;

	json_array_foreach(tools, i, t)
		if (json_is_string(json_object_get(t, "type")) &&
		    strcmp(json_string_value(json_object_get(t, "type")), "search") == 0)
			return (long)i;
	return -1;
}

static json_t *last_user_message(const json_t *body)
{
	const json_t *messages = json_object_get(body, "messages"), *m;
	json_t *last = NULL;
	size_t i;

	json_array_foreach(messages, i, m) {
		const char *role = json_string_value(json_object_get(m, "role"));

		if (role && strcmp(role, "user") == 0)
			last = (json_t *)m;
	}
	return last;
}

/* The tool's arguments, with the user's message as the query. */
static json_t *tool_arguments(const json_t *tool, const char *query)
{
	json_t *args = json_deep_copy(tool);

	if (!args)
		return NULL;
	json_object_del(args, "type");
	if (json_object_set_new(args, "query", json_string(query)) < 0) {
		json_decref(args);
		return NULL;
	}
	return args;
}

static bool host_can_ground(const struct lg_host *h)
{
	return LG_HOST_HAS(h, call_reply_member) && h->call_set_body && h->call_reply_member;
}

/* 0 with the search started, or the hook's answer. */
static enum lg_hook_result chat_start(struct chat *c)
{
	const struct lg_host *h = c->r->host;
	char *query = content_text(json_object_get(c->message, "content"));
	int rc;

	if (!query || !*query) {
		free(query);
		h->reply_error(c->req, 422, "messages: the search tool needs a user message with text");
		return LG_HOOK_DONE;
	}
	c->tool_args = tool_arguments(json_array_get(json_object_get(c->body, "tools"), c->tool),
				      query);
	free(query);
	if (!c->tool_args) {
		h->reply_error(c->req, 500, API_INTERNAL_ERROR);
		return LG_HOOK_DONE;
	}
	if (!rag_search_args_read(c->r, c->req, c->tool_args, &c->args))
		return LG_HOOK_DONE;
	rc = rag_search(c->r, c->req, &c->args, chat_searched, c);
	if (rc < 0) {
		h->reply_error(c->req, 503, API_DB_UNAVAILABLE);
		return LG_HOOK_DONE;
	}
	return LG_HOOK_PENDING;
}

enum lg_hook_result rag_chat_hook(struct lg_req *req, void *ud)
{
	struct rag *r = ud;
	const struct lg_host *h = r->host;
	const struct lg_call *call = h->req_call(req);
	struct lg_str raw = h->req_body(req);
	enum lg_hook_result res;
	struct chat *c;
	long tool;

	if (!call || !call->endpoint || strcmp(call->endpoint, CHAT_ENDPOINT) != 0 ||
	    !memmem(raw.ptr, raw.len, "\"search\"", 8))
		return LG_HOOK_OK;
	c = calloc(1, sizeof *c);
	if (!c) {
		h->reply_error(req, 500, API_INTERNAL_ERROR);
		return LG_HOOK_DONE;
	}
	c->r = r;
	c->req = req;
	c->body = json_loadb(raw.ptr, raw.len, 0, NULL);
	tool = search_tool(json_object_get(c->body, "tools"));
	if (tool < 0) {
		chat_free(c);
		return LG_HOOK_OK;
	}
	c->tool = (size_t)tool;
	c->message = last_user_message(c->body);
	if (!host_can_ground(h)) {
		chat_free(c);
		h->reply_error(req, 503, "The search tool is not available on this server.");
		return LG_HOOK_DONE;
	}
	if (!c->message) {
		chat_free(c);
		h->reply_error(req, 422, "messages: the search tool needs a user message");
		return LG_HOOK_DONE;
	}
	res = chat_start(c);
	if (res != LG_HOOK_PENDING)
		chat_free(c);
	return res;
}
