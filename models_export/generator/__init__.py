"""The generative SID retriever: T5 model, training, ONNX export (offline, uses torch)."""
