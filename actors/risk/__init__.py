"""Risk scoring of access requests: an approval model learned from historical
decisions, combined with context signals into a 0..100 score with its top factors.

`model` and `scoring` are pure numpy. `actor.RiskScorer` is the class that the
cluster turns into a Ray actor, and `cli` contains the `jitgate risk` commands.
"""

from actors.risk.actor import RiskScorer
from actors.risk.model import RiskDataError, RiskModel, TrainResult, roc_auc, train
from actors.risk.scoring import RecentRequestCounter, RiskContext, RiskScores, score_batch

__all__ = [
    "RecentRequestCounter",
    "RiskContext",
    "RiskDataError",
    "RiskModel",
    "RiskScorer",
    "RiskScores",
    "TrainResult",
    "roc_auc",
    "score_batch",
    "train",
]
