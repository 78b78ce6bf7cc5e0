"""The PostgreSQL lane: agents query databases through the gateway, with masking and guard rails."""
