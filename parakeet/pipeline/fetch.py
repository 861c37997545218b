"""Fetching audio from a URL (JSON `audio_url`) without letting the URL reach inside the network (SSRF).

Every hop (the URL and each redirect) is checked before it is fetched: http or https only; the host on the
allowlist when there is one; the host resolved here and EVERY address it resolves to outside private, loopback,
link-local, multicast, reserved and cloud-metadata networks (unless on `url_allowed_networks`). The request then
goes to the checked address itself (the Host header and TLS SNI keep the name), so a second DNS answer cannot
swap in another address between check and connect (DNS rebinding). Redirects are followed by hand, at most
`url_max_redirects`; the download stops at the upload cap; a connect and a total time limit apply.
The rules follow OWASP's SSRF prevention cheat sheet
(https://cheatsheetseries.owasp.org/cheatsheets/Server_Side_Request_Forgery_Prevention_Cheat_Sheet.html).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

import httpx

from parakeet.core import errors
from parakeet.core.settings import Settings
from parakeet.core.tuning import Tuning

REDIRECTS = {301, 302, 303, 307, 308}
# Cloud metadata endpoints that are not inside the private ranges below (AWS IPv6 IMDS).
METADATA = (ipaddress.ip_network("fd00:ec2::254/128"),)


@dataclass(frozen=True)
class UrlPolicy:
    """Where `audio_url` may point (see the module docstring; README "JSON and URL input")."""

    enabled: bool
    allowed_hosts: tuple[str, ...]
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    connect_timeout_s: float
    timeout_s: float
    max_redirects: int

    @classmethod
    def from_settings(cls, s: Settings, tuning: Tuning) -> UrlPolicy:
        """Raises: InvalidSettings: a network in PARAKEET_URL_ALLOWED_NETWORKS does not parse."""
        hosts = tuple(h.strip().lower() for h in (s.url_allowed_hosts or "").split(",") if h.strip())
        try:
            nets = tuple(
                ipaddress.ip_network(n.strip()) for n in (s.url_allowed_networks or "").split(",") if n.strip()
            )
        except ValueError as exc:
            raise errors.InvalidSettings(f"PARAKEET_URL_ALLOWED_NETWORKS: {exc}") from None
        return cls(
            s.url_input, hosts, nets, tuning.url_connect_timeout_s, tuning.url_timeout_s, tuning.url_max_redirects
        )


def _refused(message: str, param: str = "audio_url") -> errors.UrlRefused:
    return errors.UrlRefused(message, param=param)


def _forbidden(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved
        or ip.is_unspecified or any(ip in net for net in METADATA)
    )  # fmt: skip


def check_url_syntax(url: str, policy: UrlPolicy, param: str) -> httpx.URL:
    """`url` parsed, http(s), with a host on the allowlist when there is one (the checks that need no DNS).

    Raises:
        UrlRefused: naming `param`.
    """
    try:
        target = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise _refused(f"{param} is not a valid URL ({exc})", param) from None
    if target.scheme not in ("http", "https"):
        raise _refused(f"{param} must be http or https, got {target.scheme or 'no scheme'!r}", param)
    host = target.host.lower()
    if not host:
        raise _refused(f"{param} has no host", param)
    if policy.allowed_hosts and host not in policy.allowed_hosts:
        raise _refused(f"{param} host {host!r} is not on the allowed list (PARAKEET_URL_ALLOWED_HOSTS)", param)
    return target


async def _checked_address(url: httpx.URL, policy: UrlPolicy, param: str = "audio_url") -> str:
    """The address to connect to for `url`, after every check (raises UrlRefused / UrlFetchFailed)."""
    check_url_syntax(str(url), policy, param)
    host = url.host.lower()
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise errors.UrlFetchFailed(f"{param} host {host!r} does not resolve ({exc})", param=param) from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    for ip in addresses:
        if _forbidden(ip) and not any(ip in net for net in policy.allowed_networks):
            raise _refused(
                f"{param} host {host!r} resolves to {ip}, inside a private, loopback, link-local or metadata "
                "network; such URLs are refused (PARAKEET_URL_ALLOWED_NETWORKS exempts networks)",
                param,
            )
    return str(addresses[0])


async def post_json(url: str, policy: UrlPolicy, body: bytes, headers: dict[str, str], param: str) -> int:
    """POST `body` (JSON) to `url` under `policy`'s address rules (as `fetch_audio`; no redirects followed: a
    webhook receiver answers itself) within its time limits.

    Returns:
        The receiver's HTTP status.

    Raises:
        UrlRefused, UrlFetchFailed (unresolvable or unreachable), UrlTimeout: naming `param`.
    """
    target = check_url_syntax(url, policy, param)
    timeout = httpx.Timeout(policy.timeout_s, connect=policy.connect_timeout_s)
    try:
        async with asyncio.timeout(policy.timeout_s), httpx.AsyncClient(timeout=timeout) as client:
            address = await _checked_address(target, policy, param)
            extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
            sent = {"Host": target.netloc.decode("ascii"), "Content-Type": "application/json", **headers}
            response = await client.post(target.copy_with(host=address), content=body, headers=sent,
                                         extensions=extensions)  # fmt: skip
            return response.status_code
    except (TimeoutError, httpx.TimeoutException):
        raise errors.UrlTimeout(f"{param} host {target.host!r} did not answer in time", param=param) from None
    except httpx.HTTPError as exc:
        raise errors.UrlFetchFailed(f"{param} host {target.host!r} could not be reached ({type(exc).__name__})",
                                    param=param) from None  # fmt: skip


async def fetch_audio(url: str, policy: UrlPolicy, max_bytes: int) -> bytes:
    """Download `url` under `policy`, at most `max_bytes`.

    Raises:
        UrlRefused (400): off, bad scheme, host not allowed, private address, too many redirects.
        UploadTooLarge (413): the body passes `max_bytes` (the download stops there).
        UrlFetchFailed (422): unresolvable, unreachable, or an HTTP error status.
        UrlTimeout (504): over the connect or total time limit.
    """
    if not policy.enabled:
        raise _refused("audio_url input is off on this server (PARAKEET_URL_INPUT=true turns it on)")
    target = check_url_syntax(url, policy, "audio_url")
    timeout = httpx.Timeout(policy.timeout_s, connect=policy.connect_timeout_s)
    try:
        async with (
            asyncio.timeout(policy.timeout_s),
            httpx.AsyncClient(follow_redirects=False, timeout=timeout) as client,
        ):
            for _ in range(policy.max_redirects + 1):
                address = await _checked_address(target, policy)
                pinned = target.copy_with(host=address)
                headers = {"Host": target.netloc.decode("ascii"), "Accept": "audio/*, video/*, */*"}
                extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
                async with client.stream("GET", pinned, headers=headers, extensions=extensions) as response:
                    if response.status_code in REDIRECTS and "location" in response.headers:
                        target = target.join(response.headers["location"])
                        continue
                    if response.status_code >= 400:
                        raise errors.UrlFetchFailed(
                            f"audio_url host {target.host!r} answered HTTP {response.status_code}", param="audio_url"
                        )
                    return await _read_capped(response, max_bytes, target.host)
    except TimeoutError:
        raise errors.UrlTimeout(
            f"fetching audio_url from {target.host!r} took longer than the limit of {policy.timeout_s:g} s "
            "(a fixed limit: parakeet/core/tuning.py)",
            param="audio_url",
        ) from None
    except httpx.TimeoutException:
        raise errors.UrlTimeout(
            f"audio_url host {target.host!r} did not connect or answer within the limits "
            f"({policy.connect_timeout_s:g} s to connect, {policy.timeout_s:g} s in all)",
            param="audio_url",
        ) from None
    except httpx.HTTPError as exc:
        raise errors.UrlFetchFailed(f"audio_url host {target.host!r} could not be fetched ({type(exc).__name__})",
                                    param="audio_url") from None  # fmt: skip
    raise _refused(f"audio_url took more than {policy.max_redirects} redirects")


async def _read_capped(response: httpx.Response, max_bytes: int, host: str) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise errors.UploadTooLarge(
            f"audio_url body from {host!r} is {int(declared)} bytes, over the limit of {max_bytes} bytes",
            param="audio_url",
        )
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise errors.UploadTooLarge(
                f"audio_url body from {host!r} passed the limit of {max_bytes} bytes (download stopped)",
                param="audio_url",
            )
        chunks.append(chunk)
    return b"".join(chunks)
