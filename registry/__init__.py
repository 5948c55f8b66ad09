"""brickwork: registry."""
