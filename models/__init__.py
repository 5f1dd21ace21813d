"""Persistence: SQLAlchemy models, migrations and the store Huddle reads and writes through."""
