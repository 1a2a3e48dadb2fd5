"""Prefect flows: the nightly ``render_episode``, ``draft_preview`` and ``daily_report``.

Flows compose the tasks in ``tasks/`` and read top to bottom like the run they
describe; every decision lives in ``tower/``. See ``prefect.yaml`` for deployments.
"""
