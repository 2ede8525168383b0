"""Serve one unpacked ``model.tar.gz`` over HTTP, as SageMaker's PyTorch inference container does.

Run as a child process: ``python serve_model.py MODEL_DIR``. It imports
``MODEL_DIR/code/inference.py``, loads the model once with ``model_fn`` and
answers ``GET /ping`` and ``POST /invocations`` through ``input_fn``,
``predict_fn`` and ``output_fn``. An exception that carries ``status_code``
(``inference.InferenceInputError``) becomes that HTTP status with a JSON body;
anything else is a 500, as in the real container. It prints ``LISTENING <port>``
once ready so the parent knows where it is.

Why standalone: it must not import the ``breedline`` package, so the endpoint
runs the model's own code and nothing else, like the container. Its launcher
(``endpoints.ModelServer``) puts ``MODEL_DIR/code`` first on ``PYTHONPATH`` and
runs it with ``python -P``, as the container's toolkit puts the code folder on
the path, so ``inference.py`` imports its neighbours from the model archive.
"""

from __future__ import annotations

import importlib.util
import json
import signal
import sys
import threading
import traceback
from pathlib import Path

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response


def load_handler(model_dir: Path):
    code = model_dir / "code"
    entry = code / "inference.py"
    if not entry.is_file():
        raise SystemExit(f"no code/inference.py in {model_dir}: the model archive cannot serve on its own")
    spec = importlib.util.spec_from_file_location("inference", entry)
    module = importlib.util.module_from_spec(spec)
    sys.modules["inference"] = module
    spec.loader.exec_module(module)
    return module


def build_app(module, model):
    def app(environ, start_response):
        request = Request(environ)
        if request.path == "/ping" and request.method == "GET":
            return Response("", status=200)(environ, start_response)
        if request.path != "/invocations" or request.method != "POST":
            return Response("not found", status=404)(environ, start_response)
        content_type = request.headers.get("Content-Type", "application/x-image")
        accept = request.headers.get("Accept", "application/json")
        if accept in ("*/*", ""):
            accept = "application/json"
        try:
            data = module.input_fn(request.get_data(), content_type)
            prediction = module.predict_fn(data, model)
            body = module.output_fn(prediction, accept)
            response = Response(body, status=200, content_type="application/json")
        except Exception as exc:
            status = getattr(exc, "status_code", None)
            if not isinstance(status, int):
                traceback.print_exc()
                status = 500
            response = Response(json.dumps({"error": str(exc), "type": type(exc).__name__}),
                                status=status, content_type="application/json")
        return response(environ, start_response)

    return app


def main() -> None:
    model_dir = Path(sys.argv[1])
    module = load_handler(model_dir)
    model = module.model_fn(str(model_dir))
    server = make_server("127.0.0.1", 0, build_app(module, model), threaded=True)
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"LISTENING {server.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
