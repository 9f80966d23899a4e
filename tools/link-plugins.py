#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Gathers the built plugins into one directory of symlinks, so that an
uninstalled build can be run with a single --plugin-dir:
    link-plugins.py DIR STAMP PLUGIN.so..."""
import os
import sys


def main():
    outdir, stamp, plugins = sys.argv[1], sys.argv[2], sys.argv[3:]
    os.makedirs(outdir, exist_ok=True)
    for old in os.listdir(outdir):
        if old.endswith(".so"):
            os.unlink(os.path.join(outdir, old))
    for p in plugins:
        os.symlink(os.path.abspath(p), os.path.join(outdir, os.path.basename(p)))
    with open(stamp, "w") as f:
        f.write("\n".join(plugins) + "\n")


if __name__ == "__main__":
    main()
