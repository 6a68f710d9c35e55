"""The alert relay: Alertmanager's webhook in, one Prefect event per alert state change out.

Runs without Prefect installed in its process (it speaks to the events API over HTTP), so it
starts fast and stays small; see mlre.alerts for the payload rules and event ids.
"""
