"""Models: cards (what a model needs and returns), the registry, and torch networks."""
