"""What the studio writes: shot lists and presets files.

Validated once, at the edge; every problem names its file, line and field.
"""
