"""Data files shipped with Lowbit (texts, style sheets, icons)."""
