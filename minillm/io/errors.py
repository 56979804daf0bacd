"""The error of a file that is not what minillm can load (the CLI prints it in one line, exit 2)."""


class FormatError(ValueError):
    """A model file is damaged, of an unsupported kind, or does not match itself (e.g. a tokenizer
    whose vocabulary is not the model's). Raised before anything is returned: nothing half-loaded."""
