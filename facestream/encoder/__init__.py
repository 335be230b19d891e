"""Visual encoders: the compact specialist nets, their ONNX export and runtime backends."""
