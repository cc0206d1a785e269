//! A minimal HTTPS client for the black-box tests: rustls with an optional client certificate,
//! hyper HTTP/1.1, one connection per request. Real TLS, no mocks.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// What came back.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The `error.code` of an error answer.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
}

impl Client {
    pub fn new(addr: SocketAddr, ca: &Path, identity: Option<(&Path, &Path)>) -> Client {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match identity {
            Some((cert, key)) => {
                let chain: Vec<_> = CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(|c| c.unwrap())
                    .collect();
                let key = PrivateKeyDer::from_pem_file(key).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        Client {
            addr,
            config: Arc::new(config),
        }
    }

    /// Like `new` but restricted to TLS 1.2 (to check it is accepted) or other settings.
    pub fn with_config(addr: SocketAddr, config: rustls::ClientConfig) -> Client {
        Client {
            addr,
            config: Arc::new(config),
        }
    }

    pub async fn get(&self, path: &str) -> Result<Response, String> {
        self.send(hyper::Method::GET, path, &[], Bytes::new()).await
    }

    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<Response, String> {
        self.send(
            hyper::Method::POST,
            path,
            &[("content-type", "application/json")],
            Bytes::from(body.to_string()),
        )
        .await
    }

    /// Sends one request on a fresh connection. A TLS refusal is an `Err`.
    pub async fn send(
        &self,
        method: hyper::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Response, String> {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| format!("http handshake: {e}"))?;
        tokio::spawn(connection);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body)).unwrap();
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Uploads: multipart bodies, and requests whose body is streamed piece by piece (and can be
// abandoned mid-way, as a recorder that crashes or loses the network would).

/// A `multipart/form-data` body built part by part, in the order the parts are added.
#[derive(Debug, Clone)]
pub struct Multipart {
    boundary: String,
    body: Vec<u8>,
}

impl Default for Multipart {
    fn default() -> Multipart {
        Multipart::new()
    }
}

impl Multipart {
    /// An empty body with a boundary that no test payload contains.
    pub fn new() -> Multipart {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Multipart {
            boundary: format!("callguard-test-7Hq2xZ-{:x}-{n}", std::process::id()),
            body: Vec::new(),
        }
    }

    /// The `content-type` header value.
    pub fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }

    /// The delimiter and headers of a part, up to the first byte of its content.
    fn part_head(&self, name: &str, file_name: Option<&str>, content_type: &str) -> Vec<u8> {
        let disposition = match file_name {
            Some(file_name) => format!("form-data; name=\"{name}\"; filename=\"{file_name}\""),
            None => format!("form-data; name=\"{name}\""),
        };
        format!(
            "--{}\r\ncontent-disposition: {disposition}\r\ncontent-type: {content_type}\r\n\r\n",
            self.boundary
        )
        .into_bytes()
    }

    /// Appends a JSON part (`metadata`).
    pub fn json(mut self, name: &str, value: &serde_json::Value) -> Multipart {
        let head = self.part_head(name, None, "application/json");
        self.body.extend(head);
        self.body.extend(value.to_string().as_bytes());
        self.body.extend(b"\r\n");
        self
    }

    /// Appends bytes as they are (a preamble, a malformed part).
    pub fn raw(mut self, bytes: &[u8]) -> Multipart {
        self.body.extend(bytes);
        self
    }

    /// Appends a file part whose headers carry one more, `name: value`.
    pub fn file_with_header(
        mut self,
        name: &str,
        file_name: &str,
        header: (&str, &str),
        content: &[u8],
    ) -> Multipart {
        let mut head = self.part_head(name, Some(file_name), "application/octet-stream");
        head.truncate(head.len() - 2);
        head.extend(format!("{}: {}\r\n\r\n", header.0, header.1).as_bytes());
        self.body.extend(head);
        self.body.extend(content);
        self.body.extend(b"\r\n");
        self
    }

    /// Appends a file part (`audio`), `file_name` carrying the extension.
    pub fn file(mut self, name: &str, file_name: &str, content: &[u8]) -> Multipart {
        let head = self.part_head(name, Some(file_name), "application/octet-stream");
        self.body.extend(head);
        self.body.extend(content);
        self.body.extend(b"\r\n");
        self
    }

    /// The complete body.
    pub fn finish(mut self) -> Bytes {
        self.body
            .extend(format!("--{}--\r\n", self.boundary).as_bytes());
        Bytes::from(self.body)
    }

    /// For streaming a file part: (everything before the file's first byte, everything after
    /// its last byte). Send `head`, the file in any pieces, then `tail`.
    pub fn open_file(mut self, name: &str, file_name: &str) -> (Bytes, Bytes) {
        let head = self.part_head(name, Some(file_name), "application/octet-stream");
        self.body.extend(head);
        let tail = format!("\r\n--{}--\r\n", self.boundary);
        (Bytes::from(self.body), Bytes::from(tail))
    }
}

/// How long a streamed request waits for the server to read a piece or to answer.
const STREAM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A request sent with `Transfer-Encoding: chunked`, its body written piece by piece.
pub struct StreamingRequest {
    body: Option<tokio::sync::mpsc::Sender<Bytes>>,
    response: tokio::task::JoinHandle<Result<Response, String>>,
    connection: tokio::task::JoinHandle<()>,
}

impl StreamingRequest {
    /// Queues one piece of the body. `Err` once the request is over (answered early, or the
    /// connection is gone).
    pub async fn send(&self, piece: Bytes) -> Result<(), String> {
        let Some(body) = &self.body else {
            return Err("the body was already ended".to_owned());
        };
        match tokio::time::timeout(STREAM_TIMEOUT, body.send(piece)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err("the request body is no longer read".to_owned()),
            Err(_) => Err(format!("the body was not read for {STREAM_TIMEOUT:?}")),
        }
    }

    /// Whether the server has answered (or the exchange failed) already.
    pub fn is_over(&self) -> bool {
        self.response.is_finished()
    }

    /// Ends the body and waits for the answer.
    pub async fn finish(mut self) -> Result<Response, String> {
        self.body = None;
        match tokio::time::timeout(STREAM_TIMEOUT, &mut self.response).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(format!("request task: {join}")),
            Err(_) => {
                self.connection.abort();
                self.response.abort();
                Err(format!("no answer within {STREAM_TIMEOUT:?}"))
            }
        }
    }

    /// Waits for the answer with the body still open (a server may answer before reading
    /// it all: 413 ...), then drops the connection.
    pub async fn answer(mut self) -> Result<Response, String> {
        let result = match tokio::time::timeout(STREAM_TIMEOUT, &mut self.response).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(format!("request task: {join}")),
            Err(_) => {
                self.response.abort();
                Err(format!("no answer within {STREAM_TIMEOUT:?}"))
            }
        };
        self.connection.abort();
        let _ = (&mut self.connection).await;
        result
    }

