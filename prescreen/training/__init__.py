"""Training: a typed run config and the Trainer loop."""
