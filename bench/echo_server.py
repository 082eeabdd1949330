"""The baseline: a bare FastMCP server with one echo tool, served like ours (stateless HTTP, JSON).

python -m bench.echo_server PORT
"""

import sys

import uvicorn
from fastmcp import FastMCP

echo = FastMCP("echo")


@echo.tool
def echo_text(text: str) -> str:
    """Return the text unchanged."""
    return text


if __name__ == "__main__":
    app = echo.http_app(
        path="/mcp", stateless_http=True, json_response=True, host_origin_protection=True
    )
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
