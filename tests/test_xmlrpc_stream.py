"""xmlrpc_stream: XML-RPC answers parsed as they stream, as ``xmlrpc.client.loads`` reads them.

Answers are marshalled by ``xmlrpc.client.dumps`` (what warehouse runs) and fed
in small chunks, so every member and tag boundary falls inside a chunk somewhere.
What PyPI's faults and broken answers do to a whole run is in tests/test_faults.py.
"""

from __future__ import annotations

import subprocess
import sys
import xmlrpc.client
from pathlib import Path

import pytest

from pypi_index_mirror.upstream.xmlrpc import AnswerParser, MalformedAnswer


def answer(value: object) -> bytes:
    return xmlrpc.client.dumps((value,), methodresponse=True, allow_none=True).encode()


def parse(body: bytes, sink=None, chunk: int = 7) -> object:
    parser = AnswerParser(sink)
    for start in range(0, len(body), chunk):
        parser.feed(body[start : start + chunk])
    return parser.close()


VALUES = [
    0,
    -(2**31),
    "",
    "numpy",
    "<b>&amp; 'ü' \u2603",
    True,
    False,
    1.5,
    None,
    [],
    [1, "two", [3.0, None], {"k": False}],
    {},
    {"a": {"b": [1]}},
    [["numpy", "2.0", 1700000000, "new release", 7], ["gone", None, 1700000001, "remove", 8]],
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_values_decode_as_xmlrpc_client_decodes_them(value: object) -> None:
    body = answer(value)
    assert parse(body) == xmlrpc.client.loads(body)[0][0] == value


def test_bare_string_integer_kinds_dates_and_binaries() -> None:
    body = (
        b"<?xml version='1.0'?><methodResponse><params><param><value><array><data>"
        b"<value>bare text</value><value><i4>4</i4></value><value><i8>8</i8></value>"
        b"<value><dateTime.iso8601>20240101T00:00:00</dateTime.iso8601></value>"
        b"<value><base64>aGk=</base64></value><value><ex:nil xmlns:ex='urn:x'/></value>"
        b"</data></array></value></param></params></methodResponse>"
    )
    assert parse(body) == xmlrpc.client.loads(body, use_datetime=False)[0][0]


def test_every_top_level_member_goes_to_the_sink_in_order() -> None:
    listing = {f"Project_{index}": 1000 + index for index in range(500)}
    seen: list[tuple[object, object]] = []
    rest = parse(answer(listing), lambda name, serial: seen.append((name, serial)))
    assert seen == list(listing.items())
    assert rest == {}, "the sunk members are not also returned"


def test_nested_structs_stay_inside_their_member() -> None:
    seen: list[tuple[object, object]] = []
    parse(answer({"a": {"inner": 1}, "b": 2}), lambda *pair: seen.append(pair))
    assert seen == [("a", {"inner": 1}), ("b", 2)]


def test_non_struct_answers_with_a_sink_come_back_whole() -> None:
    seen: list[object] = []
    assert parse(answer([{"x": 1}]), lambda *pair: seen.append(pair)) == [{"x": 1}]
    assert seen == []


MEASURE_MEMORY = """
import sys
from pypi_index_mirror.upstream.xmlrpc import AnswerParser

def chunks(members):  # made as they are fed: the answer itself takes no memory
    yield b"<?xml version='1.0'?><methodResponse><params><param><value><struct>"
    for first in range(0, members, 1000):
        yield b"".join(
            b"<member><name>Project_%07d</name><value><int>%d</int></value></member>" % (i, i)
            for i in range(first, min(first + 1000, members))
        )
    yield b"</struct></value></param></params></methodResponse>"

def rss_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

count = 0
def sink(name, serial):
    global count
    count += 1

members = int(sys.argv[1])
parser = AnswerParser(sink)
before = peak = rss_kib()
for chunk in chunks(members):
    parser.feed(chunk)
    peak = max(peak, rss_kib())
assert parser.close() == {} and count == members
print(peak - before)
"""


def test_memory_stays_flat_however_many_members_stream() -> None:
    """50,000 members (3.5 MB): a kept tree would grow by ~40 MiB, the stream by ~2 MiB."""
    done = subprocess.run(
        [sys.executable, "-c", MEASURE_MEMORY, "50000"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    growth_kib = int(done.stdout)
    assert growth_kib < 4 * 1024, f"parsing grew the process by {growth_kib} KiB"


@pytest.mark.parametrize(
    ("code", "text"),
    [(-32500, "HTTPTooManyRequests: Limit may reset in 12 seconds"), (-32601, "no such method")],
)
def test_a_fault_raises_and_never_reaches_the_sink(code: int, text: str) -> None:
    seen: list[object] = []
    body = xmlrpc.client.dumps(xmlrpc.client.Fault(code, text), methodresponse=True).encode()
    with pytest.raises(xmlrpc.client.Fault) as caught:
        parse(body, lambda *pair: seen.append(pair))
    assert (caught.value.faultCode, caught.value.faultString) == (code, text)
    assert seen == []


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"<?xml version='1.0'?>\n<methodResponse><params><param><value><arr", "not XML"),
        (b"", "not XML"),
        (b"<html><body>502 Bad Gateway</body></html>", "instead of <methodResponse>"),
        (b"<methodResponse><params></params></methodResponse>", "0 params"),
        (
            b"<methodResponse><params><param><value>1</value></param>"
            b"<param><value>2</value></param></params></methodResponse>",
            "2 params",
        ),
        (b"<methodResponse><params><param/></params></methodResponse>", "without <value>"),
        (answer(1).replace(b"int>", b"integer>"), "unknown type <integer>"),
        (answer(1).replace(b">1<", b">one<"), "bad <int>"),
        (answer(True).replace(b">1<", b">yes<"), "bad boolean"),
        (answer({"a": 1}).replace(b"<name>a</name>", b""), "not a <name> then a <value>"),
        (
            b"<methodResponse><fault><value><string>x</string></value></fault></methodResponse>",
            "not a struct",
        ),
        (
            b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY e "x">]>'
            + answer({"a": 1}).split(b"?>", 1)[1],
            "DOCTYPE",
        ),
    ],
)
def test_malformed_answers_are_refused(body: bytes, words: str) -> None:
    with pytest.raises(MalformedAnswer, match=words):
        parse(body)


def test_a_doctype_is_refused_before_any_member_is_sunk() -> None:
    seen: list[object] = []
    body = b'<?xml version="1.0"?><!DOCTYPE m>' + answer({"a": 1}).split(b"?>", 1)[1]
    with pytest.raises(MalformedAnswer, match="DOCTYPE"):
        parse(body, lambda *pair: seen.append(pair))
    assert seen == []
