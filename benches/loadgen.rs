//! Load generator for the streaming upload (SPEC §5.1): uploads generated 8 kHz µ-law WAV
//! recordings over HTTPS with mutual TLS (`recorder` identity) to a running callguard, with M
//! concurrent streams (one keep-alive connection each), and prints throughput, latency
//! percentiles, outcomes by status and the server's peak RSS.
//!
//! Two modes:
//! - bulk (default): `--files N` uploads as fast as the server takes them, bodies of known
//!   length sent in 64 KiB frames; with `--baseline-dir DIR` the same files are also written
//!   with write+fsync into DIR by M threads (the reference of the printed ingest/copy ratio),
//!   and hashed and written through the vault alone (`BlobWriter`, M tasks, no network or
//!   catalog: the ceiling of that ratio). The three phases are interleaved in `--rounds`
//!   rounds, in an order rotating from round to round, so that a disk whose speed drifts
//!   (a virtual disk takes its first GB after a pause several times faster) favours none.
//! - `--realtime`: every upload is paced like a live call (8000 bytes/s, 100 ms chunks of
//!   800 bytes, chunked transfer encoding), and the time each chunk waits between its scheduled
//!   instant and being taken by the connection is reported. With `--duration SECS`, M live
//!   calls are kept running for that long (first calls are shortened so that call ends are
//!   spread evenly), a new call starting as one ends; calls in progress at the deadline finish.
//!
//! A plain `fn main` (`harness = false`): it drives an external server and measures
//! distributions, which criterion does not fit. It talks only to the given loopback URL, stops
//! by itself, and gives up on a request that makes no progress for 60 s.
//!
//! Run: `cargo bench --bench loadgen -- --help`.

use std::collections::{BTreeMap, VecDeque};
use std::error::Error;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use callguard::clock::{Clock, SystemClock};
use clap::Parser;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper::client::conn::http1::SendRequest;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

/// A request that makes no progress (no body frame taken, no answer) for this long fails.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// µ-law at 8 kHz: one byte per sample.
const BYTES_PER_SECOND: usize = 8000;
/// Realtime pacing: 100 ms of audio per chunk.
const CHUNK_INTERVAL: Duration = Duration::from_millis(100);
const CHUNK_BYTES: usize = BYTES_PER_SECOND / 10;
/// Bulk mode frame size.
const BULK_FRAME: usize = 64 * 1024;
/// Size of the RIFF/WAVE header written by `wav_header`.
const WAV_HEADER_BYTES: usize = 58;
/// Distinct audio contents generated are capped at this many bytes (files reuse them in turn;
/// every upload still has its own call_id).
const POOL_BYTES: usize = 256 << 20;
/// Chunks waiting longer than this are counted as late.
const LATE_CHUNK: Duration = Duration::from_secs(1);

#[derive(Parser, Debug, Clone)]
#[command(
    name = "loadgen",
    about = "Upload load generator for callguard (POST /v1/recordings over mutual TLS).",
    long_about = "Upload load generator for callguard (POST /v1/recordings over mutual TLS).\n\n\
        Uploads generated 8 kHz mono µ-law WAV recordings to a running callguard with the \
        `recorder` identity, M concurrent streams each on its own keep-alive connection, and \
        prints throughput, latency percentiles, outcomes by status and the server's peak RSS.\n\n\
        Relative paths are relative to the working directory, which is the package root under \
        `cargo bench`.",
    after_help = "Examples:\n  \
        cargo bench --bench loadgen -- --files 2000 --concurrency 8 --baseline-dir /var/lib/callguard-bench\n  \
        cargo bench --bench loadgen -- --realtime --concurrency 500 --duration 60 --server-pid $(pidof callguard)"
)]
struct Options {
    /// Base URL of the callguard API; must be a loopback address.
    #[arg(long, default_value = "https://127.0.0.1:8443")]
    url: String,
    /// Directory holding `ca.crt`, `recorder.crt` and `recorder.key`.
    #[arg(long, default_value = "callguard-dev/pki")]
    pki: PathBuf,
    /// Number of uploads (ignored with --realtime --duration).
    #[arg(long, default_value_t = 200)]
    files: u64,
    /// Concurrent upload streams, each on its own TLS connection reused across uploads.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Length of each recording, in seconds of 8 kHz µ-law (8000 bytes per second).
    #[arg(long, default_value_t = 60.0)]
    seconds_of_audio: f64,
    /// Pace every upload at real time (800-byte chunks every 100 ms, chunked encoding) and
    /// report per-chunk send latency.
    #[arg(long)]
    realtime: bool,
    /// With --realtime: keep --concurrency live calls running for this many seconds, starting a
    /// new call as one ends (calls in progress at the end are completed).
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Process id of the server, to report its peak RSS (VmHWM in /proc/PID/status).
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// File holding the server's process id (alternative to --server-pid).
    #[arg(long, value_name = "FILE", conflicts_with = "server_pid")]
    server_pid_file: Option<PathBuf>,
    /// Bulk mode only: also write the same files with write+fsync into a new subdirectory of
    /// DIR with --concurrency threads, and through the vault alone (SHA-256 and `BlobWriter`,
    /// --concurrency tasks), interleaved with the uploads (see --rounds); print both
    /// throughputs and the ratios. Everything written there is removed at the end. Put DIR on
    /// the server's data disk.
    #[arg(long, value_name = "DIR")]
    baseline_dir: Option<PathBuf>,
    /// With --baseline-dir: the files go in this many rounds; each round uploads, copies and
    /// writes through the vault alone its share of the files, the three phases in an order that
    /// rotates from one round to the next, so that every phase meets the disk in the same
    /// states (a virtual disk's speed drifts by 2 to 4 times within a minute).
    #[arg(long, default_value_t = 12, value_name = "K")]
    rounds: u64,
    /// With --baseline-dir: leave the files the copy and the vault alone wrote (their
    /// directories are printed) for the caller to remove. On ext4 without a journal, files
    /// deleted in the last minutes slow the creation of new ones (it skips their inodes), so a
    /// script running several loads removes everything at its end instead of between runs.
    #[arg(long)]
    keep_baseline_files: bool,
    /// Print the summary as one JSON line on stdout (progress still goes to stderr).
    #[arg(long)]
    json: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let explicit = std::env::args().skip(1).any(|arg| arg != "--bench");
    let options = Options::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => fail(&format!("cannot start the runtime: {error}")),
    };
    match runtime.block_on(run(options)) {
        Ok(()) => {}
        Err(RunError::NoInstance(why)) if !explicit => {
            // `cargo bench` without arguments runs every bench: do not fail the others
            // because no development instance is running.
            eprintln!("loadgen: skipped, no callguard instance to load ({why}); see --help");
        }
        Err(RunError::NoInstance(why)) | Err(RunError::Usage(why)) => fail(&why),
    }
}

fn fail(why: &str) -> ! {
    eprintln!("loadgen: {why}");
    std::process::exit(1)
}

enum RunError {
    /// Bad options or files.
    Usage(String),
    /// No instance to load: its certificates cannot be read or the preflight request did not
    /// get through.
    NoInstance(String),
}

// ---------------------------------------------------------------------------------------------
// Audio

/// G.711 µ-law encoding of one 16-bit linear sample.
fn linear_to_ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut magnitude = i32::from(sample);
    let sign = if magnitude < 0 {
        magnitude = -magnitude;
        0x80
    } else {
        0x00
    };
    magnitude = magnitude.min(CLIP) + BIAS;
    // Position of the highest set bit among bits 7..=14 gives the segment (exponent).
    let exponent = (31 - magnitude.leading_zeros() as i32 - 7).clamp(0, 7);
    let mantissa = (magnitude >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) | mantissa) as u8
}

