"""Market-data sources behind one interface, selected by name, chained for fallback."""
