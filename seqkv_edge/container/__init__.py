"""File formats: the session file (``session_file``), its META schema (``meta_schema``) and the store's KV chunks
(``chunks``). Versioned, little-endian, checksummed."""
