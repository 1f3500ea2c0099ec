"""Pure domain logic of jitgate: lifecycles, durations, identities and catalogs. No Ray, no Redis."""
