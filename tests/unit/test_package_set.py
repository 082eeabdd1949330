"""The MCP package set of DESIGN §4 imports together (pip check does not catch a mismatch)."""

from importlib.metadata import version


def test_pinned_mcp_packages_import_together() -> None:
    import fastmcp
    import langchain_mcp_adapters.client
    import mcp

    assert mcp and langchain_mcp_adapters.client
    assert version("mcp").startswith("1.")
    assert fastmcp.__version__.startswith("3.4.")
    major, minor, *_ = (int(p) for p in version("langchain-mcp-adapters").split("."))
    assert (major, minor) >= (0, 3)
