"""Per-model data for the lossy tier, measured once: KV profiles (``profile``: bases and predictors from a
calibration prefill), per-head step weights (``weights``), and the quality harness they are judged by
(``quality``). Depends on the codecs; the codecs never depend on it."""
