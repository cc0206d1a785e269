//! The accept loop and per-connection serving: at most `server.max_connections` connections;
//! at the limit, a new connection takes the place of the oldest one still in its TLS handshake
//! (unauthenticated: a flood of connections that never finish their handshake cannot lock out
//! clients that do), or waits for a place when every connection is authenticated. The TLS
//! handshake runs in the connection's own task under `server.handshake_timeout`, then HTTP/1.1
//! with a header size limit and a header read timeout, and a graceful drain on shutdown. Then
//! each request is routed, authenticated, authorised (denials audited) and dispatched.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hyper::Response;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::error::ApiError;
use crate::api::routes::{Endpoint, RouteError};
use crate::api::{AppState, Body, Caller, Request, error_response, handlers, parse_query, tls};
use crate::audit::chain::{AuditDraft, Outcome};

/// Largest request head (request line + headers).
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Serves the API on `listener` until `shutdown`; connection tasks go into `tracker`.
pub async fn run(
    listener: TcpListener,
    tls_config: Arc<rustls::ServerConfig>,
    state: Arc<AppState>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let acceptor = TlsAcceptor::from(tls_config);
    let permits = Arc::new(Semaphore::new(state.config.server.max_connections));
    let handshakes = Arc::new(Handshakes::default());
    loop {
        let (tcp, _peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // Full: the oldest connection still in its handshake gives way, if there is one.
                if handshakes.shed_oldest() {
                    state.metrics.count_tls_failure("shed");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                }
            }
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        let shutdown = shutdown.clone();
        let pending = handshakes.enter();
        tracker.spawn(async move {
            let _permit = permit;
            serve_connection(tcp, acceptor, state, shutdown, pending).await;
        });
    }
}

/// The connections still in their TLS handshake, oldest first.
#[derive(Default)]
struct Handshakes {
    queue: Mutex<VecDeque<(u64, CancellationToken)>>,
    next: std::sync::atomic::AtomicU64,
}

/// One connection's place in `Handshakes`; leaving it (or dropping it) takes it out.
struct PendingHandshake {
    handshakes: Arc<Handshakes>,
    id: u64,
    shed: CancellationToken,
}

impl Handshakes {
    fn enter(self: &Arc<Self>) -> PendingHandshake {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let shed = CancellationToken::new();
        self.lock().push_back((id, shed.clone()));
        PendingHandshake {
            handshakes: Arc::clone(self),
            id,
            shed,
        }
    }

    /// Ends the oldest pending handshake; false when there is none.
    fn shed_oldest(&self) -> bool {
        match self.lock().pop_front() {
            Some((_, shed)) => {
                shed.cancel();
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, CancellationToken)>> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for PendingHandshake {
    fn drop(&mut self) {
        let mut queue = self.handshakes.lock();
        if let Some(at) = queue.iter().position(|(id, _)| *id == self.id) {
            queue.remove(at);
        }
    }
}

/// Bytes one read from a client's socket may take (a bulk upload's body arrives in 64 KiB
/// segments on loopback and local links); a slow client fills only its first pages.
const SOCKET_READ_BUFFER: usize = 64 * 1024;

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    state: Arc<AppState>,
    shutdown: CancellationToken,
    pending: PendingHandshake,
) {
    let _ = tcp.set_nodelay(true);
    // rustls asks the socket for one record (16 KiB) at a time; an upload arrives faster than
    // that, so reads go through a buffer that takes what the socket holds in one call.
    let tcp = tokio::io::BufReader::with_capacity(SOCKET_READ_BUFFER, tcp);
    // Failed handshakes are counted (`tls_handshake_failures_total`) and logged at debug only:
    // anyone who reaches the port can cause them by the thousand.
    let handshake = tokio::select! {
        accepted = tokio::time::timeout(state.config.server.handshake_timeout, acceptor.accept(tcp)) => accepted,
        _ = pending.shed.cancelled() => {
            tracing::debug!("TLS handshake shed: connection limit reached");
            return;
        }
    };
    drop(pending);
    let stream = match handshake {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            // rustls's refusals come as InvalidData; anything else is the peer going away.
            let reason = match error.kind() {
                std::io::ErrorKind::InvalidData => "refused",
                _ => "closed",
            };
            state.metrics.count_tls_failure(reason);
            tracing::debug!(%error, "TLS handshake refused");
            return;
        }
        Err(_) => {
            state.metrics.count_tls_failure("timeout");
            tracing::debug!("TLS handshake timed out");
            return;
        }
    };
    // A certificate the CA signed but whose subject names no single, plain CN is served all the
    // same: each of its requests is refused `403 unknown_identity` and audited.
    let cn = {
        let (_, session) = stream.get_ref();
        session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(tls::common_name)
    };
    let service_state = state.clone();
    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let state = service_state.clone();
        let cn = cn.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(request, state, cn).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.server.handshake_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), connection).await;
        }
    }
}

