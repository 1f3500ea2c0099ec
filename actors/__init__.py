"""Ray actors of jitgate (RiskScorer, PolicyActor, GrantLedger) and the pure logic they wrap."""
