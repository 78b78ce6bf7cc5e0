"""A fleet of gateways sharing one PostgreSQL store (``gateway_state``): the review queue."""
