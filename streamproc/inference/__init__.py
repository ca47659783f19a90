"""The query side's embedding endpoint (`streamproc serve`): Weaviate's text2vec-transformers
protocol, one URL per registered model version, micro-batched."""
