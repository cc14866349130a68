"""Operations routes: ``/healthz`` (liveness), ``/readyz`` (readiness; 503 while loading or draining, so a
load balancer stops routing before the listener closes), ``/metrics`` (Prometheus) and ``/v1/limits``."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from .deps import Holder, State, authorize

router = APIRouter()


@router.get("/healthz", summary="liveness")
async def healthz():
    return {"status": "ok"}


@router.get("/readyz", summary="readiness: model loaded and warmed up, native ops built, not draining")
async def readyz(h: Holder):
    st = h.state
    draining = h.draining or (st is not None and st.batcher.draining)
    if st is None or not st.ready or draining:
        why = "loading" if st is None else "draining" if draining else "not ready"
        return JSONResponse({"status": why}, status_code=503, headers={"Retry-After": "5"})
    return {
        "status": "ready",
        "model": st.model_info,
        "native_ops": st.native,
        "queue_depth": st.batcher.depth,
        "max_batch": st.settings.max_batch,
        "max_queue": st.settings.max_queue,
        "result_store": st.store.describe(),
    }


@router.get("/metrics", summary="Prometheus metrics", dependencies=[Depends(authorize)])
async def prometheus(st: State):
    return Response(st.metrics.render(), media_type=st.metrics.content_type)


@router.get(
    "/v1/limits",
    summary="the per-request limits and batching settings of this server",
    dependencies=[Depends(authorize)],
)
async def get_limits(st: State):
    s = st.settings
    return {
        "limits": s.limits.to_dict(),
        "max_batch": s.max_batch,
        "max_wait_ms": s.max_wait_ms,
        "max_queue": s.max_queue,
        "max_inflight_bytes": s.max_inflight_bytes,
        "max_parsing": s.max_parsing,
        "default_config": st.default_config.to_dict(),
        "image_urls": s.allow_image_urls,
    }
