"""lit: a toolkit for the LIT vision transformer (Pan et al., AAAI 2022).

Importing ``litcli`` is cheap; ``litcli.models`` (torch + timm) is imported on first use of ``create_model``
or explicitly, and registers ``lit_ti``/``lit_s``/``lit_m``/``lit_b`` in timm's registry.
"""
__version__ = '0.3.0'  # as pyproject.toml and CHANGELOG.md's newest release
