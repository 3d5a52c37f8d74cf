"""Persistence: SQLAlchemy models, sessions and repository functions. Rows never leave this package."""
