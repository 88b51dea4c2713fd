"""The hub's OpenAPI 3.1 description, written as data next to the routes it documents."""

from __future__ import annotations

from typing import Any

from netrecall import __version__

_ERROR = {"$ref": "#/components/responses/Error"}
_OBJECT = {"type": "object"}


def _q(name: str, kind: str = "string", description: str = "", **extra: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": kind, **extra}
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _path(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string", "minLength": 1},
        "description": description,
    }


_SINCE = _q("since", description="Start: RFC 3339 (2026-03-14T22:00:00Z), relative (-30m) or epoch seconds")
_UNTIL = _q("until", description="End (exclusive), same forms as since")
_KFL = _q("kfl", description='KFL filter, e.g. http && status_code >= 500 && dst.namespace == "shop"')
_SNAPSHOT = _q("snapshot", description="Read a snapshot's frozen copy instead of the live window")


def _limit(default: int, maximum: int = 1000) -> dict[str, Any]:
    return _q("limit", "integer", f"At most this many items (default {default})", minimum=1, maximum=maximum)


def _ok(
    description: str,
    schema: dict[str, Any] | None = None,
    status: str = "200",
    errors: tuple[str, ...] = ("400", "404"),
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        status: {"description": description, "content": {"application/json": {"schema": schema or _OBJECT}}},
        "401": _ERROR,
    }
    for code in errors:
        responses[code] = _ERROR
    return responses


def _get(summary: str, params: list[dict[str, Any]], description: str = "", **ok: Any) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "description": description or summary,
            "parameters": params,
            "responses": _ok(summary, **ok),
        }
    }


def _json_body(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": properties,
                    "required": required or [],
                    "additionalProperties": True,
                }
            }
        },
    }


_STRINGS = {"type": "array", "items": {"type": "string"}}
_CALLS = {
    "type": "object",
    "required": ["calls", "total", "truncated"],
    "properties": {
        "calls": {"type": "array", "items": _OBJECT},
        "total": {"type": "integer"},
        "truncated": {"type": "boolean"},
    },
}


