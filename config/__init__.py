"""The reference config, installed as the package ``srwatch.templates`` (see pyproject.toml).

This folder holds data only: ``srwatch init`` writes a new hot folder's config from
``srwatch.yaml`` through ``srwatch.resources``.
"""
