//! The HTTPS API (SPEC §6): TLS with mandatory client certificates (`tls`), the endpoint table
//! and access matrix (`routes`), the error vocabulary (`error`), the accept loop with its limits
//! and timeouts (`server`), and one handler file per resource (`handlers`). Every request is
//! parsed into an `Endpoint`, its caller's role looked up and checked against the matrix, and
//! refusals audited, before any handler runs. Owns HTTP status codes and JSON shapes; makes no
//! domain decision of its own.

pub mod error;
pub mod handlers;
pub mod routes;
pub mod server;
pub mod tls;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Response, StatusCode};

use crate::access::Role;
use crate::api::error::ApiError;
use crate::api::routes::Endpoint;
use crate::catalog::Catalog;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::keyring::Keyring;
use crate::metrics::Metrics;
use crate::vault::Vault;

/// The response body type of every handler.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// What handlers share: the stores, keys, clock, metrics and configuration.
pub struct AppState {
    pub config: Arc<Config>,
    pub catalog: Catalog,
    pub vault: Vault,
    pub keyring: Arc<Keyring>,
    pub clock: SharedClock,
    pub metrics: Arc<Metrics>,
    /// When the process started (for `uptime_s`).
    pub started_at: jiff::Timestamp,
    /// Status lines of background workers (receivers, spool, purge), for `/v1/status`.
    pub workers: crate::daemon::WorkerStatus,
}

impl AppState {
    /// The ingest pipeline over the server's stores (HTTP upload and spool share it).
    pub fn pipeline(&self) -> crate::ingest::Pipeline {
        crate::ingest::Pipeline {
            catalog: self.catalog.clone(),
            vault: self.vault.clone(),
            keyring: self.keyring.clone(),
            clock: self.clock.clone(),
            metrics: self.metrics.clone(),
            retention: self.config.retention.recordings,
            max_bytes: self.config.ingest.max_recording_bytes,
        }
    }

    /// The alarm-case registry over the server's catalog and keys.
    pub fn cases(&self) -> crate::alarms::cases::Cases<'_> {
        crate::alarms::cases::Cases {
            catalog: &self.catalog,
            keyring: &self.keyring,
            max_open: self.config.alarms.max_open,
        }
    }
}

/// The authenticated caller of one request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Subject CN of the verified client certificate.
    pub cn: String,
    pub role: Role,
}

/// One request, routed and authorised, as handlers see it.
pub struct Request {
    pub endpoint: Endpoint,
    pub caller: Caller,
    pub query: HashMap<String, String>,
    pub headers: hyper::HeaderMap,
    pub body: Incoming,
}