/// RIFF/WAVE header for `samples` bytes of 8 kHz mono µ-law (format tag 7): `fmt ` with
/// cbSize, `fact` (required for non-PCM formats), then the `data` chunk header.
fn wav_header(samples: usize) -> [u8; WAV_HEADER_BYTES] {
    let data = samples as u32;
    let mut header = [0u8; WAV_HEADER_BYTES];
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        header[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    put(b"RIFF");
    put(&(WAV_HEADER_BYTES as u32 - 8 + data + data % 2).to_le_bytes());
    put(b"WAVE");
    put(b"fmt ");
    put(&18u32.to_le_bytes());
    put(&7u16.to_le_bytes()); // WAVE_FORMAT_MULAW
    put(&1u16.to_le_bytes()); // channels
    put(&8000u32.to_le_bytes()); // sample rate
    put(&8000u32.to_le_bytes()); // byte rate
    put(&1u16.to_le_bytes()); // block align
    put(&8u16.to_le_bytes()); // bits per sample
    put(&0u16.to_le_bytes()); // cbSize
    put(b"fact");
    put(&4u32.to_le_bytes());
    put(&data.to_le_bytes()); // sample frames
    put(b"data");
    put(&data.to_le_bytes());
    header
}

/// `len` µ-law samples of a tone (different for each `seed`) with a little noise.
fn generate_samples(seed: u64, len: usize) -> Bytes {
    let frequency = 300.0 + (seed % 27) as f64 * 100.0;
    let step = 2.0 * std::f64::consts::PI * frequency / BYTES_PER_SECOND as f64;
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    for index in 0..len {
        // xorshift64 noise, about -40 dBFS.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let noise = ((state >> 40) as i32 - (1 << 23)) as f64 / (1 << 23) as f64 * 300.0;
        let tone = (index as f64 * step).sin() * 8000.0;
        out.push(linear_to_ulaw((tone + noise) as i16));
    }
    Bytes::from(out)
}

/// Distinct audio contents, each `len` samples, at most `POOL_BYTES` in all.
fn audio_pool(files: u64, len: usize) -> Vec<Bytes> {
    let count = (POOL_BYTES / len.max(1)).clamp(1, files.max(1) as usize);
    (0..count as u64)
        .map(|seed| generate_samples(seed, len))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The target

struct Target {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    authority: String,
    tls: Arc<rustls::ClientConfig>,
}

fn parse_target(url: &str, pki: &Path) -> Result<Target, String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("--url {url}: only https:// URLs are supported"))?;
    let authority = rest.trim_end_matches('/');
    if authority.contains('/') {
        return Err(format!(
            "--url {url}: give the base URL only (https://HOST:PORT)"
        ));
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("--url {url}: unbalanced ["))?;
            let port = after.strip_prefix(':').unwrap_or("443");
            (host.to_owned(), port)
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), port),
            None => (authority.to_owned(), "443"),
        },
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("--url {url}: bad port {port:?}"))?;
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("--url {url}: cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("--url {url}: {host} has no address"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "--url {url}: {} is not a loopback address; loadgen only loads a local instance",
            addr.ip()
        ));
    }
    let server_name = match host.parse::<IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(host.clone())
            .map_err(|e| format!("--url {url}: bad host name: {e}"))?,
    };
    Ok(Target {
        addr,
        server_name,
        authority: authority.to_owned(),
        tls: Arc::new(tls_config(pki)?),
    })
}

