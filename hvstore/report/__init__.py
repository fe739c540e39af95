"""``hvstore compare``: ``collect`` runs everything and returns one JSON document; ``render`` turns that
document into report.md and a self-contained index.html (inline SVG charts, no network)."""
