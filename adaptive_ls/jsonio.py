"""JSON files a run writes beside its checkpoints (results.json, reliability.json): written atomically, merged."""
from __future__ import annotations

import json
from pathlib import Path


def write_json(path: Path, payload: dict) -> None:
    """Write JSON atomically: a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    tmp.replace(path)


def read_json(path: Path) -> dict:
    """The JSON object at ``path``; {} when the file is missing or unreadable (a run killed before writing it)."""
    try:
        return json.loads(Path(path).read_text()) if Path(path).is_file() else {}
    except (OSError, ValueError):
        return {}


def update_json(path: Path, updates: dict) -> None:
    """Merge ``updates`` into the JSON file at ``path``, keeping its other keys."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {**read_json(path), **updates})
