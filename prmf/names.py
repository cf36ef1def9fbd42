"""Names are not paths: a name that becomes one component of a path (a sweep's --name, a sample
name from a label file, a feature folder name, a data set name in NPZ file names) is checked
before it is joined to a folder, so no name can reach outside it or fail deep inside an OSError."""
import os

MAX_BYTES = 200  # a path component may be 255 bytes (NAME_MAX); room is left for a temporary file's prefix and suffix


class BadName(ValueError):
    """A name that cannot be one path component; the message says why, without the caller's 'where'."""


def problem(name) -> str:
    """Why `name` cannot be one component of a path ('' if it can)."""
    if not isinstance(name, str) or not name:
        return "empty"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:  # bytes of another encoding, as Python keeps them from argv (surrogateescape)
        return "not valid UTF-8"
    if name in (".", ".."):
        return f"{name!r} is a folder reference, not a name"
    bad = sorted({c for c in name if c in "/\\\0" or ord(c) < 32})
    if bad:
        return f"contains {', '.join(map(repr, bad))}: a name is one folder or file name, not a path"
    if size > MAX_BYTES:
        return f"{size} bytes long (at most {MAX_BYTES})"
    return ""


def check(name, what: str) -> str:
    """`name` if it can be one path component, else BadName naming `what` (e.g. '--name')."""
    why = problem(name)
    if why:
        if why == "not valid UTF-8":
            shown = repr(os.fsencode(name))  # the bytes as given
        else:
            shown = ascii(name) if isinstance(name, str) and len(name) <= 60 else ascii(str(name)[:40]) + "..."
        raise BadName(f"{what} {shown}: {why}")
    return name
