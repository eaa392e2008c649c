"""The one error type that `skip_bad` turns into a counted skip."""


class BadRecording(ValueError):
    """A recording that cannot give windows (too short, no text events, too many bad channels,
    no usable channels): an error naming the file, or with skip_bad a skip in the manifest."""
