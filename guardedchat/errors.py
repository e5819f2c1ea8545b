"""The error tree: every failure a user can see, each naming what is wrong and how to fix it.

    GuardedChatError
    ├── DomainError            a domain.yaml that cannot be read or does not validate
    ├── UnknownDomainError     a domain id that is not among the loaded domains
    ├── ModelLoadError         a model file that is missing, truncated, not GGUF or fails to load
    ├── BackendError           generation failed after the model loaded
    └── InputError             a message or file the user gave that cannot be used
        └── ConfigError        a file a setting names (GUARDEDCHAT_API_KEYS) is missing or unreadable:
                               the server does not start rather than run without it

Only the edges (CLI, UI, API) turn these into output; everything else raises them, translating
third-party errors at one boundary with ``raise ... from exc``.
"""


class GuardedChatError(Exception):
    """Base class: ``str(error)`` is the whole message a user sees, fix included."""


class DomainError(GuardedChatError):
    """A domain folder or its domain.yaml is broken."""

    def __init__(self, path, message):
        self.path = str(path)
        super().__init__(f"{self.path}: {message}")


class UnknownDomainError(GuardedChatError):
    """The requested domain id is not loaded."""


class ModelLoadError(GuardedChatError):
    """The model file cannot be used."""


class BackendError(GuardedChatError):
    """The model failed while generating."""


class InputError(GuardedChatError):
    """User input that cannot be processed."""


class ConfigError(InputError):
    """A file named by a setting cannot be used; what it guards must not run without it."""