fn tls_config(pki: &Path) -> Result<rustls::ClientConfig, String> {
    let ca = pki.join("ca.crt");
    let cert = pki.join("recorder.crt");
    let key = pki.join("recorder.key");
    let read_certs = |path: &Path| -> Result<Vec<CertificateDer<'static>>, String> {
        CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("cannot read {}: {e} (see --pki)", path.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    for root in read_certs(&ca)? {
        roots
            .add(root)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let chain = read_certs(&cert)?;
    let key = PrivateKeyDer::from_pem_file(&key)
        .map_err(|e| format!("cannot read {}: {e} (see --pki)", key.display()))?;
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("{}: {e}", cert.display()))
}

type Connection = SendRequest<UploadBody>;

/// Opens one mutual-TLS HTTP/1.1 connection; the error is a short outcome key. With
/// `small_buffer` (paced uploads), hyper buffers at most 8 KiB of body before it stops taking
/// chunks, so that a chunk is "taken" when it goes to the TLS stream, not to a deep queue.
async fn connect<B>(target: &Target, small_buffer: bool) -> Result<SendRequest<B>, String>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    let open = async {
        let tcp = tokio::net::TcpStream::connect(target.addr)
            .await
            .map_err(|e| format!("connect: {}", e.kind()))?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio_rustls::TlsConnector::from(target.tls.clone())
            .connect(target.server_name.clone(), tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        let mut builder = hyper::client::conn::http1::Builder::new();
        if small_buffer {
            builder.max_buf_size(8192);
        }
        let (sender, connection) = builder
            .handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| format!("http handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    };
    match tokio::time::timeout(STALL_TIMEOUT, open).await {
        Ok(result) => result,
        Err(_) => Err("connect: timeout".into()),
    }
}

/// `GET /v1/status` on a connection of its own: the server's version.
async fn preflight(target: &Target) -> Result<String, String> {
    let exchange = async {
        let mut sender = connect::<http_body_util::Empty<Bytes>>(target, false).await?;
        let request = hyper::Request::get("/v1/status")
            .header(hyper::header::HOST, &target.authority)
            .body(http_body_util::Empty::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("GET /v1/status: {e}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("GET /v1/status: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "GET /v1/status answered {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        Ok(json["version"].as_str().unwrap_or("unknown").to_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "GET /v1/status: timeout".to_owned())?
}

// ---------------------------------------------------------------------------------------------
// The request body

/// One paced chunk: its bytes, the instant it was due, the instant the pacer released it,
/// whether it ends the body.
struct Chunk {
    data: Bytes,
    due: Instant,
    released: Instant,
    last: bool,
}

enum Source {
    /// Everything available at once (bulk mode).
    Ready(VecDeque<Bytes>),
    /// Chunks released by the pacer (realtime mode).
    Paced(mpsc::Receiver<Chunk>),
}

/// What one upload's body has done, shared with the uploader.
struct Progress {
    origin: Instant,
    /// Microseconds since `origin` of the last frame taken by the connection.
    last_us: AtomicU64,
    /// Microseconds since `origin` (+1) when the last frame was taken; 0 while sending.
    sent_us: AtomicU64,
    /// Per chunk (paced bodies only), in microseconds: (released → taken by the connection,
    /// due → released).
    chunks: Mutex<Vec<(u32, u32)>>,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            origin: Instant::now(),
            last_us: AtomicU64::new(0),
            sent_us: AtomicU64::new(0),
            chunks: Mutex::new(Vec::new()),
        }
    }

    fn micros(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }

    fn touch(&self) {
        self.last_us.store(self.micros(), Ordering::Relaxed);
    }

    fn mark_sent(&self) {
        self.sent_us.store(self.micros() + 1, Ordering::Relaxed);
    }

    fn sent_at(&self) -> Option<Instant> {
        match self.sent_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(self.origin + Duration::from_micros(us - 1)),
        }
    }

    fn stalled(&self) -> bool {
        let idle = self.micros() - self.last_us.load(Ordering::Relaxed);
        Duration::from_micros(idle) > STALL_TIMEOUT
    }
}

/// The multipart body of one upload. A paced body whose pacer goes away before the last chunk
/// fails (so hyper aborts the request) instead of ending: a truncated upload must never look
/// complete.
struct UploadBody {
    source: Source,
    progress: Arc<Progress>,
    length: Option<u64>,
    finished: bool,
}

impl Body for UploadBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        match &mut this.source {
            Source::Ready(queue) => {
                let Some(data) = queue.pop_front() else {
                    this.finished = true;
                    this.progress.mark_sent();
                    return Poll::Ready(None);
                };
                this.progress.touch();
                if queue.is_empty() {
                    this.finished = true;
                    this.progress.mark_sent();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Source::Paced(receiver) => match receiver.poll_recv(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(chunk)) => {
                    let micros = |d: Duration| d.as_micros().min(u32::MAX as u128) as u32;
                    let waited = micros(chunk.released.elapsed());
                    let lag = micros(chunk.released.saturating_duration_since(chunk.due));
                    this.progress.touch();
                    if let Ok(mut chunks) = this.progress.chunks.lock() {
                        chunks.push((waited, lag));
                    }
                    if chunk.last {
                        this.finished = true;
                        this.progress.mark_sent();
                    }
                    Poll::Ready(Some(Ok(Frame::data(chunk.data))))
                }
                Poll::Ready(None) => Poll::Ready(Some(Err(std::io::Error::other(
                    "upload abandoned before its end",
                )))),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(length) => SizeHint::with_exact(length),
            None => SizeHint::default(),
        }
    }
}

/// Releases a paced upload: the multipart head (with the WAV header) at once, then one chunk of
/// audio per 100 ms as it would be recorded, then the closing boundary with the last chunk.
async fn pace(sender: mpsc::Sender<Chunk>, head: Bytes, audio: Bytes, tail: Bytes, start: Instant) {
    let chunk = |data, due, last| Chunk {
        data,
        due,
        released: Instant::now(),
        last,
    };
    if sender.send(chunk(head, start, false)).await.is_err() {
        return;
    }
    let mut due = start;
    let mut offset = 0;
    while offset < audio.len() {
        let end = (offset + CHUNK_BYTES).min(audio.len());
        due += CHUNK_INTERVAL;
        tokio::time::sleep_until(due.into()).await;
        if sender
            .send(chunk(audio.slice(offset..end), due, false))
            .await
            .is_err()
        {
            return;
        }
        offset = end;
    }
    let _ = sender.send(chunk(tail, due, true)).await;
}

// ---------------------------------------------------------------------------------------------
// Uploads

/// Shared state of a run.
struct Shared {
    options: Options,
    target: Arc<Target>,
    run: String,
    boundary: String,
    started_at: String,
    pool: Vec<Bytes>,
    /// Next upload number.
    next: AtomicU64,
    /// Realtime with --duration: no call starts after this instant.
    deadline: Option<Instant>,
    done: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
}

/// What happened to one upload.
struct Record {
    /// `201 stored`, `501 not_implemented`, `timeout`, ...
    outcome: String,
    /// 2xx with `"status": "stored"` (201, or 200 for a repeat).
    stored: bool,
    /// Any 2xx (stored or discarded); everything else is an error.
    success: bool,
    audio_bytes: u64,
    /// Request start to full answer (None when no answer came).
    total: Option<Duration>,
    /// Last body byte taken by the connection to the answer's head.
    commit: Option<Duration>,
}

#[derive(Default)]
struct StreamReport {
    records: Vec<Record>,
    /// (released → taken, due → released) in microseconds, per paced chunk.
    chunk_us: Vec<(u32, u32)>,
    connections: u64,
}

impl Shared {
    fn multipart_head(&self, number: u64, samples: usize) -> Bytes {
        let metadata = serde_json::json!({
            "call_id": format!("load-{}-{number}", self.run),
            "started_at": self.started_at,
            "direction": "inbound",
            "caller": format!("+3361234{:04}", number % 10_000),
            "callee": "+33145678900",
        });
        let boundary = &self.boundary;
        let mut head = format!(
            "--{boundary}\r\n\
             Content-Disposition: form-data; name=\"metadata\"\r\n\
             Content-Type: application/json\r\n\r\n\
             {metadata}\r\n\
             --{boundary}\r\n\
             Content-Disposition: form-data; name=\"audio\"; filename=\"load-{run}-{number}.wav\"\r\n\
             Content-Type: audio/wav\r\n\r\n",
            run = self.run
        )
        .into_bytes();
        head.extend_from_slice(&wav_header(samples));
        Bytes::from(head)
    }

    fn tail(&self) -> Bytes {
        Bytes::from(format!("\r\n--{}--\r\n", self.boundary))
    }

    /// Audio of upload `number` (the first call of a stream in --duration mode is shorter).
    fn audio(&self, number: u64, samples: Option<usize>) -> Bytes {
        let audio = &self.pool[(number % self.pool.len() as u64) as usize];
        match samples {
            Some(len) => audio.slice(..len.min(audio.len())),
            None => audio.clone(),
        }
    }
}

/// One upload on the stream's connection (opened or reopened as needed).
async fn upload(
    shared: &Shared,
    connection: &mut Option<Connection>,
    report: &mut StreamReport,
    number: u64,
    audio: Bytes,
) -> Record {
    let audio_bytes = (WAV_HEADER_BYTES + audio.len()) as u64;
    let failed = |outcome: String| Record {
        outcome,
        stored: false,
        success: false,
        audio_bytes,
        total: None,
        commit: None,
    };
    if connection.as_ref().is_none_or(|c| c.is_closed()) {
        *connection = None;
        report.connections += 1;
        match connect(&shared.target, shared.options.realtime).await {
            Ok(opened) => *connection = Some(opened),
            Err(why) => return failed(why),
        }
    }
    let Some(sender) = connection.as_mut() else {
        return failed("connect: no connection".into());
    };
    match tokio::time::timeout(STALL_TIMEOUT, sender.ready()).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) | Err(_) => {
            // The server closed the idle connection: open a new one.
            *connection = None;
            report.connections += 1;
            match connect(&shared.target, shared.options.realtime).await {
                Ok(opened) => *connection = Some(opened),
                Err(why) => return failed(why),
            }
        }
    }
    let Some(sender) = connection.as_mut() else {
        return failed("connect: no connection".into());
    };

    let head = shared.multipart_head(number, audio.len());
    let tail = shared.tail();
    let progress = Arc::new(Progress::new());
    let start = Instant::now();
    let (body, pacer) = if shared.options.realtime {
        let (chunks, receiver) = mpsc::channel(4);
        let body = UploadBody {
            source: Source::Paced(receiver),
            progress: progress.clone(),
            length: None,
            finished: false,
        };
        (body, Some(pace(chunks, head, audio, tail, start)))
    } else {
        let length = (head.len() + audio.len() + tail.len()) as u64;
        let mut frames = VecDeque::with_capacity(audio.len() / BULK_FRAME + 3);
        frames.push_back(head);
        let mut offset = 0;
        while offset < audio.len() {
            let end = (offset + BULK_FRAME).min(audio.len());
            frames.push_back(audio.slice(offset..end));
            offset = end;
        }
        frames.push_back(tail);
        let body = UploadBody {
            source: Source::Ready(frames),
            progress: progress.clone(),
            length: Some(length),
            finished: false,
        };
        (body, None)
    };
    let request = match hyper::Request::post("/v1/recordings")
        .header(hyper::header::HOST, &shared.target.authority)
        .header(
            hyper::header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={}", shared.boundary),
        )
        .body(body)
    {
        Ok(request) => request,
        Err(error) => return failed(format!("request: {error}")),
    };

    let response = sender.send_request(request);
    tokio::pin!(response);
    let pacer = async move {
        if let Some(pacer) = pacer {
            pacer.await;
        }
    };
    tokio::pin!(pacer);
    let mut pacer_done = false;
    let answer = loop {
        tokio::select! {
            answer = &mut response => break answer.map_err(|e| format!("http: {}", hyper_reason(&e))),
            () = &mut pacer, if !pacer_done => pacer_done = true,
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                if progress.stalled() {
                    break Err("timeout (no progress for 60 s)".into());
                }
            }
        }
    };
    let head_at = Instant::now();
    let complete = progress.sent_at();
    if let Ok(mut chunks) = progress.chunks.lock() {
        report.chunk_us.append(&mut chunks);
    }
    let response = match answer {
        Ok(response) => response,
        Err(why) => {
            *connection = None;
            return failed(why);
        }
    };
    let status = response.status();
    let closing = response
        .headers()
        .get(hyper::header::CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let body = match tokio::time::timeout(STALL_TIMEOUT, response.into_body().collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(error)) => {
            *connection = None;
            return failed(format!("http: {}", hyper_reason(&error)));
        }
        Err(_) => {
            *connection = None;
            return failed("timeout (answer body)".into());
        }
    };
    let total = start.elapsed();
    if complete.is_none() || closing {
        // Answered before the whole body was sent (or asked to close): the connection cannot
        // carry another request.
        *connection = None;
    }
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let detail = if status.is_success() {
        match (json["status"].as_str(), json["reason"].as_str()) {
            (Some("discarded"), Some(reason)) => format!("discarded {reason}"),
            (Some(state), _) => state.to_owned(),
            (None, _) => "unparsed answer".to_owned(),
        }
    } else {
        json["error"]["code"]
            .as_str()
            .unwrap_or("unparsed answer")
            .to_owned()
    };
    Record {
        outcome: format!("{} {detail}", status.as_u16()),
        stored: status.is_success() && json["status"] == "stored",
        success: status.is_success(),
        audio_bytes,
        total: Some(total),
        commit: complete.map(|sent| head_at.saturating_duration_since(sent)),
    }
}

fn hyper_reason(error: &hyper::Error) -> String {
    if error.is_incomplete_message() {
        "connection closed before the answer".into()
    } else if error.is_closed() || error.is_canceled() {
        "connection closed".into()
    } else if error.is_body_write_aborted() {
        "body write aborted".into()
    } else if error.is_timeout() {
        "timeout".into()
    } else {
        error.to_string()
    }
}

