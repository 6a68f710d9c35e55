"""Policy pack entry point: `pulumi preview --policy-pack infra/policy`. Never import in tests."""

from __future__ import annotations

import sys
from pathlib import Path

# The analyzer runs this file with only infra/policy on sys.path; add the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pulumi_policy import EnforcementLevel, PolicyPack

from infra.policy.rules import POLICIES, STACK_POLICIES

PolicyPack(
    name="mlre-guardrails",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=[*POLICIES, *STACK_POLICIES],
)
