"""``haqc inspect``: placeholder until the extract pass lands (replaced in this session)."""
from __future__ import annotations
