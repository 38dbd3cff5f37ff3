"""optispace: optimizer design-space exploration for Transformer training."""
