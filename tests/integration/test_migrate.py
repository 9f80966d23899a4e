#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Migrations through the real binary: dry run, apply, status, rerun, edited
and newer databases refused, and two instances starting at once."""
import threading
import unittest

import common
import lgtest
from pgcluster import PgCluster


class Migrate(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = PgCluster().start()

    @classmethod
    def tearDownClass(cls):
        cls.pg.destroy()

    def cfg(self, db):
        return {"plugins": {"good": {}, "needs_good": {}},
                "dependencies": {"postgres": {"url": self.pg.url(db)}}}

    def migrate(self, db, *args):
        return lgtest.run_llmgate(["migrate"] + list(args), config=self.cfg(db),
                                  env={"LLMGATE_PLUGIN_PATH": common.test_plugins_path()})

    def newdb(self, name):
        self.pg.psql("CREATE DATABASE %s" % name)
        return name

    def test_dry_run_apply_status_rerun(self):
        db = self.newdb("m_cycle")
        r = self.migrate(db, "--dry-run")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("5 migrations pending", r.stdout)
        for name in ("core 0001", "core 0002", "good 0001", "good 0002", "needs_good 0001"):
            self.assertIn(name, r.stdout)
        self.assertEqual(self.pg.psql("SELECT to_regclass('schema_migrations') IS NULL",
                                      dbname=db), [["t"]])

        r = self.migrate(db)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("5 migrations applied", r.stdout)
        rows = self.pg.psql("SELECT plugin, version, name, length(checksum) FROM "
                            "schema_migrations ORDER BY plugin, version", dbname=db)
        self.assertEqual(rows, [["core", "1", "core_schema", "64"],
                                ["core", "2", "models", "64"],
                                ["good", "1", "good_item", "64"],
                                ["good", "2", "good_item_seed", "64"],
                                ["needs_good", "1", "needs_good_view", "64"]])

        r = self.migrate(db, "status")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.count("applied"), 5, r.stdout)
        self.assertNotIn("pending", r.stdout)

        r = self.migrate(db)
        self.assertEqual(r.returncode, 0)
        self.assertIn("0 migrations applied", r.stdout)

    def test_edited_migration_refused(self):
        db = self.newdb("m_edited")
        self.assertEqual(self.migrate(db).returncode, 0)
        self.pg.psql("UPDATE schema_migrations SET checksum = repeat('0', 64) "
                     "WHERE plugin = 'good' AND version = 2", dbname=db)
        r = self.migrate(db)
        self.assertEqual(r.returncode, 1)
        self.assertIn("good", r.stderr)
        self.assertIn("good_item_seed", r.stderr)
        # The server refuses to start on it too.
        g = lgtest.Gateway(self.cfg(db), pg=self.pg, ready=False,
                           env={"LLMGATE_PLUGIN_PATH": common.test_plugins_path()})
        try:
            g.start()
        except lgtest.GatewayError:
            pass  # it may exit before /health is polled
        self.assertEqual(g.wait(30), 1)
        self.assertIn("good_item_seed", g.log())
        g.stop()

    def test_newer_database_refused(self):
        db = self.newdb("m_newer")
        self.assertEqual(self.migrate(db).returncode, 0)
        self.pg.psql("INSERT INTO schema_migrations (plugin, version, name, checksum) "
                     "VALUES ('good', 3, 'from_the_future', 'x')", dbname=db)
        r = self.migrate(db)
        self.assertEqual(r.returncode, 1)
        self.assertIn("upgrade llmgate", r.stderr)

    def test_two_instances_start_at_once(self):
        db = self.newdb("m_race")
        gws = [lgtest.Gateway(self.cfg(db), pg=self.pg,
                              env={"LLMGATE_PLUGIN_PATH": common.test_plugins_path()})
               for _ in range(2)]
        threads = [threading.Thread(target=g.start) for g in gws]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        try:
            for g in gws:
                lgtest.wait_ready(g)
                self.assertEqual(g.request("GET", "/ready").status, 200, g.log())
            rows = self.pg.psql("SELECT plugin, version, count(*) FROM schema_migrations "
                                "GROUP BY 1, 2 ORDER BY 1, 2", dbname=db)
            self.assertEqual([r[2] for r in rows], ["1"] * 5)
            self.assertEqual(self.pg.psql("SELECT count(*) FROM good_item", dbname=db), [["1"]])
        finally:
            for g in gws:
                g.stop()


if __name__ == "__main__":
    lgtest.main()
