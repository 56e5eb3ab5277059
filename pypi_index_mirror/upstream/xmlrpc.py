"""XML-RPC answers parsed as they stream in, with lxml's public pull parser.

PyPI's ``list_packages_with_serial`` answers one struct of 700,000 members
(about 60 MB). `AnswerParser` is fed the answer chunk by chunk and hands each
member of a top-level struct to a sink as soon as its end tag arrives, then
drops it from the tree, so memory stays flat however long the answer is; any
other answer (a serial, a changelog page) comes back whole from `close`.

Values are decoded as ``xmlrpc.client.loads`` decodes them (the XML-RPC
specification, plus ``<nil/>`` and ``<i8>``): a fault raises
``xmlrpc.client.Fault``, anything that is not a well-formed XML-RPC answer
raises `MalformedAnswer`.
"""

from __future__ import annotations

import base64
import binascii
import xmlrpc.client
from collections.abc import Callable

import lxml.etree

Sink = Callable[[object, object], None]

_INTEGERS = frozenset({"int", "i4", "i8", "i1", "i2", "biginteger"})


class MalformedAnswer(ValueError):
    """Not an XML-RPC answer: broken XML, an unknown tag, a missing or extra part."""


def _local(tag: object) -> str:
    """A tag without its namespace (``{...}nil`` of the Apache extensions is ``nil``)."""
    text = tag if isinstance(tag, str) else ""
    return text.rpartition("}")[2]


def decode_value(value: lxml.etree._Element) -> object:
    """The Python object a ``<value>`` element stands for.

    The usual shapes (one typed child: the listing's serials, a changelog's
    rows of strings and ints) are decoded first, with as few element lookups as
    lxml allows: a changelog page is 50,000 rows of six values each.
    """
    if len(value) == 1:
        typed = value[0]
        kind = typed.tag
        if kind == "string":
            return typed.text or ""
        if kind == "int" or kind == "i4":
            try:
                return int(typed.text or "")
            except ValueError:
                raise MalformedAnswer(f"bad <{kind}> {typed.text!r:.40}") from None
        if kind == "array":
            data = typed.find("data")
            return [] if data is None else [decode_value(item) for item in data]
    return _decode_other(value)


def _decode_other(value: lxml.etree._Element) -> object:
    """`decode_value` of every shape but the usual ones."""
    children = [child for child in value if isinstance(child.tag, str)]
    if not children:
        return value.text or ""  # a bare <value>text</value> is a string
    if len(children) > 1:
        raise MalformedAnswer("a <value> with more than one type")
    (typed,) = children
    kind, text = _local(typed.tag), typed.text or ""
    try:
        if kind in _INTEGERS:
            return int(text.strip())
        if kind == "string":
            return text
        if kind == "boolean":
            if text.strip() not in ("0", "1"):
                raise MalformedAnswer(f"bad boolean {text!r:.40}")
            return text.strip() == "1"
        if kind in ("double", "float"):
            return float(text.strip())
        if kind == "nil":
            return None
        if kind == "array":
            data = typed.find("data")
            return [decode_value(item) for item in (data if data is not None else ())]
        if kind == "struct":
            return dict(decode_member(member) for member in typed.iterchildren("member"))
        if kind == "dateTime.iso8601":
            return xmlrpc.client.DateTime(text.strip())
        if kind == "base64":
            return xmlrpc.client.Binary(base64.b64decode(text.encode("ascii"), validate=False))
    except (ValueError, binascii.Error) as exc:
        raise MalformedAnswer(f"bad <{kind}>: {exc}") from None
    raise MalformedAnswer(f"unknown type <{kind}>")


def decode_member(member: lxml.etree._Element) -> tuple[object, object]:
    """A struct member's (name, value): exactly a ``<name>`` then a ``<value>``."""
    children = list(member)
    if len(children) != 2 or children[0].tag != "name" or children[1].tag != "value":
        raise MalformedAnswer("a struct member that is not a <name> then a <value>")
    return children[0].text or "", decode_value(children[1])


def _is_top_level(member: lxml.etree._Element) -> bool:
    """Whether `member` belongs to the struct the answer's one param is."""
    struct = member.getparent()
    if struct is None or struct.tag != "struct":
        return False
    value = struct.getparent()
    param = value.getparent() if value is not None else None
    return param is not None and param.tag == "param"


class AnswerParser:
    """Feed an XML-RPC ``methodResponse`` in chunks; `close` returns its value.

    With a `sink`, each member of a top-level struct goes to ``sink(name,
    value)`` as soon as it is parsed, and the struct `close` returns holds
    only what was not sunk (nothing). Members of a fault never go to the sink.
    """

    def __init__(self, sink: Sink | None = None) -> None:
        self._sink = sink
        self._top: lxml.etree._Element | None = None  # the struct whose members are sunk
        self._parser = lxml.etree.XMLPullParser(
            events=("end",),
            tag="member",
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            remove_comments=True,
            remove_pis=True,
        )

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.feed(chunk)
        except lxml.etree.XMLSyntaxError as exc:
            raise MalformedAnswer(f"not XML: {exc}") from None
        self._drain()

    def _drain(self) -> None:
        for _, member in self._parser.read_events():
            if self._sink is None:
                continue
            struct = member.getparent()
            if struct is not self._top:  # once, or for a member nested in something else
                if not _is_top_level(member):
                    continue
                _check_document(member.getroottree())  # before anything reaches the sink
                self._top = struct
            self._sink(*decode_member(member))
            member.clear(keep_tail=False)
            # Earlier members are gone already; this one goes when the next one ends
            # (lxml's advice: leave the element the parser just closed in its place).
            previous = member.getprevious()
            if previous is not None:
                struct.remove(previous)

    def close(self) -> object:
        """The answer's one value; raises xmlrpc.client.Fault or MalformedAnswer."""
        try:
            root = self._parser.close()
        except lxml.etree.XMLSyntaxError as exc:
            raise MalformedAnswer(f"not XML: {exc}") from None
        self._drain()
        if self._sink is not None:
            for member in list(root.iterfind("params/param/value/struct/member")):
                member.getparent().remove(member)  # sunk already: only its husk is left
        _check_document(root.getroottree())
        fault = root.find("fault/value")
        if fault is not None:
            raise _fault(decode_value(fault))
        params = root.findall("params/param")
        if len(params) != 1:
            raise MalformedAnswer(f"{len(params)} params instead of one")
        value = params[0].find("value")
        if value is None:
            raise MalformedAnswer("a param without <value>")
        return decode_value(value)


def _check_document(tree: lxml.etree._ElementTree) -> None:
    if tree.docinfo.doctype:
        raise MalformedAnswer("a DOCTYPE in an XML-RPC answer")
    root = tree.getroot()
    if root.tag != "methodResponse":
        raise MalformedAnswer(f"<{_local(root.tag)}> instead of <methodResponse>")


def _fault(detail: object) -> xmlrpc.client.Fault:
    if not isinstance(detail, dict):
        raise MalformedAnswer("a fault that is not a struct")
    code, text = detail.get("faultCode"), detail.get("faultString")
    if type(code) is not int or not isinstance(text, str):
        raise MalformedAnswer("a fault without faultCode and faultString")
    return xmlrpc.client.Fault(code, text)
