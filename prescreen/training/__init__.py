"""Training: a typed run config, the Trainer loop, ONNX export with parity, and resolving a model argument."""
