"""One HTTP environment for every client: proxies, CA bundle, ``.netrc``, User-Agent, limits.

A run talks HTTP over three stacks: libcurl for everything PyPI answers
(``upstream.transport``: pages, XML-RPC, the JSON root), requests for RSTUF
(``rstuf.client``), urllib3 for the audit's TUF metadata (``audit.metadata``
and the proxy). requests and urllib3 are imported only by a run that uses
them: an update without RSTUF loads neither. Each of them would otherwise read
the process environment in its own way, at its own moment (requests on every
request, urllib3 not at all, libcurl with rules of its own for ``NO_PROXY``).
`read_environment` reads it once, as requests documents it, and every client
is handed the result, so the same variables mean the same thing to all of them:

- proxies: ``<scheme>_PROXY`` and ``ALL_PROXY`` (lower case wins over upper
  case, ``HTTP_PROXY`` is ignored under CGI), skipped for hosts ``NO_PROXY``
  names (comma-separated host suffixes, IPv4 addresses or CIDR networks, ``*``);
  credentials in a proxy's URL become ``Proxy-Authorization``;
- CA bundle: ``REQUESTS_CA_BUNDLE``, else ``CURL_CA_BUNDLE``, else certifi's
  (a directory of certificates is accepted too);
- ``.netrc`` credentials: the file ``NETRC`` names, else ``~/.netrc`` or
  ``~/_netrc``, parsed once; an unreadable or malformed file is ignored, as
  requests ignores it.

Sources: requests' ``utils.get_environ_proxies``, ``should_bypass_proxies``,
``select_proxy`` and ``get_netrc_auth``; CPython's
``urllib.request.getproxies_environment`` and ``proxy_bypass_environment``.
"""

from __future__ import annotations

import logging
import netrc
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote, urlsplit

from pypi_index_mirror.ops.cli import VERSION

if TYPE_CHECKING:  # imported where used: a run without a proxy, RSTUF or TUF needs none
    import requests
    import urllib3

log = logging.getLogger(__name__)

# Who is asking, on every request to PyPI, RSTUF and the TUF metadata (PyPI asks mirrors to say).
USER_AGENT = (
    f"pypi-index-mirror/{VERSION} ({platform.python_implementation()}/{platform.python_version()})"
)


class HttpSettings(Protocol):
    """The run's settings an environment carries (`ops.settings.Config` has them)."""

    @property
    def connect_timeout(self) -> float: ...
    @property
    def timeout(self) -> float: ...  # read timeout: seconds without a byte
    @property
    def max_page_bytes(self) -> int: ...
    @property
    def max_xmlrpc_bytes(self) -> int: ...


@dataclass(frozen=True)
class Limits:
    """Timeouts (seconds) and size caps (bytes) every client applies."""

    connect_timeout: float = 10.0
    read_timeout: float = 60.0  # seconds without a byte
    max_page_bytes: int = 64 << 20  # one project page
    max_listing_bytes: int = 512 << 20  # the whole listing (XML-RPC or the JSON root)

    @property
    def timeout(self) -> tuple[float, float]:
        """requests' and urllib3's (connect, read) pair."""
        return (self.connect_timeout, self.read_timeout)


