"""Command-line helpers shared by the benchmark scripts."""


def trailing_overrides(opts):
    """The ``KEY VALUE`` config overrides of a tool's trailing ``argparse.REMAINDER`` argument.

    A leading ``--`` (which separates them from a preceding list option such as ``--configs``) is
    dropped. Raises ``ValueError`` unless the rest are ``KEY VALUE`` pairs; a key that looks like
    an option means one was given after the overrides.
    """
    opts = list(opts)
    if opts[:1] == ["--"]:
        opts = opts[1:]
    if len(opts) % 2 or any(k.startswith("--") for k in opts[::2]):
        raise ValueError(f"config overrides must be KEY VALUE pairs after the options, got {opts}")
    return opts
