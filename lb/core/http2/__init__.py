"""lb's own sans-IO HTTP/2 (issue 29): frames.py (RFC 9113 sections 4 and 6). No I/O."""
