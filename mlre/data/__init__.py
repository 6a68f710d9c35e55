"""Source data for the demo use case: a deterministic generator and a pre-read validator."""
