/* SPDX-License-Identifier: Apache-2.0 */
/* A descriptor shorter than ABI 1.0's: must be refused. */
#include "bad_descriptor.h"

BAD_PLUGIN(.abi_major = LG_ABI_MAJOR, .abi_minor = 0, .size = 16,
	   .libevent_version = LIBEVENT_VERSION_NUMBER, .name = "short_size", .version = "1")
