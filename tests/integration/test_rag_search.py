#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""POST /v1/search (spec §10.4) and the chat "search" tool (§10.5) through
the real server and PostgreSQL, with the mock provider's feature-hashed
embeddings (texts sharing words are close): each method's order on a small
corpus, limit and offset, document and metadata filters, the score
threshold, the 422s, others' private collections (404) and public ones
(readable), two instances kept in step by NOTIFY, and a chat completion
grounded on the chunks found, whole and streamed."""
import json
import time
import unittest
import uuid

import common
import lgtest
from pgcluster import PgCluster

MASTER = "master-key-for-rag-search-tests-7c1e"
NOTIFY_TIMEOUT = 10         # seconds for another instance to see a change

# (name, text, metadata): one document each, one chunk each.
CORPUS = [
    ("elephant", "The purple elephant dances in the moonlight garden",
     {"topic": "animals", "source": "field-notes", "year": 2020}),
    ("quantum", "Quantum computers factor large numbers with qubits",
     {"topic": "physics", "source": "arxiv-paper", "year": 2021}),
    ("bread", "Bread recipe: flour, water, salt and yeast baked slowly",
     {"topic": "cooking", "source": "blog", "year": 2020}),
    ("animals", "Elephants are the largest land animals on earth",
     {"topic": "animals", "source": "encyclopedia", "year": 2019}),
    ("garden", "The garden holds roses, tulips and a small pond",
     {"topic": "plants", "source": "blog-post", "year": 2022}),
]


def config():
    return {"plugins": {"auth": {"master_key": MASTER}, "mock": {},
                        "rag": {"embeddings_model": "mock-embeddings"}},
            "models": [{"name": "mock-chat", "type": "text-generation",
                        "providers": [{"type": "mock", "model_name": "mock-chat"}]},
                       {"name": "mock-embeddings", "type": "text-embeddings-inference",
                        "providers": [{"type": "mock", "model_name": "mock-embeddings"}]}]}


def multipart(fields, files):
    """A multipart/form-data body: (content type, bytes)."""
    boundary = "b-" + uuid.uuid4().hex
    out = b""
    for name, value in fields.items():
        out += ("--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n"
                % (boundary, name, value)).encode()
    for name, (filename, ctype, data) in files.items():
        out += ("--%s\r\nContent-Disposition: form-data; name=\"%s\"; filename=\"%s\"\r\n"
                "Content-Type: %s\r\n\r\n" % (boundary, name, filename, ctype)).encode()
        out += data + b"\r\n"
    out += ("--%s--\r\n" % boundary).encode()
    return "multipart/form-data; boundary=" + boundary, out


class Search(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = PgCluster().start()
        cls.g = lgtest.Gateway(config(), pg=cls.pg).start()
        cls.g2 = None
        ids = dict(cls.pg.psql("SELECT name, id FROM model"))
        limits = [{"model_id": int(ids[m]), "type": "rpm", "value": None}
                  for m in ("mock-chat", "mock-embeddings")]
        role = cls.master("POST", "/v1/admin/roles",
                          {"name": "rag", "permissions": ["create_public_collection"],
                           "limits": limits})["id"]
        cls.keys = {}
        for who in ("alice", "bob"):
            u = cls.master("POST", "/v1/admin/users",
                           {"email": who + "@example.org", "password": "pw-" + who * 3,
                            "role_id": role})
            cls.keys[who] = cls.master("POST", "/v1/admin/keys",
                                       {"name": who, "user": u["id"]})["value"]
        cls.col = cls.call_ok("alice", "POST", "/v1/collections", {"name": "corpus"})["id"]
        cls.docs = {}
        for name, text, meta in CORPUS:
            cls.docs[name] = cls.upload("alice", cls.col, name, text, meta)
        cls.chunks = {}
        for name, doc in cls.docs.items():
            r = cls.call_ok("alice", "GET", "/v1/documents/%d/chunks" % doc)
            cls.chunks[name] = r["data"][0]["id"]
        cls.public = cls.call_ok("alice", "POST", "/v1/collections",
                                 {"name": "shared", "visibility": "public"})["id"]
        cls.upload("alice", cls.public, "shared", "Lighthouses guide ships along rocky coasts", {})
        cls.bobs = cls.call_ok("bob", "POST", "/v1/collections", {"name": "bob's"})["id"]
        cls.upload("bob", cls.bobs, "secret", "The purple elephant secret of bob", {})

    @classmethod
    def tearDownClass(cls):
        problems = []
        for g in (cls.g, cls.g2):
            if not g:
                continue
            code = g.stop()
            log = g.log()
            # a sanitizer build reports leaks and errors at exit
            if code != 0 or "Sanitizer" in log or "runtime error" in log:
                problems.append("exit %s\n%s" % (code, log[-6000:]))
            g.close()
        cls.pg.destroy()
        if problems:
            raise AssertionError("\n".join(problems))

    @classmethod
    def master(cls, method, path, body=None):
        return lgtest.admin(cls.g, MASTER, method, path, body)

    @classmethod
    def call(cls, who, method, path, body=None, gateway=None, timeout=10):
        return (gateway or cls.g).request(method, path, body, timeout=timeout,
                                          headers={"Authorization": "Bearer " + cls.keys[who]})

    @classmethod
    def call_ok(cls, who, method, path, body=None, gateway=None):
        r = cls.call(who, method, path, body, gateway)
        if r.status not in (200, 201):
            raise AssertionError("%s %s %s: %r" % (who, method, path, r))
        return r.json()

    @classmethod
    def upload(cls, who, collection, name, text, meta, gateway=None):
        fields = {"collection_id": str(collection), "name": name}
        if meta:
            fields["metadata"] = json.dumps(meta)
        ctype, body = multipart(fields,
                                {"file": (name + ".txt", "text/plain", text.encode())})
        r = (gateway or cls.g).request("POST", "/v1/documents", body, timeout=30,
                                       headers={"Authorization": "Bearer " + cls.keys[who],
                                                "Content-Type": ctype})
        if r.status not in (200, 201):
            raise AssertionError("upload %s: %r" % (name, r))
        return r.json()["id"]

    def search(self, body, who="alice", status=200, gateway=None):
        body = dict(body)
        body.setdefault("collection_ids", [self.col])
        r = self.call(who, "POST", "/v1/search", body, gateway)
        self.assertEqual(r.status, status, r)
        return r.json()

    def names(self, reply):
        by_id = {v: k for k, v in self.chunks.items()}
        return [by_id.get(d["chunk"]["id"], d["chunk"]["id"]) for d in reply["data"]]

    # ---- each method ----

    def test_semantic_order_and_shape(self):
        r = self.search({"query": "purple elephant moonlight", "limit": 5})
        self.assertEqual(r["object"], "list")
        self.assertEqual(self.names(r)[0], "elephant")
        scores = [d["score"] for d in r["data"]]
        self.assertEqual(scores, sorted(scores, reverse=True))
        self.assertLessEqual(scores[0], 1.0001)
        top = r["data"][0]
        self.assertEqual(top["method"], "semantic")
        chunk = top["chunk"]
        self.assertEqual(chunk["object"], "chunk")
        self.assertEqual(chunk["collection_id"], self.col)
        self.assertEqual(chunk["document_id"], self.docs["elephant"])
        self.assertEqual(chunk["content"], CORPUS[0][1])
        self.assertEqual(chunk["metadata"]["topic"], "animals")
        self.assertIsInstance(chunk["created"], int)
        self.assertGreater(r["usage"]["prompt_tokens"], 0)

    def test_semantic_is_the_default_and_prompt_is_accepted(self):
        r = self.search({"prompt": "quantum qubits"})
        self.assertEqual(self.names(r)[0], "quantum")
        self.assertEqual(r["data"][0]["method"], "semantic")

    def test_lexical_order(self):
        r = self.search({"query": "elephant garden", "method": "lexical"})
        names = self.names(r)
        self.assertEqual(names[0], "elephant")     # both words
        self.assertEqual(set(names), {"elephant", "animals", "garden"})
        self.assertTrue(all(d["method"] == "lexical" for d in r["data"]))
        r = self.search({"query": "qubits", "method": "lexical"})
        self.assertEqual(self.names(r), ["quantum"])
        r = self.search({"query": "zeppelin", "method": "lexical"})
        self.assertEqual(r["data"], [])

    def test_hybrid_fuses_by_rank(self):
        r = self.search({"query": "elephant garden", "method": "hybrid"})
        self.assertEqual(self.names(r)[0], "elephant")
        self.assertTrue(all(d["method"] == "hybrid" for d in r["data"]))
        # first in both lists: 1/(60+0+1) twice
        self.assertAlmostEqual(r["data"][0]["score"], 2 / 61, places=6)
        r = self.search({"query": "elephant garden", "method": "hybrid", "rff_k": 0})
        self.assertAlmostEqual(r["data"][0]["score"], 2.0, places=6)
        # a chunk found only by the semantic list gets only its share
        r = self.search({"query": "zeppelin elephant", "method": "hybrid", "rff_k": 10})
        for d in r["data"]:
            self.assertLessEqual(d["score"], 2 / 11 + 1e-9)

    def test_limit_and_offset(self):
        full = self.names(self.search({"query": "the garden elephant", "limit": 5}))
        page = self.names(self.search({"query": "the garden elephant", "limit": 2,
                                       "offset": 1}))
        self.assertEqual(page, full[1:3])
        lex = self.names(self.search({"query": "elephant garden", "method": "lexical",
                                      "limit": 1, "offset": 1}))
        self.assertEqual(len(lex), 1)
        self.assertNotEqual(lex[0], "elephant")

    # ---- filters ----

    def test_document_ids(self):
        for method in ("semantic", "lexical", "hybrid"):
            r = self.search({"query": "elephant garden", "method": method,
                             "document_ids": [self.docs["garden"]]})
            self.assertEqual(self.names(r), ["garden"], method)

    def test_metadata_filters(self):
        cases = [
            ({"key": "topic", "type": "eq", "value": "animals"}, {"elephant", "animals"}),
            ({"key": "year", "type": "eq", "value": 2020}, {"elephant", "bread"}),
            ({"key": "source", "type": "sw", "value": "blog"}, {"bread", "garden"}),
            ({"key": "source", "type": "ew", "value": "paper"}, {"quantum"}),
            ({"key": "source", "type": "co", "value": "ycl"}, {"animals"}),
            ({"key": "source", "type": "co", "value": "%"}, set()),
            ({"filters": [{"key": "topic", "type": "eq", "value": "animals"},
                          {"key": "year", "type": "eq", "value": 2020}], "operator": "and"},
             {"elephant"}),
            ({"filters": [{"key": "topic", "type": "eq", "value": "physics"},
                          {"key": "topic", "type": "eq", "value": "plants"}], "operator": "or"},
             {"quantum", "garden"}),
        ]
        for f, want in cases:
            for method in ("semantic", "lexical", "hybrid"):
                # the lexical list only holds chunks sharing a word with the query
                q = "the elephant garden qubits bread blog" if method != "semantic" else \
                    "elephant"
                r = self.search({"query": q, "method": method, "metadata_filters": f,
                                 "limit": 10})
                got = set(self.names(r))
                if method == "lexical":
                    self.assertTrue(got <= want, (f, method, got))
                else:
                    self.assertEqual(got, want, (f, method))

    def test_semantic_filter_widens_candidates(self):
        # limit 1: the best chunk for "bread" is not an animal one, so the
        # first candidates all fail and the list has to grow.
        r = self.search({"query": "bread flour yeast", "limit": 1,
                         "metadata_filters": {"key": "topic", "type": "eq", "value": "plants"}})
        self.assertEqual(self.names(r), ["garden"])

    def test_score_threshold(self):
        text = CORPUS[2][1]
        r = self.search({"query": text, "score_threshold": 0.95, "limit": 10})
        self.assertEqual(self.names(r), ["bread"])
        self.assertGreaterEqual(r["data"][0]["score"], 0.95)
        r = self.search({"query": "zeppelin airship", "score_threshold": 0.5})
        self.assertEqual(r["data"], [])
        # 0 is the default: allowed with every method
        self.search({"query": "bread", "method": "lexical", "score_threshold": 0})

    def test_422(self):
        bad = [
            {"query": "x", "method": "lexical", "score_threshold": 0.5},
            {"query": "x", "method": "hybrid", "score_threshold": 0.5},
            {"query": "x", "score_threshold": 1.5},
            {"query": "x", "limit": 0},
            {"query": "x", "limit": 101},
            {"query": "x", "offset": -1},
            {"query": "x", "rff_k": 16385},
            {"query": "x", "rff_k": -1},
            {"query": "x", "method": "fuzzy"},
            {"query": "x", "collection_ids": list(range(1, 102))},
            {"query": "x", "document_ids": list(range(1, 102))},
            {"query": "x", "collection_ids": ["a"]},
            {"collection_ids": [1]},
            {"query": "   "},
            {"query": "x", "metadata_filters": {"key": "a", "type": "gt", "value": 1}},
            {"query": "x", "metadata_filters": {"key": "a", "type": "sw", "value": 1}},
            {"query": "x", "metadata_filters": {"key": "a", "type": "eq", "value": [1]}},
            {"query": "x", "metadata_filters": {"filters": [
                {"key": "a", "type": "eq", "value": 1}], "operator": "and"}},
            {"query": "x", "metadata_filters": {"filters": [
                {"key": "a", "type": "eq", "value": 1}] * 5, "operator": "and"}},
            {"query": "x", "metadata_filters": {"filters": [
                {"key": "a", "type": "eq", "value": 1}] * 2, "operator": "xor"}},
        ]
        for body in bad:
            r = self.call("alice", "POST", "/v1/search", body)
            self.assertEqual(r.status, 422, (body, r))
        self.assertEqual(self.search({"query": "x", "rff_k": 16384})["object"], "list")

    # ---- who reads what ----

    def test_others_collections_are_404(self):
        for method in ("semantic", "lexical", "hybrid"):
            r = self.search({"query": "purple elephant", "collection_ids": [self.bobs],
                             "method": method}, status=404)
            self.assertEqual(r["detail"], "Collection %d not found." % self.bobs)
        r = self.search({"query": "x", "collection_ids": [self.col, 987654]}, status=404)
        self.assertEqual(r["detail"], "Collection 987654 not found.")
        r = self.search({"query": "x"}, who="bob", status=404)
        self.assertEqual(r["detail"], "Collection %d not found." % self.col)
        r = self.g.request("POST", "/v1/search", {"query": "x"})
        self.assertEqual(r.status, 401)

    def test_public_collections_are_readable(self):
        for method in ("semantic", "lexical", "hybrid"):
            r = self.search({"query": "lighthouses ships", "collection_ids": [self.public],
                             "method": method}, who="bob")
            self.assertEqual(len(r["data"]), 1, method)
            self.assertIn("Lighthouses", r["data"][0]["chunk"]["content"])

    def test_no_collection_ids_searches_what_the_caller_reads(self):
        r = self.search({"query": "purple elephant secret", "collection_ids": [], "limit": 20},
                        who="bob")
        cols = {d["chunk"]["collection_id"] for d in r["data"]}
        self.assertIn(self.bobs, cols)
        self.assertNotIn(self.col, cols)
        self.assertLessEqual(cols, {self.bobs, self.public})

    # ---- two instances ----

    def test_other_instance_sees_new_documents(self):
        cls = type(self)
        if not cls.g2:
            cls.g2 = lgtest.Gateway(config(), pg=self.pg).start()
        col = self.call_ok("alice", "POST", "/v1/collections", {"name": "notify"})["id"]
        self.upload("alice", col, "first", "Volcanoes erupt molten lava", {})
        q = {"query": "glaciers carve frozen valleys", "collection_ids": [col], "limit": 5}
        # the second instance loads the collection's vectors into memory
        before = self.search(q, gateway=cls.g2)
        self.assertEqual(len(before["data"]), 1)
        self.upload("alice", col, "second", "Glaciers carve frozen valleys slowly", {})
        deadline = time.monotonic() + NOTIFY_TIMEOUT
        while True:
            r = self.search(q, gateway=cls.g2)
            if len(r["data"]) == 2:
                break
            self.assertLess(time.monotonic(), deadline, "the other instance missed the NOTIFY")
            time.sleep(0.1)
        self.assertIn("Glaciers", r["data"][0]["chunk"]["content"])
        # and a deleted document goes away there too
        doc = r["data"][0]["chunk"]["document_id"]
        self.assertEqual(self.call("alice", "DELETE", "/v1/documents/%d" % doc).status, 204)
        deadline = time.monotonic() + NOTIFY_TIMEOUT
        while len(self.search(q, gateway=cls.g2)["data"]) != 1:
            self.assertLess(time.monotonic(), deadline, "the other instance kept a deleted chunk")
            time.sleep(0.1)

    # ---- chat ----

    def chat_body(self, stream=False, **args):
        tool = {"type": "search", "collection_ids": [self.col], "limit": 2}
        tool.update(args)
        return {"model": "mock-chat", "stream": stream, "max_tokens": 100,
                "messages": [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": "tell me about quantum"},
                             {"role": "assistant", "content": "ok"},
                             {"role": "user", "content": "quantum computers and qubits"}],
                "tools": [tool]}

    def test_chat_search_tool(self):
        r = self.call("alice", "POST", "/v1/chat/completions", self.chat_body())
        self.assertEqual(r.status, 200, r)
        body = r.json()
        results = body["search_results"]
        self.assertEqual(len(results), 2)
        self.assertEqual(results[0]["chunk"]["id"], self.chunks["quantum"])
        self.assertEqual(results[0]["method"], "semantic")
        # the mock echoes the start of the prompt it received: the grounded one
        content = body["choices"][0]["message"]["content"]
        self.assertIn("Documents: [1] Quantum computers factor large numbers", content)
        self.assertNotIn("tell me about", content)

    def test_chat_search_tool_streamed(self):
        r = self.call("alice", "POST", "/v1/chat/completions", self.chat_body(stream=True))
        self.assertEqual(r.status, 200, r)
        events = r.data()
        self.assertIn("search_results", events[0])
        self.assertEqual(events[0]["search_results"][0]["chunk"]["id"], self.chunks["quantum"])
        text = "".join(e["choices"][0]["delta"].get("content", "") for e in events
                       if e.get("choices"))
        self.assertIn("Documents: [1] Quantum computers factor large numbers", text)

    def test_chat_search_tool_errors(self):
        r = self.call("alice", "POST", "/v1/chat/completions",
                      self.chat_body(collection_ids=[self.bobs]))
        self.assertEqual(r.status, 404, r)
        r = self.call("alice", "POST", "/v1/chat/completions",
                      self.chat_body(method="lexical", score_threshold=0.5))
        self.assertEqual(r.status, 422, r)

    def test_chat_without_the_tool_is_untouched(self):
        body = self.chat_body()
        del body["tools"]
        r = self.call("alice", "POST", "/v1/chat/completions", body)
        self.assertEqual(r.status, 200, r)
        self.assertNotIn("search_results", r.json())
        self.assertIn("quantum computers and qubits", r.json()["choices"][0]["message"]["content"])


if __name__ == "__main__":
    unittest.main()
