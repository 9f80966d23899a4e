#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Budgets of the auth plugin: the worst-case cost is held before the call
and settled after, so a burst never spends past zero; an exhausted budget
gets 400 "Insufficient budget."; a NULL budget is unlimited and costs no
query (it keeps working with PostgreSQL stopped)."""
import decimal
import threading
import unittest

import common  # noqa: F401 - sets the library path
import lgtest
from pgcluster import PgCluster
from test_limits import (chat, config, make_user, mock_model, stopped_cleanly, wait_model_visible,
                         wait_until)

# Only completion tokens are priced, 1000 per million: 0.001 a token. With
# max_tokens 4 the mock answers exactly 4 words, so a call's hold (4 tokens)
# equals its cost and the number of calls a budget pays for is exact.
MODEL = "priced"
FREE = "free"
COST_COMPLETION = 1000
MAX_TOKENS = 4
PER_CALL = decimal.Decimal("0.004")


def budget_of(pg, user_id):
    value = pg.psql("SELECT COALESCE(budget::text, 'null') FROM \"user\" WHERE id = %d"
                    % user_id)[0][0]
    return None if value == "null" else decimal.Decimal(value)


def cost_of(reply):
    """Spec §6 from the reply's usage (prompt tokens are free here)."""
    return decimal.Decimal(reply.json()["usage"]["completion_tokens"]) * COST_COMPLETION / 1000000


def chat_choices(gw, key, n, max_tokens):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": n,
            "max_tokens": max_tokens}
    return gw.request("POST", "/v1/chat/completions", body,
                      headers={"Authorization": "Bearer " + key})


def wait_settled(fn):
    wait_until("the budget's settlement", fn)


