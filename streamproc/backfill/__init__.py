"""Model rotation: backfill jobs that replay the chunk topic into a new model's collection."""
