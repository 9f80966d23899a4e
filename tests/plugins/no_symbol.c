/* SPDX-License-Identifier: Apache-2.0 */
/* A shared object that is not a plugin: it exports no llmgate_plugin_v1. */
int no_symbol_here(void);
__attribute__((visibility("default"))) int no_symbol_here(void) { return 42; }
