#!/usr/bin/env python3
"""Container health check: exit 0 when URL answers 2xx within 4 s, else 1 (one line why).

One argument with no spaces: podman 4.3 splits a healthcheck's arguments on spaces, so a
`python -c "..."` check breaks there; this works the same under Docker and podman.
"""

import sys
import urllib.request

try:
    with urllib.request.urlopen(sys.argv[1], timeout=4) as response:
        sys.exit(0 if 200 <= response.status < 300 else 1)
except Exception as e:  # any failure is "unhealthy"; say which
    print(f"unhealthy: {e}", file=sys.stderr)
    sys.exit(1)
