"""`require`: refuse a bad config value naming the field, the rule and the value given."""


def require(ok: bool, name: str, rule: str, value) -> None:
    """Raise ValueError "<section.field> must be <rule>, got <value>" unless `ok`."""
    if not ok:
        raise ValueError(f"{name} must be {rule}, got {value!r}")
