"""What a model is: tasks (and what each accepts), routing by content, networks, cards, ONNX
inference, explanations and the model store."""
