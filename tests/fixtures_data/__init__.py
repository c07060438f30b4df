"""Builders of small fake data trees for the preparation tests (nothing is stored here)."""
