"""Delayed dissection: stored packets -> TCP streams -> protocol parsers -> the api_calls table."""
