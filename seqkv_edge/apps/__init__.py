"""Applications on the library: the terminal chat (``chat``) and the OpenAI-compatible server (``serve``)."""
