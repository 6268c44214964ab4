"""The onnxruntime backend: a bundle on disk (``model.onnx``, ``tokenizer.json``, the manifest)
served with onnxruntime and the Hugging Face fast tokenizer, pooled in NumPy."""
