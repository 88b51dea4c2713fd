"""Redaction: credentials in headers, secret-looking keys in query strings, JSON and form bodies."""

from __future__ import annotations

import json

import pytest

from netrecall.query.redact import (
    MASK,
    maybe_redact,
    redact_body,
    redact_call,
    redact_headers,
    redact_query,
    redact_url,
    redaction_enabled,
)


def test_credential_headers_any_case():
    headers = {
        "Authorization": "Bearer x",
        "proxy-authorization": "Basic y",
        "COOKIE": "a=1",
        "Set-Cookie": "sid=2; HttpOnly",
        "Accept": "*/*",
        "X-Request-Id": "r1",
    }
    out = redact_headers(headers)
    assert out == {
        "Authorization": MASK,
        "proxy-authorization": MASK,
        "COOKIE": MASK,
        "Set-Cookie": MASK,
        "Accept": "*/*",
        "X-Request-Id": "r1",
    }


@pytest.mark.parametrize(
    "query, expected",
    [
        ("token=abc&x=1", f"token={MASK}&x=1"),
        ("api_key=k1&apikey=k2&API-KEY=k3", f"api_key={MASK}&apikey={MASK}&API-KEY={MASK}"),
        ("password=p&user=ann", f"password={MASK}&user=ann"),
        ("client_secret=s&grant_type=x", f"client_secret={MASK}&grant_type=x"),
        ("access_token=t", f"access_token={MASK}"),
        ("pass%77ord=p", f"pass%77ord={MASK}"),  # the key is compared decoded
        ("q=token&page=2", "q=token&page=2"),  # a value that merely says token stays
        ("flag&token=", "flag&token="),
        ("", ""),
    ],
)
def test_query_strings(query, expected):
    assert redact_query(query) == expected


def test_urls_keep_path_and_fragment():
    assert redact_url("/login?user=a&password=b#top") == f"/login?user=a&password={MASK}#top"
    assert redact_url("/plain/path") == "/plain/path"


def test_json_bodies_any_depth():
    body = json.dumps(
        {
            "user": "ann",
            "password": "hunter2",
            "nested": {"apiKey": "k", "list": [{"token": 1}]},
            "tokens_left": 3,
            "secret": {"inner": "x"},
        }
    )
    out = json.loads(redact_body(body))
    assert out["user"] == "ann" and out["password"] == MASK
    assert out["nested"]["apiKey"] == MASK and out["nested"]["list"][0]["token"] == MASK
    assert out["tokens_left"] == MASK  # secret-looking key: masked, erring on the safe side
    assert out["secret"] == {"inner": "x"}  # containers are walked, not replaced


def test_truncated_json_and_form_bodies():
    cut = '{"user":"ann","password":"hunter2","note":"long text that was cu'
    assert "hunter2" not in redact_body(cut) and '"user":"ann"' in redact_body(cut)
    assert redact_body("user=ann&password=p") == f"user=ann&password={MASK}"
    assert redact_body(b'{"token":"t"}') == f'{{"token":"{MASK}"}}'
    assert redact_body("plain text with password inside") == "plain text with password inside"
    assert redact_body(b"\xff\xfe binary") == b"\xff\xfe binary"


def test_full_call_record_as_get_call_shapes_it():
    call = {
        "url": "/pay?card=1&token=t",
        "query_string": "card=1&token=t",
        "path": "/pay",
        "request": {
            "headers": {"Authorization": "Bearer s"},
            "body": {"encoding": "utf-8", "data": '{"password":"p","amount":3}'},
        },
        "response": {
            "headers": {"Set-Cookie": "sid=1"},
            "body": {"encoding": "base64", "data": "cGFzc3dvcmQ="},
        },
    }
    out = redact_call(call)
    assert out["url"] == f"/pay?card=1&token={MASK}" and out["query_string"] == f"card=1&token={MASK}"
    assert out["request"]["headers"]["Authorization"] == MASK
    assert json.loads(out["request"]["body"]["data"]) == {"password": MASK, "amount": 3}
    assert out["response"]["headers"]["Set-Cookie"] == MASK
    assert out["response"]["body"]["data"] == "cGFzc3dvcmQ="  # binary bodies are not guessed at
    assert call["request"]["headers"]["Authorization"] == "Bearer s"  # input untouched


def test_switch(monkeypatch):
    call = {"request_headers": {"Cookie": "c"}}
    assert redaction_enabled()
    assert maybe_redact(call)["request_headers"]["Cookie"] == MASK
    monkeypatch.setenv("NETRECALL_REDACT", "0")
    assert not redaction_enabled()
    assert maybe_redact(call)["request_headers"]["Cookie"] == "c"
    assert maybe_redact(call, enabled=True)["request_headers"]["Cookie"] == MASK
