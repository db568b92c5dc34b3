"""Interactive panels built on bitkit."""
