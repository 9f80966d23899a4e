/* SPDX-License-Identifier: Apache-2.0 */
/* Cost and impacts against values worked out by hand (docs/impacts.md). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "impacts.h"

/* Equal up to the last bits a different order of the same operations
 * could change. */
static void assert_close(double got, double want)
{
	double tol = 1e-12 * fabs(want);

	if (!(fabs(got - want) <= tol))
		fail_msg("got %.17g, want %.17g", got, want);
}

/* ---- cost (spec §6) ---- */

static void cost_is_rounded_like_python(void **state)
{
	(void)state;
	/* 2 / 1e6 * 2.5 + 8 / 1e6 * 10 = 0.000005 + 0.00008 = 0.000085; in
	 * doubles the sum is 8.499999999999999e-05, rounded to 6 places it is
	 * the double nearest to 0.000085. */
	assert_true(2 / 1e6 * 2.5 + 8 / 1e6 * 10.0 != 0.000085);
	assert_true(lg_call_cost(2, 8, 2.5, 10) == 0.000085);
	/* 1 / 1e6 * 0.5 = 5e-7, whose double is 4.99999999999999977e-7: just
	 * below the half, so 0 (round(x * 1e6) / 1e6 would give 1e-6). */
	assert_true(lg_call_cost(1, 0, 0.5, 0) == 0);
	/* 3 / 1e6 * 0.5 = 1.5e-6, whose double is 1.50000000000000004e-6:
	 * just above the half, so 0.000002. */
	assert_true(lg_call_cost(3, 0, 0.5, 0) == 0.000002);
	/* Embeddings: prompt tokens only. 1234 / 1e6 * 0.5 = 0.000617, and
	 * 1234 / 1e6 * 0.13 = 0.00016042 is cut to 6 places: 0.00016. */
	assert_true(lg_call_cost(1234, 0, 0.5, 0) == 0.000617);
	assert_true(lg_call_cost(1234, 0, 0.13, 0) == 0.00016);
	/* 1000000 / 1e6 * 3 + 500000 / 1e6 * 15 = 3 + 7.5 = 10.5. */
	assert_true(lg_call_cost(1000000, 500000, 3, 15) == 10.5);
	assert_true(lg_call_cost(0, 0, 2.5, 10) == 0);
	assert_true(lg_call_cost(100, 100, 0, 0) == 0);
	assert_true(lg_call_cost(1, 1, INFINITY, 0) == 0);
}

static void rounding_places(void **state)
{
	(void)state;
	/* Python's own example: the double of 2.675 is 2.67499999999999982... */
	assert_true(lg_round_places(2.675, 2) == 2.67);
	assert_true(lg_round_places(0.125, 2) == 0.12);   /* an exact tie: to even */
	assert_true(lg_round_places(0.375, 2) == 0.38);
	assert_true(lg_round_places(1e20, 6) == 1e20);     /* nothing left to round */
	assert_true(isnan(lg_round_places(NAN, 6)));
}

/* ---- electricity mixes ---- */

static void mixes_of_the_documented_zones(void **state)
{
	static const struct {
		const char *zone;
		double gwp;
	} want[] = {
		{ "WOR", 0.590478 }, { "FRA", 0.0813225 }, { "USA", 0.67978 },
		{ "DEU", 0.657374 }, { "GBR", 0.602137 }, { "SWE", 0.0464664 },
		{ "CHN", 1.05738 }, { "IND", 1.58299 }, { "CAN", 0.238191 },
		{ "NLD", 0.544803 }, { "BEL", 0.256537 }, { "ESP", 0.467803 },
		{ "ITA", 0.621329 }, { "POL", 1.15075 }, { "IRL", 0.648118 },
		{ "FIN", 0.322068 }, { "NOR", 0.023754 }, { "JPN", 0.540891 },
		{ "AUS", 1.12326 }, { "AUT", 0.245573 }, { "BRA", 0.278647 },
		{ "CHE", 0.0448568 }, { "CZE", 0.799077 }, { "DNK", 0.633534 },
		{ "EEE", 0.509427 }, { "KOR", 0.599585 }, { "LUX", 0.490016 },
		{ "PRT", 0.571172 }, { "SGP", 0.655825 },
	};

	(void)state;
	/* Every zone is found (the table's binary search needs it sorted). */
	for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
		bool known = false;

		assert_true(lg_mix_gwp(want[i].zone, &known) == want[i].gwp);
		assert_true(known);
	}
}

static void unknown_zone_is_the_world(void **state)
{
	bool known = true;

	(void)state;
	assert_true(lg_mix_gwp("ATA", &known) == 0.590478);
	assert_false(known);
	known = true;
	assert_true(lg_mix_gwp(NULL, &known) == 0.590478);
	assert_false(known);
	assert_true(lg_mix_gwp("fra", NULL) == 0.590478);  /* codes are capitals */
	assert_true(lg_mix_gwp("", NULL) == 0.590478);
}

/* ---- impacts (EcoLogits 0.8.2 llm.py, central values) ---- */

