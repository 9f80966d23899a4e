#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Compatibility with the official OpenAI client library for Node.js.

tests/compat/compat.mjs drives the `openai` npm package (the version pinned
in tests/compat/package-lock.json) against the real server: models listed and
retrieved by a name containing '/', a chat completion by alias, streams with
and without the usage chunk, embeddings in float and in the client's default
base64 (in-process mock provider; the mock upstream answers floats only),
and the errors the client must raise (NotFoundError,
AuthenticationError) with the gateway's messages.

The package is installed with `npm ci` into a temporary directory, never into
the source tree. Node.js and npm (Debian: nodejs, npm) and the npm registry
(or npm's cache) are required: without them the test fails and says why."""
import os
import shutil
import subprocess
import tempfile
import unittest

import common
import lgtest
from mock import MockUpstream
from pgcluster import PgCluster

COMPAT_DIR = os.path.join(common.SOURCE_ROOT, "tests", "compat")
COMPAT_FILES = ("package.json", "package-lock.json", "compat.mjs")
MASTER = "sk-compat-master-key-3b9d61e0c2"
CHAT_MODEL = "org/chat-model"
CHAT_ALIAS = "compat-chat"
# openai provider -> mock upstream. The mock upstream answers floats only
# (it ignores encoding_format), so the client's default base64 is checked on
# the in-process mock provider.
EMBED_UPSTREAM = "org/embeddings-upstream"
EMBED_INPROCESS = "embeddings-inprocess"       # the in-process mock provider
DIM = 8
NPM_TIMEOUT = 200
NODE_TIMEOUT = 120


def _tool(name):
    path = shutil.which(name)
    if not path:
        raise AssertionError("%s not found in PATH: the OpenAI client compatibility test needs "
                             "Node.js >= 18 and npm (Debian packages: nodejs npm)" % name)
    return path


def _run(cmd, cwd, timeout, what, env=None):
    try:
        p = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, errors="replace",
                           timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        out = e.output or ""
        if isinstance(out, bytes):
            out = out.decode(errors="replace")
        raise AssertionError("%s did not finish within %d s:\n%s" % (what, timeout, out[-4000:]))
    return p


def install_client(workdir):
    """Copies the compat package into @workdir and installs its locked
    dependencies there. Fails with npm's output when that is impossible
    (no npm, registry unreachable and nothing cached, lockfile mismatch)."""
    for name in COMPAT_FILES:
        shutil.copy(os.path.join(COMPAT_DIR, name), workdir)
    npm = _tool("npm")
    # Bounded retries so that an unreachable registry fails well within the
    # test's timeout.
    env = dict(os.environ, npm_config_update_notifier="false", npm_config_fetch_retries="1",
               npm_config_fetch_timeout="60000")
    p = _run([npm, "ci", "--no-audit", "--no-fund", "--prefer-offline"], workdir,
             NPM_TIMEOUT, "npm ci", env)
    if p.returncode != 0:
        raise AssertionError("npm ci of tests/compat failed (exit %d): the npm registry must "
                             "be reachable, or the package in npm's cache:\n%s" %
                             (p.returncode, p.stdout[-4000:]))


def gateway_config(upstream_url):
    return {
        "plugins": {"auth": {"master_key": MASTER}, "openai": {}, "mock": {"dimension": DIM}},
        "models": [
            {"name": CHAT_MODEL, "type": "text-generation", "aliases": [CHAT_ALIAS],
             "providers": [{"type": "openai", "url": upstream_url, "model_name": "mock-chat"}]},
            {"name": EMBED_UPSTREAM, "type": "text-embeddings-inference",
             "providers": [{"type": "openai", "url": upstream_url,
                            "model_name": "mock-embed"}]},
            {"name": EMBED_INPROCESS, "type": "text-embeddings-inference",
             "providers": [{"type": "mock", "url": "http://mock.invalid",
                            "model_name": "mock-embed"}]},
        ],
    }


class OpenAIClient(unittest.TestCase):
    def setUp(self):
        self.node = _tool("node")
        self.workdir = tempfile.mkdtemp(prefix="llmgate-compat-")
        self.addCleanup(shutil.rmtree, self.workdir, True)

    def test_openai_node_client(self):
        install_client(self.workdir)
        with PgCluster() as pg, MockUpstream(models=["mock-chat", "mock-embed"], dim=DIM) as up:
            with lgtest.Gateway(gateway_config(up.url), pg=pg) as gw:
                env = dict(os.environ, LLMGATE_URL=gw.url, LLMGATE_KEY=MASTER,
                           COMPAT_CHAT_MODEL=CHAT_MODEL, COMPAT_CHAT_ALIAS=CHAT_ALIAS,
                           COMPAT_EMBED_MODELS=EMBED_INPROCESS,
                           COMPAT_EMBED_FLOAT_MODELS=EMBED_UPSTREAM,
                           COMPAT_EMBED_DIM=str(DIM))
                p = _run([self.node, os.path.join(self.workdir, "compat.mjs")], self.workdir,
                         NODE_TIMEOUT, "compat.mjs", env)
                log = gw.log()
            gw_status = gw.returncode
            stats = up.stats()
            up_status = up.stop()
        self.assertEqual(p.returncode, 0, "compat.mjs failed:\n%s\n--- llmgate log ---\n%s" %
                         (p.stdout[-4000:], log[-4000:]))
        self.assertIn("all checks passed", p.stdout)
        # The calls really crossed the gateway to the upstream, once each
        # (four chat calls: plain, two streams, the stream runner; the
        # embeddings model on the upstream is called once, in float).
        by_path = stats.get("by_path", {})
        self.assertEqual(by_path.get("/v1/chat/completions"), 4, stats)
        self.assertEqual(by_path.get("/v1/embeddings"), 1, stats)
        last = stats["last_by_path"]
        self.assertIn('"model":"mock-chat"', last["/v1/chat/completions"]["body"])
        self.assertIn('"model":"mock-embed"', last["/v1/embeddings"]["body"])
        self.assertNotIn(MASTER, log)
        # A clean exit (under the sanitizer build: no leak, no error report).
        self.assertEqual(gw_status, 0, log[-4000:])
        self.assertEqual(up_status, 0)


if __name__ == "__main__":
    lgtest.main()