/// Routes, authenticates, authorises and dispatches one request.
async fn handle(
    request: hyper::Request<hyper::body::Incoming>,
    state: Arc<AppState>,
    cn: Option<String>,
) -> Response<Body> {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    // hyper's buffer limit is not a strict bound on the head when it arrives in large reads.
    let head_len: usize = parts.uri.to_string().len()
        + parts
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    if head_len > MAX_HEAD_BYTES {
        return finish(&state, "unknown", started, Err(ApiError::HeadersTooLarge));
    }
    // A one-row read on an idle reader connection (it never waits for the writer): cheaper
    // here than the two thread switches of a blocking hand-off, paid by every request.
    let routed = Endpoint::parse(&parts.method, parts.uri.path());
    // No usable CN: no role, and the audit entry says why.
    let (cn, role) = match cn {
        Some(cn) => {
            let role = state.catalog.role_of(&cn);
            (cn, role)
        }
        None => (tls::NO_USABLE_CN.to_owned(), Ok(None)),
    };
    // Who asks comes first: a certificate without a role learns nothing of the API, not even
    // which paths exist.
    let role = match role {
        Ok(Some(role)) => role,
        Ok(None) => {
            let (action, object) = match &routed {
                Ok(endpoint) => (endpoint.name(), endpoint.object()),
                Err(_) => ("unknown", String::new()),
            };
            let why = match cn.as_str() {
                tls::NO_USABLE_CN => "the certificate's subject has no single, printable CN",
                _ => "certificate CN has no role",
            };
            let refusal = match deny_as(&state, &cn, "", action, &object, why).await {
                Ok(()) => ApiError::UnknownIdentity,
                Err(unaudited) => unaudited,
            };
            return finish(&state, action, started, Err(refusal));
        }
        Err(error) => return finish(&state, "unknown", started, Err(ApiError::from(error))),
    };
    let endpoint = match routed {
        Ok(endpoint) => endpoint,
        Err(RouteError::NotFound) => {
            return finish(&state, "unknown", started, Err(ApiError::NotFound));
        }
        Err(RouteError::MethodNotAllowed) => {
            let allowed = Endpoint::methods_of(parts.uri.path());
            return finish(
                &state,
                "unknown",
                started,
                Err(ApiError::MethodNotAllowed(allowed)),
            );
        }
    };
    let name = endpoint.name();
    if !endpoint.allowed_roles().contains(&role) {
        // The purpose a refused audio read stated goes with its entry (a known purpose only:
        // the query is the client's free text).
        let stated = parse_query(parts.uri.query())
            .ok()
            .and_then(|query| query.get("purpose").cloned())
            .filter(|purpose| crate::access::PURPOSES.contains(&purpose.as_str()));
        let draft = AuditDraft::new(
            &cn,
            role.as_str(),
            name,
            &endpoint.object(),
            Outcome::Denied,
        )
        .detail("role not allowed on this endpoint");
        let draft = match &stated {
            Some(purpose) => draft.purpose(purpose),
            None => draft,
        };
        let audited = audit_refusal(&state, draft).await;
        let refusal = match audited {
            Ok(()) => ApiError::Forbidden(format!(
                "role `{role}` may not call {} {}",
                parts.method, name
            )),
            Err(unaudited) => unaudited,
        };
        return finish(&state, name, started, Err(refusal));
    }
    if let Some(why) = cross_site(&parts.method, &parts.headers) {
        let refusal = match deny(&state, &cn, role.as_str(), &endpoint, why).await {
            Ok(()) => ApiError::CrossSite,
            Err(unaudited) => unaudited,
        };
        return finish(&state, name, started, Err(refusal));
    }
    let query = match parse_query(parts.uri.query()) {
        Ok(query) => query,
        Err(why) => return finish(&state, name, started, Err(ApiError::BadRequest(why))),
    };
    let request = Request {
        endpoint,
        caller: Caller { cn, role },
        query,
        headers: parts.headers,
        body,
    };
    let result = handlers::dispatch(&state, request).await;
    finish(&state, name, started, result)
}

