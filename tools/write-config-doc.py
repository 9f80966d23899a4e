#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""write-config-doc.py LLMGATE PLUGINDIR OUT: regenerates the configuration
reference from the code."""
import subprocess
import sys

out = subprocess.run([sys.argv[1], "config-reference", "--markdown", "--plugin-dir", sys.argv[2]],
                     check=True, stdout=subprocess.PIPE, text=True).stdout
with open(sys.argv[3], "w") as f:
    f.write(out)
