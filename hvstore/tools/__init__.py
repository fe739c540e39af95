"""Pure argv builders and parsers for external tools and their file formats (no I/O)."""
