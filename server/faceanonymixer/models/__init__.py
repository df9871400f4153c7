"""Model implementations and their checkpoint loaders."""
