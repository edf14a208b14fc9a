"""Periodic jobs the control plane runs on its scheduler.

:mod:`.scheduler` registers every one of them (its :func:`build_scheduler` is the
whole list); :mod:`.schedules` holds the cron-retraining and stale-device jobs;
:mod:`.event_store` the events store's partitions and retention.
"""
