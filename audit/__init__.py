"""Audit trail. ``from audit import record``."""


def record(*args, **kwargs):
    from audit.services import record as _record

    return _record(*args, **kwargs)
