"""brickwork: router."""
