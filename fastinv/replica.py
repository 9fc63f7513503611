"""The model replica of `fastinv serve` (`fastinv.serve` holds the HTTP contract and deploys it).

Each replica loads one `Inverter`, once. It checks a request (`InvertRequest.check`, `EditRequest.check`)
and decodes its image file before any model work. `@serve.batch` collects the inversions that arrive
together, and `invert_groups` inverts those that share a method, step count, prompt, guidance and image size
in one batched call (`pipeline.invert_images`); the z_T file, the reconstruction, its scores and edits then
run per request, off the replica's event loop.

The model code (torch, diffusers) is imported where the replica first uses it, not with this module: the
`fastinv serve` driver binds the deployment class, and starts Ray and the replicas, without torch.
"""

from __future__ import annotations

import asyncio
import base64
import io
import secrets
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from PIL import Image
from ray import serve

from fastinv.serve import EditRequest, InvertRequest, RequestError

if TYPE_CHECKING:
    from fastinv.api import Inverter
    from fastinv.images import LoadedImage
    from fastinv.pipeline import InversionJob, StepHook
    from fastinv.results import Inversion


def stop_at(deadline: float) -> StepHook:
    """A pipeline hook that stops the work between two steps once `deadline` (time.monotonic()) has passed:
    by then the gateway has answered the request with its 503, and a thread cannot be cancelled otherwise."""

    def hook(stage: str) -> None:
        if time.monotonic() > deadline:
            raise RequestError(503, f"the request ran past its time and was stopped while it was at {stage}")

    return hook


def invert_groups(
    inverter: Inverter, pending: Sequence[tuple[LoadedImage, InversionJob, float]]
) -> list[tuple[Inversion, int] | Exception]:
    """Invert the requests (picture, job, deadline) collected in one batch: those with one method, step count,
    prompt, guidance and image size share a batched call (`pipeline.invert_images`), which stops once the
    last of their deadlines has passed (`stop_at`). Returns each request's (inversion, size of its call) in
    order, or the exception its call raised (a failure stays within its call)."""
    from fastinv.pipeline import invert_images

    groups: dict[tuple[Any, ...], list[int]] = {}
    for index, (picture, job, _) in enumerate(pending):
        key = (job.method, job.steps, job.prompt, job.guidance, tuple(picture.pixels.shape))
        groups.setdefault(key, []).append(index)
    outcomes: dict[int, tuple[Inversion, int] | Exception] = {}
    for indices in groups.values():
        hook = stop_at(max(pending[i][2] for i in indices))
        try:
            inversions = invert_images(
                inverter, [pending[i][0] for i in indices], pending[indices[0]][1], hook
            )
        except Exception as err:
            for i in indices:
                outcomes[i] = err
            continue
        for i, inversion in zip(indices, inversions, strict=True):
            outcomes[i] = (inversion, len(indices))
    return [outcomes[index] for index in range(len(pending))]


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _png(image: Image.Image) -> str:
    """`image` as a base64 PNG file."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return _base64(buffer.getvalue())


@serve.deployment(graceful_shutdown_wait_loop_s=0.5, graceful_shutdown_timeout_s=5)
class Inversions:
    """A model replica: `fastinv.load(**load_options)` once, then inversions batched `max_batch_size` at a
    time (waiting at most `batch_wait_s` for a batch to fill) and edits; a request's work stops `timeout_s`
    after it arrived (the gateway's timeout: it has answered 503 by then)."""

    def __init__(
        self, load_options: dict[str, Any], max_batch_size: int, batch_wait_s: float, timeout_s: float
    ) -> None:
        from fastinv.api import load

        self.inverter = load(**load_options)
        self.timeout_s = timeout_s
        self._invert_together.set_max_batch_size(max_batch_size)
        self._invert_together.set_batch_wait_timeout_s(batch_wait_s)

    async def ready(self) -> bool:
        """True: a replica answers once its constructor has loaded the model."""
        return True

    async def invert(self, body: bytes, request: InvertRequest) -> dict[str, Any]:
        """POST /v1/invert's answer for the image file `body`."""
        from fastinv.pipeline import InversionJob

        deadline = time.monotonic() + self.timeout_s
        request.check()
        picture = await asyncio.to_thread(self.inverter.prepare_image, body)
        method = self.inverter.resolve_method(request.method)
        job = InversionJob(request.prompt, method, request.steps, request.guidance)
        outcome = await self._invert_together((picture, job, deadline))
        if isinstance(outcome, Exception):
            raise outcome
        return await asyncio.to_thread(self._inversion_answer, *outcome, request.reconstruct, deadline)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _invert_together(
        self, pending: list[tuple[LoadedImage, InversionJob, float]]
    ) -> list[tuple[Inversion, int] | Exception]:
        return await asyncio.to_thread(invert_groups, self.inverter, pending)

    def _inversion_answer(
        self, inversion: Inversion, batch: int, reconstruct: bool, deadline: float
    ) -> dict[str, Any]:
        from fastinv.files import jsonable
        from fastinv.outputs import latents_file
        from fastinv.pipeline import reconstruct_and_score

        answer: dict[str, Any] = {
            "z_T": _base64(latents_file(self.inverter.model, inversion)),
            "nfe": inversion.result.nfe,
            "seconds": inversion.result.seconds,
            "method": inversion.method,
            "steps": inversion.steps,
            "batch": batch,
        }
        if reconstruct:
            reconstruction, metrics = reconstruct_and_score(self.inverter, inversion, stop_at(deadline))
            answer |= {"metrics": metrics, "reconstruction_png": _png(reconstruction.image)}
        return jsonable(answer)

    async def edit(self, body: bytes, request: EditRequest, mask: bytes | None = None) -> dict[str, Any]:
        """POST /v1/edit's answer for the image file `body` (and the mask file `mask`: a local edit)."""
        deadline = time.monotonic() + self.timeout_s
        request.check()
        return await asyncio.to_thread(self._edit, body, request, mask, deadline)

    def _edit(self, body: bytes, request: EditRequest, mask: bytes | None, deadline: float) -> dict[str, Any]:
        from fastinv.files import jsonable
        from fastinv.outputs import edit_record
        from fastinv.pipeline import EditJob, InversionJob, edit_image

        picture = self.inverter.prepare_image(body)
        job = InversionJob(request.source_prompt, request.method, request.steps, request.inversion_guidance)
        target = EditJob(
            request.target_prompt,
            request.guidance,
            request.strength,
            request.stop,
            request.start,
            mask=mask,  # edit_image prepares it for the picture before any work
            mask_feather=request.mask_feather,
        )
        run = edit_image(self.inverter, picture, job, target, stop_at(deadline))
        record = edit_record(self.inverter.model, run.edit, run.metrics, secrets.token_hex(8))
        return jsonable({"edit_png": _png(run.edit.edited.image), "record": record})
