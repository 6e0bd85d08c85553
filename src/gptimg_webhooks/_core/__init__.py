"""The sans-I/O core: no web framework, no database driver, no socket."""
