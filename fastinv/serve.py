"""`fastinv serve`: the HTTP contract of the service, its ingress, and its deployment on Ray Serve.

Two deployments make the application:
- `Gateway` (here), the FastAPI ingress: it parses each request, forwards it to the model replicas through a
  handle and turns every outcome into JSON. A request whose model replica dies, or that no replica answers
  in time, gets a retryable 503; Serve starts a new replica. It reserves no CPU and loads no torch.
- `fastinv.replica.Inversions`, the model: one `Inverter` per replica (a replica per GPU, else one on the
  CPUs), which checks each request, batches the inversions that arrive together and answers.

The contract (README, "Service (Ray Serve)"):

    GET  /healthz     200 {"status": "ok"} while a model replica answers
    POST /v1/invert   the image file as the body; InvertRequest's fields as query parameters
                      → {"z_T": base64 .zT.safetensors, "nfe", "seconds", "method", "steps", "batch"}
                        (+ "metrics", "reconstruction_png" with reconstruct=true)
    POST /v1/edit     the image file as the body, or a form with the parts "image" and "mask" (a local edit);
                      EditRequest's fields → {"edit_png", "record"}
    errors            {"error": one line}: 400 bad input, 404/405 route, 413 body over MAX_BODY_BYTES,
                      503 retryable (Retry-After), 500 internal
"""

import asyncio
import dataclasses
import typing
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import RayError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponse
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from fastinv.errors import FastinvError, reason
from fastinv.request_checks import check_request, shown

APP = "fastinv"
"""The Serve application's name."""
MAX_BODY_BYTES = 20 * 2**20
"""The largest request body (an image file) taken; a larger one gets 413."""
DRAIN_FACTOR = 4
"""A body over the limit is read to its end (and discarded), so that the client reads the 413 rather than a
reset connection, unless it is over DRAIN_FACTOR × the limit."""
HEALTH_TIMEOUT_S = 10.0
"""How long /healthz waits for a model replica to answer."""


@dataclass(frozen=True)
class InvertRequest:
    """POST /v1/invert's query parameters; `reconstruct` adds the reconstruction from z_T and its scores."""

    method: str = "auto"  # fastinv.methods.AUTO, spelt out: the gateway imports no torch
    steps: int = 28
    prompt: str = ""
    guidance: float = 1.0
    reconstruct: bool = False

    def check(self) -> None:
        """One-line errors for an unknown method or a bad steps, prompt or guidance (in a model replica)."""
        _check_method(self.method)
        check_request(steps=self.steps, prompt=self.prompt, guidance=self.guidance)


@dataclass(frozen=True)
class EditRequest:
    """POST /v1/edit's query parameters: `fastinv edit`'s options of the same names."""

    target_prompt: str
    source_prompt: str = ""
    method: str = "auto"
    steps: int = 28
    guidance: float = 1.0
    inversion_guidance: float = 1.0
    strength: float = 0.9
    stop: float = 0.25
    start: float = 0.0
    mask_feather: int = 4  # fastinv.masks.DEFAULT_FEATHER, spelt out: the gateway imports no torch

    def check(self) -> None:
        """One-line errors for an unknown method or a bad steps, prompt, guidance, strength, window or
        mask feather (in a model replica)."""
        from fastinv.masks import check_feather
        from fastinv.sampling import SourceControl

        _check_method(self.method)
        check_request(steps=self.steps, prompt=self.source_prompt, guidance=self.inversion_guidance)
        check_request(prompt=self.target_prompt, guidance=self.guidance)
        SourceControl.check(self.strength, self.stop, self.start)
        check_feather(self.mask_feather)


Query = TypeVar("Query", InvertRequest, EditRequest)


def _check_method(method: str) -> None:
    from fastinv.methods import AUTO, get_method

    if method != AUTO:
        get_method(method)


