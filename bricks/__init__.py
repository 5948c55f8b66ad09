"""brickwork: bricks."""
