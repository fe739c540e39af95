"""Declarative failure scenarios (``scenarios/*.yaml``): ``spec`` parses them, ``runner`` runs them on a store."""
