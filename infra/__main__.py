"""Pulumi entry point (`main: infra/`): read config once, compose the stack, export outputs."""

from __future__ import annotations

import sys
from pathlib import Path

# Pulumi runs this file with only infra/ on sys.path; the repository root makes `infra.*`
# importable as a package (mlre itself is installed into the venv).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pulumi

from infra.config import load_config
from infra.stack import build

for key, value in build(load_config()).items():
    pulumi.export(key, value)
