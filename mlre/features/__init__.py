"""Feature-store logic: profiles, registry sync, bounded materialization, consistency."""
