"""The SQL store: resources, the change log behind list-watch, and credentials."""

from kaip.store.store import Change, Store

__all__ = ["Change", "Store"]