static void generation_bounded_by_its_tokens(void **state)
{
	struct lg_llm_usage u = {
		.active_params = 35, .total_params = 140, .completion_tokens = 5,
		.latency_s = 10, .zone = "FRA",
	};
	struct lg_impacts im;

	(void)state;
	/*
	 * GPU energy   5 * (8.91e-8 * 35 + 1.43e-6) = 5 * 4.5485e-6 = 2.27425e-5 kWh
	 * generation   5 * (8.02e-4 * 35 + 2.23e-2) = 5 * 0.05037 = 0.25185 s (< 10 s)
	 * GPUs         ceil(1.2 * 140 * 4 / 8 / 80) = ceil(84 / 80) = 2
	 * server       0.25185 / 3600 * 1 kW * 2 / 8 = 1.74895833...e-5 kWh
	 * energy       1.2 * (1.74895833e-5 + 2 * 2.27425e-5) = 7.55695e-5 kWh
	 * carbon       7.55695e-5 * 0.0813225 (FRA) = 6.14550066375e-6 kgCO2eq
	 */
	im = lg_llm_impacts(&u);
	assert_close(im.kwh, 7.55695e-5);
	assert_close(im.kgco2eq, 6.14550066375e-6);
	/* Any latency above 0.25185 s gives the same. */
	u.latency_s = 0.3;
	assert_close(lg_llm_impacts(&u).kwh, 7.55695e-5);
}

static void generation_bounded_by_the_request(void **state)
{
	struct lg_llm_usage u = {
		.active_params = 70, .total_params = 70, .completion_tokens = 100,
		.latency_s = 1.5, .zone = "WOR",
	};
	struct lg_impacts im;

	(void)state;
	/*
	 * GPU energy   100 * (8.91e-8 * 70 + 1.43e-6) = 100 * 7.667e-6 = 7.667e-4 kWh
	 * generation   min(100 * (8.02e-4 * 70 + 2.23e-2), 1.5) = min(7.844, 1.5) = 1.5 s
	 * GPUs         ceil(1.2 * 70 * 4 / 8 / 80) = ceil(42 / 80) = 1
	 * server       1.5 / 3600 * 1 kW * 1 / 8 = 5.2083333...e-5 kWh
	 * energy       1.2 * (5.2083333e-5 + 7.667e-4) = 9.8254e-4 kWh
	 * carbon       9.8254e-4 * 0.590478 (WOR) = 5.8016825412e-4 kgCO2eq
	 */
	im = lg_llm_impacts(&u);
	assert_close(im.kwh, 9.8254e-4);
	assert_close(im.kgco2eq, 5.8016825412e-4);
	/* The same latency in milliseconds divided once more by 1000 (0.0015 s)
	 * would shrink the server's share: 1.2 * (0.0015 / 28800 + 7.667e-4). */
	u.latency_s = 0.0015;
	assert_close(lg_llm_impacts(&u).kwh, 1.2 * (0.0015 / 28800 + 7.667e-4));
}

static void unknown_latency_takes_the_fit(void **state)
{
	struct lg_llm_usage u = {
		.active_params = 70, .total_params = 70, .completion_tokens = 100,
		.latency_s = -1, .zone = "WOR",
	};
	struct lg_impacts im;

	(void)state;
	/*
	 * generation   7.844 s (no cap)
	 * energy       1.2 * (7.844 / 3600 / 8 + 7.667e-4) = 1.24687333...e-3 kWh
	 * carbon       1.24687333e-3 * 0.590478 = 7.3625127212e-4 kgCO2eq
	 */
	im = lg_llm_impacts(&u);
	assert_close(im.kwh, 1.2468733333333333e-3);
	assert_close(im.kgco2eq, 7.3625127212e-4);
	u.latency_s = NAN;
	assert_close(lg_llm_impacts(&u).kwh, 1.2468733333333333e-3);
}

static void unknown_zone_counts_as_the_world(void **state)
{
	struct lg_llm_usage u = {
		.active_params = 70, .total_params = 70, .completion_tokens = 100,
		.latency_s = 1.5, .zone = "XYZ",
	};

	(void)state;
	/* As the WOR case above. */
	assert_close(lg_llm_impacts(&u).kgco2eq, 5.8016825412e-4);
	u.zone = NULL;
	assert_close(lg_llm_impacts(&u).kgco2eq, 5.8016825412e-4);
}

static void nothing_without_params_or_tokens(void **state)
{
	struct lg_llm_usage base = {
		.active_params = 7, .total_params = 7, .completion_tokens = 10,
		.latency_s = 1, .zone = "FRA",
	};
	struct lg_llm_usage u;
	struct lg_impacts im;

	(void)state;
	assert_true(lg_llm_impacts(&base).kwh > 0);
	u = base;
	u.active_params = 0;
	im = lg_llm_impacts(&u);
	assert_true(im.kwh == 0 && im.kgco2eq == 0);
	u = base;
	u.total_params = 0;
	im = lg_llm_impacts(&u);
	assert_true(im.kwh == 0 && im.kgco2eq == 0);
	u = base;
	u.completion_tokens = 0;
	im = lg_llm_impacts(&u);
	assert_true(im.kwh == 0 && im.kgco2eq == 0);
	u = base;
	u.active_params = NAN;
	im = lg_llm_impacts(&u);
	assert_true(im.kwh == 0 && im.kgco2eq == 0);
}

static void text_generation_only(void **state)
{
	(void)state;
	assert_true(lg_impacts_apply("text-generation"));
	assert_false(lg_impacts_apply("text-embeddings-inference"));
	assert_false(lg_impacts_apply("text-classification"));
	assert_false(lg_impacts_apply("automatic-speech-recognition"));
	assert_false(lg_impacts_apply("image-to-text"));
	assert_false(lg_impacts_apply(NULL));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(cost_is_rounded_like_python),
		cmocka_unit_test(rounding_places),
		cmocka_unit_test(mixes_of_the_documented_zones),
		cmocka_unit_test(unknown_zone_is_the_world),
		cmocka_unit_test(generation_bounded_by_its_tokens),
		cmocka_unit_test(generation_bounded_by_the_request),
		cmocka_unit_test(unknown_latency_takes_the_fit),
		cmocka_unit_test(unknown_zone_counts_as_the_world),
		cmocka_unit_test(nothing_without_params_or_tokens),
		cmocka_unit_test(text_generation_only),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