/// Why a request sent by a browser on behalf of another site's page is refused, if it is one
/// (cross-site request forgery: a browser holding a client certificate presents it to any page's
/// requests). The Fetch Metadata resource isolation policy: a browser says where a request comes
/// from (`Sec-Fetch-Site`); same-origin requests and requests the user typed or bookmarked
/// pass, and from another site only reads a page may make without reading the answer: a
/// navigation (a link to a recording's audio) or a media element (a supervision web page's
/// player, `format=wav`). Browsers too old to say so still send `Origin` with any request that
/// changes something, which must then be this server's. Non-browser clients (the recorder,
/// curl, scripts) send neither header.
fn cross_site(method: &hyper::Method, headers: &hyper::HeaderMap) -> Option<&'static str> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let safe = matches!(*method, hyper::Method::GET | hyper::Method::HEAD);
    match header("sec-fetch-site") {
        Some("same-origin" | "none") => None,
        Some(_) => {
            let navigation = header("sec-fetch-mode") == Some("navigate")
                && !matches!(header("sec-fetch-dest"), Some("object" | "embed"));
            let media = matches!(header("sec-fetch-dest"), Some("audio" | "video" | "track"));
            match safe && (navigation || media) {
                true => None,
                false => Some("request from another site's page (Sec-Fetch-Site)"),
            }
        }
        None if safe => None,
        None => {
            let origin = header("origin")?;
            let own = header("host").map(|host| format!("https://{host}"));
            match own.is_some_and(|own| own.eq_ignore_ascii_case(origin)) {
                true => None,
                false => Some("request from another site's page (Origin)"),
            }
        }
    }
}

/// Audits a refused request (guarantee 8). If the entry cannot be written (a full disk), the
/// request is refused all the same, with the catalog's error (`507`) instead of the refusal:
/// no refusal goes unaudited, and the client retries later.
async fn deny(
    state: &Arc<AppState>,
    cn: &str,
    role: &str,
    endpoint: &Endpoint,
    why: &str,
) -> Result<(), ApiError> {
    deny_as(state, cn, role, endpoint.name(), &endpoint.object(), why).await
}

/// `deny` under an explicit action and object (a request that names no endpoint).
async fn deny_as(
    state: &Arc<AppState>,
    cn: &str,
    role: &str,
    action: &str,
    object: &str,
    why: &str,
) -> Result<(), ApiError> {
    audit_refusal(
        state,
        AuditDraft::new(cn, role, action, object, Outcome::Denied).detail(why),
    )
    .await
}

/// Writes a refusal's audit entry (see `deny`).
async fn audit_refusal(state: &Arc<AppState>, draft: AuditDraft) -> Result<(), ApiError> {
    let now = state.clock.now();
    match state
        .catalog
        .call(move |catalog| catalog.audit(draft, now))
        .await
    {
        Ok(_) => Ok(()),
        Err(error) => {
            tracing::error!(%error, "cannot audit a denied request");
            Err(ApiError::from(error))
        }
    }
}

/// Turns a handler result into a response, counting and logging it (no personal data).
fn finish(
    state: &AppState,
    name: &'static str,
    started: Instant,
    result: Result<Response<Body>, ApiError>,
) -> Response<Body> {
    let response = match result {
        Ok(response) => response,
        Err(error) => {
            if let ApiError::Internal(detail) = &error {
                tracing::error!(endpoint = name, %detail, "internal error");
            }
            error_response(&error)
        }
    };
    // Every answer carries personal data, audit entries or refusals about them: no cache keeps it.
    let mut response = response;
    response
        .headers_mut()
        .entry(hyper::header::CACHE_CONTROL)
        .or_insert(hyper::header::HeaderValue::from_static("no-store"));
    let status = response.status();
    let elapsed = started.elapsed();
    state
        .metrics
        .requests
        .get_or_create(&vec![
            ("endpoint", name.to_owned()),
            ("status", status.as_u16().to_string()),
        ])
        .inc();
    state
        .metrics
        .request_duration
        .get_or_create(&vec![("endpoint", name.to_owned())])
        .observe(elapsed.as_secs_f64());
    match status.is_server_error() {
        true => tracing::warn!(
            endpoint = name,
            status = status.as_u16(),
            ms = elapsed.as_millis() as u64,
            "request"
        ),
        false => tracing::info!(
            endpoint = name,
            status = status.as_u16(),
            ms = elapsed.as_millis() as u64,
            "request"
        ),
    }
    response
}
