//! `GET /v1/status`: version, uptime, counts and the status line of every background worker
//! (receivers connected, spool, purge). Open to every role; contains no personal data.

use std::sync::Arc;

use hyper::{Response, StatusCode};

use crate::api::error::ApiError;
use crate::api::{AppState, Body, Request, json};

pub(super) async fn get(
    state: &Arc<AppState>,
    request: Request,
) -> Result<Response<Body>, ApiError> {
    let now = state.clock.now();
    let (stored, missing, deleted) = state
        .catalog
        .call(|catalog| catalog.recording_counts())
        .await?;
    let uptime = now.duration_since(state.started_at).as_secs().max(0);
    let workers = state.workers.snapshot();
    let body = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": uptime,
        "now": crate::audit::chain::format_time(now),
        "identity": { "cn": request.caller.cn, "role": request.caller.role.as_str() },
        "counts": { "recordings": stored, "recordings_missing": missing, "tombstones": deleted },
        "receivers": workers.receivers,
        "workers": workers.lines,
    });
    Ok(json(StatusCode::OK, &body))
}
