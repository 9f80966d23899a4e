/* SPDX-License-Identifier: Apache-2.0 */
#include "auth.h"

int auth_api_roles_register(struct auth *a)
{
	(void)a;
	return 0;
}
