//! Recording endpoints: streaming upload (recorder), search and metadata (supervisor, legal,
//! dpo; numbers masked for supervisors), audio with a stated purpose (original bytes with HTTP
//! Range, or `format=wav` playback), and erasure (dpo, deferred while held).

use std::io::{Read, Seek, SeekFrom, Write};

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Response, StatusCode, header};

use crate::access::{PURPOSES, Role, purpose_allowed};
use crate::api::error::ApiError;
use crate::api::{
    AppState, Body, Caller, ChannelWriter, Request, channel_body, drain_body, drain_in_background,
    json, limit_param, page, text_field, time_range,
};
use crate::audit::chain::{AuditDraft, Outcome, format_time};
use crate::catalog::policy::Deletion;
use crate::catalog::recordings::{
    AudioFacts, Lookup, RecordingCursor, RecordingFilter, RecordingRow,
};
use crate::ingest::metadata::{CallMetadata, MAX_METADATA_BYTES, PhoneNumber};
use crate::ingest::probe::FormatHint;
use crate::ingest::{Admission, IngestError, OPERATOR_DOMAIN, Sender, open_personal};
use crate::objections::{CALL_ID_DOMAIN, CALLER_DOMAIN};
use crate::retention::Refusal;
use crate::retention::purge::unlink_and_checkpoint;
use crate::vault::store::{BlobFile, PlainReader};
use crate::vault::{BlobId, VaultError};

/// The request body as a byte stream, each frame bounded by `idle`.
pub(crate) fn body_stream(
    body: Incoming,
    idle: Duration,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::unfold(Some(body), move |body| async move {
        let mut body = body?;
        loop {
            match tokio::time::timeout(idle, body.frame()).await {
                Err(_) => {
                    return Some((
                        Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "client too slow",
                        )),
                        None,
                    ));
                }
                Ok(None) => return None,
                Ok(Some(Err(error))) => return Some((Err(std::io::Error::other(error)), None)),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        return Some((Ok(data), Some(body)));
                    }
                }
            }
        }
    })
}

/// Bytes of an upload's body read while no audio part streams (the preamble, the part headers,
/// the metadata part): beyond the metadata's own limit, room for one read of the body (hyper
/// hands over at most ~400 KiB at a time) in which the audio part's headers arrive.
const FRAMING_BUDGET: u64 = MAX_METADATA_BYTES as u64 + (1 << 20);

/// The upload body as multer reads it. multer buffers whatever precedes a part's data (the
/// preamble before the first boundary, a part's headers) until that ends: outside the audio
/// part a budget bounds what it may read, so memory stays bounded whatever the client sends.
/// The rest of the body can be taken back, to be drained raw after an early answer.
#[derive(Clone)]
struct UploadBody(Arc<std::sync::Mutex<UploadBodyState>>);

struct UploadBodyState {
    stream: Option<futures_util::stream::BoxStream<'static, Result<Bytes, std::io::Error>>>,
    /// Bytes still allowed before the audio part; `None` while it streams.
    budget: Option<u64>,
    /// The budget ran out (the error multer reports does not say so).
    exceeded: bool,
    /// The client sent nothing for `server.idle_timeout`.
    timed_out: bool,
}

impl UploadBody {
    fn new(body: Incoming, idle: Duration) -> UploadBody {
        UploadBody(Arc::new(std::sync::Mutex::new(UploadBodyState {
            stream: Some(futures_util::stream::StreamExt::boxed(body_stream(
                body, idle,
            ))),
            budget: Some(FRAMING_BUDGET),
            exceeded: false,
            timed_out: false,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, UploadBodyState> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The audio part streams: its size is bounded by `max_recording_bytes` instead.
    fn lift_budget(&self) {
        self.lock().budget = None;
    }

    fn exceeded(&self) -> bool {
        self.lock().exceeded
    }

    fn timed_out(&self) -> bool {
        self.lock().timed_out
    }

    /// What multer has not read of the body yet.
    fn take_rest(
        &self,
    ) -> Option<futures_util::stream::BoxStream<'static, Result<Bytes, std::io::Error>>> {
        self.lock().stream.take()
    }
}

impl futures_util::Stream for UploadBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let mut state = self.lock();
        let Some(stream) = state.stream.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = stream.as_mut().poll_next(cx);
        match &polled {
            // Ended: not polled again (a finished stream may panic), nothing left to drain.
            Poll::Ready(None) => state.stream = None,
            Poll::Ready(Some(Err(error))) if error.kind() == std::io::ErrorKind::TimedOut => {
                state.timed_out = true;
            }
            _ => {}
        }
        if let Poll::Ready(Some(Ok(chunk))) = &polled
            && let Some(budget) = state.budget
        {
            let len = chunk.len() as u64;
            if len > budget {
                state.exceeded = true;
                state.budget = Some(0);
                return Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "multipart framing over budget",
                ))));
            }
            state.budget = Some(budget - len);
        }
        polled
    }
}

