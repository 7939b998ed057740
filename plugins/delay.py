"""delay: a simulated heavy processing step, for demos and tests.

It stands in for real work (a scan, a conversion) that takes a while, so the
difference between the two upload paths can be seen: the blocking upload
answers only after it, the background upload at once. It waits with
`asyncio.sleep`, never `time.sleep`: a plugin that blocked the event loop
would stall every other request (health checks, other uploads) for as long.

    [processing]
    pipeline = ["delay"]
    [plugins.delay]
    seconds = 5
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import ConfigDict, Field

from uploadsvc import plugin


class DelayOptions(plugin.Options):
    """`[plugins.delay]`.

    Strict, like the service's own sections: TOML already gives numbers, so a
    string (`seconds = "5"`) or a boolean is a mistake to report, not to coerce.
    """

    model_config = ConfigDict(strict=True)

    #: How long each upload is held, in seconds. Finite: `inf` would only ever
    #: end by `[processing] timeout_seconds`, failing every upload.
    seconds: float = Field(default=5.0, ge=0, allow_inf_nan=False)


class Delay(plugin.Processor[DelayOptions]):
    """Wait `seconds` without blocking the loop, and say how long."""

    Options = DelayOptions

    async def process(self, upload: plugin.Upload) -> dict[str, Any]:
        await asyncio.sleep(self.options.seconds)
        return {"slept": self.options.seconds}
