"""Regulator pages and audit exports (issue #4)."""

urlpatterns: list = []