/// One stream: uploads on its connection until upload number `end` or the duration is
/// reached; hands back its connection (for the next round) and its report.
async fn stream(
    shared: Arc<Shared>,
    index: usize,
    mut connection: Option<Connection>,
    mut report: StreamReport,
    load_start: Instant,
    end: u64,
) -> (usize, Option<Connection>, StreamReport) {
    let options = &shared.options;
    let full = shared.pool[0].len();
    let mut first = true;
    loop {
        let now = Instant::now();
        if let Some(deadline) = shared.deadline
            && now >= deadline
        {
            break;
        }
        let number = shared.next.fetch_add(1, Ordering::Relaxed);
        if shared.deadline.is_none() && number >= end {
            break;
        }
        // Steady state from the start: the first call of stream i is (i+1)/M of a full call,
        // so that call ends (and new calls) are spread evenly instead of all at once.
        let samples = match (first && shared.deadline.is_some(), options.concurrency) {
            (true, m) if m > 1 => {
                let chunks = full.div_ceil(CHUNK_BYTES);
                let mine = (chunks * (index + 1)).div_ceil(m).max(1);
                Some((mine * CHUNK_BYTES).min(full))
            }
            _ => None,
        };
        first = false;
        let audio = shared.audio(number, samples);
        let call_length = Duration::from_secs_f64(audio.len() as f64 / BYTES_PER_SECOND as f64);
        let in_flight = shared.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        shared
            .peak_in_flight
            .fetch_max(in_flight, Ordering::Relaxed);
        let call_start = Instant::now();
        let record = upload(&shared, &mut connection, &mut report, number, audio).await;
        shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        shared.done.fetch_add(1, Ordering::Relaxed);
        if !record.success {
            shared.errors.fetch_add(1, Ordering::Relaxed);
        }
        report.records.push(record);
        if options.realtime {
            // A live call lasts its length whatever the answer: an early error does not make
            // the recorder send the next call sooner.
            let next = (call_start + call_length).max(load_start);
            tokio::time::sleep_until(next.into()).await;
        }
    }
    (index, connection, report)
}

// ---------------------------------------------------------------------------------------------
// Server memory

fn read_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// CPU time (user + system) of a process in seconds, from `/proc/<pid>/stat` (`self` for this
/// one), counted in USER_HZ = 100 ticks per second as on every mainstream Linux ABI.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3, `state`.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// CPU time all processors spent busy, in seconds (first line of `/proc/stat`: everything but
/// idle and iowait; guest time is already counted in user).
/// CPU seconds so far of the server (if known), of this process, and of all processors busy.
fn cpu_now(pid: Option<u32>) -> [Option<f64>; 3] {
    [
        pid.and_then(|pid| cpu_seconds(&pid.to_string())),
        cpu_seconds("self"),
        busy_seconds(),
    ]
}

fn busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .take(8)
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = ticks.iter().sum();
    Some((total - ticks.get(3)? - ticks.get(4)?) as f64 / 100.0)
}

/// What the server and the load generator used during the load phase.
struct Resources {
    pid: Option<u32>,
    hwm_kib: Option<u64>,
    max_rss_kib: Option<u64>,
    server_cpu_s: Option<f64>,
    loadgen_cpu_s: Option<f64>,
    /// All processors, busy (server and loadgen included).
    busy_cpu_s: Option<f64>,
    cpus: usize,
}

impl Resources {
    /// Busy time not spent in the server or the load generator: other load on the machine
    /// (the server's share is unknown without its pid).
    fn other_cpu_s(&self) -> Option<f64> {
        let others = self.busy_cpu_s? - self.server_cpu_s? - self.loadgen_cpu_s?;
        Some(others.max(0.0))
    }
}

fn server_pid(options: &Options) -> Result<Option<u32>, String> {
    if let Some(pid) = options.server_pid {
        return Ok(Some(pid));
    }
    match &options.server_pid_file {
        None => Ok(None),
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("--server-pid-file {}: {e}", file.display()))?;
            text.trim().parse().map(Some).map_err(|_| {
                format!(
                    "--server-pid-file {}: no process id in {:?}",
                    file.display(),
                    text.trim()
                )
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Baseline: the same files written with write+fsync

/// The references a bulk run is measured against (`--baseline-dir`), measured in the same
/// rounds as the uploads.
struct Baselines {
    rounds: u64,
    /// write+fsync of the same files.
    copy: Baseline,
    /// The vault's hashing, sealing and durable write of the same files, in this process.
    floor: Baseline,
    /// MB/s of each phase in each round: copy, ingest, vault alone.
    per_round: Vec<[f64; 3]>,
    /// CPU (all processors, ms) per file copied in each round: it shows which regime the
    /// disk and the VM were in (a copy's CPU per file varies threefold on the reference VM).
    copy_cpu_ms: Vec<Option<f64>>,
}

impl Baselines {
    /// Removes the files the baselines wrote. Only now, once every phase has run: ext4 without a
    /// journal skips recently freed inodes when it creates files, so files deleted between two
    /// phases would slow the next one.
    fn remove(&mut self) {
        for baseline in [&mut self.copy, &mut self.floor] {
            if baseline.dir.exists()
                && let Err(e) = std::fs::remove_dir_all(&baseline.dir)
            {
                let dir = baseline.dir.display();
                baseline
                    .error
                    .get_or_insert(format!("cannot remove {dir}: {e}"));
            }
        }
    }

    /// Ingest MB/s over copy MB/s, round by round (rounds without a copy left out).
    fn round_ratios(&self) -> Vec<f64> {
        self.per_round
            .iter()
            .filter(|[copy, _, _]| *copy > 0.0)
            .map(|[copy, ingest, _]| ingest / copy)
            .collect()
    }

    /// The median of `round_ratios`.
    fn median_round_ratio(&self) -> Option<f64> {
        let mut ratios = self.round_ratios();
        ratios.sort_by(f64::total_cmp);
        ratios.get(ratios.len() / 2).copied()
    }
}

/// One phase's totals over the rounds.
struct Baseline {
    dir: PathBuf,
    wall: Duration,
    files: u64,
    bytes: u64,
    error: Option<String>,
    /// CPU time all processors spent busy meanwhile, in seconds.
    busy_cpu_s: Option<f64>,
}

impl Baseline {
    fn empty(dir: PathBuf) -> Baseline {
        Baseline {
            dir,
            wall: Duration::ZERO,
            files: 0,
            bytes: 0,
            error: None,
            busy_cpu_s: Some(0.0),
        }
    }

    /// Adds one round's share.
    fn add(&mut self, round: Baseline) {
        self.wall += round.wall;
        self.files += round.files;
        self.bytes += round.bytes;
        self.busy_cpu_s = self.busy_cpu_s.zip(round.busy_cpu_s).map(|(a, b)| a + b);
        if let Some(error) = round.error {
            self.error.get_or_insert(error);
        }
    }

    /// Files/s and MB/s.
    fn rates(&self) -> (f64, f64) {
        let secs = self.wall.as_secs_f64().max(1e-9);
        (self.files as f64 / secs, self.bytes as f64 / 1e6 / secs)
    }

    /// "WHAT: 12.34 files/s, 5.67 MB/s (N files in T s; CPU)".
    fn text(&self, what: &str) -> String {
        let (files, mb) = self.rates();
        format!(
            "{what}: {files:.2} files/s, {mb:.2} MB/s ({} files in {:.2} s{})",
            self.files,
            self.wall.as_secs_f64(),
            self.cpu_text()
        )
    }

    /// "1.23 cores busy, 0.456 ms CPU per file", or nothing if unknown.
    fn cpu_text(&self) -> String {
        match self.busy_cpu_s {
            Some(busy) if self.files > 0 => format!(
                "; {:.2} cores busy, {:.3} ms CPU per file",
                busy / self.wall.as_secs_f64().max(1e-9),
                busy * 1e3 / self.files as f64
            ),
            _ => String::new(),
        }
    }
}

/// Writes files number `range` into `dir` with write+fsync on `threads` threads; leaves them
/// there (see `Baselines::remove`).
fn copy_files(
    pool: &[Bytes],
    threads: usize,
    run: &str,
    dir: &Path,
    range: std::ops::Range<u64>,
) -> Baseline {
    let next = AtomicU64::new(range.start);
    let written = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<String>> = Mutex::new(None);
    let busy_before = busy_seconds();
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let number = next.fetch_add(1, Ordering::Relaxed);
                    if number >= range.end {
                        break;
                    }
                    let audio = &pool[(number % pool.len() as u64) as usize];
                    let path = dir.join(format!("load-{run}-{number}.wav"));
                    let result = std::fs::File::create(&path).and_then(|mut file| {
                        file.write_all(&wav_header(audio.len()))?;
                        file.write_all(audio)?;
                        file.sync_all()
                    });
                    match result {
                        Ok(()) => {
                            written.fetch_add(1, Ordering::Relaxed);
                            bytes.fetch_add(
                                (WAV_HEADER_BYTES + audio.len()) as u64,
                                Ordering::Relaxed,
                            );
                        }
                        Err(error) => {
                            failed.store(true, Ordering::Relaxed);
                            if let Ok(mut slot) = first_error.lock() {
                                slot.get_or_insert(format!("{}: {error}", path.display()));
                            }
                        }
                    }
                }
            });
        }
    });
    let wall = start.elapsed();
    Baseline {
        dir: dir.to_owned(),
        wall,
        files: written.into_inner(),
        bytes: bytes.into_inner(),
        error: first_error.into_inner().unwrap_or_default(),
        busy_cpu_s: busy_before.zip(busy_seconds()).map(|(a, b)| b - a),
    }
}

