"""Cedar policy layer of jitgate: bundle loading, the decision engine and the PolicyActor.

The engine and the bundle are pure (cedarpy, no Ray). The Ray-facing shell is
`actors.policy.actor`, which this package does not import.
"""

from actors.policy.bundle import (
    AttributeSpec,
    BundleTestCase,
    BundleTestResult,
    PolicyBundle,
    PolicyBundleError,
    PolicyInfo,
)
from actors.policy.engine import (
    PolicyDecision,
    PolicyEngine,
    PolicyInput,
    PolicyInputError,
    policy_shard,
    risk_to_tenths,
)

__all__ = [
    "AttributeSpec",
    "BundleTestCase",
    "BundleTestResult",
    "PolicyBundle",
    "PolicyBundleError",
    "PolicyDecision",
    "PolicyEngine",
    "PolicyInfo",
    "PolicyInput",
    "PolicyInputError",
    "policy_shard",
    "risk_to_tenths",
]
