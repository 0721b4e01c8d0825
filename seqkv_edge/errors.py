"""Exception hierarchy: every error the library raises derives from :class:`SeqKVError`."""


class SeqKVError(Exception):
    """Base class of all seqkv_edge errors."""


class CorruptDataError(SeqKVError):
    """Stored bytes are truncated, fail a checksum, or do not decode."""


class ModelMismatchError(SeqKVError):
    """A session was saved with another model, cache type or build than the one restoring it."""


class UnsupportedStateError(SeqKVError):
    """A llama.cpp state blob has a layout this version does not understand."""


class StoreUnavailableError(SeqKVError):
    """A session store cannot be reached or is full."""


class StoreFullError(StoreUnavailableError):
    """A session store has no room for a session: its byte budget, or the server's memory, is used up."""


class ModelNotInstalledError(SeqKVError):
    """The default model's packages are missing or do not assemble to the expected file."""


class SessionCancelled(SeqKVError):
    """A progress callback asked to stop a restore; the context was put back as it was."""


class ScheduleUnavailableError(SeqKVError):
    """A ``tokens="hybrid"`` session cannot be saved: its eval schedule was not recorded from the start, or the
    context was changed outside eval (e.g. a snapshot was loaded); save it with portable tokens instead."""
