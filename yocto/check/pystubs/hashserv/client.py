"""Stand-in for hashserv.client (see __init__.py)."""
