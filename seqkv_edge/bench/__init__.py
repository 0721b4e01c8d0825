"""``seqkv bench``: snapshots against llama.cpp's raw state (``snapshots``), token tiers (``tokens``), the lossy
tier's rate and quality (``lossy``, ``turboquant_peer``), the prefix store (``dedup``) and the report with plots
(``report``)."""
