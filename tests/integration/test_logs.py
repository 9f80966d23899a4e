#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Logs: one access line per request with its id, level and component on
every line, and no secret ever (canaries in the config, the key and the
database password)."""
import re
import unittest

import common
import lgtest
from pgcluster import PgCluster

DB_CANARY = "pw-canary-5b1e"
SETTING_CANARY = "setting-canary-77c2"
KEY_CANARY = "sk-canary-90af3c"


class Logs(unittest.TestCase):
    def test_access_lines_and_no_secrets(self):
        with PgCluster(password=DB_CANARY) as pg:
            cfg = {"plugins": {"good": {"secret": SETTING_CANARY}}, "server": {"log_level": "debug"}}
            with lgtest.Gateway(cfg, pg=pg,
                                env={"LLMGATE_PLUGIN_PATH": common.test_plugins_path()}) as g:
                rids = []
                for path, headers in [("/health", {}), ("/good/hello", {}),
                                      ("/good/items/1", {"Authorization": "Bearer " + KEY_CANARY}),
                                      ("/nope", {}), ("/good/items/1?key=" + KEY_CANARY, {})]:
                    r = g.request("GET", path, headers=headers)
                    rids.append(r.headers.get("x-request-id"))
                g.raw(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
                g.stop()
                log = g.log()
            for canary in (DB_CANARY, SETTING_CANARY, KEY_CANARY):
                self.assertNotIn(canary, log)
            access = [l for l in log.splitlines() if "[access]" in l]
            for rid in rids:
                self.assertEqual(sum(1 for l in access if "rid=%s " % rid in l), 1, rid)
            # Every line: time, level, [component].
            for line in log.splitlines():
                self.assertRegex(line, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "
                                       r"(error|warn|info|debug) \[[a-z_]+\]", line)
            self.assertTrue(any(re.search(r'"GET /good/items/1" 401 ', l) for l in access))
            # A request refused for its framing has its access line too.
            self.assertTrue(any(re.search(r'"-" 400 refused: ', l) for l in access), access)


if __name__ == "__main__":
    lgtest.main()
