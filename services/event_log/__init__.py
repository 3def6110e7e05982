"""Durable logs behind the engine: the inbox, the event log and the outbox (SQLite by default)."""