def _integer(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise FastinvError(f"{name} must be an integer, got {shown(text)}") from None


def _number(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise FastinvError(f"{name} must be a number, got {shown(text)}") from None


def _flag(name: str, text: str) -> bool:
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text.lower())
    if value is None:
        raise FastinvError(f"{name} must be true or false, got {shown(text)}")
    return value


_PARSERS: dict[type, Callable[[str, str], Any]] = {
    str: lambda _name, text: text,
    int: _integer,
    float: _number,
    bool: _flag,
}


def parse_query(kind: type[Query], items: Iterable[tuple[str, str]]) -> Query:
    """`kind` from a query string's (name, value) pairs: each of its fields at most once, parsed by its type,
    the others at their defaults. One-line FastinvErrors name the parameter; the model replica then runs
    `kind.check` (ranges, method names)."""
    types = typing.get_type_hints(kind)
    values: dict[str, Any] = {}
    for name, text in items:
        if name not in types:
            taken = ", ".join(types)
            raise FastinvError(f"unknown query parameter {shown(name)} (this endpoint takes {taken})")
        if name in values:
            raise FastinvError(f"query parameter {name!r} is given twice")
        values[name] = _PARSERS[types[name]](name, text)
    for field in dataclasses.fields(kind):
        if field.default is dataclasses.MISSING and field.name not in values:
            raise FastinvError(f"missing query parameter {field.name!r}")
    return kind(**values)


class RequestError(FastinvError):
    """A request refused with an HTTP status of its own (413, 503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def error_response(err: BaseException) -> JSONResponse:
    """The JSON answer to a request that failed with `err` (raised here or in a model replica): a
    RequestError's status; 400 for bad input (FastinvError); 503, retryable, where Ray lost the replica or
    has none to take it; else 500."""
    cause = err.cause if isinstance(err, RayTaskError) and isinstance(err.cause, BaseException) else err
    if isinstance(cause, RequestError):
        status, message = cause.status, reason(cause)
    elif isinstance(cause, FastinvError):
        status, message = 400, reason(cause)
    elif isinstance(cause, BackPressureError | DeploymentUnavailableError) or (
        isinstance(cause, RayError) and not isinstance(cause, RayTaskError)
    ):
        status, message = 503, f"the model replica was lost or is unavailable, retry: {type(cause).__name__}"
    else:
        status, message = 500, f"internal error ({type(cause).__name__}: {reason(cause)})"
    return _error(status, message)


def _error(status: int, message: str) -> JSONResponse:
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse({"error": " ".join(message.split())}, status_code=status, headers=headers)


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request's body; an empty one is a 400, one over `limit` bytes a 413 RequestError, raised once
    the body has been read to its end, discarding it (or at once past DRAIN_FACTOR × `limit`)."""
    declared = request.headers.get("content-length", "")
    too_large = RequestError(413, f"the request body is over the limit of {limit} bytes")
    if declared.isdigit() and int(declared) > DRAIN_FACTOR * limit:
        raise too_large
    kept: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            kept.append(chunk)
        elif size > DRAIN_FACTOR * limit:
            break
        else:
            kept.clear()
    if size > limit:
        raise too_large
    if size == 0:
        raise RequestError(400, "the request body is empty: send the image file's bytes")
    return b"".join(kept)


FORM_PARTS = ("image", "mask")
"""The parts of a /v1/edit form: the image file (required) and the mask file (white = editable)."""


async def image_file(_headers: Headers, body: bytes) -> dict[str, bytes | None]:
    """A /v1/invert body: the image file itself, as the model replica's `body`."""
    return {"body": body}


async def edit_files(headers: Headers, body: bytes) -> dict[str, bytes | None]:
    """A /v1/edit body as the model replica's `body` (the image file) and `mask` (the mask file or None):
    the image itself, or a multipart/form-data form with the parts FORM_PARTS, as files. A malformed form,
    an unknown, repeated or plain-field part, or no image part is a one-line FastinvError."""
    if not headers.get("content-type", "").startswith("multipart/form-data"):
        return {"body": body, "mask": None}

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(headers, stream(), max_files=len(FORM_PARTS), max_part_size=MAX_BODY_BYTES)
    try:
        form = await parser.parse()
    except MultiPartException as err:
        raise FastinvError(f"cannot read the form: {err.message}") from None
    parts: dict[str, bytes] = {}
    for name, value in form.multi_items():
        if name not in FORM_PARTS:
            raise FastinvError(f"unknown form part {shown(name)} (a /v1/edit form has image and mask)")
        if name in parts:
            raise FastinvError(f"form part {name!r} is given twice")
        if not isinstance(value, UploadFile):  # a plain field's bytes arrive decoded as text: not a file's
            raise FastinvError(f"form part {name!r} is a plain field: send it as a file (with a filename)")
        parts[name] = await value.read()
    await form.close()
    if not parts.get("image"):
        raise FastinvError("the form has no image part: send the image file as the part 'image'")
    return {"body": parts["image"], "mask": parts.get("mask")}


app = FastAPI(title="fastinv", docs_url=None, redoc_url=None, openapi_url=None)


@app.exception_handler(HTTPException)
async def _route_error(_request: Request, exc: HTTPException) -> JSONResponse:
    """404 (no such route) and 405 (wrong HTTP method) as the contract's JSON errors."""
    return _error(exc.status_code, str(exc.detail))


@serve.deployment(
    ray_actor_options={"num_cpus": 0}, graceful_shutdown_wait_loop_s=0.5, graceful_shutdown_timeout_s=5
)
@serve.ingress(app)
class Gateway:
    """The HTTP ingress: requests parsed here, run by `inversions`, answered within `timeout_s`."""

    def __init__(self, inversions: DeploymentHandle, timeout_s: float) -> None:
        self.inversions = inversions
        self.timeout_s = timeout_s

    @app.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """200 while a model replica answers, else 503."""
        try:
            await self._ask(self.inversions.ready.remote(), HEALTH_TIMEOUT_S)
        except Exception as err:
            return error_response(err)
        return JSONResponse({"status": "ok"})

    @app.post("/v1/invert")
    async def invert(self, request: Request) -> JSONResponse:
        """The image file in the body → z_T (and the reconstruction, with reconstruct=true)."""
        return await self._forward(request, InvertRequest, "invert", image_file)

    @app.post("/v1/edit")
    async def edit(self, request: Request) -> JSONResponse:
        """The image file (or a form of image and mask) in the body → the edited image and its record."""
        return await self._forward(request, EditRequest, "edit", edit_files)

    async def _forward(
        self,
        request: Request,
        kind: type[Query],
        call: str,
        files: Callable[[Headers, bytes], Awaitable[dict[str, bytes | None]]],
    ) -> JSONResponse:
        """Parse the query and body (`files`: the body's files as the replica method's arguments), run the
        model replica's `call` and answer in JSON."""
        try:
            query = parse_query(kind, request.query_params.multi_items())
            parts = await files(request.headers, await read_body(request))
            answer = await self._ask(
                getattr(self.inversions, call).remote(request=query, **parts), self.timeout_s
            )
        except Exception as err:
            return error_response(err)
        return JSONResponse(answer)

    @staticmethod
    async def _ask(response: DeploymentResponse, timeout_s: float) -> Any:
        """The replica's answer; a retryable RequestError(503) when none comes within `timeout_s`."""

        async def answer() -> Any:
            return await response

        try:
            return await asyncio.wait_for(answer(), timeout_s)
        except asyncio.TimeoutError:
            response.cancel()
            raise RequestError(
                503, f"no model replica answered within {timeout_s:g} s: retry later"
            ) from None


@dataclass(frozen=True)
class Service:
    """A deployed service: its URL, model replicas, the Ray resources of each, the Ray cluster's address."""

    url: str
    replicas: int
    resources: dict[str, float]
    ray_address: str


def replica_resources(replicas: int | None, device: str = "auto") -> tuple[int, dict[str, float]]:
    """(model replicas, Ray resources of each) on the connected Ray: where it has GPUs (and `device` is not
    cpu) one replica per GPU by default, a GPU each; else one, the CPUs shared out (at most one node's)."""
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    gpus = sum(int(node.get("GPU", 0)) for node in nodes)
    if gpus and device != "cpu":
        count = replicas or gpus
        if count > gpus:
            raise FastinvError(f"--replicas {count}: the Ray cluster has {gpus} GPUs, one per replica")
        return count, {"num_gpus": 1}
    cpus = sum(int(node.get("CPU", 0)) for node in nodes)
    count = replicas or 1
    if count > cpus:
        raise FastinvError(f"--replicas {count}: the Ray cluster has {cpus} CPUs, at least one per replica")
    largest = max(int(node.get("CPU", 0)) for node in nodes)
    return count, {"num_cpus": max(1, min(largest, cpus // count))}


def deploy(
    load_options: dict[str, Any],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    replicas: int | None = None,
    max_batch_size: int = 8,
    batch_wait_s: float = 0.01,
    timeout_s: float = 300.0,
) -> Service:
    """Deploy the service on the connected Ray, Serve's HTTP proxy on host:port, and return once every model
    replica has loaded the model (`fastinv.load(**load_options)`); a failure to load is one line."""
    from fastinv.ray_data import failure_cause
    from fastinv.replica import Inversions

    count, resources = replica_resources(replicas, load_options.get("device", "auto"))
    ongoing = 2 * max_batch_size  # one batch running, the next filling
    model = Inversions.options(
        num_replicas=count, ray_actor_options=resources, max_ongoing_requests=ongoing
    ).bind(load_options, max_batch_size, batch_wait_s, timeout_s)
    gateway = Gateway.options(max_ongoing_requests=4 * count * ongoing).bind(model, timeout_s)
    try:
        serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
        serve.run(gateway, name=APP, route_prefix="/")
    except Exception as err:
        raise FastinvError(f"the service did not start: {failure_cause(err)}") from err
    return Service(f"http://{host}:{port}", count, resources, ray.get_runtime_context().gcs_address)


def undeploy(shutdown: bool) -> None:
    """Remove the service: `shutdown` stops Serve altogether (on a Ray of our own); else only this
    application is deleted, and a shared cluster's Serve keeps its others."""
    if shutdown:
        serve.shutdown()
    elif APP in serve.status().applications:
        serve.delete(APP)
