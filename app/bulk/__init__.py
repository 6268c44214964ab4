"""The bulk job: a corpus to Parquet on the service's own engine (``python -m app.bulk``)."""
