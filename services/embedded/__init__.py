"""The embedded deployment: one process, one SQLite file, one asyncio loop."""
