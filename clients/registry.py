"""The servers of the mesh, as the command line knows them: where each lives, its HTTP port
under ``supportmesh up``, and the backends its ``/readyz`` checks.

A server's module is imported only when a command runs it, so that ``supportmesh --help``
answers at once (importing all six takes seconds).
"""

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class ServerEntry:
    package: str  # the module with NAME, MIGRATIONS and build_server(settings)
    port: int  # its default HTTP port under `up`
    needs: tuple[str, ...]  # backends its /readyz checks

    @property
    def module(self) -> ModuleType:
        return importlib.import_module(self.package)


SERVERS: dict[str, ServerEntry] = {
    "ticketing": ServerEntry("servers.ticketing.server", 8701, ("postgres", "redis")),
    "crm": ServerEntry("servers.crm.server", 8702, ("postgres", "redis")),
    "knowledge": ServerEntry("servers.knowledge.server", 8703, ("postgres", "redis")),
    "analytics": ServerEntry("servers.analytics.server", 8704, ("postgres", "redis")),
    "memory": ServerEntry("servers.memory.server", 8705, ("postgres", "redis")),
    "approvals": ServerEntry("servers.approvals.server", 8706, ("postgres", "redis")),
}

# Every module of Celery tasks: what `supportmesh worker` runs and `supportmesh beat` schedules
# (those with a ``schedule(settings)``: the periodic ones).
TASK_MODULES = (
    "orchestrator.tasks",
    "servers.approvals.tasks",
    "servers.knowledge.tasks",
    "servers.memory.tasks",
    "servers.notifications.tasks",
    "servers.ticketing.tasks",
)


def task_modules() -> list[ModuleType]:
    """The modules of ``TASK_MODULES``, imported (which registers their tasks)."""
    return [importlib.import_module(name) for name in TASK_MODULES]