/// `POST /v1/recordings`.
pub(super) async fn upload(
    state: &Arc<AppState>,
    request: Request,
) -> Result<Response<Body>, ApiError> {
    let limit = state.config.ingest.max_recording_bytes;
    if let Some(length) = request
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && length > limit.saturating_add(MAX_METADATA_BYTES as u64 + 64 * 1024)
    {
        drain_body(request.body, idle_of(state));
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let content_type = request
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = multer::parse_boundary(content_type).map_err(|_| {
        ApiError::BadRequest(
            "the body must be multipart/form-data with a `metadata` part then an `audio` part"
                .into(),
        )
    })?;
    let body = UploadBody::new(request.body, state.config.server.idle_timeout);
    let mut multipart = multer::Multipart::new(body.clone(), boundary);
    let result = upload_parts(state, &request.caller, &mut multipart, &body).await;
    drop(multipart);
    let result = match result {
        // A client that stopped sending mid-body: 408, not a malformed request.
        Err(ApiError::BadRequest(_)) if body.timed_out() => Err(ApiError::Timeout),
        Err(ApiError::BadRequest(_)) if body.exceeded() => Err(ApiError::BadRequest(format!(
            "malformed multipart body: more than {FRAMING_BUDGET} bytes before the audio part's \
             data (preamble, part headers, metadata)"
        ))),
        other => other,
    };
    // Whatever the answer, read and discard what the client still sends (bounded), so that an
    // early answer (413, 422, a discarded call) reaches it instead of a connection reset.
    if let Some(rest) = body.take_rest() {
        drain_in_background(rest);
    }
    result
}

/// The multipart half of `upload`: metadata, the objection gate, then the audio stream.
async fn upload_parts(
    state: &Arc<AppState>,
    caller: &crate::api::Caller,
    multipart: &mut multer::Multipart<'static>,
    body: &UploadBody,
) -> Result<Response<Body>, ApiError> {
    let multipart_error =
        |error: multer::Error| ApiError::BadRequest(format!("malformed multipart body: {error}"));

    let mut first = multipart
        .next_field()
        .await
        .map_err(multipart_error)?
        .ok_or_else(|| ApiError::InvalidMetadata("the body has no `metadata` part".into()))?;
    if first.name() != Some("metadata") {
        return Err(ApiError::InvalidMetadata(
            "the first part must be `metadata` (application/json)".into(),
        ));
    }
    let mut raw = Vec::new();
    while let Some(chunk) = first.chunk().await.map_err(multipart_error)? {
        if raw.len() + chunk.len() > MAX_METADATA_BYTES {
            return Err(ApiError::InvalidMetadata(format!(
                "the metadata part exceeds {MAX_METADATA_BYTES} bytes"
            )));
        }
        raw.extend_from_slice(&chunk);
    }
    drop(first);
    let meta =
        CallMetadata::from_json(&raw).map_err(|e| ApiError::InvalidMetadata(e.to_string()))?;
    let sender = Sender {
        actor: caller.cn.clone(),
        role: caller.role.as_str().to_owned(),
    };
    let pipeline = state.pipeline();
    let ingest_error = |error: IngestError| -> ApiError {
        match error {
            IngestError::InvalidMetadata(why) => ApiError::InvalidMetadata(why),
            IngestError::UnsupportedAudio(why) => ApiError::UnsupportedAudio(why.to_string()),
            IngestError::TooLarge { limit } => ApiError::PayloadTooLarge(limit),
            IngestError::StorageFull(vault) => {
                tracing::warn!(error = %vault, "upload refused: storage full");
                ApiError::InsufficientStorage
            }
            IngestError::Catalog(catalog) if catalog.is_storage_full() => {
                tracing::warn!(error = %catalog, "upload refused: storage full");
                ApiError::InsufficientStorage
            }
            IngestError::DuplicateCallId { .. } => ApiError::Conflict {
                code: "duplicate_call_id",
                message: "this call_id is already stored with different audio".into(),
            },
            IngestError::Source(why) => {
                ApiError::BadRequest(format!("cannot read the upload: {why}"))
            }
            other => ApiError::Internal(other.to_string()),
        }
    };
    let admitted = match pipeline.admit(&meta, &sender).await.map_err(ingest_error)? {
        Admission::Discard(reason) => {
            // Answer at once; the rest of the body is never read (nor stored).
            return Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "status": "discarded", "reason": reason }),
            ));
        }
        Admission::Admit(admitted) => admitted,
    };
    let audio = multipart
        .next_field()
        .await
        .map_err(multipart_error)?
        .ok_or_else(|| ApiError::UnsupportedAudio("the body has no `audio` part".into()))?;
    if audio.name() != Some("audio") {
        return Err(ApiError::UnsupportedAudio(
            "the second part must be `audio`".into(),
        ));
    }
    body.lift_budget();
    let hint = match audio.file_name() {
        Some(name) => FormatHint::from_file_name(name),
        None => FormatHint::default(),
    };
    let stored = match pipeline.ingest(admitted, hint, audio, &sender).await {
        Ok(stored) => stored,
        // Objected to (or the call deleted) while the audio arrived: discarded all the same.
        Err(IngestError::Discarded(reason)) => {
            return Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "status": "discarded", "reason": reason }),
            ));
        }
        // Other audio under a call id already stored: the stored evidence is not replaced, and
        // the attempt is audited (a recorder's bug, or someone trying to overwrite a call).
        Err(IngestError::DuplicateCallId { existing }) => {
            let refused = Refused {
                action: "recording.ingest",
                purpose: None,
            };
            let why = "call id already stored with different audio";
            audit_refusal(state, caller, &existing.to_string(), refused, why).await?;
            return Err(ingest_error(IngestError::DuplicateCallId { existing }));
        }
        Err(error) => return Err(ingest_error(error)),
    };
    let status = match stored.repeated {
        true => StatusCode::OK,
        false => StatusCode::CREATED,
    };
    Ok(json(
        status,
        &serde_json::json!({
            "id": stored.id.to_string(),
            "status": "stored",
            "codec": stored.audio.codec,
            "container": stored.audio.container,
            "sample_rate": stored.audio.sample_rate,
            "channels": stored.audio.channels,
            "duration_ms": stored.audio.duration_ms,
            "size": stored.size,
            "sha256": hex::encode(stored.sha256),
            "retain_until": format_time(stored.retain_until),
        }),
    ))
}