/// `copy_files` on a blocking thread.
async fn copy_round(shared: &Arc<Shared>, dir: &Path, range: std::ops::Range<u64>) -> Baseline {
    let (shared, dir) = (Arc::clone(shared), dir.to_owned());
    let threads = shared.options.concurrency;
    let failed_dir = dir.clone();
    tokio::task::spawn_blocking(move || copy_files(&shared.pool, threads, &shared.run, &dir, range))
        .await
        .unwrap_or_else(|e| Baseline {
            error: Some(format!("copy thread: {e}")),
            ..Baseline::empty(failed_dir)
        })
}

/// The vault's own work on files number `range`, with the same concurrency, in this process:
/// SHA-256 of the original and callguard's real write path (`BlobWriter`: AES-256-GCM chunks,
/// written at the blob's path, fsync, directory fsync where the file system needs it), fed in the bulk upload's 64 KiB frames; no
/// TLS, HTTP, probing or catalog. What is left of the copy's throughput once the bytes are
/// hashed and sealed: the floor under any ingest that keeps the vault's guarantees here.
async fn vault_round(
    shared: &Arc<Shared>,
    vault: &callguard::vault::Vault,
    range: std::ops::Range<u64>,
) -> Baseline {
    use callguard::vault::BlobId;
    use callguard::vault::keys::DataKey;
    use callguard::vault::store::BlobWriter;
    use sha2::Digest;

    let written = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(range.start));
    let busy_before = busy_seconds();
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..shared.options.concurrency {
        let (shared, vault) = (Arc::clone(shared), vault.clone());
        let (written, bytes, next) = (Arc::clone(&written), Arc::clone(&bytes), Arc::clone(&next));
        let end = range.end;
        tasks.spawn(async move {
            loop {
                let number = next.fetch_add(1, Ordering::Relaxed);
                if number >= end {
                    return Ok::<(), String>(());
                }
                let audio = shared.audio(number, None);
                let mut file = wav_header(audio.len()).to_vec();
                file.extend_from_slice(&audio);
                let key = DataKey::generate().map_err(|e| e.to_string())?;
                let mut writer = BlobWriter::create(&vault, BlobId::generate(), &key, u64::MAX)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut hasher = sha2::Sha256::new();
                for frame in file.chunks(BULK_FRAME) {
                    hasher.update(frame);
                    writer.write(frame).await.map_err(|e| e.to_string())?;
                }
                std::hint::black_box(hasher.finalize());
                writer.finish().await.map_err(|e| e.to_string())?;
                written.fetch_add(1, Ordering::Relaxed);
                bytes.fetch_add(file.len() as u64, Ordering::Relaxed);
            }
        });
    }
    let mut error = None;
    while let Some(outcome) = tasks.join_next().await {
        let failed = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(e) => Some(e.to_string()),
        };
        if let Some(e) = failed {
            error.get_or_insert(e);
        }
    }
    Baseline {
        dir: vault.dir().to_owned(),
        wall: start.elapsed(),
        files: written.load(Ordering::Relaxed),
        bytes: bytes.load(Ordering::Relaxed),
        error,
        busy_cpu_s: busy_before.zip(busy_seconds()).map(|(a, b)| b - a),
    }
}

/// The phases of a round with baselines.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Copy,
    Ingest,
    Vault,
}

impl Phase {
    /// Round `round`'s order: each phase comes first, second and third equally often over
    /// any three consecutive rounds.
    fn order(round: u64) -> [Phase; 3] {
        let mut order = [Phase::Copy, Phase::Ingest, Phase::Vault];
        order.rotate_left((round % 3) as usize);
        order
    }
}

/// The uploads of one round: every stream uploads from the shared counter up to `end`, on the
/// connection the previous round left it; returns the round's wall time.
async fn upload_round(
    shared: &Arc<Shared>,
    slots: &mut [(Option<Connection>, StreamReport)],
    load_start: Instant,
    range: std::ops::Range<u64>,
) -> Duration {
    shared.next.store(range.start, Ordering::Relaxed);
    let started = Instant::now();
    let mut streams = JoinSet::new();
    for (index, slot) in slots.iter_mut().enumerate() {
        let (connection, report) = std::mem::take(slot);
        streams.spawn(stream(
            shared.clone(),
            index,
            connection,
            report,
            load_start,
            range.end,
        ));
    }
    while let Some(joined) = streams.join_next().await {
        match joined {
            Ok((index, connection, report)) => slots[index] = (connection, report),
            Err(error) => eprintln!("loadgen: a stream failed: {error}"),
        }
    }
    started.elapsed()
}

/// Bytes of the stored uploads in `slots` so far.
fn stored_bytes(slots: &[(Option<Connection>, StreamReport)]) -> u64 {
    slots
        .iter()
        .flat_map(|(_, report)| &report.records)
        .filter(|record| record.stored)
        .map(|record| record.audio_bytes)
        .sum()
}

// ---------------------------------------------------------------------------------------------
// The run

