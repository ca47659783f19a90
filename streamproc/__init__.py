"""streamproc: keeps a Weaviate vector index of long documents fresh from Kafka."""

__version__ = "0.1.0"