fn idle_of(state: &AppState) -> Duration {
    state.config.server.idle_timeout
}

/// Masks a number for roles that must not see it in full.
fn show_number(number: Option<&str>, role: Role) -> serde_json::Value {
    let Some(number) = number else {
        return serde_json::Value::Null;
    };
    match role {
        Role::Legal | Role::Dpo => number.into(),
        Role::AlarmSource
        | Role::Contracts
        | Role::Operator
        | Role::Recorder
        | Role::Supervisor => match PhoneNumber::parse(number) {
            Ok(parsed) => parsed.masked().into(),
            Err(_) => "••".into(),
        },
    }
}

/// The metadata JSON of one recording.
pub(super) fn recording_json(
    state: &AppState,
    row: &RecordingRow,
    holds: Option<&[String]>,
    role: Role,
) -> Result<serde_json::Value, ApiError> {
    let personal = open_personal(&state.keyring, row)?;
    let mut value = serde_json::json!({
        "id": row.id.to_string(),
        "call_id": personal.call_id,
        "started_at": format_time(row.started_at),
        "direction": row.direction,
        "caller": show_number(personal.caller.as_deref(), role),
        "callee": show_number(personal.callee.as_deref(), role),
        "account": personal.account,
        "operator": personal.operator,
        "alarm_case": row.alarm_case,
        "container": row.audio.container,
        "codec": row.audio.codec,
        "sample_rate": row.audio.sample_rate,
        "channels": row.audio.channels,
        "duration_ms": row.audio.duration_ms,
        "size": row.size,
        "sha256": hex::encode(row.sha256),
        "ingested_at": format_time(row.ingested_at),
        "retain_until": format_time(row.retain_until),
        "state": row.state.as_str(),
        "pending_deletion": row.pending_deletion,
    });
    if let Some(holds) = holds {
        value["holds"] = serde_json::json!(holds);
    }
    Ok(value)
}

/// A phone number from the query string. An unencoded `+` arrives as a space (form encoding);
/// a number that starts with one meant `+`, so it is read that way instead of refused.
pub(super) fn number_param(request: &Request, name: &str) -> Result<Option<PhoneNumber>, ApiError> {
    let Some(text) = request.param(name) else {
        return Ok(None);
    };
    let international;
    let text = match text.strip_prefix(' ') {
        Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => {
            international = format!("+{rest}");
            international.as_str()
        }
        _ => text,
    };
    PhoneNumber::parse(text)
        .map(Some)
        .map_err(|e| ApiError::BadRequest(format!("`{name}` is not a phone number: {e}")))
}

