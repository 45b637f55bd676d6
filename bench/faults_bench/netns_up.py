"""`healthsync up` with the processor inside a network namespace, for bench/faults.py.

Everything is `up`'s own code (:class:`~healthsync.supervisor.Pipeline` and
:class:`~healthsync.foreground.Supervisor`: the same services, stages,
restarts and orderly stop); only the processor's command line gets
``ip netns exec NAMESPACE`` in front, on its first start and on every
restart. Inside the namespace its connections to 127.0.0.1 reach Redis and
the broker through a veth link (see netns.py), which the bench can cut.

Run: ``python bench/faults_bench/netns_up.py NAMESPACE RUN_DIR`` (settings
from ``HEALTHSYNC_*`` as for `up`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from healthsync.children import Child
from healthsync.config import Settings
from healthsync.foreground import Supervisor
from healthsync.logs import setup_logging
from healthsync.supervisor import Pipeline

_PROCESSOR = "process"


@dataclass
class NamespacedChild(Child):
    """A child whose command runs in a network namespace; its stage is the wrapped one."""

    wrapped_stage: str = _PROCESSOR

    @property
    def stage(self) -> str:
        return self.wrapped_stage


@dataclass
class NamespacedPipeline(Pipeline):
    namespace: str = ""

    def start_child(
        self, name: str, *args: str, stage: str | None = None, env: dict[str, str] | None = None
    ) -> Child:
        if name == _PROCESSOR and name not in self.children:
            argv = [sys.executable, "-m", "healthsync", _PROCESSOR, *args]
            child = NamespacedChild(
                name, ["ip", "netns", "exec", self.namespace, *argv], self.logs / f"{name}.log"
            )
            child.env = self._redis_client_env(_PROCESSOR)
            self.children[name] = child
        return super().start_child(name, *args, stage=stage, env=env)


def main() -> int:
    namespace, run_dir = sys.argv[1], Path(sys.argv[2])
    setup_logging("up", "WARNING")
    pipeline = NamespacedPipeline(Settings.load(None), run_dir, namespace=namespace)
    return Supervisor(pipeline).run()


if __name__ == "__main__":
    sys.exit(main())
