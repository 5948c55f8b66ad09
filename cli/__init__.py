"""brickwork: `brick`, the command line — the top layer. One module per command group, each a thin click
layer over library functions in bricks/, registry/, router/ and serving/; nothing below imports it."""
