/* SPDX-License-Identifier: Apache-2.0 */
/* For loader tests: a descriptor written by hand, so a field can be wrong. */
#include <llmgate/host.h>

#define BAD_PLUGIN(...)                                                     \
	LG_EXPORT const struct lg_plugin_info *llmgate_plugin_v1(void);     \
	LG_EXPORT const struct lg_plugin_info *llmgate_plugin_v1(void)      \
	{                                                                   \
		static const struct lg_plugin_info info = { __VA_ARGS__ };  \
		return &info;                                               \
	}