impl Request {
    /// A query parameter, if present and non-empty.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Refuses query parameters other than `known`, for a search: a misspelt filter left out
    /// would widen it to everything. (An empty one is absent, as a form's empty field means.)
    pub fn only_params(&self, known: &[&str]) -> Result<(), ApiError> {
        let mut keys: Vec<&String> = self.query.keys().collect();
        keys.sort();
        for key in keys {
            if !known.contains(&key.as_str()) {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter `{key}` (this search takes {})",
                    known.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// Reads a JSON body of at most `limit` bytes, each read bounded by `idle`.
    pub async fn json(self, limit: usize, idle: Duration) -> Result<serde_json::Value, ApiError> {
        let bytes = read_body(self.body, limit, idle).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::BadRequest(format!("the body is not valid JSON: {e}")))
    }
}

/// How long a small (JSON) body may take to arrive, whole.
const SMALL_BODY_TIME: Duration = Duration::from_secs(30);

/// Reads a whole (small) body with a size limit and an idle timeout per frame. Over the limit
/// (announced by `Content-Length` or reached), the answer is `413` and the rest of the body is
/// drained in the background, so that the client, still sending, receives that answer.
pub async fn read_body(
    mut body: Incoming,
    limit: usize,
    idle: Duration,
) -> Result<Bytes, ApiError> {
    use hyper::body::Body as _;
    if body.size_hint().lower() > limit as u64 {
        drain_body(body, idle);
        return Err(ApiError::PayloadTooLarge(limit as u64));
    }
    // A small body has no reason to take long: a client trickling it pins a connection.
    let deadline = tokio::time::Instant::now() + SMALL_BODY_TIME;
    let mut out = Vec::new();
    loop {
        let wait = idle.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        let frame = match tokio::time::timeout(wait, body.frame()).await {
            Err(_) => return Err(ApiError::Timeout),
            Ok(None) => break,
            Ok(Some(Err(error))) => {
                return Err(ApiError::BadRequest(format!(
                    "cannot read the body: {error}"
                )));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                drain_body(body, idle);
                return Err(ApiError::PayloadTooLarge(limit as u64));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(out))
}

/// Parses `a=1&b=x%20y` (with `+` as space). A malformed escape is an error naming the
/// parameter: dropping it would widen a search to everything. So is a key given twice with two
/// values (`from=…&from=…`): one of them would be dropped without a word.
pub fn parse_query(query: Option<&str>) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |text: &str| routes::percent_decode(&text.replace('+', " "));
        let key = decode(key).ok_or_else(|| {
            "a query parameter name is not valid percent-encoded UTF-8".to_owned()
        })?;
        let value = decode(value).ok_or_else(|| {
            format!("the value of query parameter `{key}` is not valid percent-encoded UTF-8")
        })?;
        if let Some(previous) = out.get(&key)
            && *previous != value
        {
            return Err(format!(
                "query parameter `{key}` is given twice, with two values"
            ));
        }
        out.insert(key, value);
    }
    Ok(out)
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    bytes_response(status, "application/json", Bytes::from(value.to_string()))
}

/// A response with a fixed body.
pub fn bytes_response(status: StatusCode, content_type: &str, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// The SPEC §6 error response.
pub fn error_response(error: &ApiError) -> Response<Body> {
    let mut response = bytes_response(error.status(), "application/json", error.body());
    let extra = match error {
        ApiError::MethodNotAllowed(allowed) => Some((hyper::header::ALLOW, allowed.join(", "))),
        ApiError::RangeNotSatisfiable(len) => {
            Some((hyper::header::CONTENT_RANGE, format!("bytes */{len}")))
        }
        _ => None,
    };
    if let Some((name, value)) = extra
        && let Ok(value) = hyper::header::HeaderValue::from_str(&value)
    {
        response.headers_mut().insert(name, value);
    }
    response
}

/// A page of items: `{"items": [...], "next_cursor": ...}`.
pub fn page(items: Vec<serde_json::Value>, next_cursor: Option<String>) -> Response<Body> {
    json(
        StatusCode::OK,
        &serde_json::json!({ "items": items, "next_cursor": next_cursor }),
    )
}

/// A page from rows fetched with `limit + 1`: the first `limit` as items and, when there was
/// one more, the cursor of the last item shown.
pub fn paged<T>(
    rows: &[T],
    limit: usize,
    item: impl Fn(&T) -> serde_json::Value,
    cursor: impl Fn(&T) -> String,
) -> Response<Body> {
    let items = rows.iter().take(limit).map(&item).collect();
    let next = match rows.len() > limit {
        true => rows.get(limit.saturating_sub(1)).map(&cursor),
        false => None,
    };
    page(items, next)
}

/// Refuses a JSON object with a key not in `known`: a misspelt key (`includeFuture`) would
/// otherwise be ignored and change the meaning silently. `what` names the object.
pub fn known_keys(value: &serde_json::Value, what: &str, known: &[&str]) -> Result<(), ApiError> {
    let Some(object) = value.as_object() else {
        return Err(ApiError::BadRequest(format!(
            "{what} must be a JSON object"
        )));
    };
    match object.keys().find(|key| !known.contains(&key.as_str())) {
        None => Ok(()),
        Some(key) => Err(ApiError::BadRequest(format!(
            "{what}: unknown key `{}` (known: {})",
            key.chars().take(40).collect::<String>(),
            known.join(", ")
        ))),
    }
}

/// A required JSON string field: trimmed, 1 to `max` characters, no control characters.
pub fn text_field<'v>(
    body: &'v serde_json::Value,
    name: &str,
    max: usize,
) -> Result<&'v str, ApiError> {
    let value = body
        .get(name)
        .and_then(|v| v.as_str())
        .map(str::trim)
        .unwrap_or("");
    if value.is_empty() || value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(format!(
            "`{name}` is required: 1–{max} printable characters"
        )));
    }
    Ok(value)
}

