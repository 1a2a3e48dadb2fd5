"""Prefect tasks: thin wrappers of ``tower/`` with retries, logging and artifacts."""
