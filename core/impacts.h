/* SPDX-License-Identifier: Apache-2.0 */
/* What a forwarded call costs, and the energy and carbon it is estimated
 * to take (EcoLogits' method, docs/impacts.md). Pure functions of their
 * arguments: no I/O, no state. Thread: any. */
#ifndef LG_IMPACTS_H
#define LG_IMPACTS_H

#include <stdbool.h>
#include <stdint.h>

/* Spec §6: round(pt / 1e6 * cp + ct / 1e6 * cc, 6), the prices being per
 * million tokens. Rounded as Python's round() does (to the nearest, ties
 * to even, on the double's exact value). 0 when not finite. */
double lg_call_cost(int64_t prompt_tokens, int64_t completion_tokens,
		    double cost_prompt_tokens, double cost_completion_tokens);

/* @x rounded to @decimals (0 to 9) places as Python's round(x, decimals);
 * @x itself when it is too large to have that many (|x| >= 1e15). */
double lg_round_places(double x, int decimals);

/* What the usage-phase estimate of a text generation needs. */
struct lg_llm_usage {
	double active_params;           /* billions */
	double total_params;            /* billions */
	int64_t completion_tokens;
	double latency_s;               /* the whole request's, in seconds;
					 * negative or NaN: unknown */
	const char *zone;               /* ISO 3166-1 alpha-3 or WOR; NULL: WOR */
};

struct lg_impacts {
	double kwh;                     /* energy, the data centre's PUE included */
	double kgco2eq;                 /* usage-phase global warming potential */
};

/* EcoLogits' usage-phase energy and carbon of one generation; {0, 0} when
 * a parameter count or the completion tokens is 0 (or negative). */
struct lg_impacts lg_llm_impacts(const struct lg_llm_usage *u);

/* The global warming potential of @zone's electricity mix, in kgCO2eq per
 * kWh; the world average (WOR) for NULL or a zone without data, and then
 * *@known (if not NULL) is false. */
double lg_mix_gwp(const char *zone, bool *known);

/* Whether calls to a model of @type get impacts: text generation only. */
bool lg_impacts_apply(const char *model_type);

#endif
