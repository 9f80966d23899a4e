/* SPDX-License-Identifier: Apache-2.0 */
/* Placeholder until the forwarding engine lands. */
#include "forward.h"

int lg_forward_register_routes(struct lg_runtime *rt, char *err, size_t errlen)
{
	(void)rt;
	(void)err;
	(void)errlen;
	return 0;
}
