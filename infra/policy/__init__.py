"""CrossGuard policy pack for the mlre stacks (rules in rules.py, pack in __main__.py)."""
