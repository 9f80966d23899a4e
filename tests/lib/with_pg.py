#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Runs a command with a throwaway PostgreSQL cluster: LG_TEST_PG_URL and
LG_TEST_PG_PORT point at it, and it is removed afterwards. Used by the C
tests that need a real database (meson test ... with_pg.py ./test_x)."""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pgcluster import PgCluster  # noqa: E402


def main():
    with PgCluster() as pg:
        env = dict(os.environ, LG_TEST_PG_URL=pg.url(), LG_TEST_PG_PORT=str(pg.port),
                   LG_TEST_PG_PASSWORD=pg.password, LG_TEST_PG_DATA=pg.data)
        rc = subprocess.call(sys.argv[1:], env=env)
        if rc != 0:
            sys.stderr.write("--- postgres log ---\n" + pg.server_log()[-4000:])
        return rc


if __name__ == "__main__":
    sys.exit(main())
