"""A Google Cloud Storage stand-in on localhost, for tests of ``gs://`` workdirs.

``gcp-storage-emulator`` serves GCS's JSON API from memory; the real clients are pointed at it
(``STORAGE_EMULATOR_HOST`` for gcsfs and google-cloud-storage, ``TENSORSTORE_GCS_HTTP_URL`` for
tensorstore, which writes orbax's arrays), so a ``gs://`` run goes through exactly the code
paths of a real bucket, network round trips included. What the emulator lacks and those clients
need is added: generation preconditions (an upload with ``ifGenerationMatch=0``, create only
if absent, answers 412 when the object exists: the workdir lease relies on it), a read's
generation in its headers, and one thread per connection.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
from http import HTTPStatus

BUCKET = "sleepjax-test"
_lock = threading.RLock()


def _upload_name(request) -> str | None:
    if "name" in request.query:
        return request.query["name"][0]
    data = request.data
    if isinstance(data, dict):
        return (data.get("meta") or data).get("name")
    return None


def _with_preconditions(handler, name_of, reads: bool):
    """``handler`` honouring ``ifGenerationMatch`` (412 when the live generation differs; 0 means
    "no live object") and ``ifGenerationNotMatch`` (304), atomically with the handler itself,
    and sending a read's generation in ``x-goog-generation`` as GCS does (tensorstore's
    read-modify-write of OCDBT manifests relies on all three)."""
    from gcp_storage_emulator.exceptions import NotFound

    def wrapped(request, response, storage, *args, **kwargs):
        if reads and request.query.get("alt", ["media"])[0] != "media":
            return handler(request, response, storage, *args, **kwargs)   # metadata: as is
        match = request.query.get("ifGenerationMatch", [None])[0]
        not_match = request.query.get("ifGenerationNotMatch", [None])[0]
        with _lock:
            try:
                live = str(storage.get_file_obj(request.params["bucket_name"],
                                                name_of(request))["generation"])
            except NotFound:
                live = "0"
            if match is not None and match != live:
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "conditionNotMet"}})
                return None
            if not_match is not None and not_match == live:
                response.status = HTTPStatus.NOT_MODIFIED
                return None
            result = handler(request, response, storage, *args, **kwargs)
        if reads and live != "0":
            response["x-goog-generation"] = live
        return result

    wrapped.honours_preconditions = True
    return wrapped


def _patch_emulator() -> None:
    """Serve each connection on its own thread (the emulator's server takes one at a time, and
    a run's clients keep several open), and honour generation preconditions."""
    import http.server
    import types

    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import objects

    if getattr(objects.insert, "honours_preconditions", False):
        return
    server.server = types.SimpleNamespace(HTTPServer=http.server.ThreadingHTTPServer)
    by_object = lambda request: request.params["object_id"]   # noqa: E731
    replacements = {
        objects.insert: _with_preconditions(objects.insert, _upload_name, reads=False),
        objects.delete: _with_preconditions(objects.delete, by_object, reads=False),
        objects.get: _with_preconditions(objects.get, by_object, reads=True),
        objects.download: _with_preconditions(objects.download, by_object, reads=True),
    }
    for _, handlers in server.HANDLERS:
        for method, handler in list(handlers.items()):
            if handler in replacements:
                handlers[method] = replacements[handler]
    objects.insert = replacements[objects.insert]   # also dispatched by name for bare uploads


@contextlib.contextmanager
def fake_gcs():
    """Serve a bucket named :data:`BUCKET`; yields the environment variables that point every
    client at it (already set in ``os.environ`` while the context lasts)."""
    from gcp_storage_emulator.server import create_server

    _patch_emulator()
    for name in ("gcp_storage_emulator", "gcsfs", "google.auth"):
        logging.getLogger(name).setLevel(logging.CRITICAL)   # credential and broken-pipe noise
    server = create_server("127.0.0.1", 0, in_memory=True, default_bucket=BUCKET)
    server.start()
    httpd = server._api._httpd
    httpd.handle_error = lambda request, address: None   # a client that hung up early
    host, port = httpd.server_address
    url = f"http://{host}:{port}"
    env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
           "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token", "GOOGLE_CLOUD_PROJECT": "test"}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        # Writers finalised later would upload to a server that is gone (tensorboardX's GCS
        # writer flushes again in __del__, retrying for two minutes): finalise them now.
        gc.collect()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()


def bucket_files(prefix: str) -> list[str]:
    """Every object under ``gs://<BUCKET>/<prefix>/``, relative to it."""
    from sleepjax.training import paths

    return paths.files_under(paths.as_path(f"gs://{BUCKET}/{prefix}"))
