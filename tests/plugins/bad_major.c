/* SPDX-License-Identifier: Apache-2.0 */
/* Claims ABI major 2: must be refused with "rebuild". */
#include "bad_descriptor.h"

BAD_PLUGIN(.abi_major = LG_ABI_MAJOR + 1, .abi_minor = 0, .size = sizeof(struct lg_plugin_info),
	   .libevent_version = LIBEVENT_VERSION_NUMBER, .name = "bad_major", .version = "1")