/// Search filters from the query string.
pub(super) fn filter_of(state: &AppState, request: &Request) -> Result<RecordingFilter, ApiError> {
    let caller = number_param(request, "caller")?
        .map(|number| state.keyring.digest(CALLER_DOMAIN, number.as_str()));
    let (from, to) = time_range(request)?;
    Ok(RecordingFilter {
        from,
        to,
        account_hmac: request
            .param("account")
            .map(|a| crate::ingest::account_digest(&state.keyring, a)),
        caller_hmac: caller,
        operator_hmac: request
            .param("operator")
            .map(|o| state.keyring.digest(OPERATOR_DOMAIN, o)),
        call_id_hmac: request
            .param("call_id")
            .map(|c| state.keyring.digest(CALL_ID_DOMAIN, c)),
        alarm_case: request.param("alarm_case").map(str::to_owned),
        party: None,
    })
}

fn cursor_of(text: Option<&str>) -> Result<Option<RecordingCursor>, ApiError> {
    let Some(text) = text else { return Ok(None) };
    let bad = || ApiError::BadRequest("invalid cursor".into());
    let (secs, id) = text.split_once('.').ok_or_else(bad)?;
    let secs: i64 = secs.parse().map_err(|_| bad())?;
    Ok(Some(RecordingCursor {
        started_at: jiff::Timestamp::from_second(secs).map_err(|_| bad())?,
        id: BlobId::parse(id).ok_or_else(bad)?,
    }))
}

/// Most rows one page looks at: rows the caller may not see (expired, deletion pending) are
/// skipped, and a page stops early, with a cursor, only past this many of them.
const PAGE_SCAN_MAX: usize = 10_000;

/// Lists recordings matching `filter` that `role` may see now (newest first), as a page. A page
/// is filled with readable rows whatever number of unreadable ones lie between them, so an
/// empty page means the end (short of `PAGE_SCAN_MAX` unreadable rows in a row).
pub(super) async fn list_page(
    state: &Arc<AppState>,
    request: &Request,
    filter: RecordingFilter,
) -> Result<Response<Body>, ApiError> {
    let limit = limit_param(request)?;
    let cursor = cursor_of(request.param("cursor"))?;
    let role = request.caller.role;
    let now = state.clock.now();
    let (rows, next) = state
        .catalog
        .call(move |catalog| {
            let mut out = Vec::new();
            let mut position = cursor;
            let mut scanned = 0;
            loop {
                let batch = catalog.search_recordings(&filter, position, limit + 1)?;
                let exhausted = batch.len() <= limit;
                for row in batch {
                    let holds = catalog.holds_of(&row.id)?;
                    let here = RecordingCursor {
                        started_at: row.started_at,
                        id: row.id,
                    };
                    let readable = crate::retention::may_read(
                        row.retain_until,
                        row.pending_deletion.is_some(),
                        holds.len(),
                        role,
                        now,
                    )
                    .is_ok();
                    if readable {
                        if out.len() == limit {
                            // One more readable row: the page is full and has a next one.
                            return Ok((out, position));
                        }
                        out.push((row, holds));
                    }
                    position = Some(here);
                    scanned += 1;
                    if scanned >= PAGE_SCAN_MAX && !exhausted {
                        return Ok((out, position));
                    }
                }
                if exhausted {
                    return Ok((out, None));
                }
            }
        })
        .await?;
    let mut items = Vec::with_capacity(rows.len());
    for (row, holds) in &rows {
        items.push(recording_json(state, row, Some(holds), role)?);
    }
    let next = next.map(|at| format!("{}.{}", at.started_at.as_second(), at.id));
    Ok(page(items, next))
}

/// `GET /v1/recordings`.
pub(super) async fn list(
    state: &Arc<AppState>,
    request: Request,
) -> Result<Response<Body>, ApiError> {
    request.only_params(&[
        "from",
        "to",
        "account",
        "caller",
        "operator",
        "call_id",
        "alarm_case",
        "limit",
        "cursor",
    ])?;
    let filter = filter_of(state, &request)?;
    list_page(state, &request, filter).await
}

