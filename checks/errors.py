"""The error every layer raises for a wrong setting (checks read settings too, e.g. the trade
session tolerance), so it lives on the ground floor."""


class ConfigurationError(ValueError):
    """A setting is wrong; the message names the variable and what to do."""
