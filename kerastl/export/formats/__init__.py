"""Export formats: SavedModel, TFLite and ONNX, one module each."""
