"""File formats: the session file (``session_file``), its META schema (``meta_schema``) and the store's KV chunks
(``chunk_format``: the bytes; ``chunks``: sessions cut into them and states rebuilt from them). Versioned,
little-endian, checksummed."""