/// `limit` query parameter: default 50, 1..=1000.
pub fn limit_param(request: &Request) -> Result<usize, ApiError> {
    match request.param("limit") {
        None => Ok(50),
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => Ok(n),
            _ => Err(ApiError::BadRequest(format!(
                "limit `{text}` is not a number between 1 and 1000"
            ))),
        },
    }
}

/// The `cursor` of a list whose items are ids `id_prefix` + a recording-style id (the last
/// item of the previous page); anything else is refused.
pub fn id_cursor_param(request: &Request, id_prefix: &str) -> Result<Option<String>, ApiError> {
    let Some(cursor) = request.param("cursor") else {
        return Ok(None);
    };
    match cursor
        .strip_prefix(id_prefix)
        .and_then(crate::vault::BlobId::parse)
    {
        Some(_) => Ok(Some(cursor.to_owned())),
        None => Err(ApiError::BadRequest("invalid cursor".into())),
    }
}

/// `from` and `to`, both included, to the second (times are stored to the second; a fraction is
/// dropped): `to` is not before `from`.
pub fn time_range(
    request: &Request,
) -> Result<(Option<jiff::Timestamp>, Option<jiff::Timestamp>), ApiError> {
    let (from, to) = (time_param(request, "from")?, time_param(request, "to")?);
    if let (Some(from), Some(to)) = (from, to)
        && to.as_second() < from.as_second()
    {
        return Err(ApiError::BadRequest("`to` is before `from`".into()));
    }
    Ok((from, to))
}

/// An RFC 3339 time query parameter.
pub fn time_param(request: &Request, name: &str) -> Result<Option<jiff::Timestamp>, ApiError> {
    match request.param(name) {
        None => Ok(None),
        Some(text) => text
            .parse::<jiff::Timestamp>()
            .map(Some)
            .map_err(|_| ApiError::BadRequest(format!("`{name}` is not an RFC 3339 time"))),
    }
}

/// A response body fed by a blocking producer through a small channel (constant memory).
pub fn channel_body() -> (
    tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    Body,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|item| (item.map(hyper::body::Frame::data), rx))
    });
    (tx, BodyExt::boxed(http_body_util::StreamBody::new(stream)))
}

/// Forwards `Write` calls to a response body in 64 KiB pieces.
pub struct ChannelWriter {
    pub tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    pub buffer: Vec<u8>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= 64 * 1024 {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::take(&mut self.buffer));
        self.tx
            .blocking_send(Ok(piece))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl ChannelWriter {
    pub fn new(tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>) -> ChannelWriter {
        ChannelWriter {
            tx,
            buffer: Vec::with_capacity(64 * 1024),
        }
    }
}

/// Most bytes read and discarded after an early answer, and for how long.
const DRAIN_BYTES: u64 = 64 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(30);

/// `drain_in_background` for a request body not read yet (each frame bounded by `idle`).
pub fn drain_body(body: Incoming, idle: Duration) {
    drain_in_background(futures_util::stream::StreamExt::boxed(
        handlers::body_stream(body, idle),
    ));
}

/// Reads and discards the rest of a request body in the background (bounded), so that the
/// answer already sent is not lost to a TCP reset when the connection closes.
pub fn drain_in_background(
    mut stream: futures_util::stream::BoxStream<'static, Result<Bytes, std::io::Error>>,
) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(DRAIN_TIME, async {
            let mut total = 0u64;
            while let Some(Ok(chunk)) = futures_util::StreamExt::next(&mut stream).await {
                total += chunk.len() as u64;
                if total > DRAIN_BYTES {
                    break;
                }
            }
        })
        .await;
    });
}