def openapi_document() -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/healthz": {
            "get": {
                "summary": "Liveness (no token needed)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "ok",
                        "content": {
                            "application/json": {
                                "schema": {"type": "object", "properties": {"status": {"type": "string"}}}
                            }
                        },
                    }
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "text exposition",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": _ERROR,
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {
                    "200": {"description": "OpenAPI", "content": {"application/json": {"schema": _OBJECT}}},
                    "401": _ERROR,
                },
            }
        },
        "/api/boundaries": _get("Time range, packet and call counts of the stored data", [_SNAPSHOT]),
        "/api/calls": _get(
            "List API calls matching a KFL filter (compact records)",
            [
                _KFL,
                _SINCE,
                _UNTIL,
                _limit(50),
                _SNAPSHOT,
                _q("format", description="json (default) or jsonl", enum=["json", "jsonl"]),
            ],
            schema=_CALLS,
        ),
        "/api/calls/{id}": _get(
            "One call in full (headers, bodies with include_payload), redacted",
            [
                _path("id", "Call id"),
                _q("payload", "boolean", "Include bodies"),
                _q("max_payload_size", "integer", "Body bytes kept", minimum=0, maximum=1 << 20),
                _SNAPSHOT,
            ],
            errors=("400", "404"),
        ),
        "/api/calls/{id}/trace": _get(
            "What a call's two ends sent and received around it, in time order",
            [_path("id", "Call id"), _q("window", description="e.g. 5s, 500ms"), _limit(50), _SNAPSHOT],
            errors=("400", "404"),
        ),
        "/api/sql": {
            "post": {
                "summary": "Read-only SQL (SELECT only, through the guard)",
                "requestBody": _json_body(
                    {"sql": {"type": "string"}, "max_rows": {"type": "integer", "minimum": 1}}, ["sql"]
                ),
                "responses": _ok("rows", errors=("400", "404", "413")),
            }
        },
        "/api/workloads": _get(
            "Workload identities valid now or at a time",
            [_q("namespace"), _q("at", description="A past moment"), _limit(200)],
        ),
        "/api/ips": _get(
            "IPs seen in calls with the workload they belonged to", [_SINCE, _UNTIL, _limit(100), _SNAPSHOT]
        ),
        "/api/flows": _get(
            "L4 flows with TCP health, or grouped by workload (true), pod, namespace, node or service",
            [
                _SINCE,
                _UNTIL,
                _q("ip"),
                _q("port", "integer", minimum=0, maximum=65535),
                _q("aggregate", enum=["workload", "pod", "namespace", "node", "service", "true", "false"]),
                _q("l4proto", enum=["tcp", "udp"]),
                _q("ns"),
                _q("pod"),
                _q("svc"),
                _q("failing", "boolean"),
                _limit(100),
                _SNAPSHOT,
            ],
        ),
        "/api/latency": _get(
            "p50/p90/p99, rate and failures per workload edge (per-minute histograms)",
            [
                _KFL,
                _SINCE,
                _UNTIL,
                _q("src", description="ns/name, or ns/ for a namespace"),
                _q("dst", description="ns/name, or ns/ for a namespace"),
                _q("protocol"),
                _q("by_route", "boolean"),
                _q("step", description="A series per edge, e.g. 5m (at least 1m)"),
                _limit(20),
                _SNAPSHOT,
            ],
        ),
        "/api/latency/changes": _get(
            "Edges whose latency rose against a baseline window, with their slowest calls",
            [
                _KFL,
                _SINCE,
                _UNTIL,
                _q("baseline_since"),
                _q("baseline_until"),
                _limit(10),
                _q("tail", "integer", minimum=0, maximum=20),
                _SNAPSHOT,
            ],
        ),
        "/api/changes": _get(
            "What changed between a window and its baseline, ranked (errors, TCP, latency, edges, names)",
            [_KFL, _SINCE, _UNTIL, _q("baseline_since"), _q("baseline_until"), _limit(15), _SNAPSHOT],
        ),
        "/api/stats": _get(
            "Counts by protocol and status, latency percentiles, busiest endpoints",
            [_KFL, _SINCE, _UNTIL, _SNAPSHOT],
        ),
        "/api/errors": _get(
            "Errors grouped by source, destination, protocol and code",
            [_KFL, _SINCE, _UNTIL, _limit(20), _SNAPSHOT, _q("include_4xx", "boolean")],
        ),
        "/api/dns/failures": _get(
            "Failed DNS lookups grouped by name, type and client",
            [_KFL, _SINCE, _UNTIL, _limit(20), _SNAPSHOT],
        ),
        "/api/snapshots": {
            "get": {"summary": "List snapshots", "responses": _ok("snapshots", errors=())},
            "post": {
                "summary": "Freeze a time range into a named snapshot",
                "requestBody": _json_body(
                    {
                        "name": {"type": "string"},
                        "last": {"type": "string"},
                        "since": {"type": "string"},
                        "until": {"type": "string"},
                        "nodes": _STRINGS,
                        "note": {"type": "string"},
                        "partial": {"type": "boolean"},
                    },
                    ["name"],
                ),
                "responses": _ok("created", status="201", errors=("400", "404", "413")),
            },
        },
        "/api/snapshots/{name}": {
            "get": {
                "summary": "One snapshot",
                "parameters": [_path("name", "Snapshot name")],
                "responses": _ok("snapshot", errors=("400", "404")),
            },
            "delete": {
                "summary": "Delete a snapshot",
                "parameters": [_path("name", "Snapshot name")],
                "responses": _ok("deleted", errors=("400", "404")),
            },
        },
        "/api/dissect": {
            "get": {
                "summary": "Dissection jobs",
                "parameters": [_q("job")],
                "responses": _ok("jobs", errors=("400", "404")),
            },
            "post": {
                "summary": "Start dissection in the background",
                "requestBody": _json_body(
                    {
                        "since": {"type": "string"},
                        "until": {"type": "string"},
                        "node": {"type": "string"},
                        "snapshot": {"type": "string"},
                    }
                ),
                "responses": _ok("started", status="202", errors=("400", "404", "413")),
            },
        },
        "/api/dissect/{job}": _get("One dissection job", [_path("job", "Job id")], errors=("400", "404")),
        "/api/export/pcap": {
            "post": {
                "summary": "Write a PCAP under the hub's exports directory and stream it back "
                "(download=false: "
                "answer its path, sha256 and counts instead)",
                "requestBody": _json_body(
                    {
                        "kfl": {"type": "string"},
                        "nodes": _STRINGS,
                        "ips": _STRINGS,
                        "ports": {"type": "array", "items": {"type": "integer"}},
                        "pods": _STRINGS,
                        "labels": _STRINGS,
                        "since": {"type": "string"},
                        "until": {"type": "string"},
                        "snapshot": {"type": "string"},
                        "format": {"enum": ["pcap", "pcapng"]},
                        "download": {"type": "boolean"},
                    }
                ),
                "responses": {
                    "200": {
                        "description": "the capture (or its summary with download=false)",
                        "content": {
                            "application/vnd.tcpdump.pcap": {
                                "schema": {"type": "string", "format": "binary"}
                            },
                            "application/x-pcapng": {"schema": {"type": "string", "format": "binary"}},
                            "application/json": {"schema": _OBJECT},
                        },
                    },
                    "400": _ERROR,
                    "401": _ERROR,
                    "404": _ERROR,
                    "413": _ERROR,
                },
            }
        },
        "/api/exports/{name}": {
            "get": {
                "summary": "Download an earlier export by file name",
                "parameters": [_path("name", "Export file name")],
                "responses": {
                    "200": {
                        "description": "file",
                        "content": {
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                        },
                    },
                    "400": _ERROR,
                    "401": _ERROR,
                    "404": _ERROR,
                },
            }
        },
        "/api/ingest": {
            "post": {
                "summary": "Agents' batches: one Arrow IPC stream, idempotent by X-Netrecall-Batch",
                "parameters": [
                    {
                        "name": "table",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "enum": ["packets", "workloads", "agent_stats"]},
                    },
                    {
                        "name": "X-Netrecall-Batch",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/vnd.apache.arrow.stream": {
                            "schema": {"type": "string", "format": "binary"}
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "stored",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["rows", "duplicate"],
                                    "properties": {
                                        "rows": {"type": "integer"},
                                        "duplicate": {"type": "boolean"},
                                    },
                                }
                            }
                        },
                    },
                    "400": _ERROR,
                    "401": _ERROR,
                    "413": _ERROR,
                    "415": _ERROR,
                },
            }
        },
    }
    # format=jsonl answers one compact call per line
    paths["/api/calls"]["get"]["responses"]["200"]["content"]["application/x-ndjson"] = {
        "schema": {"type": "string"}
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "netrecall hub",
            "version": __version__,
            "description": "Packets, flows and API calls of a Kubernetes cluster, stored in ClickHouse. "
            "Every route but /healthz needs `Authorization: Bearer TOKEN`.",
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Error": {
                    "description": "error",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["error"],
                                "properties": {
                                    "error": {
                                        "type": "object",
                                        "required": ["code", "message"],
                                        "properties": {
                                            "code": {"type": "string"},
                                            "message": {"type": "string"},
                                        },
                                    }
                                },
                            }
                        }
                    },
                }
            },
        },
    }