/// A readable recording with its holds, or the right refusal.
async fn readable(
    state: &Arc<AppState>,
    id: BlobId,
    caller: &Caller,
    refusal: Refused<'_>,
) -> Result<(RecordingRow, Vec<String>), ApiError> {
    let (lookup, holds) = state
        .catalog
        .call(move |catalog| Ok((catalog.recording(&id)?, catalog.holds_of(&id)?)))
        .await?;
    let row = match lookup {
        Lookup::Found(row) => *row,
        Lookup::Deleted(tomb) => {
            // Refused like an expired recording (guarantee 8): the DPO sees who still asks
            // for erased recordings.
            audit_refusal(state, caller, &id.to_string(), refusal, "deleted").await?;
            return Err(ApiError::Deleted(tomb));
        }
        Lookup::NotFound => return Err(ApiError::NotFound),
    };
    let now = state.clock.now();
    let pending = row.pending_deletion.is_some();
    if let Err(refused) =
        crate::retention::may_read(row.retain_until, pending, holds.len(), caller.role, now)
    {
        audit_refusal(state, caller, &id.to_string(), refusal, refused.reason()).await?;
        return Err(match refused {
            Refusal::DeletionPending => ApiError::DeletionPending,
            Refusal::Expired => ApiError::Expired,
        });
    }
    Ok((row, holds))
}

/// The answer to a read whose recording went while it was being served: deleted since its
/// lookup (`410 deleted`, audited as refused like any read of a deleted recording), or, for a
/// recording still catalogued, a blob file that is missing (`500`; start-up recovery marks such
/// recordings `missing`).
async fn gone(
    state: &Arc<AppState>,
    id: BlobId,
    caller: &Caller,
    refusal: Refused<'_>,
) -> ApiError {
    let lookup = state
        .catalog
        .call(move |catalog| catalog.recording(&id))
        .await;
    match lookup {
        Ok(Lookup::Deleted(tomb)) => {
            match audit_refusal(state, caller, &id.to_string(), refusal, "deleted").await {
                Ok(()) => ApiError::Deleted(tomb),
                Err(error) => error,
            }
        }
        Ok(Lookup::NotFound) => ApiError::NotFound,
        Ok(Lookup::Found(_)) => ApiError::Internal(format!("blob {id} is missing")),
        Err(error) => error.into(),
    }
}

/// What a refused read was: its audit action and the purpose stated, if any.
#[derive(Clone, Copy)]
struct Refused<'a> {
    action: &'a str,
    purpose: Option<&'a str>,
}

/// Audits (and commits) the refusal of a read before it is answered (guarantee 8).
async fn audit_refusal(
    state: &Arc<AppState>,
    caller: &Caller,
    object: &str,
    refused: Refused<'_>,
    why: &str,
) -> Result<(), ApiError> {
    let mut draft = AuditDraft::new(
        &caller.cn,
        caller.role.as_str(),
        refused.action,
        object,
        Outcome::Denied,
    )
    .detail(why);
    if let Some(purpose) = refused.purpose {
        draft = draft.purpose(purpose);
    }
    let now = state.clock.now();
    state
        .catalog
        .call(move |catalog| catalog.audit(draft, now))
        .await?;
    Ok(())
}

/// `GET /v1/recordings/{id}`.
pub(super) async fn get(
    state: &Arc<AppState>,
    request: Request,
    id: BlobId,
) -> Result<Response<Body>, ApiError> {
    let refused = Refused {
        action: "recording.get",
        purpose: None,
    };
    let (row, holds) = readable(state, id, &request.caller, refused).await?;
    Ok(json(
        StatusCode::OK,
        &recording_json(state, &row, Some(&holds), request.caller.role)?,
    ))
}

/// A `Range` header, read as RFC 9110 §14 says: one satisfiable `bytes` range is served as
/// `206`; a header in another unit, malformed, or asking for several ranges is ignored (the
/// whole file, `200`); a valid single range that starts past the end is `416`.
fn parse_range(header: &str, len: u64) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((start, end)) = spec.split_once('-') else {
        return Ok(None);
    };
    let number = |text: &str| -> Option<u64> {
        match !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            true => text.parse().ok(),
            false => None,
        }
    };
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let Some(n) = number(suffix) else {
                return Ok(None);
            };
            if n == 0 || len == 0 {
                return Err(ApiError::RangeNotSatisfiable(len));
            }
            (len.saturating_sub(n), len - 1)
        }
        (start, "") => {
            let Some(start) = number(start) else {
                return Ok(None);
            };
            (start, len.saturating_sub(1))
        }
        (start, end) => {
            let (Some(start), Some(end)) = (number(start), number(end)) else {
                return Ok(None);
            };
            if end < start {
                return Ok(None);
            }
            (start, end.min(len.saturating_sub(1)))
        }
    };
    if start >= len {
        return Err(ApiError::RangeNotSatisfiable(len));
    }
    Ok(Some((start, end)))
}

