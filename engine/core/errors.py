"""User-facing errors: one readable line (or paragraph) that names the bad value, never a traceback wall."""


class DreamwireError(Exception):
    """A user-facing error: one line, names the bad value."""
