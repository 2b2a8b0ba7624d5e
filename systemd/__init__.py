"""The systemd unit, installed as the package ``srwatch.systemd`` (see pyproject.toml).

This folder holds data only: ``srwatch unit -c FILE`` prints ``srwatch.service`` tailored to a
config through ``srwatch.unit``.
"""
