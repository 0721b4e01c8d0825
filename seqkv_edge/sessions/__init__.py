"""Saving and restoring a context's session: KV snapshots in files (``snapshot``), tokens-only sessions
(``tokens``, with the recorded eval ``schedule``), named sessions in a store (``named``), and the prefill they share
(``prefill``)."""
