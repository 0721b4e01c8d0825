"""The lossy KV tier: the codec and its rate control (``codec``), one tensor's payload (``tensor``), the inter-layer
predictors (``predict``) and the model-derived KV profile it reads (``profile``)."""
from .codec import KVLossyCodec

__all__ = ["KVLossyCodec"]