@dataclass(frozen=True)
class HttpEnvironment:
    """What the process environment says about HTTP, read once (`read_environment`).

    Frozen: a client that is handed it cannot change what another one sees.
    """

    # repr=False: a proxy's URL and .netrc may hold passwords, and a repr may be logged
    proxies: Mapping[str, str] = field(default_factory=dict, repr=False)  # {"https": url}
    no_proxy: str = ""  # NO_PROXY as given
    explicit_ca_bundle: str | None = None  # REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE
    # .netrc's entries: {host or "default": (login, account, password)}
    netrc_hosts: Mapping[str, tuple[str, str, str]] = field(default_factory=dict, repr=False)
    user_agent: str = USER_AGENT
    limits: Limits = field(default_factory=Limits)

    @property
    def ca_bundle(self) -> str:
        """The certificates https is verified against: the environment's bundle, else certifi's."""
        if self.explicit_ca_bundle:
            return self.explicit_ca_bundle
        import certifi

        return certifi.where()

    def bypasses_proxy(self, url: str) -> bool:
        """Whether ``NO_PROXY`` sends requests to `url` straight to its host (requests' rules)."""
        parts = urlsplit(url)
        host = parts.hostname
        if host is None:
            return True
        import requests.utils

        entries = [entry for entry in self.no_proxy.replace(" ", "").split(",") if entry]
        if requests.utils.is_ipv4_address(host):
            for entry in entries:
                if requests.utils.is_valid_cidr(entry):
                    if requests.utils.address_in_network(host, entry):
                        return True
                elif host == entry:
                    return True
        else:
            with_port = f"{host}:{parts.port}" if parts.port else host
            if any(host.endswith(entry) or with_port.endswith(entry) for entry in entries):
                return True
        # what requests asks urllib next: "*", any case, a leading dot
        return self.no_proxy.strip() == "*" or any(
            host.lower() == name or host.lower().endswith("." + name)
            for name in (entry.strip().lstrip(".").lower() for entry in self.no_proxy.split(","))
            if name
        )

    def proxy_for(self, url: str) -> str | None:
        """The proxy URL requests to `url` go through (scheme added), or None: straight there."""
        if not self.proxies or self.bypasses_proxy(url):
            return None
        import requests.utils

        proxy = requests.utils.select_proxy(url, dict(self.proxies))
        if not proxy:
            return None
        return str(requests.utils.prepend_scheme_if_needed(proxy, "http"))

    def netrc_auth(self, url: str) -> tuple[str, str] | None:
        """``.netrc``'s (login, password) for `url`'s host (its ``default`` entry else), or None."""
        host = urlsplit(url).hostname
        if host is None:
            return None
        entry = self.netrc_hosts.get(host) or self.netrc_hosts.get("default")
        if entry is None or not any(entry):
            return None
        login, account, password = entry
        return (login or account, password)  # requests': the login, else the account

    def session(
        self, base_url: str, session: requests.Session | None = None, netrc: bool = True
    ) -> requests.Session:
        """`session` (a new one by default) set up for requests to `base_url` from this
        environment alone: its proxy, bundle, ``.netrc`` credentials and User-Agent.

        ``trust_env`` is turned off, so requests reads nothing more of the
        environment on each request (re-deriving it per request was a tenth
        of a first sync's CPU, profiled). `netrc` False: a client sending its
        own Authorization header (RSTUF's token), which ``.netrc``'s Basic
        credentials would replace.
        """
        import requests

        session = session if session is not None else requests.Session()
        proxy = self.proxy_for(base_url)
        session.proxies = {"all": proxy} if proxy else {}
        if session.verify is True:
            session.verify = self.ca_bundle
        if session.auth is None and netrc:
            session.auth = self.netrc_auth(base_url)
        session.headers["User-Agent"] = self.user_agent
        session.trust_env = False
        return session

    def urllib3_pool(self, base_url: str, maxsize: int = 2) -> urllib3.PoolManager:
        """A keep-alive pool for `base_url`'s host, through this environment's proxy if it
        has one for it, as requests would set it up (a bundle that is a directory,
        credentials in the proxy's URL sent as Proxy-Authorization). `maxsize`
        connections are kept for reuse (the TUF proxy serves many clients at once)."""
        import urllib3

        bundle = self.ca_bundle
        directory = os.path.isdir(bundle)
        ca_certs, ca_cert_dir = (None, bundle) if directory else (bundle, None)
        headers = {"User-Agent": self.user_agent}
        proxy = self.proxy_for(base_url)
        if proxy is None:
            return urllib3.PoolManager(
                num_pools=2,
                maxsize=maxsize,
                headers=headers,
                ca_certs=ca_certs,
                ca_cert_dir=ca_cert_dir,
            )
        credentials = proxy_credentials(proxy)
        proxy_headers = (
            urllib3.make_headers(proxy_basic_auth=":".join(credentials)) if credentials else None
        )
        return urllib3.ProxyManager(
            proxy,
            num_pools=2,
            maxsize=maxsize,
            headers=headers,
            proxy_headers=proxy_headers,
            ca_certs=ca_certs,
            ca_cert_dir=ca_cert_dir,
        )


def proxy_credentials(proxy: str) -> tuple[str, str] | None:
    """The (user, password) in a proxy URL's ``user:password@``, decoded; None without."""
    parts = urlsplit(proxy)
    if parts.username is None:
        return None
    return unquote(parts.username), unquote(parts.password or "")


def read_environment(
    settings: HttpSettings | None = None, environ: Mapping[str, str] | None = None
) -> HttpEnvironment:
    """The HTTP environment of this process (or of `environ`), with `settings`' limits.

    The one place the variables are read: a run calls it once and hands the
    result to every client it makes.
    """
    environ = os.environ if environ is None else environ
    limits = (
        Limits(
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.timeout,
            max_page_bytes=settings.max_page_bytes,
            max_listing_bytes=settings.max_xmlrpc_bytes,
        )
        if settings is not None
        else Limits()
    )
    bundle = environ.get("REQUESTS_CA_BUNDLE") or environ.get("CURL_CA_BUNDLE") or None
    return HttpEnvironment(
        proxies=environ_proxies(environ),
        no_proxy=environ.get("no_proxy") or environ.get("NO_PROXY") or "",
        explicit_ca_bundle=bundle,
        netrc_hosts=netrc_entries(environ),
        limits=limits,
    )


def environ_proxies(environ: Mapping[str, str]) -> dict[str, str]:
    """``{scheme: proxy}`` from the ``*_proxy`` variables, as CPython's
    ``getproxies_environment`` reads them (and requests through it)."""
    proxies: dict[str, str] = {}
    for name, value in environ.items():
        lowered = name.lower()
        if value and lowered.endswith("_proxy"):
            proxies[lowered[:-6]] = value
    if "REQUEST_METHOD" in environ:  # CGI: HTTP_PROXY is a client's Proxy header (httpoxy)
        proxies.pop("http", None)
    for name, value in environ.items():  # lower case wins, and an empty one unsets
        if name.endswith("_proxy"):
            if value:
                proxies[name.lower()[:-6]] = value
            else:
                proxies.pop(name.lower()[:-6], None)
    proxies.pop("no", None)  # NO_PROXY is not a proxy: see HttpEnvironment.no_proxy
    return proxies


def netrc_entries(environ: Mapping[str, str]) -> dict[str, tuple[str, str, str]]:
    """Every ``.netrc`` entry as {host: (login, account, password)}, from the file requests
    would read."""
    if environ.get("NETRC"):
        candidates = [environ["NETRC"]]
    else:
        home = environ.get("HOME") or os.path.expanduser("~")
        candidates = [os.path.join(home, ".netrc"), os.path.join(home, "_netrc")]
    path = next((p for p in candidates if os.path.exists(os.path.expanduser(p))), None)
    if path is None:
        return {}
    try:
        hosts = netrc.netrc(os.path.expanduser(path)).hosts
    except (OSError, netrc.NetrcParseError) as exc:
        log.debug("ignoring %s: %s", path, exc)  # as requests does
        return {}
    return {
        host: (login or "", account or "", password or "")
        for host, (login, account, password) in hosts.items()
    }
