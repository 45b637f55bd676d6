"""A network namespace whose loopback traffic leaves through a veth link, and cuts of that link.

Inside the namespace, TCP to 127.0.0.1 is sent (DNAT, then masquerade) to
the root namespace's end of a veth pair, where it is sent on (DNAT again,
with ``route_localnet`` on that interface only) to 127.0.0.1 and the same
port. So a process in the namespace reaches the loopback services of the
root namespace at their usual addresses, and TLS names still match, while
its packets cross a link that iptables inside the namespace can drop.

:meth:`Namespace.partition` drops one port's packets both ways, inside the
namespace, until the block exits. :meth:`Namespace.close` removes the link,
the namespace and the one root-namespace rule (matched to this link's
interface); it is safe to call twice and after a failed :meth:`create`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

# A /30 from the benchmarking block (RFC 2544), unlikely to meet a real network here.
_SUBNET = "198.18.{n}.{host}"


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=20)


@dataclass
class Namespace:
    name: str
    index: int = 7  # third octet of the link's addresses

    @classmethod
    def for_this_process(cls) -> Namespace:
        pid = os.getpid()
        return cls(f"hsflt{pid}", pid % 250 + 1)

    @property
    def outer(self) -> str:
        return f"{self.name}r"[:15]

    @property
    def inner(self) -> str:
        return f"{self.name}n"[:15]

    @property
    def outer_ip(self) -> str:
        return _SUBNET.format(n=self.index, host=1)

    @property
    def inner_ip(self) -> str:
        return _SUBNET.format(n=self.index, host=2)

    def _root_rule(self, action: str) -> list[str]:
        return [
            *("iptables", "-t", "nat", action, "PREROUTING", "-i", self.outer),
            *("-p", "tcp", "-j", "DNAT", "--to-destination", "127.0.0.1"),
        ]

    def _inside(self, *argv: str) -> None:
        _run("ip", "netns", "exec", self.name, *argv)

    def create(self) -> None:
        _run("ip", "netns", "add", self.name)
        _run("ip", "link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
        _run("ip", "link", "set", self.inner, "netns", self.name)
        _run("ip", "addr", "add", f"{self.outer_ip}/30", "dev", self.outer)
        _run("ip", "link", "set", self.outer, "up")
        _run("sysctl", "-qw", f"net.ipv4.conf.{self.outer}.route_localnet=1")
        _run(*self._root_rule("-A"))
        _run("ip", "-n", self.name, "addr", "add", f"{self.inner_ip}/30", "dev", self.inner)
        _run("ip", "-n", self.name, "link", "set", self.inner, "up")
        _run("ip", "-n", self.name, "link", "set", "lo", "up")
        self._inside("sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1")
        self._inside(
            *("iptables", "-t", "nat", "-A", "OUTPUT", "-d", "127.0.0.1/32", "-p", "tcp"),
            *("-j", "DNAT", "--to-destination", self.outer_ip),
        )
        self._inside(
            *("iptables", "-t", "nat", "-A", "POSTROUTING", "-o", self.inner),
            *("-j", "MASQUERADE"),
        )

    def _drop_rules(self, port: int) -> list[list[str]]:
        out = ["OUTPUT", "-o", self.inner, "-p", "tcp", "--dport", str(port), "-j", "DROP"]
        into = ["INPUT", "-i", self.inner, "-p", "tcp", "--sport", str(port), "-j", "DROP"]
        return [out, into]

    @contextlib.contextmanager
    def partition(self, port: int) -> Iterator[None]:
        """Drop every packet to and from `port` on the link while the block runs."""
        applied: list[list[str]] = []
        try:
            for rule in self._drop_rules(port):
                self._inside("iptables", "-I", *rule)
                applied.append(rule)
            yield
        finally:
            for rule in applied:
                with contextlib.suppress(subprocess.SubprocessError):
                    self._inside("iptables", "-D", *rule)

    def close(self) -> None:
        for argv in (
            self._root_rule("-D"),
            ["ip", "link", "del", self.outer],
            ["ip", "netns", "del", self.name],
        ):
            with contextlib.suppress(subprocess.SubprocessError):
                _run(*argv)
