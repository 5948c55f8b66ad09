"""Operations that make new brick versions from data or from other bricks, one module per operation:

- `train`: LoRA bricks trained on the frozen host with PEFT (`train`), and continued training (`update`);
- `merge`: methods registered by name combining bricks of one kind into one (LoRA delta space, neuron maps);
- `grow`: new FFN neurons trained on new facts (a `growth` brick).
`data` reads the files they learn from (training examples, facts), every problem at its line.
Each operation returns a `Brick` whose metadata records its method, parameters and metrics; the caller
publishes it with its parents (registry lineage).
"""
