"""Small helpers shared by the library's modules."""


def check_choice(name: str, value, choices: tuple) -> None:
    """Raise a `ValueError` naming the option unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; choose one of {choices}.")