    /// Drops the connection mid-request, without ending the body (a client that crashes).
    pub async fn abort(self) {
        self.connection.abort();
        self.response.abort();
        let _ = self.connection.await;
        let _ = self.response.await;
    }
}

impl Client {
    /// A fresh TLS connection with an HTTP/1.1 handshake done, its driver spawned.
    async fn open<B>(
        &self,
    ) -> Result<
        (
            hyper::client::conn::http1::SendRequest<B>,
            tokio::task::JoinHandle<()>,
        ),
        String,
    >
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| format!("http handshake: {e}"))?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok((sender, driver))
    }

    /// Starts a request whose body is streamed (chunked); see `StreamingRequest`.
    pub async fn start_streaming(
        &self,
        method: hyper::Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<StreamingRequest, String> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            let piece = rx.recv().await?;
            Some((
                Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(piece)),
                rx,
            ))
        });
        let body = http_body_util::StreamBody::new(stream);
        let (mut sender, connection) = self.open().await?;
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(body).unwrap();
        let response = tokio::spawn(async move {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("request: {e}"))?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            Ok(Response {
                status,
                headers,
                body,
            })
        });
        Ok(StreamingRequest {
            body: Some(tx),
            response,
            connection,
        })
    }

    /// `POST /v1/recordings` with `metadata` then `audio` (named `file_name`), in one body
    /// with a `content-length`.
    pub async fn upload(
        &self,
        metadata: &serde_json::Value,
        file_name: &str,
        audio: &[u8],
    ) -> Result<Response, String> {
        let form = Multipart::new()
            .json("metadata", metadata)
            .file("audio", file_name, audio);
        self.post_multipart(form).await
    }

    /// `POST /v1/recordings` with any multipart body (parts missing, out of order, ...).
    pub async fn post_multipart(&self, form: Multipart) -> Result<Response, String> {
        let content_type = form.content_type();
        self.send(
            hyper::Method::POST,
            "/v1/recordings",
            &[("content-type", &content_type)],
            form.finish(),
        )
        .await
    }

    /// Starts a streamed `POST /v1/recordings`: the metadata part and the audio part's
    /// headers are sent; send the audio with `StreamingUpload::send`.
    pub async fn start_upload(
        &self,
        metadata: &serde_json::Value,
        file_name: &str,
    ) -> Result<StreamingUpload, String> {
        self.start_upload_sized(metadata, file_name, None).await
    }

    /// Same; with `Some(audio_len)` the request announces the `content-length` of the whole
    /// body holding that much audio (instead of being chunked).
    pub async fn start_upload_sized(
        &self,
        metadata: &serde_json::Value,
        file_name: &str,
        audio_len: Option<usize>,
    ) -> Result<StreamingUpload, String> {
        let form = Multipart::new().json("metadata", metadata);
        let content_type = form.content_type();
        let (head, tail) = form.open_file("audio", file_name);
        let length = audio_len.map(|n| (head.len() + n + tail.len()).to_string());
        let mut headers = vec![("content-type", content_type.as_str())];
        if let Some(length) = &length {
            headers.push(("content-length", length.as_str()));
        }
        let request = self
            .start_streaming(hyper::Method::POST, "/v1/recordings", &headers)
            .await?;
        request.send(head).await?;
        Ok(StreamingUpload { request, tail })
    }
}

/// A streamed upload in progress (see `Client::start_upload`).
pub struct StreamingUpload {
    pub request: StreamingRequest,
    tail: Bytes,
}

impl StreamingUpload {
    /// Sends the next piece of audio.
    pub async fn send(&self, audio: &[u8]) -> Result<(), String> {
        self.request.send(Bytes::copy_from_slice(audio)).await
    }

    /// Ends the multipart body and waits for the answer.
    pub async fn finish(self) -> Result<Response, String> {
        if !self.request.is_over() {
            // An early answer (413, ...) closes the body; the answer is what matters then.
            let _ = self.request.send(self.tail).await;
        }
        self.request.finish().await
    }

    /// Waits for an early answer, the body still open.
    pub async fn answer(self) -> Result<Response, String> {
        self.request.answer().await
    }

    /// Drops the connection mid-upload.
    pub async fn abort(self) {
        self.request.abort().await;
    }
}
