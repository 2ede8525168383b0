"""Breedline operator tooling: the local runtime, the operator CLI and packaging.

The Lambda code (``chalice_app/``) and the ML scripts (``ml_scripts/``) are the
product; this package only runs them on one machine and inspects what they did.
"""
