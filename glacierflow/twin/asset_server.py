"""Static file server with HTTP range requests (Starlette StaticFiles under uvicorn).

``python -m glacierflow.twin.asset_server ROOT PORT`` serves ROOT on 127.0.0.1:PORT. GDAL reads the twin's
COGs through it with range requests, as it reads blob storage.
"""

from __future__ import annotations

import sys


def main(root: str, port: int) -> None:
    """Serve ``root`` on 127.0.0.1:``port`` until terminated."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    app = Starlette(routes=[Mount("/", StaticFiles(directory=root))])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
