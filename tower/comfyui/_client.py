"""The synchronous ComfyUI client: one instance per server, safe to share across threads.

HTTP goes through one pooled :class:`httpx.Client` with explicit timeouts; each wait
opens its own ``/ws`` socket under a client id of its own, because ComfyUI routes a
prompt's events to the socket of the client id it was submitted with and a second
socket with the same id replaces the first.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import itertools
import logging
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx

from tower.comfyui import _constants as C
from tower.comfyui._api_format import combo_options
from tower.comfyui._exceptions import (
    ComfyUIError,
    ComfyUIProtocolError,
    ComfyUIUnavailable,
)
from tower.comfyui._identity import server_identity
from tower.comfyui._models import (
    DownloadedFile,
    HistoryEntry,
    ImageRef,
    ProgressEvent,
    PromptState,
    QueueState,
    RenderResult,
    SystemStats,
)
from tower.comfyui._parse import (
    check_object_info,
    decode_json,
    is_image,
    parse_history,
    parse_queue,
    parse_system_stats,
    validation_error,
)
from tower.comfyui._preflight import check_graphs
from tower.comfyui._results import build_result, now_to_the_ms
from tower.comfyui._retry import retry_delay, should_retry_status
from tower.comfyui._wait import Waiter, WaitSpec
from tower.comfyui._ws import EventSocket, ws_url
from tower.store.files import atomic_write_bytes

logger = logging.getLogger("tower.comfyui")

ProgressCallback = Callable[[ProgressEvent], None]


def _auth_headers(token: str | None, header: str) -> dict[str, str]:
    if not token:
        return {}
    if header.lower() == "authorization" and " " not in token:
        return {header: f"Bearer {token}"}
    return {header: token}


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _split_url(base_url: str) -> tuple[str, tuple[str, str] | None]:
    """(URL without credentials, user and password from its userinfo)."""
    url = httpx.URL(base_url)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("ComfyUI base URL must be http(s)://host[:port][/prefix]")
    auth = (url.username, url.password) if url.username else None
    clean = url.copy_with(username=None, password=None, query=None, fragment=None)
    return str(clean).rstrip("/"), auth


@functools.cache
def tls_context(verify: bool) -> ssl.SSLContext:
    """The TLS settings httpx would make for ``verify``, made once per process.

    httpx builds a context (loading the whole CA bundle, about 10 ms of CPU) for every
    client, even one that only ever speaks plain HTTP; a flow makes a client per batch.
    An SSLContext is safe to share between clients and threads.
    """
    return httpx.create_ssl_context(verify=verify)


class ComfyUIClient:
    """Talks to one ComfyUI server.

    Args:
        base_url: ``http(s)://host:port`` (a path prefix is kept for reverse proxies;
            credentials in the URL become basic auth and never appear in logs or repr).
        token: sent in ``auth_header`` (``Bearer`` is added for ``Authorization``).
        verify: check TLS certificates (HTTP and WebSocket).
        timeout, connect_timeout: seconds per request, and to connect.
        client_id: prefix of the WebSocket client ids this client uses.
        http_client: an httpx.Client to use instead of a private pool (not closed here).
        name: for logs and metrics; defaults to the server's identity, ``host-port``
            (:func:`tower.comfyui.server_identity`), the name the flows record.
    """

    def __init__(self, base_url: str, *, token: str | None = None,
                 auth_header: str = "Authorization", verify: bool = True,
                 timeout: float = C.DEFAULT_TIMEOUT,
                 connect_timeout: float = C.DEFAULT_CONNECT_TIMEOUT,
                 client_id: str | None = None, http_client: httpx.Client | None = None,
                 name: str | None = None):
        self.base_url, auth = _split_url(base_url)
        self.name = name or server_identity(base_url)
        self.client_id = client_id or uuid.uuid4().hex
        self._has_token = bool(token)
        # Sent with every request and WebSocket handshake; the token beats URL credentials.
        self._headers = {"Authorization": _basic(*auth)} if auth is not None else {}
        self._headers |= _auth_headers(token, auth_header)
        self._verify = verify
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(
            timeout=self._timeout, verify=tls_context(verify),
            limits=httpx.Limits(max_connections=C.DEFAULT_MAX_CONNECTIONS))
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._object_info: dict[str, Any] | None = None
        self._submitted: dict[str, tuple[str, datetime]] = {}

    def __repr__(self) -> str:
        token = "***" if self._has_token else None
        return f"ComfyUIClient({self.base_url!r}, name={self.name!r}, token={token})"

    # -- HTTP plumbing -------------------------------------------------------------

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, self.base_url + path, headers=self._headers,
                                      timeout=self._timeout, **kwargs)
        except httpx.TransportError as err:
            raise ComfyUIUnavailable(
                f"{self.name}: {method} {path} failed: {type(err).__name__}: {err}") from err

    def _status_error(self, response: httpx.Response, what: str) -> Exception:
        text = response.text[:200].strip()
        message = f"{self.name}: {what} answered {response.status_code}: {text or '(no body)'}"
        if response.status_code >= 500:
            return ComfyUIUnavailable(message, status_code=response.status_code)
        return ComfyUIProtocolError(message)

    def _idempotent(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        """Send a request that is safe to repeat, retrying briefly on a refused
        connection or a 5xx; the 200 response, else the error it ended with."""
        for attempt in range(C.GET_RETRIES + 1):
            last = attempt == C.GET_RETRIES
            try:
                response = self._send(method, path, **kwargs)
            except ComfyUIUnavailable as err:
                if last or not isinstance(err.__cause__, httpx.ConnectError):
                    raise
            else:
                if response.status_code == 200:
                    return response
                if last or not should_retry_status(response.status_code):
                    raise self._status_error(response, what)
            time.sleep(retry_delay(attempt))
        raise AssertionError("unreachable")

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """GET JSON (GET is idempotent: retried briefly)."""
        return self._json(self._idempotent("GET", path, f"GET {path}", params=params),
                          f"GET {path}")

    def _json(self, response: httpx.Response, what: str) -> Any:
        try:
            return decode_json(response)
        except ValueError as err:
            raise ComfyUIProtocolError(f"{self.name}: {what}: answer is not JSON ({err})"
                                       ) from err

    def _post(self, path: str, body: Any | None = None) -> httpx.Response:
        response = self._send("POST", path, json=body)  # json=None sends no body
        if response.status_code != 200:
            raise self._status_error(response, f"POST {path}")
        return response

    # -- server facts --------------------------------------------------------------

    def system_stats(self) -> SystemStats:
        """Devices (name, type, VRAM) and ComfyUI version."""
        return parse_system_stats(self._get("/system_stats"))

    def object_info(self) -> dict[str, Any]:
        """Every node class the server knows, with its inputs (fetched once per client)."""
        with self._lock:
            cached = self._object_info
        if cached is None:
            body = self._get("/object_info")
            check_object_info(body, self.name)
            with self._lock:
                self._object_info = cached = body
        return cached

    def preflight(self, graphs: Iterable[Mapping[str, Any]]) -> None:
        """Check that every node class and combo value the graphs use exists here.

        Raises:
            ComfyUIPreflightError: one error listing everything missing, with what the
                server offers instead.
        """
        check_graphs(self.object_info(), list(graphs), self.name)

    def models(self, folder: str) -> list[str]:
        """The file names in one of the server's model folders (``checkpoints``, ``loras``...).

        Raises:
            ComfyUIProtocolError: the server knows no such folder (404) or answers oddly.
        """
        names = self._get(f"/models/{folder}")
        if not isinstance(names, list):
            raise ComfyUIProtocolError(f"{self.name}: /models/{folder} is not a list")
        return [str(name) for name in names]

    def view_metadata(self, folder: str, filename: str) -> dict[str, str] | None:
        """The safetensors ``__metadata__`` header of one model file (``GET /view_metadata``).

        ComfyUI reads the header and nothing else: no hash, size or date. It answers 404
        alike for a file without a header, a missing file, an unknown folder and a name
        not ending in ``.safetensors``, so all of those are None here.

        Raises:
            ComfyUIProtocolError: an answer that is not a JSON object.
        """
        path = f"/view_metadata/{quote(folder, safe='')}"
        what = f"GET {path}?filename={filename}"
        response = self._send("GET", path, params={"filename": filename})
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._status_error(response, what)
        body = self._json(response, what)
        if not isinstance(body, dict):
            raise ComfyUIProtocolError(f"{self.name}: {what} is not a JSON object")
        return {str(k): str(v) for k, v in body.items()}

    def input_images(self) -> set[str]:
        """Image files in the top level of the server's input folder (LoadImage's list).

        Read fresh from ``/object_info/LoadImage`` each time: uploads change it.
        """
        info = self._get("/object_info/LoadImage")
        check_object_info(info, self.name, "/object_info/LoadImage")
        spec = ((info.get("LoadImage") or {}).get("input") or {}).get("required") or {}
        options = combo_options(spec.get("image"))
        if options is None:
            raise ComfyUIProtocolError(f"{self.name}: /object_info/LoadImage has no image list")
        return {str(name) for name in options}

    def upload_image(self, data: bytes, name: str) -> str:
        """Upload ``data`` to the input folder as ``name``; returns the name stored.

        Never overwrites: ComfyUI keeps a file of that name with the same bytes and
        stores different bytes as ``name (1).ext``. Idempotent, so retried like a GET.

        Raises:
            ComfyUIProtocolError: a refused upload (400) or an odd answer.
            ComfyUIUnavailable: the server is unreachable or keeps failing (5xx).
        """
        what = f"POST /upload/image ({name})"
        response = self._idempotent("POST", "/upload/image", what,
                                    files={"image": (name, data, "application/octet-stream")},
                                    data={"type": "input", "overwrite": "false"})
        body = self._json(response, what)
        stored = body.get("name") if isinstance(body, dict) else None
        if not isinstance(stored, str):
            raise ComfyUIProtocolError(f"{self.name}: {what} answered without a name: {body!r}")
        return stored

    # -- the queue -----------------------------------------------------------------

    def queue(self) -> QueueState:
        """Running and pending prompt ids; pending in the order they will run."""
        return parse_queue(self._get("/queue"))

    def _history_entry(self, prompt_id: str) -> HistoryEntry | None:
        return parse_history(self._get(f"/history/{prompt_id}"), prompt_id)

    def _lookup(self, prompt_id: str) -> tuple[PromptState, HistoryEntry | None]:
        """(state, history entry when done)."""
        # /queue before /history: a prompt leaves the queue only after its entry is written.
        queue = self.queue()
        if prompt_id in queue.running:
            return "running", None
        if prompt_id in queue.pending:
            return "queued", None
        entry = self._history_entry(prompt_id)
        return ("done" if entry is not None else "unknown"), entry

    def recent_prompts(self, max_items: int) -> set[str]:
        """Ids of the last ``max_items`` prompts in the history (ComfyUI's ``max_items``)."""
        body = self._get("/history", params={"max_items": str(max_items)})
        if not isinstance(body, dict):
            raise ComfyUIProtocolError(f"{self.name}: /history is not an object: {body!r:.200}")
        return {str(key) for key in body}

    def find(self, prompt_id: str) -> PromptState:
        """Where a prompt is: ``done`` (in history), ``queued``, ``running`` or ``unknown``."""
        return self._lookup(prompt_id)[0]

    def cancel(self, prompt_ids: Iterable[str]) -> None:
        """Remove pending prompts (a running one is unaffected: use :meth:`interrupt`)."""
        self._post("/queue", {"delete": list(prompt_ids)})

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Interrupt the running prompt; with ``prompt_id``, only if that one is running."""
        self._post("/interrupt", {"prompt_id": prompt_id} if prompt_id else None)

    def withdraw(self, prompt_ids: Iterable[str]) -> tuple[list[str], list[str]]:
        """Stop ``prompt_ids`` on this server: delete those waiting, interrupt the one running.

        Other clients' prompts are never touched. Returns ``(deleted, interrupted)``.
        """
        wanted = set(prompt_ids)
        queue = self.queue()
        pending = [pid for pid in queue.pending if pid in wanted]
        if pending:
            self.cancel(pending)
        running = [pid for pid in queue.running if pid in wanted]
        for pid in running:
            self.interrupt(pid)
        return pending, running

    def free(self, *, unload_models: bool = True, free_memory: bool = False) -> None:
        """Ask the server to unload models and/or free memory after the current prompt."""
        self._post("/free", {"unload_models": unload_models, "free_memory": free_memory})

    # -- submitting and waiting ------------------------------------------------------

    def _next_client_id(self) -> str:
        return f"{self.client_id}-{next(self._ids)}"

    def _post_prompt(self, graph: Mapping[str, Any], *, client_id: str,
                     prompt_id: str | None, front: bool,
                     extra_data: Mapping[str, Any] | None) -> str:
        body: dict[str, Any] = {"prompt": graph, "client_id": client_id}
        if prompt_id is not None:
            body["prompt_id"] = prompt_id
        if front:
            body["front"] = True
        if extra_data:
            body["extra_data"] = dict(extra_data)
        response = self._send("POST", "/prompt", json=body)
        if response.status_code == 400:
            try:
                refusal = decode_json(response)
            except ValueError:
                refusal = {"error": {"type": "invalid_prompt", "message": response.text[:200]}}
            raise validation_error(refusal)
        if response.status_code != 200:
            raise self._status_error(response, "POST /prompt")
        answer = self._json(response, "POST /prompt")
        queued = answer.get("prompt_id") if isinstance(answer, dict) else None
        if not isinstance(queued, str) or not queued:
            raise ComfyUIProtocolError(f"{self.name}: POST /prompt: no prompt_id in answer "
                                       f"(got {queued!r:.80})")
        if answer.get("node_errors"):
            # Some outputs were dropped but the rest is queued: stop it, it is not our graph.
            try:
                self.cancel([queued])
            except ComfyUIError as err:
                logger.warning("%s; prompt %s may still run", err, queued)
            raise validation_error({"error": {"type": "partial_validation",
                                              "message": "some outputs failed validation"},
                                    "node_errors": answer["node_errors"]})
        return queued

    def submit(self, graph: Mapping[str, Any], *, front: bool = False,
               prompt_id: str | None = None,
               extra_data: Mapping[str, Any] | None = None) -> str:
        """Queue a graph once (no retry) and return its prompt id.

        Raises:
            ComfyUIValidationError: the server refused the graph (400).
            ComfyUIUnavailable: no answer or 5xx; the prompt may still have been queued.
        """
        client_id = self._next_client_id()
        queued_at = now_to_the_ms()
        queued = self._post_prompt(graph, client_id=client_id, prompt_id=prompt_id,
                                   front=front, extra_data=extra_data)
        with self._lock:
            self._submitted[queued] = (client_id, queued_at)
            while len(self._submitted) > C.REMEMBERED_SUBMISSIONS:  # never waited for
                del self._submitted[next(iter(self._submitted))]
        return queued

    def _open_socket(self, client_id: str, *, quiet: bool = False) -> EventSocket | None:
        """A socket for ``client_id``, or None (logged; waits then poll instead)."""
        try:
            return EventSocket(ws_url(self.base_url, client_id), headers=self._headers,
                               verify=self._verify, name=self.name)
        except ComfyUIUnavailable as err:
            logger.log(logging.DEBUG if quiet else logging.WARNING,
                       "%s; falling back to polling", err)
            return None

    def wait(self, prompt_id: str, *, timeout: float | None = None,
             stall_timeout: float = C.DEFAULT_STALL_TIMEOUT,
             on_progress: ProgressCallback | None = None) -> RenderResult:
        """Wait for a queued prompt and return its confirmed result.

        Raises:
            ComfyUIExecutionError / ComfyUIOutOfMemory / ComfyUIInterrupted: the prompt
                failed; ``.result`` holds the RenderResult (status error/interrupted).
            ComfyUITimeout: no progress for ``stall_timeout`` s, or past ``timeout`` s.
            ComfyUIUnavailable: the server stayed unreachable or lost the prompt.
        """
        with self._lock:
            client_id, queued_at = self._submitted.pop(
                prompt_id, (self._next_client_id(), None))
        spec = WaitSpec(prompt_id, client_id, timeout, stall_timeout, on_progress,
                        queued_at=queued_at)
        return Waiter(self, spec, self._open_socket(client_id)).run()

    def render(self, graph: Mapping[str, Any], *, prompt_id: str, front: bool = False,
               timeout: float | None = None, stall_timeout: float = C.DEFAULT_STALL_TIMEOUT,
               on_progress: ProgressCallback | None = None) -> RenderResult:
        """Render ``graph`` under the caller's ``prompt_id``, at most once.

        The socket opens first so no event is missed. A prompt already queued, running
        or finished successfully under this id is adopted (``adopted=True``), never
        submitted again; a failed earlier run is submitted anew. A POST that fails
        without an answer is followed by a look at the server before any resubmission,
        because a 5xx does not prove the prompt was not queued.
        """
        client_id = self._next_client_id()
        socket = self._open_socket(client_id)
        try:
            plan = self._plan(graph, WaitSpec(prompt_id, client_id, timeout, stall_timeout,
                                              on_progress), front)
        except BaseException:
            if socket is not None:
                socket.close()
            raise
        if isinstance(plan, RenderResult):
            if socket is not None:
                socket.close()
            return plan
        return Waiter(self, plan, socket).run()

    def _plan(self, graph: Mapping[str, Any], spec: WaitSpec,
              front: bool) -> RenderResult | WaitSpec:
        """The finished result to adopt, or what to wait for (submitting if needed)."""
        state, entry = self._lookup(spec.prompt_id)
        if entry is not None and entry.status_str == "success":
            logger.info("%s: prompt %s already rendered; adopting it", self.name, spec.prompt_id)
            return build_result(entry, None, queued_at=None, adopted=True)
        if state in ("queued", "running"):
            logger.info("%s: prompt %s is %s; adopting it", self.name, spec.prompt_id, state)
            spec.adopted = True
            return spec
        if entry is not None:
            logger.info("%s: prompt %s failed before; rendering it again", self.name,
                        spec.prompt_id)
            spec.stale_number = entry.number
        spec.queued_at, spec.adopted = self._submit_once(graph, spec, front)
        spec.poll_first = spec.adopted
        return spec

    def _submit_once(self, graph: Mapping[str, Any], spec: WaitSpec,
                     front: bool) -> tuple[datetime, bool]:
        """POST the prompt; after a failure without a verdict, adopt it if it got queued."""
        for attempt in range(C.SUBMIT_ATTEMPTS):
            queued_at = now_to_the_ms()
            try:
                self._post_prompt(graph, client_id=spec.client_id, prompt_id=spec.prompt_id,
                                  front=front, extra_data=None)
                return queued_at, False
            except ComfyUIUnavailable as err:
                if attempt + 1 == C.SUBMIT_ATTEMPTS:
                    raise
                logger.warning("%s; checking whether prompt %s was queued anyway", err,
                               spec.prompt_id)
            time.sleep(retry_delay(attempt))
            state, entry = self._lookup(spec.prompt_id)
            if state in ("queued", "running") or (
                    entry is not None and entry.number != spec.stale_number):
                logger.info("%s: prompt %s was queued despite the error; adopting it",
                            self.name, spec.prompt_id)
                return queued_at, True
        raise AssertionError("unreachable")

    # -- outputs -------------------------------------------------------------------

    def download(self, image: ImageRef, dest: Path) -> DownloadedFile:
        """Fetch an image (:meth:`fetch`) and write it to ``dest`` (temp file in its
        folder, then rename); nothing is written except ``dest``."""
        data = self.fetch(image)
        dest = Path(dest)
        atomic_write_bytes(dest, data)
        return DownloadedFile(path=dest, sha256=hashlib.sha256(data).hexdigest(),
                              size=len(data))

    def fetch(self, image: ImageRef) -> bytes:
        """An image's bytes from ``/view``, checked to be a whole image.

        Retries briefly when the connection fails. Raises ComfyUIProtocolError when the
        answer is no image (a proxy's page), ComfyUIUnavailable when it is cut short.
        """
        for attempt in range(C.GET_RETRIES + 1):
            try:
                return self._fetch_once(image)
            except ComfyUIUnavailable:
                if attempt == C.GET_RETRIES:
                    raise
            time.sleep(retry_delay(attempt))
        raise AssertionError("unreachable")

    def _fetch_once(self, image: ImageRef) -> bytes:
        params = {"filename": image.filename, "subfolder": image.subfolder, "type": image.type}
        chunks: list[bytes] = []
        try:
            with self._http.stream("GET", self.base_url + "/view", params=params,
                                   headers=self._headers, timeout=self._timeout) as resp:
                if resp.status_code != 200:
                    resp.read()
                    raise self._status_error(resp, f"GET /view {image.relative_path}")
                expected = resp.headers.get("Content-Length")
                for chunk in resp.iter_bytes(C.DOWNLOAD_CHUNK):
                    if not chunks and not is_image(chunk):
                        raise self._not_an_image(resp, chunk, image)
                    chunks.append(chunk)
                received = resp.num_bytes_downloaded  # on the wire, before decoding
        except httpx.TransportError as err:
            raise ComfyUIUnavailable(f"{self.name}: download of {image.relative_path} "
                                     f"failed: {type(err).__name__}: {err}") from err
        if not chunks:
            raise self._not_an_image(resp, b"", image)
        if expected is not None and expected.isdigit() and int(expected) != received:
            raise ComfyUIUnavailable(f"{self.name}: download of {image.relative_path} "
                                     f"truncated ({received} of {expected} bytes)")
        return b"".join(chunks)

    def _not_an_image(self, response: httpx.Response, head: bytes,
                      image: ImageRef) -> ComfyUIProtocolError:
        """A /view answer that is no image: a proxy's sign-in page, an error as JSON...

        Stored under a take's name it would pass for a render until someone opened it.
        """
        kind = response.headers.get("Content-Type", "no Content-Type")
        return ComfyUIProtocolError(
            f"{self.name}: GET /view {image.relative_path}: answer is not an image "
            f"({kind}, {len(head) if head else 'no'} bytes starting {head[:16]!r})")

    # -- lifetime --------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection pool (unless it was passed in)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
