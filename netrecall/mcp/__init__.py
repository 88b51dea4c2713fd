"""MCP tools for AI agents, on the official `mcp` SDK (stdio and streamable HTTP)."""
