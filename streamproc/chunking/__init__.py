"""Text extraction, token-aware splitting and per-document change detection: pure logic."""