class Budget(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = PgCluster().start()
        models = [mock_model(MODEL, cost_completion=COST_COMPLETION), mock_model(FREE)]
        cls.gw = lgtest.Gateway(config(models), pg=cls.pg).start()
        cls.gw.wait_ready()

    @classmethod
    def tearDownClass(cls):
        try:
            stopped_cleanly(cls.gw)
        finally:
            cls.pg.destroy()

    def user(self, budget, model=MODEL):
        user_id, key = make_user(self.pg, self.gw, model, {"rpm": None}, budget=budget)
        wait_model_visible(self.gw, key, model)
        return user_id, key

    def test_settled_to_the_real_cost(self):
        user_id, key = self.user("1.000000")
        r = chat(self.gw, key, MODEL, max_tokens=2)
        self.assertEqual(r.status, 200, r.body)
        expected = decimal.Decimal("1.000000") - cost_of(r)
        # The cost settled is the one the reply's usage shows.
        self.assertEqual(decimal.Decimal(str(r.json()["usage"]["cost"])), cost_of(r))
        # The settlement is not waited for by the reply.
        wait_settled(lambda: budget_of(self.pg, user_id) == expected)
        # Without max_tokens the hold is budget_hold_completion_tokens
        # (4096 tokens = 4.096): more than the budget, so refused although
        # the call itself would have been cheap.
        r = chat(self.gw, key, MODEL)
        self.assertEqual(r.status, 400, r.body)
        self.assertEqual(r.json()["detail"], "Insufficient budget.")
        self.assertEqual(budget_of(self.pg, user_id), expected)

    def test_hold_covers_every_choice(self):
        # "n" choices of max_tokens each: 3 x 4 tokens hold 0.012, more
        # than the budget, although one choice (0.004) would fit.
        user_id, key = self.user("0.010")
        # "n" anywhere at the top level, after nested values, spaced.
        raw = (b'{"messages": [{"role": "user", "content": "n", "n": 1}], '
               b'"model": "priced", "max_tokens": 4, "n" : 3}')
        for r in (chat_choices(self.gw, key, 3, MAX_TOKENS), chat_choices(self.gw, key, 1000, 4),
                  self.gw.request("POST", "/v1/chat/completions", raw,
                                  headers={"Authorization": "Bearer " + key})):
            self.assertEqual(r.status, 400, r.body)
            self.assertEqual(r.json()["detail"], "Insufficient budget.")
        self.assertEqual(budget_of(self.pg, user_id), decimal.Decimal("0.010"))
        # Two choices fit (0.008); the real cost is settled after.
        r = chat_choices(self.gw, key, 2, MAX_TOKENS)
        self.assertEqual(r.status, 200, r.body)
        wait_settled(lambda: budget_of(self.pg, user_id) == decimal.Decimal("0.010") - cost_of(r))
        # "n" is capped at 128 choices: a hold of 128 x 0.004 = 0.512.
        user_id, key = self.user("0.6")
        r = chat_choices(self.gw, key, 10 ** 6, MAX_TOKENS)
        self.assertEqual(r.status, 200, r.body)

    def test_exhausted_budget(self):
        user_id, key = self.user("0")
        r = chat(self.gw, key, MODEL, max_tokens=1)
        self.assertEqual(r.status, 400, r.body)
        self.assertEqual(r.json()["detail"], "Insufficient budget.")
        self.assertEqual(budget_of(self.pg, user_id), 0)

    def test_huge_max_tokens_refused(self):
        user_id, key = self.user("5")
        for max_tokens in (10 ** 9, 10 ** 18):
            r = chat(self.gw, key, MODEL, max_tokens=max_tokens)
            self.assertEqual(r.status, 400, r.body)
            self.assertEqual(r.json()["detail"], "Insufficient budget.")
        self.assertEqual(budget_of(self.pg, user_id), 5)

    def test_free_model_ignores_budget(self):
        user_id, key = self.user("0", model=FREE)
        r = chat(self.gw, key, FREE)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(budget_of(self.pg, user_id), 0)

    def test_burst_never_overspends(self):
        initial = PER_CALL * 5
        user_id, key = self.user(str(initial))
        replies = []
        lock = threading.Lock()

        def one():
            r = chat(self.gw, key, MODEL, max_tokens=MAX_TOKENS)
            with lock:
                replies.append(r)
        threads = [threading.Thread(target=one) for _ in range(30)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ok = [r for r in replies if r.status == 200]
        refused = [r for r in replies if r.status != 200]
        self.assertLessEqual(len(ok), 5)
        self.assertGreaterEqual(len(ok), 1)
        for r in refused:
            self.assertEqual(r.status, 400, r.body)
            self.assertEqual(r.json()["detail"], "Insufficient budget.")
        spent = sum((cost_of(r) for r in ok), decimal.Decimal(0))
        wait_settled(lambda: budget_of(self.pg, user_id) == initial - spent)
        self.assertGreaterEqual(budget_of(self.pg, user_id), 0)

    def test_null_budget_unlimited_without_a_query(self):
        user_id, key = self.user(None)
        for _ in range(3):
            r = chat(self.gw, key, MODEL, max_tokens=MAX_TOKENS)
            self.assertEqual(r.status, 200, r.body)
        self.assertIsNone(budget_of(self.pg, user_id))


class BudgetDatabaseDown(unittest.TestCase):
    def test_null_budget_needs_no_database_limited_gets_503(self):
        with PgCluster() as pg:
            models = [mock_model(MODEL, cost_completion=COST_COMPLETION)]
            with lgtest.Gateway(config(models), pg=pg) as gw:
                gw.wait_ready()
                _, free_key = make_user(pg, gw, MODEL, {"rpm": None}, budget=None)
                _, paid_key = make_user(pg, gw, MODEL, {"rpm": None}, budget="1")
                wait_model_visible(gw, free_key, MODEL)
                wait_model_visible(gw, paid_key, MODEL)
                # Both keys are now in the cache.
                self.assertEqual(chat(gw, free_key, MODEL, max_tokens=1).status, 200)
                self.assertEqual(chat(gw, paid_key, MODEL, max_tokens=1).status, 200)
                pg.stop()
                # No budget: no query, so the database is not missed.
                r = chat(gw, free_key, MODEL, max_tokens=1)
                self.assertEqual(r.status, 200, r.body)
                # A budget cannot be held without the database.
                r = chat(gw, paid_key, MODEL, max_tokens=1)
                self.assertEqual(r.status, 503, r.body)
                pg.pg_ctl_start()
                stopped_cleanly(gw)


if __name__ == "__main__":
    lgtest.main()
