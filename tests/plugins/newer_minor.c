/* SPDX-License-Identifier: Apache-2.0 */
/* Needs a newer minor than the host has: must be refused with "upgrade". */
#include "bad_descriptor.h"

BAD_PLUGIN(.abi_major = LG_ABI_MAJOR, .abi_minor = LG_ABI_MINOR + 1,
	   .size = sizeof(struct lg_plugin_info), .libevent_version = LIBEVENT_VERSION_NUMBER,
	   .name = "newer_minor", .version = "1")
