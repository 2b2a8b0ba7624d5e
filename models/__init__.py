"""srwatch's shipped models, installed as the package ``srwatch.models`` (see pyproject.toml).

This folder holds data only; ``srwatch.resources`` finds the files through importlib.resources,
both in a wheel and in an editable install of the checkout.
"""
