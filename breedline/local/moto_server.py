"""``python -m breedline.local.moto_server -H HOST -p PORT``: moto's server, minus a per-request rescan.

Why a launcher of our own: for every request, moto's server picks the
service by checking whether the host name is one of its service packages, and
``moto.backends.list_of_moto_modules`` answers that by listing moto's package
folder and calling ``os.path.isdir`` on each of its ~170 entries, inside the
server's global lock. Measured here: that rescan was about half of moto's CPU
time per S3 request (1,000 PutObjects: 2.9 ms -> 1.6 ms of server CPU each).
The folder cannot change while the server runs, so the listing is taken
once. Nothing else differs from ``python -m moto.server``: same arguments,
same WSGI application, same request handler.
"""

from __future__ import annotations

import sys
from typing import Callable, Iterable


def cache_module_list() -> Callable[[], Iterable[str]]:
    """Replace ``moto.backends.list_of_moto_modules`` by one that returns a listing taken once."""
    import moto.backends

    original = moto.backends.list_of_moto_modules
    if getattr(original, "breedline_cached", False):
        return original
    modules = tuple(original())

    def list_of_moto_modules() -> Iterable[str]:
        return modules

    list_of_moto_modules.breedline_cached = True  # type: ignore[attr-defined]
    moto.backends.list_of_moto_modules = list_of_moto_modules
    return list_of_moto_modules


def main(argv: list[str] | None = None) -> None:
    cache_module_list()
    from moto.server import main as moto_main

    moto_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
