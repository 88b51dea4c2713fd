"""Table definitions, schema versions and migrations, and the rolling-window retention."""
