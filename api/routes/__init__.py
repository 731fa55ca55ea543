"""Route modules, one per URL prefix."""