async fn run(options: Options) -> Result<(), RunError> {
    let usage = RunError::Usage;
    // The encoder against G.711's reference points: silence, and both ends of the range.
    assert_eq!(
        [
            linear_to_ulaw(0),
            linear_to_ulaw(i16::MAX),
            linear_to_ulaw(i16::MIN)
        ],
        [0xFF, 0x80, 0x00]
    );
    if options.concurrency == 0 {
        return Err(usage("--concurrency must be at least 1".into()));
    }
    if !(options.seconds_of_audio.is_finite() && options.seconds_of_audio >= 0.1) {
        return Err(usage("--seconds-of-audio must be at least 0.1".into()));
    }
    if options.seconds_of_audio > 4.0 * 3600.0 {
        return Err(usage("--seconds-of-audio is at most 14400 (4 h)".into()));
    }
    if options.duration.is_some() && !options.realtime {
        return Err(usage("--duration needs --realtime".into()));
    }
    if let Some(duration) = options.duration
        && !(duration.is_finite() && duration > 0.0 && duration <= 86_400.0)
    {
        return Err(usage(
            "--duration must be between 0 and 86400 seconds".into(),
        ));
    }
    if options.baseline_dir.is_some() && options.realtime {
        return Err(usage(
            "--baseline-dir compares bulk ingest with copy+fsync: not with --realtime".into(),
        ));
    }
    if options.duration.is_none() && options.files == 0 {
        return Err(usage("--files must be at least 1".into()));
    }
    let pid = server_pid(&options).map_err(usage)?;
    let target = parse_target(&options.url, &options.pki).map_err(RunError::NoInstance)?;
    let version = preflight(&target)
        .await
        .map_err(|why| RunError::NoInstance(format!("{}: {why}", options.url)))?;

    // Whole 100 ms chunks of audio.
    let samples = ((options.seconds_of_audio * 10.0).round() as usize).max(1) * CHUNK_BYTES;
    let pool_files = if options.duration.is_some() {
        options.concurrency as u64 * 4
    } else {
        options.files
    };
    let pool = audio_pool(pool_files, samples);
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let now = SystemClock.now().as_second();
    let started_at = jiff::Timestamp::from_second(now - 300 - options.seconds_of_audio as i64)
        .map(|t| t.to_string())
        .map_err(|e| usage(format!("clock: {e}")))?;
    eprintln!(
        "loadgen: run {run} against {} (callguard {version}): {} distinct recordings of {} bytes generated",
        options.url,
        pool.len(),
        WAV_HEADER_BYTES + samples
    );

    // Open every stream's connection before the clock starts (handshakes apart from the load).
    let connect_start = Instant::now();
    let target = Arc::new(target);
    let gate = Arc::new(Semaphore::new(64));
    let mut opening = JoinSet::new();
    let realtime = options.realtime;
    for index in 0..options.concurrency {
        let target = target.clone();
        let gate = gate.clone();
        opening.spawn(async move {
            let _permit = gate.acquire_owned().await;
            (index, connect(&target, realtime).await)
        });
    }
    let mut connections: Vec<Option<Connection>> = (0..options.concurrency).map(|_| None).collect();
    let mut connect_errors: BTreeMap<String, u64> = BTreeMap::new();
    while let Some(joined) = opening.join_next().await {
        if let Ok((index, result)) = joined {
            match result {
                Ok(connection) => connections[index] = Some(connection),
                Err(why) => *connect_errors.entry(why).or_default() += 1,
            }
        }
    }
    let connect_wall = connect_start.elapsed();
    let opened = connections.iter().filter(|c| c.is_some()).count();
    eprintln!(
        "loadgen: {opened}/{} connections opened in {:.2} s{}",
        options.concurrency,
        connect_wall.as_secs_f64(),
        if connect_errors.is_empty() {
            String::new()
        } else {
            format!(" (failures: {connect_errors:?}; retried at the first upload)")
        }
    );

    let load_start = Instant::now();
    let shared = Arc::new(Shared {
        deadline: options
            .duration
            .map(|secs| load_start + Duration::from_secs_f64(secs)),
        boundary: format!("callguard-loadgen-{run}-boundary"),
        options: options.clone(),
        target,
        run: run.clone(),
        started_at,
        pool,
        next: AtomicU64::new(0),
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
        peak_in_flight: AtomicUsize::new(0),
    });

    let peak_rss = Arc::new(AtomicU64::new(0));
    let sampler = pid.map(|pid| {
        let peak_rss = peak_rss.clone();
        tokio::spawn(async move {
            loop {
                if let Some(rss) = read_status_kib(pid, "VmRSS") {
                    peak_rss.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    });
    let reporter = {
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let done = shared.done.load(Ordering::Relaxed);
                let errors = shared.errors.load(Ordering::Relaxed);
                eprintln!(
                    "loadgen: [{:7.1} s] {done} uploads done ({errors} errors), {} in flight",
                    load_start.elapsed().as_secs_f64(),
                    shared.in_flight.load(Ordering::Relaxed)
                );
            }
        })
    };

    // Without baselines, one round of every upload. With them, `--rounds` rounds, each
    // uploading, copying and writing through the vault alone its share of the files.
    let rounds = match &options.baseline_dir {
        Some(_) if options.duration.is_none() => options.rounds.clamp(1, options.files.max(1)),
        _ => 1,
    };
    let (copy_dir, vault) = match &options.baseline_dir {
        Some(dir) => {
            let copy_dir = dir.join(format!("loadgen-baseline-{run}"));
            std::fs::create_dir_all(&copy_dir)
                .map_err(|e| usage(format!("--baseline-dir {}: {e}", copy_dir.display())))?;
            let vault_dir = dir.join(format!("loadgen-vault-{run}"));
            let vault = callguard::vault::Vault::open(&vault_dir)
                .map_err(|e| usage(format!("--baseline-dir {}: {e}", vault_dir.display())))?;
            eprintln!(
                "loadgen: {rounds} rounds, each uploading, copying with write+fsync (under {}) and writing through the vault alone (under {}) its share of the files, {} at a time",
                copy_dir.display(),
                vault_dir.display(),
                options.concurrency
            );
            (Some(copy_dir), Some(vault))
        }
        None => (None, None),
    };
    let mut copy = copy_dir.clone().map(Baseline::empty);
    let mut floor = vault
        .as_ref()
        .map(|vault| Baseline::empty(vault.dir().to_owned()));
    let mut per_round = Vec::new();
    let mut copy_cpu_ms = Vec::new();
    let mut slots: Vec<(Option<Connection>, StreamReport)> = connections
        .into_iter()
        .map(|connection| {
            let report = StreamReport {
                connections: u64::from(connection.is_some()),
                ..StreamReport::default()
            };
            (connection, report)
        })
        .collect();
    let mut wall = Duration::ZERO;
    // CPU seconds of the upload rounds: the server's, the load generator's, all processors'.
    let mut cpu = [Some(0.0); 3];
    let files = if options.duration.is_some() {
        u64::MAX
    } else {
        options.files
    };
    for round in 0..rounds {
        let range = round * files / rounds..(round + 1) * files / rounds;
        let mut rates = [0.0; 3];
        for phase in Phase::order(round) {
            match (phase, &copy_dir, &vault) {
                (Phase::Ingest, _, _) => {
                    let bytes_before = stored_bytes(&slots);
                    let cpu_before = cpu_now(pid);
                    let took = upload_round(&shared, &mut slots, load_start, range.clone()).await;
                    for ((sum, before), after) in cpu.iter_mut().zip(cpu_before).zip(cpu_now(pid)) {
                        *sum = sum
                            .zip(before.zip(after))
                            .map(|(sum, (before, after))| sum + after - before);
                    }
                    wall += took;
                    rates[1] = (stored_bytes(&slots) - bytes_before) as f64
                        / 1e6
                        / took.as_secs_f64().max(1e-9);
                }
                (Phase::Copy, Some(dir), _) => {
                    let part = copy_round(&shared, dir, range.clone()).await;
                    rates[0] = part.rates().1;
                    copy_cpu_ms.push(
                        part.busy_cpu_s
                            .filter(|_| part.files > 0)
                            .map(|busy| busy * 1e3 / part.files as f64),
                    );
                    if let Some(copy) = copy.as_mut() {
                        copy.add(part);
                    }
                }
                (Phase::Vault, _, Some(vault)) => {
                    let part = vault_round(&shared, vault, range.clone()).await;
                    rates[2] = part.rates().1;
                    if let Some(floor) = floor.as_mut() {
                        floor.add(part);
                    }
                }
                _ => {}
            }
        }
        if rounds > 1 {
            eprintln!(
                "loadgen: round {}/{rounds}: copy {:.0} MB/s, ingest {:.0} MB/s, vault alone {:.0} MB/s",
                round + 1,
                rates[0],
                rates[1],
                rates[2]
            );
        }
        per_round.push(rates);
    }
    let reports: Vec<StreamReport> = slots.into_iter().map(|(_, report)| report).collect();
    reporter.abort();
    if let Some(sampler) = sampler {
        sampler.abort();
    }
    let hwm = pid.and_then(|pid| read_status_kib(pid, "VmHWM"));
    if let Some(pid) = pid
        && let Some(rss) = read_status_kib(pid, "VmRSS")
    {
        peak_rss.fetch_max(rss, Ordering::Relaxed);
    }
    let baseline = match (copy, floor) {
        (Some(copy), Some(floor)) => {
            let mut baselines = Baselines {
                rounds,
                copy,
                floor,
                per_round,
                copy_cpu_ms,
            };
            if !options.keep_baseline_files {
                baselines.remove();
            }
            Some(baselines)
        }
        _ => None,
    };

    let summary = Summary::new(
        &shared,
        &version,
        reports,
        wall,
        connect_wall,
        Resources {
            pid,
            hwm_kib: hwm,
            max_rss_kib: match peak_rss.load(Ordering::Relaxed) {
                0 => None,
                kib => Some(kib),
            },
            server_cpu_s: cpu[0],
            loadgen_cpu_s: cpu[1],
            busy_cpu_s: cpu[2],
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        },
        baseline,
    );
    if options.json {
        println!("{}", summary.json());
    } else {
        print!("{}", summary.text());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Summary

/// Percentiles of a distribution in microseconds.
#[derive(Clone, Copy)]
struct Percentiles {
    count: usize,
    p50: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

impl Percentiles {
    fn of(mut values: Vec<u64>) -> Option<Percentiles> {
        if values.is_empty() {
            return None;
        }
        values.sort_unstable();
        // Nearest rank.
        let at = |permille: usize| {
            let rank = (values.len() * permille).div_ceil(1000).max(1);
            values[rank - 1]
        };
        Some(Percentiles {
            count: values.len(),
            p50: at(500),
            p90: at(900),
            p99: at(990),
            p999: at(999),
            max: values[values.len() - 1],
        })
    }

    fn text(&self, with_p999: bool) -> String {
        let p999 = match with_p999 {
            true => format!(", p99.9 {}", show_us(self.p999)),
            false => String::new(),
        };
        format!(
            "p50 {}, p90 {}, p99 {}{p999}, max {} (n = {})",
            show_us(self.p50),
            show_us(self.p90),
            show_us(self.p99),
            show_us(self.max),
            self.count
        )
    }

    fn json(&self) -> serde_json::Value {
        let ms = |us: u64| us as f64 / 1000.0;
        serde_json::json!({
            "n": self.count,
            "p50_ms": ms(self.p50),
            "p90_ms": ms(self.p90),
            "p99_ms": ms(self.p99),
            "p999_ms": ms(self.p999),
            "max_ms": ms(self.max),
        })
    }
}

fn show_us(us: u64) -> String {
    match us {
        0..1_000 => format!("{:.3} ms", us as f64 / 1000.0),
        1_000..10_000_000 => format!("{:.1} ms", us as f64 / 1000.0),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

fn show_kib(kib: Option<u64>) -> String {
    match kib {
        Some(kib) => format!("{:.1} MiB", kib as f64 / 1024.0),
        None => "unknown".into(),
    }
}

struct Summary {
    run: String,
    url: String,
    version: String,
    mode: &'static str,
    concurrency: usize,
    files: u64,
    duration: Option<f64>,
    seconds_of_audio: f64,
    file_bytes: u64,
    distinct: usize,
    connect_wall: Duration,
    wall: Duration,
    connections: u64,
    attempted: u64,
    stored: u64,
    stored_bytes: u64,
    discarded: u64,
    errors: u64,
    outcomes: BTreeMap<String, u64>,
    upload: Option<Percentiles>,
    /// Whether `upload` covers failed answers too (no upload succeeded).
    upload_all: bool,
    commit: Option<Percentiles>,
    chunks: Option<Percentiles>,
    chunks_late: u64,
    /// How late the load generator itself released chunks (timer and CPU).
    pacer_lag: Option<Percentiles>,
    peak_in_flight: usize,
    resources: Resources,
    baseline: Option<Baselines>,
}

impl Summary {
    fn new(
        shared: &Shared,
        version: &str,
        reports: Vec<StreamReport>,
        wall: Duration,
        connect_wall: Duration,
        resources: Resources,
        baseline: Option<Baselines>,
    ) -> Summary {
        let options = &shared.options;
        let mut outcomes = BTreeMap::new();
        let (mut attempted, mut success, mut stored, mut stored_bytes, mut connections) =
            (0, 0, 0, 0, 0);
        let (mut ok_totals, mut all_totals, mut commits) = (Vec::new(), Vec::new(), Vec::new());
        let (mut chunk_us, mut lag_us) = (Vec::new(), Vec::new());
        for report in reports {
            connections += report.connections;
            for (waited, lag) in report.chunk_us {
                chunk_us.push(u64::from(waited));
                lag_us.push(u64::from(lag));
            }
            for record in report.records {
                attempted += 1;
                *outcomes.entry(record.outcome).or_default() += 1;
                let micros = |d: Duration| d.as_micros() as u64;
                if let Some(total) = record.total {
                    all_totals.push(micros(total));
                    if record.stored {
                        ok_totals.push(micros(total));
                    }
                }
                if record.success {
                    success += 1;
                }
                if record.stored {
                    stored += 1;
                    stored_bytes += record.audio_bytes;
                    if let Some(commit) = record.commit {
                        commits.push(micros(commit));
                    }
                }
            }
        }
        let upload_all = ok_totals.is_empty();
        let late = LATE_CHUNK.as_micros() as u64;
        Summary {
            run: shared.run.clone(),
            url: options.url.clone(),
            version: version.to_owned(),
            mode: if options.realtime { "realtime" } else { "bulk" },
            concurrency: options.concurrency,
            files: options.files,
            duration: options.duration,
            seconds_of_audio: shared.pool[0].len() as f64 / BYTES_PER_SECOND as f64,
            file_bytes: (WAV_HEADER_BYTES + shared.pool[0].len()) as u64,
            distinct: shared.pool.len(),
            connect_wall,
            wall,
            connections,
            attempted,
            stored,
            stored_bytes,
            discarded: success - stored,
            errors: attempted - success,
            outcomes,
            upload: Percentiles::of(if upload_all { all_totals } else { ok_totals }),
            upload_all,
            commit: Percentiles::of(commits),
            chunks_late: chunk_us.iter().filter(|&&us| us > late).count() as u64,
            chunks: Percentiles::of(chunk_us),
            pacer_lag: Percentiles::of(lag_us),
            peak_in_flight: shared.peak_in_flight.load(Ordering::Relaxed),
            resources,
            baseline,
        }
    }

    fn files_per_second(&self) -> f64 {
        self.stored as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    fn megabytes_per_second(&self) -> f64 {
        self.stored_bytes as f64 / 1e6 / self.wall.as_secs_f64().max(1e-9)
    }

    fn baseline_rates(&self) -> Option<(f64, f64)> {
        Some(self.baseline.as_ref()?.copy.rates())
    }

    /// Ingest MB/s over the copy's.
    fn ratio(&self) -> Option<f64> {
        let (_, mb) = self.baseline_rates()?;
        (mb > 0.0).then(|| self.megabytes_per_second() / mb)
    }

    /// The vault alone's MB/s over the copy's.
    fn floor_ratio(&self) -> Option<f64> {
        let baselines = self.baseline.as_ref()?;
        let (_, copy) = baselines.copy.rates();
        let (_, floor) = baselines.floor.rates();
        (copy > 0.0).then(|| floor / copy)
    }

    fn text(&self) -> String {
        let mut out = String::new();
        let mut line = |text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        line(format!(
            "callguard loadgen — run {} against {} (callguard {})",
            self.run, self.url, self.version
        ));
        match (self.mode, self.duration) {
            ("realtime", Some(duration)) => line(format!(
                "mode: realtime, {} live calls kept for {duration} s; calls of {:.1} s \
                 ({} bytes, first call of each stream shortened), paced at 8000 B/s in 100 ms chunks of {CHUNK_BYTES} B",
                self.concurrency, self.seconds_of_audio, self.file_bytes
            )),
            ("realtime", None) => line(format!(
                "mode: realtime, {} files of {:.1} s ({} bytes), {} at a time, paced at 8000 B/s in 100 ms chunks of {CHUNK_BYTES} B",
                self.files, self.seconds_of_audio, self.file_bytes, self.concurrency
            )),
            _ => line(format!(
                "mode: bulk, {} files of {:.1} s 8 kHz µ-law WAV ({} bytes each, {} distinct), concurrency {}",
                self.files, self.seconds_of_audio, self.file_bytes, self.distinct, self.concurrency
            )),
        }
        line(format!(
            "connections: {} opened ({} streams set up in {:.2} s before the clock started); peak uploads in flight {}",
            self.connections,
            self.concurrency,
            self.connect_wall.as_secs_f64(),
            self.peak_in_flight
        ));
        line(match &self.baseline {
            Some(baselines) => format!(
                "wall time: {:.2} s (the uploads' {} rounds, summed)",
                self.wall.as_secs_f64(),
                baselines.rounds
            ),
            None => format!("wall time: {:.2} s", self.wall.as_secs_f64()),
        });
        line(format!(
            "uploads: {} attempted, {} stored, {} discarded (2xx, not stored), {} errors",
            self.attempted, self.stored, self.discarded, self.errors
        ));
        for (outcome, count) in &self.outcomes {
            line(format!("  {outcome:<44} {count:>8}"));
        }
        line(format!(
            "throughput (stored uploads): {:.2} files/s, {:.2} MB/s (file bytes, 1 MB = 10^6 B)",
            self.files_per_second(),
            self.megabytes_per_second()
        ));
        let label = if self.upload_all {
            "upload latency (start → answer; nothing stored, all answers)"
        } else {
            "upload latency (start → answer, stored)"
        };
        line(match &self.upload {
            Some(p) => format!("{label}: {}", p.text(false)),
            None => format!("{label}: no answer received"),
        });
        if let Some(p) = &self.commit {
            line(format!(
                "commit latency (last body byte sent → answer, stored): {}",
                p.text(false)
            ));
        }
        if self.mode == "realtime" {
            line(match &self.chunks {
                Some(p) => format!(
                    "chunk send latency (released → taken by the connection): {}; {} later than 1 s",
                    p.text(true),
                    self.chunks_late
                ),
                None => "chunk send latency: no chunk sent".into(),
            });
            if let Some(p) = &self.pacer_lag {
                line(format!(
                    "pacer lag (due → released; the load generator's own timer and CPU): {}",
                    p.text(true)
                ));
            }
        }
        if let Some(baselines) = &self.baseline {
            let (copy, floor) = (&baselines.copy, &baselines.floor);
            line(format!(
                "interleaved: {} rounds of about {} files, each uploading, copying and writing through the vault alone its share, the order of the three rotating from round to round; each figure sums its phase's rounds",
                baselines.rounds,
                self.files / baselines.rounds.max(1)
            ));
            line(copy.text(&format!(
                "copy+fsync (write+fsync of the same files under {}, {} threads)",
                copy.dir.display(),
                self.concurrency
            )));
            if let Some(error) = &copy.error {
                line(format!("copy error: {error}"));
            }
            line(floor.text(&format!(
                "vault alone (SHA-256 + BlobWriter: AES-256-GCM, written directly where the file system allows, fsync, dir fsync where needed; no TLS, HTTP, probe or catalog), {} tasks",
                self.concurrency
            )));
            if let Some(error) = &floor.error {
                line(format!("vault alone error: {error}"));
            }
            let (_, floor_mb) = floor.rates();
            line(match self.ratio() {
                Some(ratio) => format!(
                    "ingest / copy+fsync: {:.0} % (MB/s, same rounds; target ≥ 50 %)",
                    ratio * 100.0
                ),
                None => "ingest / copy+fsync: unknown".into(),
            });
            if let Some(median) = baselines.median_round_ratio() {
                let ratios: Vec<String> = baselines
                    .round_ratios()
                    .iter()
                    .map(|ratio| format!("{:.0}", ratio * 100.0))
                    .collect();
                line(format!(
                    "ingest / copy+fsync round by round: median {:.0} % (rounds, %: {})",
                    median * 100.0,
                    ratios.join(" ")
                ));
            }
            let show = |at: usize| {
                baselines
                    .per_round
                    .iter()
                    .map(|rates| format!("{:.0}", rates[at]))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            line(format!(
                "MB/s round by round: copy {}; ingest {}; vault alone {}",
                show(0),
                show(1),
                show(2)
            ));
            let copy_cpu: Vec<String> = baselines
                .copy_cpu_ms
                .iter()
                .map(|ms| ms.map_or("?".into(), |ms| format!("{ms:.2}")))
                .collect();
            line(format!(
                "copy+fsync CPU per file round by round (all processors, ms; /proc/stat counts in 10 ms ticks): {}",
                copy_cpu.join(" ")
            ));
            if let Some(ratio) = self.floor_ratio() {
                line(format!(
                    "vault alone / copy+fsync: {:.0} % (the ceiling of the ingest/copy ratio on this machine)",
                    ratio * 100.0
                ));
            }
            if floor_mb > 0.0 {
                line(format!(
                    "ingest / vault alone: {:.0} % (what TLS, HTTP, probing and the catalog leave)",
                    self.megabytes_per_second() / floor_mb * 100.0
                ));
            }
        }
        let r = &self.resources;
        line(match r.pid {
            Some(pid) => format!(
                "server peak RSS (pid {pid}): VmHWM {} since server start; max VmRSS sampled during the run {}",
                show_kib(r.hwm_kib),
                show_kib(r.max_rss_kib)
            ),
            None => "server peak RSS: unknown (give --server-pid or --server-pid-file)".into(),
        });
        let cores = |cpu: Option<f64>| match cpu {
            Some(cpu) => format!(
                "{:.2} cores ({cpu:.1} s)",
                cpu / self.wall.as_secs_f64().max(1e-9)
            ),
            None => "unknown".into(),
        };
        line(format!(
            "CPU during the load phase: server {}, loadgen {}, other processes {}, of {} online",
            cores(r.server_cpu_s),
            cores(r.loadgen_cpu_s),
            cores(r.other_cpu_s()),
            r.cpus
        ));
        if self.stored > 0
            && let (Some(server), Some(loadgen), Some(busy)) =
                (r.server_cpu_s, r.loadgen_cpu_s, r.busy_cpu_s)
        {
            let per_file = |seconds: f64| seconds * 1e3 / self.stored as f64;
            line(format!(
                "CPU per stored file: server {:.3} ms, loadgen {:.3} ms, all processors busy {:.3} ms",
                per_file(server),
                per_file(loadgen),
                per_file(busy)
            ));
        }
        out
    }

    fn json(&self) -> serde_json::Value {
        let round = |value: f64| (value * 1000.0).round() / 1000.0;
        let json_of = |baseline: &Baseline| {
            let (files, mb) = baseline.rates();
            serde_json::json!({
                "dir": baseline.dir.display().to_string(),
                "files": baseline.files,
                "wall_s": round(baseline.wall.as_secs_f64()),
                "files_per_s": round(files),
                "mb_per_s": round(mb),
                "error": baseline.error,
                "busy_cpu_s": baseline.busy_cpu_s.map(round),
            })
        };
        let baseline = self.baseline.as_ref().map(|b| json_of(&b.copy));
        let vault_alone = self.baseline.as_ref().map(|b| json_of(&b.floor));
        let rounds = self.baseline.as_ref().map(|b| {
            b.per_round
                .iter()
                .map(|[copy, ingest, vault]| {
                    serde_json::json!({
                        "copy_mb_per_s": round(*copy),
                        "ingest_mb_per_s": round(*ingest),
                        "vault_alone_mb_per_s": round(*vault),
                    })
                })
                .collect::<Vec<_>>()
        });
        serde_json::json!({
            "run": self.run,
            "url": self.url,
            "server_version": self.version,
            "mode": self.mode,
            "concurrency": self.concurrency,
            "files": if self.duration.is_some() { None } else { Some(self.files) },
            "duration_s": self.duration,
            "seconds_of_audio": self.seconds_of_audio,
            "file_bytes": self.file_bytes,
            "connect_s": round(self.connect_wall.as_secs_f64()),
            "wall_s": round(self.wall.as_secs_f64()),
            "connections": self.connections,
            "peak_in_flight": self.peak_in_flight,
            "attempted": self.attempted,
            "stored": self.stored,
            "discarded": self.discarded,
            "errors": self.errors,
            "outcomes": self.outcomes,
            "files_per_s": round(self.files_per_second()),
            "mb_per_s": round(self.megabytes_per_second()),
            "upload_latency": self.upload.map(|p| p.json()),
            "upload_latency_all_answers": self.upload_all,
            "commit_latency": self.commit.map(|p| p.json()),
            "chunk_latency": if self.mode == "realtime" { self.chunks.map(|p| p.json()) } else { None },
            "chunks_late_1s": if self.mode == "realtime" { Some(self.chunks_late) } else { None },
            "pacer_lag": if self.mode == "realtime" { self.pacer_lag.map(|p| p.json()) } else { None },
            "baseline": baseline,
            "ingest_to_baseline": self.ratio().map(round),
            "rounds": rounds,
            "ingest_to_baseline_median_round": self
                .baseline
                .as_ref()
                .and_then(Baselines::median_round_ratio)
                .map(round),
            "vault_alone": vault_alone,
            "vault_alone_to_baseline": self.floor_ratio().map(round),
            "server_pid": self.resources.pid,
            "server_vmhwm_kib": self.resources.hwm_kib,
            "server_max_vmrss_kib": self.resources.max_rss_kib,
            "server_cpu_s": self.resources.server_cpu_s.map(round),
            "loadgen_cpu_s": self.resources.loadgen_cpu_s.map(round),
            "other_cpu_s": self.resources.other_cpu_s().map(round),
            "cpus": self.resources.cpus,
        })
    }
}
