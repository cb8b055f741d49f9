"""Skip: a fold (or a rewrite) is refused; its message is the reason the report shows."""


class Skip(Exception):
    """A fold (or a rewrite) is refused; the message is the reason shown in the report."""

    @property
    def reason(self) -> str:
        return str(self)
