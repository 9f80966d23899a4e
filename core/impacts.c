/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Cost and environmental impacts of a forwarded call.
 *
 * The impacts follow EcoLogits 0.8.2 (the release OpenGateLLM depends on),
 * ecologits/impacts/llm.py, usage phase only, with the central value of each
 * fitted profile; the electricity mixes are those of its
 * ecologits/data/electricity_mixes.csv (ADEME Base IMPACTS). docs/impacts.md
 * gives the formulas, the sources and worked examples. Unlike OpenGateLLM,
 * the request latency is taken in seconds as EcoLogits expects (its adapter
 * divides a value already in seconds by 1000).
 */
#include "impacts.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <llmgate/plugin.h>

/* The linear fits of EcoLogits' methodology 1.0 on the LLM-Perf
 * Leaderboard (A100 80 GB): per output token, as a function of the active
 * parameters in billions. */
#define GPU_ENERGY_ALPHA 8.91e-8        /* kWh per token per billion */
#define GPU_ENERGY_BETA 1.43e-6         /* kWh per token */
#define GPU_LATENCY_ALPHA 8.02e-4       /* s per token per billion */
#define GPU_LATENCY_BETA 2.23e-2        /* s per token */

#define QUANTIZATION_BITS 4.0           /* weights as served */
#define MEMORY_OVERHEAD 1.2             /* on the weights' size */
#define GPU_MEMORY_GB 80.0
#define SERVER_POWER_KW 1.0             /* the server without its GPUs */
#define SERVER_GPUS 8.0                 /* installed in one server */
#define DATACENTER_PUE 1.2
#define SECONDS_PER_HOUR 3600.0

#define ROUND_LIMIT 1e15                /* beyond: no decimals left to round */

struct mix {
	char zone[4];
	double gwp;                     /* kgCO2eq per kWh */
};

/* Sorted by zone (binary search). Values of EcoLogits 0.8.2's
 * electricity_mixes.csv (ADEME Base IMPACTS); EEE is its European
 * Economic Area zone. */
static const struct mix mixes[] = {
	{ "AUS", 1.12326 },
	{ "AUT", 0.245573 },
	{ "BEL", 0.256537 },
	{ "BRA", 0.278647 },
	{ "CAN", 0.238191 },
	{ "CHE", 0.0448568 },
	{ "CHN", 1.05738 },
	{ "CZE", 0.799077 },
	{ "DEU", 0.657374 },
	{ "DNK", 0.633534 },
	{ "EEE", 0.509427 },
	{ "ESP", 0.467803 },
	{ "FIN", 0.322068 },
	{ "FRA", 0.0813225 },
	{ "GBR", 0.602137 },
	{ "IND", 1.58299 },
	{ "IRL", 0.648118 },
	{ "ITA", 0.621329 },
	{ "JPN", 0.540891 },
	{ "KOR", 0.599585 },
	{ "LUX", 0.490016 },
	{ "NLD", 0.544803 },
	{ "NOR", 0.023754 },
	{ "POL", 1.15075 },
	{ "PRT", 0.571172 },
	{ "SGP", 0.655825 },
	{ "SWE", 0.0464664 },
	{ "USA", 0.67978 },
	{ "WOR", 0.590478 },
};

double lg_round_places(double x, int decimals)
{
	char s[64];

	if (!(fabs(x) < ROUND_LIMIT))
		return x;       /* also NaN */
	if (decimals < 0)
		decimals = 0;
	if (decimals > 9)
		decimals = 9;
	/* glibc prints the exact binary value rounded to nearest, ties to
	 * even: the same decision as Python's round(). llmgate never changes
	 * LC_NUMERIC, so the decimal point is '.'. */
	snprintf(s, sizeof s, "%.*f", decimals, x);
	return strtod(s, NULL);
}

double lg_call_cost(int64_t prompt_tokens, int64_t completion_tokens,
		    double cost_prompt_tokens, double cost_completion_tokens)
{
	/* The spec's order of operations, for the same double as OpenGateLLM. */
	double cost = (double)prompt_tokens / 1e6 * cost_prompt_tokens +
		      (double)completion_tokens / 1e6 * cost_completion_tokens;

	if (cost == 0 || !isfinite(cost))
		return 0;
	return lg_round_places(cost, 6);
}

static int mix_cmp(const void *key, const void *elem)
{
	return strcmp(key, ((const struct mix *)elem)->zone);
}

static const struct mix *find_mix(const char *zone)
{
	return bsearch(zone, mixes, LG_COUNT(mixes), sizeof *mixes, mix_cmp);
}

double lg_mix_gwp(const char *zone, bool *known)
{
	const struct mix *m = zone ? find_mix(zone) : NULL;

	if (known)
		*known = m != NULL;
	if (!m)
		m = find_mix("WOR");
	return m ? m->gwp : 0;
}

bool lg_impacts_apply(const char *model_type)
{
	return model_type && strcmp(model_type, "text-generation") == 0;
}

/* GPUs needed to hold the weights, rounded up. */
static double gpus_required(double total_params)
{
	double memory_gb = MEMORY_OVERHEAD * total_params * QUANTIZATION_BITS / 8;

	return ceil(memory_gb / GPU_MEMORY_GB);
}

/* The generation time: the fitted one, capped by the measured request. */
static double generation_s(double active_params, double tokens, double latency_s)
{
	double fitted = tokens * (GPU_LATENCY_ALPHA * active_params + GPU_LATENCY_BETA);

	if (isnan(latency_s) || latency_s < 0)
		return fitted;
	return fitted < latency_s ? fitted : latency_s;
}

struct lg_impacts lg_llm_impacts(const struct lg_llm_usage *u)
{
	struct lg_impacts out = { 0, 0 };
	double tokens, gpus, gpu_kwh, server_kwh;

	if (!(u->active_params > 0) || !(u->total_params > 0) || u->completion_tokens <= 0)
		return out;
	tokens = (double)u->completion_tokens;
	gpus = gpus_required(u->total_params);
	gpu_kwh = tokens * (GPU_ENERGY_ALPHA * u->active_params + GPU_ENERGY_BETA);
	/* The server's share: its GPUs in use out of those installed. */
	server_kwh = generation_s(u->active_params, tokens, u->latency_s) / SECONDS_PER_HOUR *
		     SERVER_POWER_KW * (gpus / SERVER_GPUS);
	out.kwh = DATACENTER_PUE * (server_kwh + gpus * gpu_kwh);
	out.kgco2eq = out.kwh * lg_mix_gwp(u->zone, NULL);
	if (!isfinite(out.kwh) || !isfinite(out.kgco2eq))
		return (struct lg_impacts){ 0, 0 };
	return out;
}