/// The media type of a stored recording's original bytes. Header-less G.711 and GSM have
/// registered types (RFC 2046 `audio/basic` is 8 kHz mono µ-law; RFC 4856 the others);
/// little-endian signed linear has none.
fn content_type_of(audio: &AudioFacts) -> &'static str {
    match (audio.container.as_str(), audio.codec.as_str()) {
        ("wav", _) => "audio/wav",
        ("flac", _) => "audio/flac",
        ("mp3", _) => "audio/mpeg",
        ("ogg", _) => "audio/ogg",
        ("raw", "pcm_mulaw") => "audio/basic",
        ("raw", "pcm_alaw") => "audio/PCMA; rate=8000",
        ("raw", "gsm") => "audio/GSM",
        _ => "application/octet-stream",
    }
}

/// Passes on the bytes of `[start, end_exclusive)` of what is written through it, and stops
/// the writer (an error) once past the end.
struct Window {
    inner: ChannelWriter,
    /// Bytes written through so far.
    position: u64,
    start: u64,
    end_exclusive: u64,
}

impl std::io::Write for Window {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.position >= self.end_exclusive {
            return Err(std::io::Error::other("range sent"));
        }
        let from = self.position;
        let to = from + data.len() as u64;
        let keep_from = self.start.max(from).min(to);
        let keep_to = self.end_exclusive.min(to);
        if keep_from < keep_to {
            let slice = &data[(keep_from - from) as usize..(keep_to - from) as usize];
            self.inner.write_all(slice)?;
        }
        self.position = to;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The file extension of a stored recording's original bytes (downloads, exports).
pub(super) fn extension_of(audio: &AudioFacts) -> &'static str {
    match (audio.container.as_str(), audio.codec.as_str()) {
        ("wav", _) => "wav",
        ("flac", _) => "flac",
        ("mp3", _) => "mp3",
        ("ogg", "opus") => "opus",
        ("ogg", _) => "ogg",
        ("raw", "pcm_mulaw") => "ulaw",
        ("raw", "pcm_alaw") => "alaw",
        ("raw", "pcm_s16le") => "sln",
        ("raw", "gsm") => "gsm",
        _ => "bin",
    }
}

