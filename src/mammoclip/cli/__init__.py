"""Command-line interface. Each module here adds its commands with ``register(subparsers)``.

Modules are discovered at start-up (``pkgutil``), so adding a command never touches a central list.
Command modules import the library lazily inside their handlers to keep ``mammoclip --help`` fast.
"""
