"""The runtimes behind ``app.core.model.Model``: each turns an exported bundle into a model."""