/// `GET /v1/recordings/{id}/audio?purpose=P[&format=wav]`.
pub(super) async fn audio(
    state: &Arc<AppState>,
    request: Request,
    id: BlobId,
) -> Result<Response<Body>, ApiError> {
    let role = request.caller.role;
    let object = id.to_string();
    let Some(purpose) = request.param("purpose").map(str::to_owned) else {
        let refused = Refused {
            action: "recording.read_audio",
            purpose: None,
        };
        audit_refusal(
            state,
            &request.caller,
            &object,
            refused,
            "no purpose stated",
        )
        .await?;
        return Err(ApiError::PurposeRequired);
    };
    if !purpose_allowed(role, &purpose) {
        // An unknown purpose is one no role may use; the text itself is not kept.
        let known = PURPOSES.contains(&purpose.as_str());
        let refused = Refused {
            action: "recording.read_audio",
            purpose: known.then_some(purpose.as_str()),
        };
        let why = match known {
            true => "purpose not allowed for this role",
            false => "unknown purpose",
        };
        audit_refusal(state, &request.caller, &object, refused, why).await?;
        let allowed: Vec<&str> = PURPOSES
            .into_iter()
            .filter(|p| purpose_allowed(role, p))
            .collect();
        let message = match known {
            true => format!("role `{role}` may not read audio for `{purpose}`"),
            false => format!("`{purpose}` is not a purpose"),
        };
        return Err(ApiError::PurposeNotAllowed(format!(
            "{message}; role `{role}` may state: {}",
            allowed.join(", ")
        )));
    }
    let wav = match request.param("format") {
        None => false,
        Some("wav") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unknown format `{other}` (only `wav`)"
            )));
        }
    };
    let refused = Refused {
        action: "recording.read_audio",
        purpose: Some(&purpose),
    };
    let (row, _holds) = readable(state, id, &request.caller, refused).await?;
    let info = crate::ingest::info_of(&row.audio);
    let wav_len = match (wav, info.as_ref()) {
        (false, _) => None,
        (true, Some(info)) => match crate::ingest::transcode::wav_len(info) {
            Some(len) => Some(len),
            None => {
                return Err(ApiError::TranscodingUnavailable(format!(
                    "cannot transcode {} to wav; the original is available",
                    row.audio.codec
                )));
            }
        },
        (true, None) => {
            return Err(ApiError::TranscodingUnavailable(format!(
                "unknown codec {}",
                row.audio.codec
            )));
        }
    };
    // Ranges of the original bytes, or of the WAV (a player seeking in it): the WAV's length is
    // known before transcoding.
    let range = match request
        .headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
    {
        Some(text) => parse_range(text, wav_len.unwrap_or(row.size))?,
        None => None,
    };

    // The read is audited (and committed) before a byte leaves the vault.
    let detail = match (wav, range) {
        (true, Some((start, end))) => format!("format=wav bytes {start}-{end}"),
        (true, None) => "format=wav".to_owned(),
        (false, Some((start, end))) => format!("bytes {start}-{end}"),
        (false, None) => "original".to_owned(),
    };
    let draft = AuditDraft::new(
        &request.caller.cn,
        role.as_str(),
        "recording.read_audio",
        &id.to_string(),
        Outcome::Allowed,
    )
    .purpose(&purpose)
    .detail(detail);
    // The file is opened first: a deletion that unlinks it once the entry is committed does
    // not cut the read short. The entry commits only if the recording is still there: a
    // deletion committed in between makes this read a refused one (`410 deleted`).
    let blob = match BlobFile::open(&state.vault, id) {
        Ok(blob) => blob,
        Err(VaultError::Missing { .. }) => {
            return Err(gone(state, id, &request.caller, refused).await);
        }
        Err(error) => return Err(ApiError::Internal(error.to_string())),
    };
    let now = state.clock.now();
    let receipt = state
        .catalog
        .call(move |catalog| catalog.audit_read(&id, draft, now))
        .await?;
    let Some(receipt) = receipt else {
        return Err(gone(state, id, &request.caller, refused).await);
    };
    state
        .metrics
        .audio_reads
        .get_or_create(&vec![("purpose", purpose.clone())])
        .inc();

    let key = state.keyring.recording_key(&id, &row.wrapped_key)?;
    let mut reader = PlainReader::from_file(blob, &key, &receipt)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let (tx, body) = channel_body();
    let mut response = Response::new(body);
    match (wav_len, info) {
        (Some(len), Some(info)) => {
            let hint = FormatHint { extension: None };
            let (start, end) = range.unwrap_or((0, len.saturating_sub(1)));
            tokio::task::spawn_blocking(move || {
                // The WAV is made from its start; bytes outside the range are dropped.
                let mut writer = Window {
                    inner: ChannelWriter {
                        tx: tx.clone(),
                        buffer: Vec::with_capacity(64 * 1024),
                    },
                    position: 0,
                    start,
                    end_exclusive: end + 1,
                };
                let result = crate::ingest::transcode::transcode_to_wav(
                    Box::new(reader),
                    &hint,
                    &info,
                    &mut writer,
                )
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|_| writer.inner.flush());
                match result {
                    // The range ended: the rest of the transcoding was not needed.
                    Err(error)
                        if writer.position >= writer.end_exclusive
                            && writer.inner.flush().is_ok() =>
                    {
                        tracing::debug!(recording = %id, %error, "playback range sent");
                    }
                    Err(error) => {
                        tracing::warn!(recording = %id, %error, "playback transcoding failed mid-stream");
                        let _ = tx.blocking_send(Err(error));
                    }
                    Ok(()) => {}
                }
            });
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("audio/wav"),
            );
            headers.insert(
                header::ACCEPT_RANGES,
                header::HeaderValue::from_static("bytes"),
            );
            let sent = match len {
                0 => 0,
                _ => end - start + 1,
            };
            headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(sent));
            if range.is_some() {
                *response.status_mut() = StatusCode::PARTIAL_CONTENT;
                if let Ok(value) =
                    header::HeaderValue::from_str(&format!("bytes {start}-{end}/{len}"))
                {
                    response.headers_mut().insert(header::CONTENT_RANGE, value);
                }
            }
        }
        _ => {
            let (start, end) = range.unwrap_or((0, row.size.saturating_sub(1)));
            let total = match row.size {
                0 => 0,
                _ => end - start + 1,
            };
            tokio::task::spawn_blocking(move || {
                let result = (|| -> std::io::Result<()> {
                    reader.seek(SeekFrom::Start(start))?;
                    let mut remaining = total;
                    let mut buffer = vec![0u8; 64 * 1024];
                    while remaining > 0 {
                        let want = remaining.min(buffer.len() as u64) as usize;
                        let n = reader.read(&mut buffer[..want])?;
                        if n == 0 {
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                "blob shorter than catalogued",
                            ));
                        }
                        remaining -= n as u64;
                        if tx
                            .blocking_send(Ok(Bytes::copy_from_slice(&buffer[..n])))
                            .is_err()
                        {
                            return Ok(());
                        }
                    }
                    Ok(())
                })();
                if let Err(error) = result {
                    tracing::error!(recording = %id, %error, "audio read failed mid-stream");
                    let _ = tx.blocking_send(Err(error));
                }
            });
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(content_type_of(&row.audio)),
            );
            headers.insert(
                header::ACCEPT_RANGES,
                header::HeaderValue::from_static("bytes"),
            );
            headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(total));
            if range.is_some() {
                *response.status_mut() = StatusCode::PARTIAL_CONTENT;
                if let Ok(value) =
                    header::HeaderValue::from_str(&format!("bytes {start}-{end}/{}", row.size))
                {
                    response.headers_mut().insert(header::CONTENT_RANGE, value);
                }
            }
        }
    }
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    // Played in place by a browser; saved under the recording's id, never a caller's number.
    let extension = match wav {
        true => "wav",
        false => extension_of(&row.audio),
    };
    if let Ok(value) =
        header::HeaderValue::from_str(&format!("inline; filename=\"{id}.{extension}\""))
    {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// `DELETE /v1/recordings/{id}` (dpo): erasure, deferred while held.
pub(super) async fn delete(
    state: &Arc<AppState>,
    request: Request,
    id: BlobId,
) -> Result<Response<Body>, ApiError> {
    let caller = request.caller.clone();
    let idle = state.config.server.idle_timeout;
    let body = request.json(64 * 1024, idle).await?;
    let reason = text_field(&body, "reason", 500)?;
    let draft = AuditDraft::new(
        &caller.cn,
        caller.role.as_str(),
        "recording.delete",
        &id.to_string(),
        Outcome::Allowed,
    )
    .detail(format!("erasure: {reason}"));
    let now = state.clock.now();
    let lookup = state
        .catalog
        .call(move |catalog| catalog.recording(&id))
        .await?;
    match lookup {
        Lookup::Deleted(tomb) => return Err(ApiError::Deleted(tomb)),
        Lookup::NotFound => return Err(ApiError::NotFound),
        Lookup::Found(_) => {}
    }
    let outcome = state
        .catalog
        .call(move |catalog| catalog.delete_recording(&id, "erasure", draft, now))
        .await?;
    match outcome {
        Deletion::Deleted => {
            let (catalog, vault) = (state.catalog.clone(), state.vault.clone());
            tokio::task::spawn_blocking(move || unlink_and_checkpoint(&catalog, &vault, &[id]))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            state.metrics.count_purged("erasure", 1);
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "id": id.to_string(), "status": "deleted", "deleted_at": format_time(now) }),
            ))
        }
        Deletion::Deferred => Err(ApiError::HoldActive(format!(
            "recording {id} is under a litigation hold: the erasure is recorded and will happen when the last hold is released"
        ))),
        // Another deletion committed between the lookup and this one: the recording is
        // deleted, not unknown.
        Deletion::Absent => match state
            .catalog
            .call(move |catalog| catalog.recording(&id))
            .await?
        {
            Lookup::Deleted(tomb) => Err(ApiError::Deleted(tomb)),
            Lookup::Found(_) | Lookup::NotFound => Err(ApiError::NotFound),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let range = |header: &str, len: u64| parse_range(header, len).ok().flatten();
        assert_eq!(range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(range("bytes=-500", 100), Some((0, 99)));
        assert_eq!(range("bytes=50-500", 100), Some((50, 99)));
        assert_eq!(range(" bytes=3-3 ", 100), Some((3, 3)));
        // Satisfiable in form but not in fact: 416 (with `Content-Range: bytes */len`).
        for unsatisfiable in ["bytes=100-", "bytes=100-200", "bytes=-0"] {
            assert!(
                matches!(
                    parse_range(unsatisfiable, 100),
                    Err(ApiError::RangeNotSatisfiable(100))
                ),
                "{unsatisfiable}"
            );
        }
        assert!(parse_range("bytes=0-0", 0).is_err());
        // Ignored (RFC 9110: another unit, invalid, or several ranges): the whole file.
        for ignored in [
            "bytes=5-2",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=x-1",
            "bytes=abc",
            "bytes=-",
            "bytes=+1-2",
            "bytes=-1-2",
            "",
        ] {
            assert_eq!(parse_range(ignored, 100).ok(), Some(None), "{ignored}");
        }
    }
}
