"""Supernet families: one module (or package) each, imported by the registry on first lookup."""
