"""A small JSON file a daemon writes once it serves, naming its bound addresses.

Lets supervisors and tests start daemons on port 0 and learn the ports they got.
"""

from __future__ import annotations

import json
import os
from typing import Any


def write_ready_file(path: str, doc: dict[str, Any]) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)
