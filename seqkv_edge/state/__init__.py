"""llama.cpp state blobs: parsing and writing them (``blob``), RoPE of cached keys (``rope``), and KV values in and
out of llama.cpp's cache types (``values``). Nothing here codes or stores anything."""
