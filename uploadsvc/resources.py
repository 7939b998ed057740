"""Where the templates, static files and shipped plugins are, installed or in a checkout.

A wheel carries them inside the package (`uploadsvc/templates`,
`uploadsvc/static`, `uploadsvc/plugins`); a checkout keeps them at the repository root, beside the
package. Looking next to the code in both places makes the service work from
any working directory.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _beside_code(name: str) -> Path:
    inside = _PACKAGE / name
    return inside if inside.is_dir() else _PACKAGE.parent / name


TEMPLATES_DIR = _beside_code("templates")
STATIC_DIR = _beside_code("static")
PLUGINS_DIR = _beside_code("plugins")
