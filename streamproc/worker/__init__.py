"""A streamproc worker: the Faust apps of its two roles (chunker, embedder), their agents, and the
process that runs them."""
