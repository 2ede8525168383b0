"""``python -m breedline.local.moto_server -H HOST -p PORT``: moto's server, minus repeated pure work.

Why a launcher of our own: profiling the server during ``make demo`` (1,000
uploads, each an S3 PutObject, an EventBridge event, an SQS message and two
DynamoDB updates) showed three helpers recomputing the same answers on every
request:

- ``moto.backends.list_of_moto_modules`` lists moto's package folder and
  calls ``os.path.isdir`` on each of its ~170 entries, once per request,
  inside the server's global lock: a large share of moto's CPU time per S3
  request. The folder cannot change while the server runs, so it is listed once.
- ``moto.core.utils.camelcase_to_underscores`` (a character loop) runs for
  every queue attribute each time SQS computes a queue's attributes, which
  SendMessage and ReceiveMessage do per message; it is a pure function of a
  short string, so it is memoised.
- ``moto.core.utils.method_names_from_class`` (``inspect.getmembers``) runs
  per request on the responding class; its answer is fixed per class.

Nothing else differs from ``python -m moto.server``: same arguments, same WSGI
application, same request handler, same answers.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, Iterable


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


def memoise_pure_helpers() -> None:
    """Memoise ``camelcase_to_underscores`` and ``method_names_from_class`` everywhere moto uses them."""
    import moto.core.utils as utils

    original_camel = utils.camelcase_to_underscores
    if getattr(original_camel, "breedline_cached", False):
        return
    camel = functools.lru_cache(maxsize=8192)(original_camel)
    camel.breedline_cached = True  # type: ignore[attr-defined]

    original_methods = utils.method_names_from_class
    cached_methods = functools.lru_cache(maxsize=1024)(lambda clazz: tuple(original_methods(clazz)))

    def method_names_from_class(clazz: object) -> list[str]:
        return list(cached_methods(clazz))  # a fresh list, as before: callers may change it

    replacements: dict[Any, Any] = {original_camel: camel, original_methods: method_names_from_class}
    utils.camelcase_to_underscores = camel
    utils.method_names_from_class = method_names_from_class
    # Modules imported before this point bound the originals by name; modules
    # imported later (each service on its first request) bind these.
    for name, module in list(sys.modules.items()):
        if not name.startswith("moto") or module is None:
            continue
        for attribute in ("camelcase_to_underscores", "method_names_from_class"):
            current = getattr(module, attribute, None)
            if current in replacements:
                setattr(module, attribute, replacements[current])


def main(argv: list[str] | None = None) -> None:
    cache_module_list()
    from moto.server import main as moto_main

    memoise_pure_helpers()
    moto_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
