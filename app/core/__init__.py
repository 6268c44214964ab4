"""The core: queues, batches, plans passes, enforces deadlines and holds the served models.

Nothing here imports onnxruntime, tokenizers or FastAPI. A model is reached only through the
``Model`` protocol in ``app.core.model``, which the backends (``app.backends``) implement.
"""
