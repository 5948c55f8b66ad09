"""brickwork: serving."""
