"""Pipeline presets (``fast``, ``balanced``, ``quality``) and Serve config files, as YAML data."""
