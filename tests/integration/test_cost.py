#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Cost (spec §6) and environmental impacts (spec §8.3, docs/impacts.md) in
the reply's usage, streamed and not, computed here by hand from the reply's
own token counts.

The impacts depend on the latency only through min(generation estimate,
request latency). The mock upstream is made to take at least a second, and
the models are small enough for the estimate from the tokens to stay far
below that, so the expected values are exact; the recorder's latency of
each call checks that premise."""
import math
import time
import unittest

import common
import lgtest
from mock import MockUpstream
from pgcluster import PgCluster

AUTH = {"Authorization": "Bearer good-token"}
CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
SLOW_MS = 1000                 # the mock's delay before any reply
EVENT_DELAY_MS = 250           # between stream events: 8 events, about 2 s

COST_PROMPT, COST_COMPLETION = 2.5, 10.0     # per million tokens
EMBED_COST = 130.0
ACTIVE, TOTAL = 35.0, 140.0                  # billions of parameters
GWP = {"FRA": 0.0813225, "WOR": 0.590478}    # kgCO2eq/kWh (docs/impacts.md)


def expected_cost(prompt, completion, cost_prompt, cost_completion):
    """Spec §6, as OpenGateLLM writes it."""
    return round(prompt / 1e6 * cost_prompt + completion / 1e6 * cost_completion, 6)


def expected_impacts(active, total, tokens, gwp, latency_s):
    """EcoLogits 0.8.2 (ecologits/impacts/llm.py), usage phase, central values."""
    if active <= 0 or total <= 0 or tokens <= 0:
        return 0.0, 0.0
    gpu_kwh = tokens * (8.91e-8 * active + 1.43e-6)
    generation_s = min(tokens * (8.02e-4 * active + 2.23e-2), latency_s)
    gpus = math.ceil(1.2 * total * 4 / 8 / 80)
    server_kwh = generation_s / 3600 * 1.0 * (gpus / 8)
    kwh = 1.2 * (server_kwh + gpus * gpu_kwh)
    return kwh, kwh * gwp


def generation_estimate_s(active, tokens):
    return tokens * (8.02e-4 * active + 2.23e-2)


def provider(up, model_name="up-chat", **extra):
    p = {"type": "openai", "url": up.url, "model_name": model_name, "timeout": 30,
         "first_byte_timeout": "10s", "idle_timeout": "10s"}
    p.update(extra)
    return p


class Cost(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = PgCluster().start()
        cls.up = MockUpstream(models=["up-chat", "up-embed"]).start()
        params = {"model_total_params": TOTAL, "model_active_params": ACTIVE}
        models = [
            {"name": "priced", "type": "text-generation",
             "cost_prompt_tokens": COST_PROMPT, "cost_completion_tokens": COST_COMPLETION,
             "providers": [provider(cls.up, model_hosting_zone="FRA", **params)]},
            # No zone: the world's mix. No prices: no cost.
            {"name": "world", "type": "text-generation",
             "providers": [provider(cls.up, **params)]},
            # A zone without data: the world's mix as well.
            {"name": "antarctic", "type": "text-generation",
             "providers": [provider(cls.up, model_hosting_zone="ATA", **params)]},
            # No parameter counts: no impacts.
            {"name": "bare", "type": "text-generation",
             "cost_prompt_tokens": COST_PROMPT, "cost_completion_tokens": COST_COMPLETION,
             "providers": [provider(cls.up, model_hosting_zone="FRA")]},
            # Not a text generation: a cost, never impacts.
            {"name": "embed", "type": "text-embeddings-inference",
             "cost_prompt_tokens": EMBED_COST, "cost_completion_tokens": COST_COMPLETION,
             "providers": [provider(cls.up, "up-embed", model_hosting_zone="FRA", **params)]},
        ]
        cfg = {"plugins": {"good": {}, "recorder": {}, "openai": {}}, "models": models}
        common.start_class_gateway(cls, cfg)

    @classmethod
    def tearDownClass(cls):
        common.stop_class_gateway(cls)

    def setUp(self):
        self.up.reset()
        self.assertEqual(self.gw.request("POST", "/recorder/reset").status, 200)

    # -- helpers --
    def chat(self, model, stream=False):
        """The reply's usage and the call's COMPLETE record, the mock being
        slow: a delay before a plain reply, a pause between stream events."""
        body = {"model": model, "messages": [{"role": "user", "content": "hello there"}]}
        if stream:
            body["stream"] = True
            self.up.config(event_delay_ms=EVENT_DELAY_MS)
        else:
            self.up.fault("delay", ms=SLOW_MS, path=CHAT)
        r = self.gw.request("POST", CHAT, body, headers=AUTH, timeout=30)
        self.assertEqual(r.status, 200, r.body)
        if stream:
            with_usage = [c for c in r.data() if c.get("usage")]
            self.assertEqual(len(with_usage), 1)
            usage = with_usage[0]["usage"]
        else:
            usage = r.json()["usage"]
        return usage, self.complete(r.headers["x-request-id"])

    def complete(self, rid, timeout=5):
        deadline = time.monotonic() + timeout
        while True:
            calls = self.gw.request("GET", "/recorder/calls").json()["calls"]
            found = [c for c in calls if c["request_id"] == rid and c["phase"] == "complete"]
            if found or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        self.assertEqual(len(found), 1, found)
        return found[0]

    def assertUsage(self, usage, call, cost_prompt, cost_completion, gwp, active=ACTIVE):
        """usage.cost and usage.impacts as computed here from the usage's
        own tokens, and the tokens as the COMPLETE hooks saw them."""
        pt, ct = usage["prompt_tokens"], usage["completion_tokens"]
        self.assertGreater(pt, 0)
        self.assertGreater(ct, 0)
        self.assertEqual((call["prompt_tokens"], call["completion_tokens"]), (pt, ct))
        latency_s = call["latency_ms"] / 1000
        # The premise of exact values: the request took longer than the
        # generation estimated from the tokens, so min() picked the latter.
        self.assertGreaterEqual(call["latency_ms"], SLOW_MS)
        self.assertLess(generation_estimate_s(active, ct), latency_s)
        self.assertEqual(usage["cost"], expected_cost(pt, ct, cost_prompt, cost_completion))
        kwh, kg = expected_impacts(active, TOTAL, ct, gwp, latency_s)
        self.assertEqual(set(usage["impacts"]), {"kWh", "kgCO2eq"})
        self.assertTrue(math.isclose(usage["impacts"]["kWh"], kwh, rel_tol=1e-12, abs_tol=0),
                        (usage, kwh))
        self.assertTrue(math.isclose(usage["impacts"]["kgCO2eq"], kg, rel_tol=1e-12,
                                     abs_tol=0), (usage, kg))

    # -- the checks --
    def test_chat_plain(self):
        usage, call = self.chat("priced")
        self.assertUsage(usage, call, COST_PROMPT, COST_COMPLETION, GWP["FRA"])
        # The mock answers "hello there" with 2 prompt and 5 completion tokens:
        #   cost   2 / 1e6 * 2.5 + 5 / 1e6 * 10 = 0.000005 + 0.00005 = 0.000055
        #   GPU    5 * (8.91e-8 * 35 + 1.43e-6) = 2.27425e-5 kWh
        #   time   5 * (8.02e-4 * 35 + 2.23e-2) = 0.25185 s, below the >= 1 s request
        #   GPUs   ceil(1.2 * 140 * 4 / 8 / 80) = 2
        #   kWh    1.2 * (0.25185 / 3600 * 2 / 8 + 2 * 2.27425e-5) = 7.55695e-5
        #   kgCO2  7.55695e-5 * 0.0813225 = 6.14550066375e-6
        self.assertEqual((usage["prompt_tokens"], usage["completion_tokens"]), (2, 5))
        self.assertEqual(usage["cost"], 0.000055)
        self.assertTrue(math.isclose(usage["impacts"]["kWh"], 7.55695e-5, rel_tol=1e-12))
        self.assertTrue(math.isclose(usage["impacts"]["kgCO2eq"], 6.14550066375e-6,
                                     rel_tol=1e-12))

    def test_chat_streamed(self):
        usage, call = self.chat("priced", stream=True)
        self.assertTrue(call["stream"])
        self.assertFalse(call["usage_estimated"])
        self.assertUsage(usage, call, COST_PROMPT, COST_COMPLETION, GWP["FRA"])
        self.assertEqual(usage["cost"], 0.000055)
        self.assertTrue(math.isclose(usage["impacts"]["kWh"], 7.55695e-5, rel_tol=1e-12))

    def test_no_zone_or_unknown_zone_is_the_world(self):
        for model in ("world", "antarctic"):
            with self.subTest(model=model):
                usage, call = self.chat(model)
                self.assertUsage(usage, call, 0, 0, GWP["WOR"])
                self.assertEqual(usage["cost"], 0)
                # 7.55695e-5 kWh * 0.590478 = 4.462212...e-5 kgCO2eq
                self.assertTrue(math.isclose(usage["impacts"]["kgCO2eq"],
                                             7.55695e-5 * 0.590478, rel_tol=1e-12))

    def test_no_params_no_impacts(self):
        for stream in (False, True):
            with self.subTest(stream=stream):
                usage, call = self.chat("bare", stream=stream)
                self.assertEqual(call["total_params"], 0)
                self.assertEqual(usage["cost"], 0.000055)
                self.assertEqual(usage["impacts"], {"kWh": 0, "kgCO2eq": 0})

    def test_embeddings_cost_from_prompt_tokens_only(self):
        r = self.gw.request("POST", EMBEDDINGS, {"model": "embed", "input": ["one two", "three"]},
                            headers=AUTH, timeout=30)
        self.assertEqual(r.status, 200, r.body)
        usage = r.json()["usage"]
        call = self.complete(r.headers["x-request-id"])
        # 3 words: 3 / 1e6 * 130 = 0.00039; a provider with parameters and a
        # zone, yet no impacts: only text generation has them.
        self.assertEqual((usage["prompt_tokens"], call["prompt_tokens"]), (3, 3))
        self.assertEqual((call["active_params"], call["hosting_zone"]), (ACTIVE, "FRA"))
        self.assertEqual(usage["cost"], expected_cost(3, 0, EMBED_COST, COST_COMPLETION))
        self.assertEqual(usage["cost"], 0.00039)
        self.assertEqual(usage["impacts"], {"kWh": 0, "kgCO2eq": 0})


if __name__ == "__main__":
    lgtest.main()
