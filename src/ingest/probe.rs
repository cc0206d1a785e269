//! Audio probing at ingest: what a recording is (container, codec, rate, channels, exact
//! duration) and whether callguard accepts it, decided on the same bytes that stream into the
//! vault, in passing, with memory that does not grow with the recording's length. Symphonia
//! demuxes and validates WAV, FLAC, MP3 and Ogg Vorbis; RIFF headers, Ogg pages (Opus), raw GSM
//! and Asterisk's header-less files are parsed here. It must not store, log or keep audio bytes,
//! do any I/O of its own (it reads what it is fed), or panic on any input.
//!
//! Duration rules, all exact to the sample: WAV from the data chunk (or the bytes actually
//! present, when fewer) and the block size, preferring the `fact` count for block codecs; FLAC
//! and MP3 by counting every frame (less LAME's encoder delay and padding when its Info tag says
//! so, or, without the tag, less the usual encoder and decoder delay: within one frame of the
//! source); Ogg Vorbis from the last granule position; Ogg Opus from the last granule position less
//! the pre-skip, at 48 kHz; raw GSM and header-less files from their length.

use std::io::{self, Read};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use symphonia::core::codecs::audio::well_known::{
    CODEC_ID_ADPCM_IMA_WAV, CODEC_ID_ADPCM_MS, CODEC_ID_FLAC, CODEC_ID_MP3, CODEC_ID_PCM_ALAW,
    CODEC_ID_PCM_F32LE, CODEC_ID_PCM_F64LE, CODEC_ID_PCM_MULAW, CODEC_ID_PCM_S16LE,
    CODEC_ID_PCM_S24LE, CODEC_ID_PCM_S32LE, CODEC_ID_PCM_U8, CODEC_ID_VORBIS,
};
use symphonia::core::codecs::audio::{AudioCodecId, AudioCodecParameters, AudioDecoderOptions};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::{FormatOptions, FormatReader, TrackType};
use symphonia::core::io::{MediaSourceStream, ReadOnlySource};
use symphonia::default::formats::{FlacReader, MpaReader, OggReader, WavReader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::ingest::gsm;

/// What the file name says about the format; only header-less formats depend on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FormatHint {
    /// The file extension, lowercased, without the dot (`"wav"`, `"ulaw"`, `"gsm"`).
    pub extension: Option<String>,
}

impl FormatHint {
    /// The hint for a file name (`in-…-1700000000.123.ULAW` gives `ulaw`).
    pub fn from_file_name(file_name: &str) -> FormatHint {
        let extension = match file_name.rsplit_once('.') {
            Some((stem, extension)) if !stem.is_empty() && !extension.is_empty() => {
                Some(extension.to_ascii_lowercase())
            }
            _ => None,
        };
        FormatHint { extension }
    }
}

/// What a probed recording is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioInfo {
    /// `"wav"`, `"flac"`, `"mp3"`, `"ogg"` or `"raw"` (header-less and raw GSM files).
    pub container: &'static str,
    /// `"pcm_u8"`, `"pcm_s16le"`, `"pcm_s24le"`, `"pcm_s32le"`, `"pcm_f32le"`, `"pcm_f64le"`,
    /// `"pcm_alaw"`, `"pcm_mulaw"`, `"adpcm_ima"`, `"adpcm_ms"`, `"gsm"`, `"flac"`, `"mp3"`,
    /// `"vorbis"` or `"opus"`.
    pub codec: &'static str,
    /// Samples per second per channel (48 000 for Opus, its decoding rate).
    pub sample_rate: u32,
    pub channels: u16,
    /// Samples per channel of the whole recording.
    pub n_frames: u64,
    /// `n_frames` in milliseconds, rounded to the nearest.
    pub duration_ms: u64,
}

impl AudioInfo {
    /// Whether `format=wav` playback can decode it (everything but Opus).
    pub fn can_transcode(&self) -> bool {
        self.codec != CODEC_OPUS
    }

    fn new(
        container: &'static str,
        codec: &'static str,
        sample_rate: u32,
        channels: u16,
        n_frames: u64,
    ) -> Result<AudioInfo, ProbeError> {
        if n_frames == 0 {
            return Err(ProbeError::NoAudio { container });
        }
        if sample_rate == 0 || channels == 0 || channels > MAX_CHANNELS {
            return Err(ProbeError::Malformed {
                container,
                offset: 0,
                reason: format!("{sample_rate} hz with {channels} channels"),
            });
        }
        let duration_ms = ((u128::from(n_frames) * 1000 + u128::from(sample_rate / 2))
            / u128::from(sample_rate))
        .try_into()
        .unwrap_or(u64::MAX);
        Ok(AudioInfo {
            container,
            codec,
            sample_rate,
            channels,
            n_frames,
            duration_ms,
        })
    }
}

/// Most channels a recording may have (Vorbis' and Opus' limit; calls have one or two).
const MAX_CHANNELS: u16 = 255;

/// Why a recording is refused. Every variant but `WorkerStopped` is about the file (the api
/// answers `422 unsupported_audio`, the spool quarantines it with this message);
/// `WorkerStopped` is ours (`500`, and the spool retries).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// Zero bytes.
    #[error("empty file")]
    Empty,
    /// A header-less extension (`.ulaw`, `.alaw`, `.sln`, `.gsm`) on a file that starts with a
    /// container's signature.
    #[error("wrong extension: .{extension} file starts with a {found} header")]
    WrongExtension {
        extension: String,
        found: &'static str,
    },
    /// No container signature, and no extension that names a header-less format.
    #[error(
        "unsupported audio: no wav, flac, mp3 or ogg signature at byte 0, and no header-less \
         extension (.ulaw, .alaw, .sln, .gsm)"
    )]
    UnknownFormat,
    /// A container callguard does not accept (AIFF, CAF, MP4, …).
    #[error("unsupported audio: {container} files are not accepted")]
    UnsupportedContainer { container: &'static str },
    /// A known container holding a codec callguard does not accept.
    #[error("unsupported audio: {container} with codec {codec}")]
    UnsupportedCodec {
        container: &'static str,
        codec: String,
    },
    /// The input ends inside a header or a structure that must be complete.
    #[error("truncated {container}: the stream ends inside the {what} (at byte {offset})")]
    Truncated {
        container: &'static str,
        what: &'static str,
        offset: u64,
    },
    /// A structure that breaks its format's rules.
    #[error("malformed {container} at byte {offset}: {reason}")]
    Malformed {
        container: &'static str,
        offset: u64,
        reason: String,
    },
    /// A well-formed file with no samples.
    #[error("no audio: the {container} stream holds no samples")]
    NoAudio { container: &'static str },
    /// Symphonia refused to demux or decode it.
    #[error("unsupported audio: symphonia rejected the {container} stream: {reason}")]
    Rejected {
        container: &'static str,
        reason: String,
    },
    /// A demuxer or decoder panicked on this input; the panic was contained.
    #[error("unsupported audio: the {container} parser failed on malformed input")]
    Crashed { container: &'static str },
    /// The probe worker ended before the input did (a bug, or the runtime shutting down).
    #[error("audio probe worker stopped before the end of the input")]
    WorkerStopped,
}

/// Probes a stream fed chunk by chunk while the caller writes the same chunks elsewhere.
///
/// Most telephony recordings (WAV, header-less G.711 and signed-linear) are settled by their
/// first kilobytes and then only counted, so the probe runs in place on those bytes as they
/// arrive, keeps only them, and replays them against the final length at the end: no thread
/// and no copy of the rest per upload, which is what lets hundreds of live calls stream at
/// once. Formats that must be read to the end (FLAC, MP3, Ogg, raw GSM), or a WAV whose data
/// starts beyond `PREFIX_MAX`, go to a blocking worker fed through a bounded channel. Must be
/// created inside a tokio runtime (the worker is `spawn_blocking`'d when needed).
pub struct Prober {
    hint: FormatHint,
    /// Bytes fed so far.
    fed: u64,
    state: ProberState,
}

enum ProberState {
    /// The first bytes, on which the probe is retried as they grow (`tried_at`: the length at
    /// the last try).
    Prefix { bytes: Vec<u8>, tried_at: usize },
    /// The probe has all it needs but the total length: `kept` is replayed at the end.
    Counting { kept: Vec<u8> },
    /// Settled before the end of the input (a refusal, or a WAV whose data chunk ended).
    Settled(Result<AudioInfo, ProbeError>),
    /// A blocking worker reads the whole stream.
    Worker(Worker),
    /// Between two states (only while `feed` runs).
    Moving,
}

/// The blocking worker of formats read to the end.
struct Worker {
    /// Chunks to the worker; bounded, so a slow probe slows the writer instead of buffering.
    chunk_tx: mpsc::Sender<Bytes>,
    /// Set by the worker as soon as it refuses the stream, so `feed` can stop the upload early.
    early_verdict: Arc<OnceLock<ProbeError>>,
    /// The worker, which drains the channel to its end whatever it decided.
    handle: JoinHandle<Result<AudioInfo, ProbeError>>,
}

/// Chunks in flight between `feed` and the worker.
const CHANNEL_CHUNKS: usize = 8;

/// Most bytes probed in place; a stream the probe cannot settle within them goes to a worker.
const PREFIX_MAX: usize = 64 * 1024;

/// Bytes between two tries on a growing prefix, at least (then it doubles).
const PREFIX_STEP: usize = 4096;

impl Prober {
    pub fn start(hint: FormatHint) -> Prober {
        Prober {
            hint,
            fed: 0,
            state: ProberState::Prefix {
                bytes: Vec::new(),
                tried_at: 0,
            },
        }
    }

    /// Hands one chunk to the probe. Fails early once the probe has refused the stream (the
    /// caller may stop there; later chunks are ignored if it does not).
    pub async fn feed(&mut self, chunk: Bytes) -> Result<(), ProbeError> {
        if chunk.is_empty() {
            return self.early_verdict();
        }
        self.fed += chunk.len() as u64;
        match &mut self.state {
            ProberState::Prefix { bytes, tried_at } => {
                bytes.extend_from_slice(&chunk);
                if bytes.len() < *tried_at + (*tried_at).max(PREFIX_STEP) && *tried_at > 0 {
                    return Ok(());
                }
                *tried_at = bytes.len();
                let attempt = attempt(bytes, &self.hint, End::Open);
                self.state = match (attempt.starved, attempt.count_from) {
                    (false, _) => ProberState::Settled(attempt.result),
                    (true, Some(count_from)) => {
                        let ProberState::Prefix { mut bytes, .. } =
                            std::mem::replace(&mut self.state, ProberState::Moving)
                        else {
                            unreachable!("matched above")
                        };
                        bytes.truncate(usize::try_from(count_from).unwrap_or(usize::MAX));
                        bytes.shrink_to_fit();
                        ProberState::Counting { kept: bytes }
                    }
                    (true, None)
                        if bytes.len() >= PREFIX_MAX || !settles_in_place(attempt.container) =>
                    {
                        let ProberState::Prefix { bytes, .. } =
                            std::mem::replace(&mut self.state, ProberState::Moving)
                        else {
                            unreachable!("matched above")
                        };
                        let mut worker = Worker::start(self.hint.clone());
                        worker.feed(Bytes::from(bytes)).await?;
                        ProberState::Worker(worker)
                    }
                    (true, None) => return Ok(()),
                };
                self.early_verdict()
            }
            ProberState::Counting { .. } => Ok(()),
            ProberState::Settled(_) => self.early_verdict(),
            ProberState::Worker(worker) => worker.feed(chunk).await,
            ProberState::Moving => Err(ProbeError::WorkerStopped),
        }
    }

    /// The refusal, once known.
    fn early_verdict(&self) -> Result<(), ProbeError> {
        match &self.state {
            ProberState::Settled(Err(err)) => Err(err.clone()),
            ProberState::Worker(worker) => match worker.early_verdict.get() {
                Some(err) => Err(err.clone()),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// Marks the end of the input and returns the verdict.
    pub async fn finish(self) -> Result<AudioInfo, ProbeError> {
        match self.state {
            ProberState::Prefix { bytes, .. } => attempt(&bytes, &self.hint, End::Closed).result,
            ProberState::Counting { kept } => {
                attempt(&kept, &self.hint, End::Counted(self.fed)).result
            }
            ProberState::Settled(result) => result,
            ProberState::Worker(worker) => worker.finish().await,
            ProberState::Moving => Err(ProbeError::WorkerStopped),
        }
    }
}

/// Whether a container can be settled on its first bytes (then counted), as opposed to read to
/// the end.
fn settles_in_place(container: &str) -> bool {
    container == CONTAINER_WAV || container == CONTAINER_RAW || container == "audio"
}

impl Worker {
    /// Starts the worker. Panics outside a tokio runtime (tokio's `spawn_blocking` rule).
    fn start(hint: FormatHint) -> Worker {
        let (chunk_tx, chunk_rx) = mpsc::channel(CHANNEL_CHUNKS);
        let early_verdict = Arc::new(OnceLock::new());
        let verdict = Arc::clone(&early_verdict);
        let handle = tokio::task::spawn_blocking(move || {
            let mut reader = ChannelReader {
                chunk_rx,
                current: Bytes::new(),
            };
            let mut trace = Trace::default();
            let result = probe_contained(&mut reader, &hint, &mut trace);
            if let Err(err) = &result {
                let _ = verdict.set(err.clone());
            }
            // Keep consuming so the writer never blocks on a full channel.
            while reader.chunk_rx.blocking_recv().is_some() {}
            result
        });
        Worker {
            chunk_tx,
            early_verdict,
            handle,
        }
    }

    async fn feed(&mut self, chunk: Bytes) -> Result<(), ProbeError> {
        if let Some(err) = self.early_verdict.get() {
            return Err(err.clone());
        }
        match self.chunk_tx.send(chunk).await {
            Ok(()) => Ok(()),
            Err(_) => Err(ProbeError::WorkerStopped),
        }
    }

    async fn finish(self) -> Result<AudioInfo, ProbeError> {
        drop(self.chunk_tx);
        match self.handle.await {
            Ok(result) => result,
            Err(_) => Err(ProbeError::WorkerStopped),
        }
    }
}

/// How the input of one in-place try ends.
#[derive(Debug, Clone, Copy)]
enum End {
    /// More may come: reading past the bytes starves the try.
    Open,
    /// The bytes are the whole input.
    Closed,
    /// The input is this long; past the kept bytes the probe only counts (it is handed zeros).
    Counted(u64),
}

/// One in-place try of the probe.
struct Attempt {
    result: Result<AudioInfo, ProbeError>,
    /// The probe read past the bytes of an open input: `result` means nothing.
    starved: bool,
    /// The container the probe recognised (`"audio"` before it knew).
    container: &'static str,
    /// Where the probe started only counting bytes, if it did.
    count_from: Option<u64>,
}

fn attempt(bytes: &[u8], hint: &FormatHint, end: End) -> Attempt {
    let mut source = PrefixSource {
        bytes,
        pos: 0,
        end,
        starved: false,
    };
    let mut trace = Trace::default();
    let result = probe_contained(&mut source, hint, &mut trace);
    Attempt {
        result,
        starved: source.starved,
        container: trace.container,
        count_from: trace.count_from,
    }
}

/// The bytes of an in-place try.
struct PrefixSource<'a> {
    bytes: &'a [u8],
    pos: u64,
    end: End,
    starved: bool,
}

impl Read for PrefixSource<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = if let Some(rest) = usize::try_from(self.pos)
            .ok()
            .and_then(|pos| self.bytes.get(pos..))
            .filter(|rest| !rest.is_empty())
        {
            let n = buf.len().min(rest.len());
            buf[..n].copy_from_slice(&rest[..n]);
            n
        } else {
            match self.end {
                End::Closed => 0,
                End::Open => {
                    self.starved = true;
                    return Err(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        "probe input not yet received",
                    ));
                }
                End::Counted(total) => {
                    let n = usize::try_from(total.saturating_sub(self.pos))
                        .unwrap_or(usize::MAX)
                        .min(buf.len());
                    buf[..n].fill(0);
                    n
                }
            }
        };
        self.pos += n as u64;
        Ok(n)
    }
}

/// What a probe run leaves behind besides its verdict.
#[derive(Debug)]
struct Trace {
    /// The container recognised so far (`"audio"` before).
    container: &'static str,
    /// The input offset from which the probe only counted bytes.
    count_from: Option<u64>,
}

impl Default for Trace {
    fn default() -> Trace {
        Trace {
            container: "audio",
            count_from: None,
        }
    }
}

/// Probes a complete recording held in memory (tests, fuzzing, small files).
pub fn probe_bytes(bytes: &[u8], hint: &FormatHint) -> Result<AudioInfo, ProbeError> {
    let mut reader = bytes;
    probe_contained(&mut reader, hint, &mut Trace::default())
}

/// Reads the channel as one byte stream; end of stream when every sender is gone.
struct ChannelReader {
    chunk_rx: mpsc::Receiver<Bytes>,
    /// The rest of the chunk being read.
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.chunk_rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// `probe_stream`, with any panic below it turned into `ProbeError::Crashed`.
fn probe_contained(
    reader: &mut (dyn Read + Send + Sync),
    hint: &FormatHint,
    trace: &mut Trace,
) -> Result<AudioInfo, ProbeError> {
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| probe_stream(reader, hint, trace)));
    match outcome {
        Ok(result) => result,
        Err(_) => {
            let container = trace.container;
            tracing::warn!(
                container,
                "audio probe panicked on malformed input; refused"
            );
            Err(ProbeError::Crashed { container })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dispatch

const CODEC_OPUS: &str = "opus";
const CONTAINER_RAW: &str = "raw";

/// Asterisk's header-less formats, chosen by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RawKind {
    /// G.711 µ-law, 1 byte per sample, 8 kHz mono.
    Mulaw,
    /// G.711 A-law, 1 byte per sample, 8 kHz mono.
    Alaw,
    /// Signed 16-bit little-endian ("signed linear"), mono, at the given rate.
    Slin { sample_rate: u32 },
    /// GSM 06.10 in 33-byte frames, 8 kHz mono.
    Gsm,
}

impl RawKind {
    /// The header-less format an extension names (Asterisk's format names and aliases).
    pub(crate) fn from_extension(extension: &str) -> Option<RawKind> {
        /// Asterisk's signed-linear formats and their rates.
        const SLIN_RATES: [(&str, u32); 10] = [
            ("sln", 8000),
            ("slin", 8000),
            ("sln12", 12_000),
            ("sln16", 16_000),
            ("sln24", 24_000),
            ("sln32", 32_000),
            ("sln44", 44_100),
            ("sln48", 48_000),
            ("sln96", 96_000),
            ("sln192", 192_000),
        ];
        match extension {
            "ulaw" | "ul" | "mu" | "ulw" => Some(RawKind::Mulaw),
            "alaw" | "al" | "alw" => Some(RawKind::Alaw),
            "gsm" => Some(RawKind::Gsm),
            _ => SLIN_RATES
                .iter()
                .find(|(name, _)| *name == extension)
                .map(|&(_, sample_rate)| RawKind::Slin { sample_rate }),
        }
    }

    /// The header-less format a probed recording is in, if it is one.
    pub(crate) fn from_info(info: &AudioInfo) -> Option<RawKind> {
        if info.container != CONTAINER_RAW {
            return None;
        }
        match info.codec {
            "pcm_mulaw" => Some(RawKind::Mulaw),
            "pcm_alaw" => Some(RawKind::Alaw),
            "pcm_s16le" => Some(RawKind::Slin {
                sample_rate: info.sample_rate,
            }),
            "gsm" => Some(RawKind::Gsm),
            _ => None,
        }
    }
}

/// Signatures at byte 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Magic {
    Riff,
    Flac,
    Ogg,
    Id3,
    MpegSync,
    Other(&'static str),
}

impl Magic {
    fn detect(head: &[u8]) -> Option<Magic> {
        let magic = if head.starts_with(b"RIFF") {
            Magic::Riff
        } else if head.starts_with(b"fLaC") {
            Magic::Flac
        } else if head.starts_with(b"OggS") {
            Magic::Ogg
        } else if head.starts_with(b"ID3") {
            Magic::Id3
        } else if head.starts_with(b"RIFX") {
            Magic::Other("big-endian riff (RIFX)")
        } else if head.starts_with(b"RF64") || head.starts_with(b"BW64") {
            // RIFF with 64-bit sizes (EBU Tech 3306, ITU-R BS.2088): read as WAV.
            Magic::Riff
        } else if head.starts_with(b"FORM") {
            Magic::Other("AIFF")
        } else if head.starts_with(b"caff") {
            Magic::Other("CAF")
        } else if head.starts_with(b".snd") {
            Magic::Other("Sun/NeXT audio")
        } else if head.starts_with(b"#!AMR") {
            Magic::Other("AMR")
        } else if head.starts_with(&[0x1a, 0x45, 0xdf, 0xa3]) {
            Magic::Other("Matroska/WebM")
        } else if head.get(4..8) == Some(b"ftyp") {
            Magic::Other("MP4")
        } else if head.len() >= 4 && mpeg_header(be_u32(head)).is_some() {
            Magic::MpegSync
        } else {
            return None;
        };
        Some(magic)
    }

    fn name(self) -> &'static str {
        match self {
            Magic::Riff => "RIFF",
            Magic::Flac => "FLAC",
            Magic::Ogg => "Ogg",
            Magic::Id3 => "ID3",
            Magic::MpegSync => "MPEG audio",
            Magic::Other(name) => name,
        }
    }
}

fn probe_stream(
    reader: &mut (dyn Read + Send + Sync),
    hint: &FormatHint,
    trace: &mut Trace,
) -> Result<AudioInfo, ProbeError> {
    let mut stream = Stream::new(reader);
    let result = dispatch(&mut stream, hint, &mut trace.container);
    trace.count_from = stream.count_from;
    result
}

/// Recognises the container and runs its probe.
fn dispatch<R: Read + Send + Sync>(
    stream: &mut Stream<R>,
    hint: &FormatHint,
    container: &mut &'static str,
) -> Result<AudioInfo, ProbeError> {
    let head = peek_or(stream, 16, "audio", "first bytes")?;
    if head.is_empty() {
        return Err(ProbeError::Empty);
    }
    let magic = Magic::detect(head);
    let extension = hint.extension.as_deref().unwrap_or("");
    if let Some(kind) = RawKind::from_extension(extension) {
        // Header-less files have no signature to check; a container signature means the
        // extension lies (MP3 sync is not checked: 0xff is µ-law silence).
        if let Some(magic) = magic.filter(|magic| *magic != Magic::MpegSync) {
            return Err(ProbeError::WrongExtension {
                extension: extension.to_owned(),
                found: magic.name(),
            });
        }
        *container = CONTAINER_RAW;
        return probe_raw(kind, stream);
    }
    match magic {
        Some(Magic::Riff) => {
            *container = "wav";
            probe_wav(stream)
        }
        Some(Magic::Flac) => {
            *container = "flac";
            probe_flac(stream)
        }
        Some(Magic::Ogg) => {
            *container = "ogg";
            probe_ogg(stream)
        }
        Some(Magic::Id3 | Magic::MpegSync) => {
            *container = "mp3";
            probe_mp3(stream)
        }
        Some(Magic::Other(name)) => Err(ProbeError::UnsupportedContainer { container: name }),
        None => Err(ProbeError::UnknownFormat),
    }
}

// ---------------------------------------------------------------------------------------------
// Header-less files

fn probe_raw<R: Read>(kind: RawKind, stream: &mut Stream<R>) -> Result<AudioInfo, ProbeError> {
    match kind {
        RawKind::Mulaw | RawKind::Alaw => {
            stream.begin_count();
            let n_bytes = stream
                .skip_to_end()
                .map_err(|err| io_error(CONTAINER_RAW, stream, err, "samples"))?;
            let codec = if kind == RawKind::Mulaw {
                "pcm_mulaw"
            } else {
                "pcm_alaw"
            };
            AudioInfo::new(CONTAINER_RAW, codec, 8000, 1, n_bytes)
        }
        RawKind::Slin { sample_rate } => {
            stream.begin_count();
            let n_bytes = stream
                .skip_to_end()
                .map_err(|err| io_error(CONTAINER_RAW, stream, err, "samples"))?;
            if n_bytes % 2 != 0 {
                // Cut inside its last sample (a recorder that crashed): the whole ones play, as
                // in a WAV cut short.
                tracing::warn!(
                    n_bytes,
                    "signed-linear file ends inside a sample; dropping it"
                );
            }
            AudioInfo::new(CONTAINER_RAW, "pcm_s16le", sample_rate, 1, n_bytes / 2)
        }
        RawKind::Gsm => {
            let mut buf = vec![0u8; gsm::RAW_FRAME_LEN * 256];
            let mut n_frames_gsm: u64 = 0;
            loop {
                let offset = stream.offset();
                let n = stream
                    .read_up_to(&mut buf)
                    .map_err(|err| io_error(CONTAINER_RAW, stream, err, "gsm frames"))?;
                let whole = n - n % gsm::RAW_FRAME_LEN;
                for (frame_idx, frame) in buf[..whole].chunks_exact(gsm::RAW_FRAME_LEN).enumerate()
                {
                    if !gsm::has_raw_signature(frame) {
                        return Err(ProbeError::Malformed {
                            container: CONTAINER_RAW,
                            offset: offset + (frame_idx * gsm::RAW_FRAME_LEN) as u64,
                            reason: format!(
                                "gsm frame {} does not start with the 0xd signature",
                                n_frames_gsm + frame_idx as u64
                            ),
                        });
                    }
                }
                n_frames_gsm += (whole / gsm::RAW_FRAME_LEN) as u64;
                if n < buf.len() {
                    if whole != n {
                        // Cut inside its last frame (a recorder that crashed): the whole frames
                        // play, as in a WAV cut short.
                        tracing::warn!(
                            partial = n - whole,
                            "gsm file ends inside a 33-byte frame; dropping it"
                        );
                    }
                    break;
                }
            }
            AudioInfo::new(
                CONTAINER_RAW,
                "gsm",
                gsm::SAMPLE_RATE,
                1,
                n_frames_gsm * gsm::FRAME_SAMPLES as u64,
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------
// WAV

const CONTAINER_WAV: &str = "wav";
/// Largest `fmt ` chunk accepted (real ones are 16 to 50 bytes).
const MAX_FMT_CHUNK: u32 = 4096;
/// Data bytes handed to symphonia to validate the codec (decoded once, then dropped).
const WAV_SAMPLE_BYTES: usize = 16 * 1024;

/// What a WAV file's header says, up to the first byte of its data chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WavHeader {
    /// The format tag, resolved through WAVE_FORMAT_EXTENSIBLE's sub-format.
    pub(crate) format_tag: u16,
    pub(crate) channels: u16,
    pub(crate) sample_rate: u32,
    pub(crate) block_align: u16,
    pub(crate) bits_per_sample: u16,
    /// The `fmt ` chunk body as found, to rebuild a minimal header for symphonia.
    pub(crate) fmt_chunk: Vec<u8>,
    /// Frames announced by a `fact` chunk.
    pub(crate) fact_frames: Option<u32>,
    /// The data chunk's declared length; `None` when not known (see `read_wav_header`).
    pub(crate) data_len: Option<u32>,
    /// Offset of the first data byte.
    pub(crate) data_offset: u64,
}

const WAVE_FORMAT_PCM: u16 = 0x0001;
const WAVE_FORMAT_MS_ADPCM: u16 = 0x0002;
const WAVE_FORMAT_IEEE_FLOAT: u16 = 0x0003;
const WAVE_FORMAT_ALAW: u16 = 0x0006;
const WAVE_FORMAT_MULAW: u16 = 0x0007;
const WAVE_FORMAT_IMA_ADPCM: u16 = 0x0011;
pub(crate) const WAVE_FORMAT_GSM610: u16 = 0x0031;
const WAVE_FORMAT_EXTENSIBLE: u16 = 0xfffe;

/// Reads RIFF chunks up to the data chunk, leaving the stream at its first byte. RF64 and BW64
/// files are read the same way, their data size taken from the `ds64` chunk. A data size that
/// is not known is `None` (read to the end of the file): the streaming placeholder 0xffffffff,
/// an RF64 size past 4 GiB, and 0 in a file whose RIFF size does not even cover its header (a
/// recorder writes both sizes when it closes the file: a crash or a streamed copy leaves 0s).
pub(crate) fn read_wav_header<R: Read>(stream: &mut Stream<R>) -> Result<WavHeader, ProbeError> {
    let truncated = |stream: &Stream<R>, what| ProbeError::Truncated {
        container: CONTAINER_WAV,
        what,
        offset: stream.offset(),
    };
    let mut riff = [0u8; 12];
    if read_full(stream, &mut riff)? < riff.len() {
        return Err(truncated(stream, "riff header"));
    }
    let rf64 = match &riff[0..4] {
        b"RIFF" => false,
        b"RF64" | b"BW64" => true,
        _ => return Err(ProbeError::UnknownFormat),
    };
    if &riff[8..12] != b"WAVE" {
        return Err(ProbeError::UnsupportedContainer {
            container: "non-wave riff",
        });
    }
    let riff_size = le_u32(&riff[4..8]);
    let mut fmt: Option<(Vec<u8>, u64)> = None;
    let mut fact_frames = None;
    // RF64: the data chunk's size from `ds64`.
    let mut ds64_data_size: Option<u64> = None;
    loop {
        let chunk_offset = stream.offset();
        let mut chunk_header = [0u8; 8];
        let n = read_full(stream, &mut chunk_header)?;
        if n == 0 {
            return Err(truncated(stream, "chunk list before any data chunk"));
        }
        if n < chunk_header.len() {
            return Err(truncated(stream, "chunk header"));
        }
        let id: [u8; 4] = [
            chunk_header[0],
            chunk_header[1],
            chunk_header[2],
            chunk_header[3],
        ];
        let size = le_u32(&chunk_header[4..8]);
        match &id {
            b"fmt " => {
                if size > MAX_FMT_CHUNK {
                    return Err(ProbeError::Malformed {
                        container: CONTAINER_WAV,
                        offset: chunk_offset,
                        reason: format!("fmt chunk of {size} bytes"),
                    });
                }
                let mut body = vec![0u8; size as usize];
                if read_full(stream, &mut body)? < body.len() {
                    return Err(truncated(stream, "fmt chunk"));
                }
                skip_pad(stream, size)?;
                fmt = Some((body, chunk_offset));
            }
            b"fact" => {
                let mut body = [0u8; 4];
                let kept = size.min(4) as usize;
                if read_full(stream, &mut body[..kept])? < kept {
                    return Err(truncated(stream, "fact chunk"));
                }
                if kept == 4 {
                    fact_frames = Some(le_u32(&body));
                }
                skip_exact(
                    stream,
                    u64::from(size) - kept as u64,
                    CONTAINER_WAV,
                    "fact chunk",
                )?;
                skip_pad(stream, size)?;
            }
            b"ds64" if rf64 => {
                // riffSize, dataSize, sampleCount (u64 each), then a table: only dataSize counts.
                let mut body = [0u8; 16];
                if size < 16 || read_full(stream, &mut body)? < body.len() {
                    return Err(truncated(stream, "ds64 chunk"));
                }
                let data_size =
                    u64::from(le_u32(&body[8..12])) | (u64::from(le_u32(&body[12..16])) << 32);
                ds64_data_size = Some(data_size);
                skip_exact(stream, u64::from(size) - 16, CONTAINER_WAV, "ds64 chunk")?;
                skip_pad(stream, size)?;
            }
            b"data" => {
                let Some((fmt_chunk, fmt_offset)) = fmt else {
                    return Err(ProbeError::Malformed {
                        container: CONTAINER_WAV,
                        offset: chunk_offset,
                        reason: "data chunk before any fmt chunk".to_owned(),
                    });
                };
                let data_offset = stream.offset();
                let data_len = match size {
                    u32::MAX if rf64 => {
                        let Some(data_size) = ds64_data_size else {
                            return Err(ProbeError::Malformed {
                                container: CONTAINER_WAV,
                                offset: chunk_offset,
                                reason: "rf64 data chunk without a ds64 chunk before it".to_owned(),
                            });
                        };
                        u32::try_from(data_size).ok()
                    }
                    u32::MAX => None,
                    0 if !rf64 && u64::from(riff_size) + 8 < data_offset => None,
                    size => Some(size),
                };
                return parse_fmt(fmt_chunk, fmt_offset, fact_frames, data_len, data_offset);
            }
            _ => {
                skip_exact(
                    stream,
                    u64::from(size),
                    CONTAINER_WAV,
                    "chunk before the data chunk",
                )?;
                skip_pad(stream, size)?;
            }
        }
    }
}

fn parse_fmt(
    fmt_chunk: Vec<u8>,
    fmt_offset: u64,
    fact_frames: Option<u32>,
    data_len: Option<u32>,
    data_offset: u64,
) -> Result<WavHeader, ProbeError> {
    let malformed = |reason: String| ProbeError::Malformed {
        container: CONTAINER_WAV,
        offset: fmt_offset,
        reason,
    };
    if fmt_chunk.len() < 16 {
        return Err(malformed(format!(
            "fmt chunk of {} bytes, needs 16",
            fmt_chunk.len()
        )));
    }
    let mut format_tag = le_u16(&fmt_chunk[0..2]);
    let channels = le_u16(&fmt_chunk[2..4]);
    let sample_rate = le_u32(&fmt_chunk[4..8]);
    let block_align = le_u16(&fmt_chunk[12..14]);
    let bits_per_sample = le_u16(&fmt_chunk[14..16]);
    if format_tag == WAVE_FORMAT_EXTENSIBLE {
        // cbSize (2), valid bits (2), channel mask (4), then the sub-format GUID.
        match fmt_chunk.get(24..26) {
            Some(sub_format) => format_tag = le_u16(sub_format),
            None => {
                return Err(malformed(
                    "extensible fmt chunk without a sub-format".to_owned(),
                ));
            }
        }
    }
    if channels == 0 {
        return Err(malformed("0 channels".to_owned()));
    }
    if sample_rate == 0 {
        return Err(malformed("sample rate 0".to_owned()));
    }
    if block_align == 0 {
        return Err(malformed("block align 0".to_owned()));
    }
    Ok(WavHeader {
        format_tag,
        channels,
        sample_rate,
        block_align,
        bits_per_sample,
        fmt_chunk,
        fact_frames,
        data_len,
        data_offset,
    })
}

/// How a WAV codec lays out frames in the data chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WavLayout {
    codec: &'static str,
    /// Frames decoded from one block of `block_align` bytes.
    frames_per_block: u64,
    /// Whether the `fact` chunk's frame count refines the block count (block codecs).
    uses_fact: bool,
}

/// The codec name and block layout of a WAV header, or why it is not accepted.
fn wav_layout(header: &WavHeader) -> Result<WavLayout, ProbeError> {
    let WavHeader {
        format_tag,
        channels,
        block_align,
        bits_per_sample,
        ..
    } = *header;
    let unsupported = |codec: String| ProbeError::UnsupportedCodec {
        container: CONTAINER_WAV,
        codec,
    };
    let sample_codec = |codec: &'static str, bytes_per_sample: u16| {
        if u32::from(block_align) != u32::from(channels) * u32::from(bytes_per_sample) {
            return Err(ProbeError::Malformed {
                container: CONTAINER_WAV,
                offset: 0,
                reason: format!(
                    "{codec} with {channels} channels needs block align {}, header says \
                     {block_align}",
                    u32::from(channels) * u32::from(bytes_per_sample)
                ),
            });
        }
        Ok(WavLayout {
            codec,
            frames_per_block: 1,
            uses_fact: false,
        })
    };
    match (format_tag, bits_per_sample) {
        (WAVE_FORMAT_PCM, 8) => sample_codec("pcm_u8", 1),
        (WAVE_FORMAT_PCM, 16) => sample_codec("pcm_s16le", 2),
        (WAVE_FORMAT_PCM, 24) => sample_codec("pcm_s24le", 3),
        (WAVE_FORMAT_PCM, 32) => sample_codec("pcm_s32le", 4),
        (WAVE_FORMAT_IEEE_FLOAT, 32) => sample_codec("pcm_f32le", 4),
        (WAVE_FORMAT_IEEE_FLOAT, 64) => sample_codec("pcm_f64le", 8),
        (WAVE_FORMAT_ALAW, 8) => sample_codec("pcm_alaw", 1),
        (WAVE_FORMAT_MULAW, 8) => sample_codec("pcm_mulaw", 1),
        (WAVE_FORMAT_PCM | WAVE_FORMAT_IEEE_FLOAT | WAVE_FORMAT_ALAW | WAVE_FORMAT_MULAW, bits) => {
            Err(unsupported(format!(
                "format tag {format_tag:#06x} with {bits} bits per sample"
            )))
        }
        (WAVE_FORMAT_IMA_ADPCM | WAVE_FORMAT_MS_ADPCM, 4) => {
            // Header bytes per channel at the start of each block, then 4-bit samples; the same
            // formula symphonia decodes with.
            let (codec, header_bytes, header_frames) = if format_tag == WAVE_FORMAT_IMA_ADPCM {
                ("adpcm_ima", 4u64, 1u64)
            } else {
                ("adpcm_ms", 7, 2)
            };
            let header_len = header_bytes * u64::from(channels);
            if u64::from(block_align) <= header_len {
                return Err(ProbeError::Malformed {
                    container: CONTAINER_WAV,
                    offset: 0,
                    reason: format!("{codec} block align {block_align} for {channels} channels"),
                });
            }
            let frames_per_block = (8 * (u64::from(block_align) - header_len))
                / (4 * u64::from(channels))
                + header_frames;
            Ok(WavLayout {
                codec,
                frames_per_block,
                uses_fact: true,
            })
        }
        (WAVE_FORMAT_IMA_ADPCM | WAVE_FORMAT_MS_ADPCM, bits) => {
            Err(unsupported(format!("adpcm with {bits} bits per sample")))
        }
        (WAVE_FORMAT_GSM610, _) => {
            if channels != 1 || block_align as usize != gsm::WAV49_BLOCK_LEN {
                return Err(unsupported(format!(
                    "gsm with {channels} channels and {block_align}-byte blocks (only mono \
                     65-byte wav49 blocks)"
                )));
            }
            Ok(WavLayout {
                codec: "gsm",
                frames_per_block: gsm::WAV49_BLOCK_SAMPLES as u64,
                uses_fact: true,
            })
        }
        (tag, _) => Err(unsupported(format!("format tag {tag:#06x}"))),
    }
}

/// Frames in `data_len` bytes of data, refined by the `fact` count for block codecs.
fn wav_frames(header: &WavHeader, layout: &WavLayout, data_len: u64) -> u64 {
    let n_blocks = data_len / u64::from(header.block_align);
    let from_blocks = n_blocks.saturating_mul(layout.frames_per_block);
    match header.fact_frames.map(u64::from) {
        // The fact count is exact when it falls inside the last block.
        Some(fact)
            if layout.uses_fact
                && fact <= from_blocks
                && fact + layout.frames_per_block > from_blocks =>
        {
            fact
        }
        _ => from_blocks,
    }
}

fn probe_wav<R: Read>(stream: &mut Stream<R>) -> Result<AudioInfo, ProbeError> {
    let header = read_wav_header(stream)?;
    let layout = wav_layout(&header)?;
    if header.data_len == Some(0) {
        return Err(ProbeError::NoAudio {
            container: CONTAINER_WAV,
        });
    }
    // Keep the first bytes to let symphonia check the codec, then count the rest.
    let declared = header.data_len.map(u64::from).unwrap_or(u64::MAX);
    let sample_len = declared.min(WAV_SAMPLE_BYTES as u64) as usize;
    let mut sample = vec![0u8; sample_len];
    let sample_read = read_full(stream, &mut sample)?;
    sample.truncate(sample_read);
    if layout.codec != "gsm" {
        validate_wav_with_symphonia(&header, &sample)?;
    }
    drop(sample);
    stream.begin_count();
    let rest = if sample_read < sample_len {
        0
    } else if declared == u64::MAX {
        stream
            .skip_to_end()
            .map_err(|err| io_error(CONTAINER_WAV, stream, err, "data chunk"))?
    } else {
        stream
            .skip(declared - sample_len as u64)
            .map_err(|err| io_error(CONTAINER_WAV, stream, err, "data chunk"))?
    };
    let present = sample_read as u64 + rest;
    if declared != u64::MAX && present < declared {
        // Recorders that crash or stream leave stale sizes; play what is there.
        tracing::warn!(
            declared,
            present,
            "wav data chunk shorter than declared; using the bytes present"
        );
    }
    let n_frames = wav_frames(&header, &layout, present.min(declared));
    // Trailing chunks (LIST, id3, …) are drained by the caller.
    AudioInfo::new(
        CONTAINER_WAV,
        layout.codec,
        header.sample_rate,
        header.channels,
        n_frames,
    )
}

/// Rebuilds a minimal WAV from the header and the first data bytes, and has symphonia demux and
/// decode it: the codec parameters are what symphonia will decode the whole file with.
fn validate_wav_with_symphonia(header: &WavHeader, sample: &[u8]) -> Result<(), ProbeError> {
    let usable = sample.len() - sample.len() % usize::from(header.block_align);
    let sample = &sample[..usable];
    let mut wav = minimal_wav_header(header, Some(usable as u32));
    wav.extend_from_slice(sample);
    let mut reader = symphonia_open(Demuxer::Wav, &wav[..], CONTAINER_WAV)?;
    let (track_id, params) = audio_track(reader.as_ref(), CONTAINER_WAV)?;
    let mut check = DecodeCheck::new(&params, CONTAINER_WAV)?;
    loop {
        match reader.next_packet() {
            Ok(Some(packet)) if packet.track_id == track_id => check.decode(&packet),
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(SymphoniaError::IoError(err)) if err.kind() == io::ErrorKind::UnexpectedEof => {
                break;
            }
            Err(err) => return Err(rejected(CONTAINER_WAV, &err)),
        }
    }
    check.verdict()
}

/// A WAV header holding only the chunks symphonia needs (`fmt `, `fact`, and the `data` chunk
/// header announcing `data_len` bytes, or the streaming placeholder for `None`). Probe and
/// playback both decode through it, so a malformed LIST or unknown chunk elsewhere in the
/// file cannot make symphonia refuse a recording the probe accepted.
pub(crate) fn minimal_wav_header(header: &WavHeader, data_len: Option<u32>) -> Vec<u8> {
    let mut chunks = Vec::with_capacity(32 + header.fmt_chunk.len());
    chunks.extend_from_slice(b"WAVE");
    match header.format_tag {
        // G.711 `fmt ` chunks come in every length (16 without cbSize, 20 with extra bytes,
        // 40 as WAVE_FORMAT_EXTENSIBLE), and symphonia takes only the 18-byte WAVEFORMATEX:
        // given in that form, from the fields read.
        WAVE_FORMAT_ALAW | WAVE_FORMAT_MULAW => {
            let mut fmt = Vec::with_capacity(18);
            fmt.extend_from_slice(&header.format_tag.to_le_bytes());
            fmt.extend_from_slice(&header.channels.to_le_bytes());
            fmt.extend_from_slice(&header.sample_rate.to_le_bytes());
            let byte_rate = header
                .sample_rate
                .saturating_mul(u32::from(header.block_align));
            fmt.extend_from_slice(&byte_rate.to_le_bytes());
            fmt.extend_from_slice(&header.block_align.to_le_bytes());
            fmt.extend_from_slice(&header.bits_per_sample.to_le_bytes());
            fmt.extend_from_slice(&0u16.to_le_bytes());
            push_chunk(&mut chunks, b"fmt ", &fmt);
        }
        _ => push_chunk(&mut chunks, b"fmt ", &header.fmt_chunk),
    }
    if let Some(fact) = header.fact_frames {
        push_chunk(&mut chunks, b"fact", &fact.to_le_bytes());
    }
    chunks.extend_from_slice(b"data");
    chunks.extend_from_slice(&data_len.unwrap_or(u32::MAX).to_le_bytes());
    let riff_len = data_len
        .and_then(|len| u32::try_from(chunks.len()).ok()?.checked_add(len))
        .unwrap_or(u32::MAX);
    let mut wav = Vec::with_capacity(8 + chunks.len());
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&riff_len.to_le_bytes());
    wav.extend_from_slice(&chunks);
    wav
}

fn push_chunk(out: &mut Vec<u8>, id: &[u8; 4], body: &[u8]) {
    out.extend_from_slice(id);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    if body.len() % 2 == 1 {
        out.push(0);
    }
}

// ---------------------------------------------------------------------------------------------
// FLAC and MP3: symphonia demuxes the whole stream, frames are counted

const CONTAINER_FLAC: &str = "flac";
const CONTAINER_MP3: &str = "mp3";

fn probe_flac<R: Read + Send + Sync>(stream: &mut Stream<R>) -> Result<AudioInfo, ProbeError> {
    let mut reader = symphonia_open(Demuxer::Flac, &mut *stream, CONTAINER_FLAC)?;
    let (track_id, params) = audio_track(reader.as_ref(), CONTAINER_FLAC)?;
    if params.codec != CODEC_ID_FLAC {
        return Err(ProbeError::UnsupportedCodec {
            container: CONTAINER_FLAC,
            codec: codec_name(params.codec).to_owned(),
        });
    }
    let (sample_rate, channels) = rate_and_channels(&params, CONTAINER_FLAC)?;
    let mut check = DecodeCheck::new(&params, CONTAINER_FLAC)?;
    let mut n_frames: u64 = 0;
    loop {
        match reader.next_packet() {
            Ok(Some(packet)) if packet.track_id == track_id => {
                n_frames = n_frames.saturating_add(packet.block_dur().get());
                check.decode(&packet);
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(SymphoniaError::IoError(err)) if err.kind() == io::ErrorKind::UnexpectedEof => {
                break;
            }
            Err(err) => return Err(rejected(CONTAINER_FLAC, &err)),
        }
    }
    check.verdict()?;
    AudioInfo::new(CONTAINER_FLAC, "flac", sample_rate, channels, n_frames)
}

/// Skips ID3v2 tags (and zero padding after them) at the current position.
pub(crate) fn skip_id3v2<R: Read>(stream: &mut Stream<R>) -> Result<(), ProbeError> {
    loop {
        let head = peek_or(stream, 10, CONTAINER_MP3, "id3v2 tag")?;
        if head.len() < 3 || &head[0..3] != b"ID3" {
            break;
        }
        if head.len() < 10 {
            return Err(ProbeError::Truncated {
                container: CONTAINER_MP3,
                what: "id3v2 tag header",
                offset: stream.offset(),
            });
        }
        if head[6..10].iter().any(|byte| byte & 0x80 != 0) {
            return Err(ProbeError::Malformed {
                container: CONTAINER_MP3,
                offset: stream.offset(),
                reason: "id3v2 tag size is not sync-safe".to_owned(),
            });
        }
        let size = head[6..10]
            .iter()
            .fold(0u64, |acc, byte| (acc << 7) | u64::from(*byte));
        let footer = if head[5] & 0x10 != 0 { 10 } else { 0 };
        skip_exact(stream, 10 + size + footer, CONTAINER_MP3, "id3v2 tag")?;
    }
    // Some taggers pad past the declared size.
    let mut skipped = 0;
    while skipped < 64 * 1024 {
        let window = peek_or(stream, 4096, CONTAINER_MP3, "padding")?;
        let zeros = window.iter().take_while(|byte| **byte == 0).count();
        let at_end = zeros < window.len() || window.is_empty();
        stream.consume(zeros);
        skipped += zeros;
        if at_end {
            break;
        }
    }
    Ok(())
}

/// The fields of an MPEG audio frame header that the probe needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MpegHeader {
    layer: u8,
    samples_per_frame: u64,
}

/// Parses a 4-byte MPEG audio frame header; `None` if it is not one.
fn mpeg_header(word: u32) -> Option<MpegHeader> {
    if word >> 21 != 0x7ff {
        return None;
    }
    let version_bits = (word >> 19) & 3; // 0: MPEG-2.5, 1: reserved, 2: MPEG-2, 3: MPEG-1
    let layer_bits = (word >> 17) & 3; // 1: layer III, 2: layer II, 3: layer I
    let bitrate_idx = (word >> 12) & 0xf;
    let rate_idx = (word >> 10) & 3;
    if version_bits == 1
        || layer_bits == 0
        || bitrate_idx == 0
        || bitrate_idx == 0xf
        || rate_idx == 3
    {
        return None;
    }
    let layer = (4 - layer_bits) as u8;
    let samples_per_frame = match (layer, version_bits) {
        (1, _) => 384,
        (2, _) => 1152,
        (_, 3) => 1152,
        _ => 576,
    };
    Some(MpegHeader {
        layer,
        samples_per_frame,
    })
}

fn probe_mp3<R: Read + Send + Sync>(stream: &mut Stream<R>) -> Result<AudioInfo, ProbeError> {
    skip_id3v2(stream)?;
    let head = peek_or(stream, 4, CONTAINER_MP3, "first frame")?;
    let first = if head.len() == 4 {
        mpeg_header(be_u32(head))
    } else {
        None
    };
    match first {
        Some(MpegHeader { layer: 3, .. }) => {}
        Some(MpegHeader { layer, .. }) => {
            return Err(ProbeError::UnsupportedCodec {
                container: CONTAINER_MP3,
                codec: format!("mpeg audio layer {layer}"),
            });
        }
        None if head.is_empty() => {
            return Err(ProbeError::NoAudio {
                container: CONTAINER_MP3,
            });
        }
        None => {
            return Err(ProbeError::Malformed {
                container: CONTAINER_MP3,
                offset: stream.offset(),
                reason: "no mpeg audio frame where the audio should start".to_owned(),
            });
        }
    }
    let mut reader = symphonia_open(Demuxer::Mp3, &mut *stream, CONTAINER_MP3)?;
    let (track_id, params) = audio_track(reader.as_ref(), CONTAINER_MP3)?;
    if params.codec != CODEC_ID_MP3 {
        return Err(ProbeError::UnsupportedCodec {
            container: CONTAINER_MP3,
            codec: codec_name(params.codec).to_owned(),
        });
    }
    let (sample_rate, channels) = rate_and_channels(&params, CONTAINER_MP3)?;
    let gap = mp3_gap(reader.as_ref());
    let mut check = DecodeCheck::new(&params, CONTAINER_MP3)?;
    let mut n_frames: u64 = 0;
    loop {
        match reader.next_packet() {
            Ok(Some(packet)) if packet.track_id == track_id => {
                // Count from the frame's own header: every frame decodes to this many samples.
                let samples = match packet.data.get(0..4) {
                    Some(word) => mpeg_header(be_u32(word)).map(|h| h.samples_per_frame),
                    None => None,
                };
                n_frames = n_frames.saturating_add(samples.unwrap_or(0));
                check.decode(&packet);
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(SymphoniaError::IoError(err)) if err.kind() == io::ErrorKind::UnexpectedEof => {
                break;
            }
            Err(err) => return Err(rejected(CONTAINER_MP3, &err)),
        }
    }
    check.verdict()?;
    // A stream cut short of the frame count its tag announces lost its end, padding included:
    // only the delay is taken off it.
    let padding = match gap.tagged_frames {
        Some(announced) if n_frames < announced => 0,
        _ => u64::from(gap.padding),
    };
    let n_frames = n_frames.saturating_sub(u64::from(gap.delay) + padding);
    AudioInfo::new(CONTAINER_MP3, "mp3", sample_rate, channels, n_frames)
}

/// Samples an MP3 without an Info tag is taken to start with: LAME's encoder delay (576) and
/// the decoder's synthesis delay (529).
const MP3_UNTAGGED_DELAY: u32 = 576 + 529;

/// What an MP3 stream's decoded samples hold besides the audio, per channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mp3Gap {
    /// Samples before the audio.
    pub(crate) delay: u32,
    /// Samples after it.
    pub(crate) padding: u32,
    /// Whether symphonia's decoding already drops `delay` and `padding`: it does for what
    /// LAME's Info tag announces (gapless), and cannot for an untagged stream, whose delay the
    /// playback must drop itself.
    pub(crate) trimmed: bool,
    /// Samples the tag's frame count announces, delay and padding included.
    pub(crate) tagged_frames: Option<u64>,
}

/// The encoder delay and padding of the MP3 stream `reader` demuxes. LAME's Info tag announces
/// them (symphonia reads it; one whose checksum fails, as some remuxers write, counts as
/// absent). Without it (sox and lame at 8 kHz write none) nothing says how much the encoder
/// added: the usual encoder delay (576 samples) and the synthesis filter's (529) are taken as
/// the delay, which brings the audio within one frame of the source instead of up to three
/// frames over (168 ms for 3 s at 8 kHz), and lines it up with the source.
pub(crate) fn mp3_gap(reader: &dyn FormatReader) -> Mp3Gap {
    match reader.default_track(TrackType::Audio) {
        Some(track) if track.delay.is_some() || track.padding.is_some() => {
            let (delay, padding) = (track.delay.unwrap_or(0), track.padding.unwrap_or(0));
            Mp3Gap {
                delay,
                padding,
                trimmed: true,
                tagged_frames: track
                    .num_frames
                    .map(|n| n + u64::from(delay) + u64::from(padding)),
            }
        }
        Some(_) | None => Mp3Gap {
            delay: MP3_UNTAGGED_DELAY,
            padding: 0,
            trimmed: false,
            tagged_frames: None,
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Ogg: pages parsed here (CRC checked); Vorbis validated by symphonia on the first pages

const CONTAINER_OGG: &str = "ogg";
/// Bytes of leading pages kept for symphonia's Vorbis check: headers plus a few audio packets.
const OGG_PREFIX_MIN: usize = 64 * 1024;
/// Vorbis headers (comments with cover art) larger than this are refused.
const OGG_PREFIX_MAX: usize = 2 * 1024 * 1024;
/// Bytes kept of each header packet (the identification headers are 19 to 30 bytes; the rest
/// only needs its magic).
const HEADER_PACKET_KEEP: usize = 64;
/// Most samples one Opus packet holds (120 ms at 48 kHz).
const OPUS_MAX_PACKET_FRAMES: u64 = 5760;
/// Most new samples one Vorbis packet yields (half the largest block size, 8192).
const VORBIS_MAX_PACKET_FRAMES: u64 = 4096;
const GRANULE_NONE: u64 = u64::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OggCodec {
    Opus { pre_skip: u16 },
    Vorbis,
}

impl OggCodec {
    fn n_header_packets(self) -> u64 {
        match self {
            OggCodec::Opus { .. } => 2,
            OggCodec::Vorbis => 3,
        }
    }

    fn name(self) -> &'static str {
        match self {
            OggCodec::Opus { .. } => CODEC_OPUS,
            OggCodec::Vorbis => "vorbis",
        }
    }
}

/// One logical audio stream (a link of a chained file).
#[derive(Debug)]
struct OggLink {
    serial: u32,
    codec: OggCodec,
    channels: u16,
    sample_rate: u32,
    /// Packets completed so far, header packets included.
    n_packets: u64,
    /// The first bytes of the packet being assembled, while it is a header packet.
    header_packet: Vec<u8>,
    last_granule: Option<u64>,
    /// Whether a page of this stream other than its first has been seen.
    seen_data_page: bool,
}

impl OggLink {
    fn frames(&self) -> Result<u64, ProbeError> {
        let granule = self.last_granule.unwrap_or(0);
        let frames = match self.codec {
            OggCodec::Opus { pre_skip } => granule.saturating_sub(u64::from(pre_skip)),
            OggCodec::Vorbis => granule,
        };
        let n_audio_packets = self.n_packets.saturating_sub(self.codec.n_header_packets());
        let per_packet = match self.codec {
            OggCodec::Opus { .. } => OPUS_MAX_PACKET_FRAMES,
            OggCodec::Vorbis => VORBIS_MAX_PACKET_FRAMES,
        };
        if frames > n_audio_packets.saturating_mul(per_packet) {
            return Err(ProbeError::Malformed {
                container: CONTAINER_OGG,
                offset: 0,
                reason: format!(
                    "granule position {granule} claims more audio than {n_audio_packets} {} \
                     packets can hold",
                    self.codec.name()
                ),
            });
        }
        Ok(frames)
    }
}

/// A parsed Ogg page header; the body is in the reader's buffer.
#[derive(Debug)]
struct OggPage {
    offset: u64,
    header_type: u8,
    granule: u64,
    serial: u32,
    lacing: Vec<u8>,
}

impl OggPage {
    fn is_first(&self) -> bool {
        self.header_type & 0x02 != 0
    }
}

/// Reads the next page into `body` (and its raw bytes into `raw`, when given); `None` at the
/// end of the stream.
fn read_ogg_page<R: Read>(
    stream: &mut Stream<R>,
    body: &mut Vec<u8>,
    raw: Option<&mut Vec<u8>>,
) -> Result<Option<OggPage>, ProbeError> {
    let offset = stream.offset();
    let mut header = [0u8; 27];
    let n = read_full(stream, &mut header)?;
    if n == 0 {
        return Ok(None);
    }
    let truncated = |what| ProbeError::Truncated {
        container: CONTAINER_OGG,
        what,
        offset,
    };
    if n < header.len() {
        return Err(truncated("page header"));
    }
    if &header[0..4] != b"OggS" {
        return Err(ProbeError::Malformed {
            container: CONTAINER_OGG,
            offset,
            reason: "no OggS capture pattern where a page should start".to_owned(),
        });
    }
    if header[4] != 0 {
        return Err(ProbeError::Malformed {
            container: CONTAINER_OGG,
            offset,
            reason: format!("ogg page version {}", header[4]),
        });
    }
    let n_segments = usize::from(header[26]);
    let mut lacing = vec![0u8; n_segments];
    if read_full(stream, &mut lacing)? < n_segments {
        return Err(truncated("page segment table"));
    }
    let body_len: usize = lacing.iter().map(|&len| usize::from(len)).sum();
    body.resize(body_len, 0);
    if read_full(stream, body)? < body_len {
        return Err(truncated("page body"));
    }
    let stored_crc = le_u32(&header[22..26]);
    header[22..26].fill(0);
    let crc = ogg_crc(ogg_crc(ogg_crc(0, &header), &lacing), body);
    if crc != stored_crc {
        return Err(ProbeError::Malformed {
            container: CONTAINER_OGG,
            offset,
            reason: format!("page crc {stored_crc:#010x}, computed {crc:#010x}"),
        });
    }
    if let Some(raw) = raw {
        header[22..26].copy_from_slice(&stored_crc.to_le_bytes());
        raw.extend_from_slice(&header);
        raw.extend_from_slice(&lacing);
        raw.extend_from_slice(body);
    }
    Ok(Some(OggPage {
        offset,
        header_type: header[5],
        granule: u64::from_le_bytes([
            header[6], header[7], header[8], header[9], header[10], header[11], header[12],
            header[13],
        ]),
        serial: le_u32(&header[14..18]),
        lacing,
    }))
}

/// The Ogg CRC-32 (polynomial 0x04c11db7, no reflection, initial value 0).
fn ogg_crc(mut crc: u32, bytes: &[u8]) -> u32 {
    for &byte in bytes {
        crc = (crc << 8) ^ OGG_CRC_TABLE[((crc >> 24) as u8 ^ byte) as usize];
    }
    crc
}

const OGG_CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut idx = 0;
    while idx < 256 {
        let mut crc = (idx as u32) << 24;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[idx] = crc;
        idx += 1;
    }
    table
};

/// Identifies the codec of a stream from its first packet.
fn ogg_identify(
    first_packet: &[u8],
    offset: u64,
) -> Result<Option<(OggCodec, u16, u32)>, ProbeError> {
    let malformed = |reason: &str| ProbeError::Malformed {
        container: CONTAINER_OGG,
        offset,
        reason: reason.to_owned(),
    };
    if first_packet.starts_with(b"OpusHead") {
        if first_packet.len() < 19 {
            return Err(malformed("OpusHead shorter than 19 bytes"));
        }
        if first_packet[8] >> 4 != 0 {
            return Err(ProbeError::UnsupportedCodec {
                container: CONTAINER_OGG,
                codec: format!("opus with header version {}", first_packet[8]),
            });
        }
        let channels = u16::from(first_packet[9]);
        if channels == 0 {
            return Err(malformed("OpusHead with 0 channels"));
        }
        let pre_skip = le_u16(&first_packet[10..12]);
        return Ok(Some((OggCodec::Opus { pre_skip }, channels, 48_000)));
    }
    if first_packet.starts_with(b"\x01vorbis") {
        if first_packet.len() < 30 {
            return Err(malformed(
                "vorbis identification header shorter than 30 bytes",
            ));
        }
        let channels = u16::from(first_packet[11]);
        let sample_rate = le_u32(&first_packet[12..16]);
        if channels == 0 || sample_rate == 0 {
            return Err(malformed(
                "vorbis identification header with 0 channels or 0 hz",
            ));
        }
        return Ok(Some((OggCodec::Vorbis, channels, sample_rate)));
    }
    Ok(None)
}

/// A name for a non-audio or unsupported Ogg stream, from its first packet.
fn ogg_other_codec(first_packet: &[u8]) -> &'static str {
    const KNOWN: [(&[u8], &str); 7] = [
        (b"Speex   ", "speex"),
        (b"\x7fFLAC", "flac"),
        (b"fishead\0", "skeleton"),
        (b"\x80theora", "theora"),
        (b"OpusTags", "opus without OpusHead"),
        (b"CELT    ", "celt"),
        (b"PCM     ", "pcm"),
    ];
    for (magic, name) in KNOWN {
        if first_packet.starts_with(magic) {
            return name;
        }
    }
    "unknown"
}

fn probe_ogg<R: Read>(stream: &mut Stream<R>) -> Result<AudioInfo, ProbeError> {
    let mut body = Vec::new();
    let mut prefix: Vec<u8> = Vec::new();
    let mut keep_prefix = true;
    // Whether the first link's header packets all fit in the prefix (needed for Vorbis).
    let mut headers_in_prefix = false;
    let mut link: Option<OggLink> = None;
    let mut finished_frames: u64 = 0;
    let mut other_codec: Option<&'static str> = None;
    loop {
        let raw = if keep_prefix { Some(&mut prefix) } else { None };
        let page = match read_ogg_page(stream, &mut body, raw) {
            Ok(Some(page)) => page,
            Ok(None) => break,
            // A recording cut inside its last page still plays up to there. (Also where an
            // in-place try runs out of the bytes received so far: not worth more than debug.)
            Err(ProbeError::Truncated { .. })
                if link.as_ref().is_some_and(|l| l.seen_data_page) =>
            {
                tracing::debug!("ogg stream ends inside a page; using the pages before it");
                break;
            }
            Err(err) => return Err(err),
        };
        if prefix.len() > OGG_PREFIX_MAX {
            keep_prefix = false;
        }
        if page.is_first() {
            let first_len = first_packet_len(&page.lacing);
            let first_packet = &body[..first_len.min(body.len())];
            match ogg_identify(first_packet, page.offset)? {
                Some((codec, channels, sample_rate)) => {
                    if let Some(current) = link.take() {
                        if !current.seen_data_page {
                            return Err(ProbeError::UnsupportedCodec {
                                container: CONTAINER_OGG,
                                codec: "several multiplexed audio streams".to_owned(),
                            });
                        }
                        if current.channels != channels || current.sample_rate != sample_rate {
                            return Err(ProbeError::UnsupportedCodec {
                                container: CONTAINER_OGG,
                                codec: "chained streams with different rates or channels"
                                    .to_owned(),
                            });
                        }
                        finished_frames = finished_frames.saturating_add(current.frames()?);
                    }
                    link = Some(OggLink {
                        serial: page.serial,
                        codec,
                        channels,
                        sample_rate,
                        n_packets: 0,
                        header_packet: Vec::new(),
                        last_granule: None,
                        seen_data_page: false,
                    });
                }
                None => {
                    other_codec.get_or_insert(ogg_other_codec(first_packet));
                    continue;
                }
            }
        }
        let Some(current) = link.as_mut() else {
            continue;
        };
        if page.serial != current.serial {
            continue;
        }
        if !page.is_first() {
            current.seen_data_page = true;
        }
        if page.granule != GRANULE_NONE {
            if page.granule > i64::MAX as u64 {
                return Err(ProbeError::Malformed {
                    container: CONTAINER_OGG,
                    offset: page.offset,
                    reason: format!("negative granule position {}", page.granule as i64),
                });
            }
            current.last_granule = Some(page.granule);
        }
        check_ogg_headers(current, &page, &body)?;
        if keep_prefix {
            let n_wanted = current.codec.n_header_packets() + VALIDATE_PACKETS as u64;
            let headers_done = current.n_packets >= current.codec.n_header_packets();
            headers_in_prefix |= headers_done;
            if (prefix.len() >= OGG_PREFIX_MIN && headers_done) || current.n_packets >= n_wanted {
                keep_prefix = false;
            }
        }
    }
    let Some(last) = link else {
        return match other_codec {
            Some(codec) => Err(ProbeError::UnsupportedCodec {
                container: CONTAINER_OGG,
                codec: codec.to_owned(),
            }),
            None => Err(ProbeError::Truncated {
                container: CONTAINER_OGG,
                what: "first page",
                offset: stream.offset(),
            }),
        };
    };
    if last.n_packets < last.codec.n_header_packets() {
        return Err(ProbeError::Truncated {
            container: CONTAINER_OGG,
            what: "codec header packets",
            offset: stream.offset(),
        });
    }
    let n_frames = finished_frames.saturating_add(last.frames()?);
    if last.codec == OggCodec::Vorbis {
        if !headers_in_prefix {
            return Err(ProbeError::UnsupportedCodec {
                container: CONTAINER_OGG,
                codec: format!("vorbis with headers over {OGG_PREFIX_MAX} bytes"),
            });
        }
        validate_vorbis_with_symphonia(&prefix)?;
    }
    AudioInfo::new(
        CONTAINER_OGG,
        last.codec.name(),
        last.sample_rate,
        last.channels,
        n_frames,
    )
}

/// Length of the first packet of a page (which, on a stream's first page, is the whole
/// identification header).
fn first_packet_len(lacing: &[u8]) -> usize {
    let mut len = 0;
    for &segment in lacing {
        len += usize::from(segment);
        if segment < 255 {
            break;
        }
    }
    len
}

/// Counts the packets a page completes, and checks the magic of each header packet.
fn check_ogg_headers(link: &mut OggLink, page: &OggPage, body: &[u8]) -> Result<(), ProbeError> {
    let mut at = 0;
    for &segment in &page.lacing {
        let len = usize::from(segment);
        let segment_bytes = &body[at..at + len];
        at += len;
        if link.n_packets < link.codec.n_header_packets() {
            let room = HEADER_PACKET_KEEP.saturating_sub(link.header_packet.len());
            link.header_packet
                .extend_from_slice(&segment_bytes[..len.min(room)]);
        }
        if segment == 255 {
            continue;
        }
        // A packet ends here.
        if link.n_packets < link.codec.n_header_packets() {
            let expected: &[u8] = match (link.codec, link.n_packets) {
                (OggCodec::Opus { .. }, 0) => b"OpusHead",
                (OggCodec::Opus { .. }, _) => b"OpusTags",
                (OggCodec::Vorbis, 0) => b"\x01vorbis",
                (OggCodec::Vorbis, 1) => b"\x03vorbis",
                (OggCodec::Vorbis, _) => b"\x05vorbis",
            };
            if !link.header_packet.starts_with(expected) {
                return Err(ProbeError::Malformed {
                    container: CONTAINER_OGG,
                    offset: page.offset,
                    reason: format!(
                        "{} header packet {} does not start with {}",
                        link.codec.name(),
                        link.n_packets,
                        String::from_utf8_lossy(expected)
                            .trim_start_matches(['\x01', '\x03', '\x05'])
                    ),
                });
            }
            link.header_packet.clear();
        }
        link.n_packets += 1;
    }
    Ok(())
}

fn validate_vorbis_with_symphonia(prefix: &[u8]) -> Result<(), ProbeError> {
    let mut reader = symphonia_open(Demuxer::Ogg, prefix, CONTAINER_OGG)?;
    let (track_id, params) = audio_track(reader.as_ref(), CONTAINER_OGG)?;
    if params.codec != CODEC_ID_VORBIS {
        return Err(ProbeError::UnsupportedCodec {
            container: CONTAINER_OGG,
            codec: codec_name(params.codec).to_owned(),
        });
    }
    let mut check = DecodeCheck::new(&params, CONTAINER_OGG)?;
    loop {
        match reader.next_packet() {
            Ok(Some(packet)) if packet.track_id == track_id => check.decode(&packet),
            Ok(Some(_)) => {}
            Ok(None) => break,
            // The prefix ends mid-stream by design.
            Err(SymphoniaError::IoError(_)) => break,
            Err(err) => return Err(rejected(CONTAINER_OGG, &err)),
        }
    }
    check.verdict()
}

// ---------------------------------------------------------------------------------------------
// Symphonia plumbing, shared with transcode

/// Which symphonia demuxer to open: chosen from the signature, never by probing the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Demuxer {
    Wav,
    Flac,
    Mp3,
    Ogg,
}

/// Opens one symphonia demuxer over a reader (not seekable: symphonia reads it once).
pub(crate) fn symphonia_open<'s, R: Read + Send + Sync + 's>(
    demuxer: Demuxer,
    reader: R,
    container: &'static str,
) -> Result<Box<dyn FormatReader + 's>, ProbeError> {
    let mss = MediaSourceStream::new(Box::new(ReadOnlySource::new(reader)), Default::default());
    let opts = FormatOptions::default();
    let opened: Result<Box<dyn FormatReader + 's>, SymphoniaError> = match demuxer {
        Demuxer::Wav => WavReader::try_new(mss, opts).map(|r| Box::new(r) as Box<dyn FormatReader>),
        Demuxer::Flac => {
            FlacReader::try_new(mss, opts).map(|r| Box::new(r) as Box<dyn FormatReader>)
        }
        Demuxer::Mp3 => MpaReader::try_new(mss, opts).map(|r| Box::new(r) as Box<dyn FormatReader>),
        Demuxer::Ogg => OggReader::try_new(mss, opts).map(|r| Box::new(r) as Box<dyn FormatReader>),
    };
    opened.map_err(|err| match err {
        SymphoniaError::IoError(io_err) if io_err.kind() == io::ErrorKind::UnexpectedEof => {
            ProbeError::Truncated {
                container,
                what: "stream headers",
                offset: 0,
            }
        }
        other => rejected(container, &other),
    })
}

/// The default audio track's id and codec parameters.
pub(crate) fn audio_track(
    reader: &dyn FormatReader,
    container: &'static str,
) -> Result<(u32, AudioCodecParameters), ProbeError> {
    let track = reader
        .default_track(TrackType::Audio)
        .ok_or(ProbeError::NoAudio { container })?;
    match track
        .codec_params
        .as_ref()
        .and_then(|params| params.audio())
    {
        Some(params) => Ok((track.id, params.clone())),
        None => Err(ProbeError::NoAudio { container }),
    }
}

fn rate_and_channels(
    params: &AudioCodecParameters,
    container: &'static str,
) -> Result<(u32, u16), ProbeError> {
    let sample_rate = params.sample_rate.unwrap_or(0);
    let channels = params
        .channels
        .as_ref()
        .map(|channels| channels.count())
        .unwrap_or(0);
    match u16::try_from(channels) {
        Ok(channels) if channels > 0 && sample_rate > 0 => Ok((sample_rate, channels)),
        _ => Err(ProbeError::Malformed {
            container,
            offset: 0,
            reason: format!("stream declares {sample_rate} hz and {channels} channels"),
        }),
    }
}

pub(crate) fn rejected(container: &'static str, err: &SymphoniaError) -> ProbeError {
    ProbeError::Rejected {
        container,
        reason: err.to_string(),
    }
}

fn codec_name(codec: AudioCodecId) -> &'static str {
    match codec {
        CODEC_ID_PCM_U8 => "pcm_u8",
        CODEC_ID_PCM_S16LE => "pcm_s16le",
        CODEC_ID_PCM_S24LE => "pcm_s24le",
        CODEC_ID_PCM_S32LE => "pcm_s32le",
        CODEC_ID_PCM_F32LE => "pcm_f32le",
        CODEC_ID_PCM_F64LE => "pcm_f64le",
        CODEC_ID_PCM_ALAW => "pcm_alaw",
        CODEC_ID_PCM_MULAW => "pcm_mulaw",
        CODEC_ID_ADPCM_IMA_WAV => "adpcm_ima",
        CODEC_ID_ADPCM_MS => "adpcm_ms",
        CODEC_ID_FLAC => "flac",
        CODEC_ID_MP3 => "mp3",
        CODEC_ID_VORBIS => "vorbis",
        _ => "other",
    }
}

/// Packets decoded to validate a stream's codec.
const VALIDATE_PACKETS: usize = 8;

/// Decodes the first packets of a stream, up to the first that decodes: the stream is refused
/// when none of the first `VALIDATE_PACKETS` decodes.
struct DecodeCheck {
    container: &'static str,
    decoder: Box<dyn symphonia::core::codecs::audio::AudioDecoder>,
    n_tried: usize,
    n_ok: usize,
    first_error: Option<String>,
}

impl DecodeCheck {
    fn new(
        params: &AudioCodecParameters,
        container: &'static str,
    ) -> Result<DecodeCheck, ProbeError> {
        let decoder = symphonia::default::get_codecs()
            .make_audio_decoder(params, &AudioDecoderOptions::default())
            .map_err(|err| rejected(container, &err))?;
        Ok(DecodeCheck {
            container,
            decoder,
            n_tried: 0,
            n_ok: 0,
            first_error: None,
        })
    }

    fn decode(&mut self, packet: &symphonia::core::packet::Packet) {
        // One packet that decodes settles the verdict: the rest would cost without changing it.
        if self.n_ok > 0 || self.n_tried >= VALIDATE_PACKETS {
            return;
        }
        self.n_tried += 1;
        match self.decoder.decode(packet) {
            Ok(_) => self.n_ok += 1,
            Err(err) => {
                self.first_error.get_or_insert_with(|| err.to_string());
            }
        }
    }

    fn verdict(self) -> Result<(), ProbeError> {
        if self.n_tried > 0 && self.n_ok == 0 {
            return Err(ProbeError::Rejected {
                container: self.container,
                reason: self.first_error.unwrap_or_default(),
            });
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Byte plumbing

/// A reader with look-ahead and a count of the bytes consumed, for the hand-written parsers.
pub(crate) struct Stream<R> {
    inner: R,
    /// Bytes read from `inner` but not yet consumed.
    pending: Vec<u8>,
    pending_pos: usize,
    /// Bytes consumed so far: the offset of the next byte in the file.
    offset: u64,
    /// The offset in `inner` from which the parser only counts bytes (`begin_count`).
    count_from: Option<u64>,
}

impl<R: Read> Stream<R> {
    pub(crate) fn new(inner: R) -> Stream<R> {
        Stream {
            inner,
            pending: Vec::new(),
            pending_pos: 0,
            offset: 0,
            count_from: None,
        }
    }

    /// Says that from here on the parser only counts the bytes it skips: the in-place probe
    /// keeps what was read from `inner` so far and needs nothing more but the length.
    pub(crate) fn begin_count(&mut self) {
        let unconsumed = self.pending.len() - self.pending_pos;
        self.count_from = Some(self.offset + unconsumed as u64);
    }

    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// Up to `n` next bytes without consuming them (fewer only at the end of the stream).
    pub(crate) fn peek(&mut self, n: usize) -> io::Result<&[u8]> {
        if self.pending_pos > 0 {
            self.pending.drain(..self.pending_pos);
            self.pending_pos = 0;
        }
        let mut chunk = [0u8; 4096];
        while self.pending.len() < n {
            let want = (n - self.pending.len()).min(chunk.len());
            match self.inner.read(&mut chunk[..want]) {
                Ok(0) => break,
                Ok(got) => self.pending.extend_from_slice(&chunk[..got]),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        let end = n.min(self.pending.len());
        Ok(&self.pending[..end])
    }

    /// Consumes `n` peeked bytes.
    pub(crate) fn consume(&mut self, n: usize) {
        let n = n.min(self.pending.len() - self.pending_pos);
        self.pending_pos += n;
        self.offset += n as u64;
    }

    /// Fills as much of `buf` as the stream has; returns the count (short only at the end).
    pub(crate) fn read_up_to(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(filled)
    }

    /// Skips up to `n` bytes; returns how many were there.
    pub(crate) fn skip(&mut self, n: u64) -> io::Result<u64> {
        let mut buf = vec![0u8; n.min(64 * 1024) as usize];
        let mut skipped = 0;
        while skipped < n {
            let want = (n - skipped).min(buf.len() as u64) as usize;
            let got = self.read_up_to(&mut buf[..want])?;
            skipped += got as u64;
            if got < want {
                break;
            }
        }
        Ok(skipped)
    }

    /// Skips to the end; returns how many bytes that was.
    pub(crate) fn skip_to_end(&mut self) -> io::Result<u64> {
        self.skip(u64::MAX)
    }
}

impl<R: Read> Read for Stream<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = if self.pending_pos < self.pending.len() {
            let available = &self.pending[self.pending_pos..];
            let n = buf.len().min(available.len());
            buf[..n].copy_from_slice(&available[..n]);
            self.pending_pos += n;
            if self.pending_pos == self.pending.len() {
                self.pending.clear();
                self.pending_pos = 0;
            }
            n
        } else {
            self.inner.read(buf)?
        };
        self.offset += n as u64;
        Ok(n)
    }
}

/// An I/O error while probing: the input source failed (not the file's fault).
fn io_error<R>(
    container: &'static str,
    stream: &Stream<R>,
    err: io::Error,
    what: &'static str,
) -> ProbeError {
    if err.kind() != io::ErrorKind::WouldBlock {
        tracing::warn!(container, offset = stream.offset, %err, "read error while probing {what}");
    }
    ProbeError::Truncated {
        container,
        what,
        offset: stream.offset,
    }
}

/// `Stream::peek`, with a read error turned into a `ProbeError`.
fn peek_or<'a, R: Read>(
    stream: &'a mut Stream<R>,
    n: usize,
    container: &'static str,
    what: &'static str,
) -> Result<&'a [u8], ProbeError> {
    let offset = stream.offset;
    match stream.peek(n) {
        Ok(bytes) => Ok(bytes),
        Err(err) => {
            if err.kind() != io::ErrorKind::WouldBlock {
                tracing::warn!(container, offset, %err, "read error while probing {what}");
            }
            Err(ProbeError::Truncated {
                container,
                what,
                offset,
            })
        }
    }
}

fn read_full<R: Read>(stream: &mut Stream<R>, buf: &mut [u8]) -> Result<usize, ProbeError> {
    stream
        .read_up_to(buf)
        .map_err(|err| io_error("audio", stream, err, "header"))
}

fn skip_exact<R: Read>(
    stream: &mut Stream<R>,
    n: u64,
    container: &'static str,
    what: &'static str,
) -> Result<(), ProbeError> {
    let skipped = stream
        .skip(n)
        .map_err(|err| io_error(container, stream, err, what))?;
    if skipped < n {
        return Err(ProbeError::Truncated {
            container,
            what,
            offset: stream.offset(),
        });
    }
    Ok(())
}

/// RIFF chunks are padded to an even length.
fn skip_pad<R: Read>(stream: &mut Stream<R>, size: u32) -> Result<(), ProbeError> {
    if size % 2 == 1 {
        // A missing final pad byte is harmless.
        stream
            .skip(1)
            .map_err(|err| io_error(CONTAINER_WAV, stream, err, "chunk padding"))?;
    }
    Ok(())
}

fn le_u16(bytes: &[u8]) -> u16 {
    u16::from_le_bytes([bytes[0], bytes[1]])
}

fn le_u32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

fn be_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// Test-audio generators, shared with the other ingest modules' unit tests.
#[cfg(test)]
#[path = "../../tests/support/audio.rs"]
pub(crate) mod audio;

#[cfg(test)]
mod tests {
    use std::path::Path;

    use proptest::prelude::*;

    use super::audio::{self, Mp3Tags, TestAudio, WavEncoding};
    use super::*;

    fn hint_for(audio: &TestAudio) -> FormatHint {
        FormatHint {
            extension: Some(audio.extension()),
        }
    }

    /// Probes a generated file and checks what the probe says against the truth.
    fn check(audio: &TestAudio, container: &str, codec: &str) -> AudioInfo {
        let info = probe_bytes(&audio.bytes(), &hint_for(audio))
            .unwrap_or_else(|err| panic!("{}: {err}", audio.path.display()));
        assert_eq!(
            (info.container, info.codec, info.sample_rate, info.channels),
            (container, codec, audio.sample_rate, audio.channels),
            "{}",
            audio.path.display()
        );
        let error_ms = info.duration_ms.abs_diff(audio.duration_ms());
        assert!(
            error_ms <= 100,
            "{}: probe says {} ms, truth is {} ms",
            audio.path.display(),
            info.duration_ms,
            audio.duration_ms()
        );
        info
    }

    fn check_exact(audio: &TestAudio, container: &str, codec: &str) {
        let info = check(audio, container, codec);
        assert_eq!(info.n_frames, audio.n_frames, "{}", audio.path.display());
    }

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().expect("temp dir")
    }

    #[test]
    fn wav_sample_formats_probe_exactly() {
        let dir = dir();
        let cases = [
            (WavEncoding::Pcm8, "pcm_u8"),
            (WavEncoding::Pcm16, "pcm_s16le"),
            (WavEncoding::Pcm24, "pcm_s24le"),
            (WavEncoding::Pcm32, "pcm_s32le"),
            (WavEncoding::Float32, "pcm_f32le"),
            (WavEncoding::Alaw, "pcm_alaw"),
            (WavEncoding::Mulaw, "pcm_mulaw"),
        ];
        for (encoding, codec) in cases {
            for (rate, channels, seconds) in [(8000, 1, 1.5), (44_100, 2, 1.0)] {
                let audio = audio::wav_sine(dir.path(), encoding, rate, channels, seconds);
                check_exact(&audio, "wav", codec);
            }
        }
    }

    /// Splices chunks into a canonical 44-byte-header WAV: `before` ahead of `data`, `after`
    /// behind it, and an optional replacement for the data chunk's declared size.
    fn splice_wav(wav: &[u8], before: &[u8], after: &[u8], data_size: Option<u32>) -> Vec<u8> {
        let mut out = wav[..36].to_vec();
        out.extend_from_slice(before);
        out.extend_from_slice(&wav[36..40]);
        let size = data_size.unwrap_or_else(|| le_u32(&wav[40..44]));
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&wav[44..]);
        out.extend_from_slice(after);
        let riff_size = (out.len() - 8) as u32;
        out[4..8].copy_from_slice(&riff_size.to_le_bytes());
        out
    }

    #[test]
    fn wav_variants_probe_exactly() {
        let dir = dir();
        // WAVE_FORMAT_EXTENSIBLE, as sox writes 24-bit multichannel files.
        let source = audio::wav_sine(dir.path(), WavEncoding::Pcm24, 8000, 3, 1.0);
        let extensible = dir.path().join("extensible.wav");
        let status = std::process::Command::new("sox")
            .args([source.path.as_os_str(), extensible.as_os_str()])
            .status()
            .expect("sox");
        assert!(status.success());
        let bytes = std::fs::read(&extensible).expect("read");
        assert_eq!(
            le_u16(&bytes[20..22]),
            0xfffe,
            "sox wrote an extensible header"
        );
        let info = probe_bytes(&bytes, &FormatHint::default()).expect("extensible");
        assert_eq!(
            (info.codec, info.channels, info.n_frames),
            ("pcm_s24le", 3, 8000)
        );

        let wav = audio::wav_sine(dir.path(), WavEncoding::Pcm16, 8000, 1, 1.0).bytes();
        let list = b"LIST\x0b\x00\x00\x00INFOISFT\x01\x00\x00\x00"; // odd size, then the pad byte
        let trailer = b"id3 \x04\x00\x00\x00abcd";
        let cases: [(Vec<u8>, u64); 4] = [
            (splice_wav(&wav, list, trailer, None), 8000),
            // ffmpeg's streaming placeholder: the data runs to the end (trailer included).
            (splice_wav(&wav, b"", b"", Some(u32::MAX)), 8000),
            // A stale size larger than the file: the bytes present count.
            (splice_wav(&wav, b"", b"", Some(1_000_000)), 8000),
            (splice_wav(&wav[..wav.len() - 4000], b"", b"", None), 6000),
        ];
        for (idx, (bytes, n_frames)) in cases.iter().enumerate() {
            let info = probe_bytes(bytes, &FormatHint::default());
            assert_eq!(
                info.as_ref().map(|info| info.n_frames),
                Ok(*n_frames),
                "case {idx}"
            );
            // What the probe accepts, playback decodes.
            let info = info.expect("probed");
            let mut out = Vec::new();
            let reader = Box::new(std::io::Cursor::new(bytes.clone()));
            let result = crate::ingest::transcode::transcode_to_wav(
                reader,
                &FormatHint::default(),
                &info,
                &mut out,
            );
            assert!(result.is_ok(), "case {idx}: {result:?}");
        }
    }

    /// A RIFF file of `magic` ("RIFF", "RF64") with these chunks, each with its body and the
    /// size its header gives (the body's length when `None`); the RIFF size `riff_size`, or the
    /// file's.
    fn riff_file(
        magic: &[u8; 4],
        riff_size: Option<u32>,
        chunks: &[(&[u8; 4], &[u8], Option<u32>)],
    ) -> Vec<u8> {
        let mut out = magic.to_vec();
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(b"WAVE");
        for (id, body, size) in chunks {
            out.extend_from_slice(*id);
            let size = size.unwrap_or(body.len() as u32);
            out.extend_from_slice(&size.to_le_bytes());
            out.extend_from_slice(body);
            if body.len() % 2 == 1 {
                out.push(0);
            }
        }
        let riff_size = riff_size.unwrap_or((out.len() - 8) as u32);
        out[4..8].copy_from_slice(&riff_size.to_le_bytes());
        out
    }

    /// The `format=wav` rendering of `bytes`, as probed.
    fn playback(bytes: &[u8]) -> Result<Vec<u8>, String> {
        let info = probe_bytes(bytes, &FormatHint::default()).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        crate::ingest::transcode::transcode_to_wav(
            Box::new(std::io::Cursor::new(bytes.to_vec())),
            &FormatHint::default(),
            &info,
            &mut out,
        )
        .map_err(|e| e.to_string())?;
        Ok(out)
    }

    #[test]
    fn wav_headers_as_recorders_write_them_are_read() {
        let dir = dir();
        for encoding in [WavEncoding::Mulaw, WavEncoding::Alaw] {
            let canonical = audio::wav_sine(dir.path(), encoding, 8000, 1, 1.0).bytes();
            // fmt (18 bytes), fact (4), data: the samples start at 58.
            assert_eq!(&canonical[50..54], b"data");
            let fmt = &canonical[20..36]; // without cbSize
            let data = &canonical[58..];
            let expected = playback(&canonical).expect("canonical file plays");
            let mut with_extra = fmt.to_vec();
            with_extra.extend_from_slice(&[2, 0, 0xaa, 0xbb]); // cbSize 2 and its two bytes
            let mut extensible = fmt.to_vec();
            extensible[0..2].copy_from_slice(&0xfffe_u16.to_le_bytes());
            extensible.extend_from_slice(&22u16.to_le_bytes()); // cbSize
            extensible.extend_from_slice(&8u16.to_le_bytes()); // valid bits
            extensible.extend_from_slice(&4u32.to_le_bytes()); // channel mask: front centre
            extensible.extend_from_slice(&canonical[20..22]); // sub-format: the G.711 tag...
            extensible.extend_from_slice(&[
                0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xaa, 0x00, 0x38, 0x9b, 0x71,
            ]); // ...in KSDATAFORMAT_SUBTYPE's GUID
            let variants = [
                (
                    "fmt without cbSize",
                    riff_file(
                        b"RIFF",
                        None,
                        &[(b"fmt ", fmt, None), (b"data", data, None)],
                    ),
                ),
                (
                    "fmt with extra bytes",
                    riff_file(
                        b"RIFF",
                        None,
                        &[(b"fmt ", &with_extra, None), (b"data", data, None)],
                    ),
                ),
                (
                    "extensible",
                    riff_file(
                        b"RIFF",
                        None,
                        &[(b"fmt ", &extensible, None), (b"data", data, None)],
                    ),
                ),
            ];
            for (what, bytes) in variants {
                let info = probe_bytes(&bytes, &FormatHint::default());
                assert_eq!(
                    info.map(|info| (info.codec, info.n_frames)),
                    Ok((
                        if encoding == WavEncoding::Mulaw {
                            "pcm_mulaw"
                        } else {
                            "pcm_alaw"
                        },
                        8000
                    )),
                    "{encoding:?}, {what}"
                );
                assert_eq!(
                    playback(&bytes),
                    Ok(expected.clone()),
                    "{encoding:?}, {what}"
                );
            }
        }

        let canonical = audio::wav_sine(dir.path(), WavEncoding::Pcm16, 8000, 1, 1.0).bytes();
        let (fmt, data) = (&canonical[20..36], &canonical[44..]);
        let expected = playback(&canonical).expect("canonical file plays");
        let list: &[u8] = b"INFOISFT\x01\x00\x00\x00";
        // A file its writer never closed: both sizes still 0. The data runs to the end.
        let unfinished = riff_file(
            b"RIFF",
            Some(0),
            &[(b"fmt ", fmt, None), (b"data", data, Some(0))],
        );
        // A finished file whose data chunk is really empty: no audio.
        let empty = riff_file(
            b"RIFF",
            None,
            &[
                (b"fmt ", fmt, None),
                (b"data", b"", None),
                (b"LIST", list, None),
            ],
        );
        // RF64 (ffmpeg -rf64 always): sizes in ds64, a chunk after the data.
        let mut ds64 = Vec::new();
        ds64.extend_from_slice(&0u64.to_le_bytes()); // riff size: not read
        ds64.extend_from_slice(&(data.len() as u64).to_le_bytes());
        ds64.extend_from_slice(&8000u64.to_le_bytes());
        ds64.extend_from_slice(&0u32.to_le_bytes()); // no table
        let rf64 = riff_file(
            b"RF64",
            Some(u32::MAX),
            &[
                (b"ds64", &ds64, None),
                (b"fmt ", fmt, None),
                (b"data", data, Some(u32::MAX)),
                (b"LIST", list, None),
            ],
        );
        let rf64_without_ds64 = riff_file(
            b"RF64",
            Some(u32::MAX),
            &[(b"fmt ", fmt, None), (b"data", data, Some(u32::MAX))],
        );
        for (what, bytes) in [("unfinished", &unfinished), ("rf64", &rf64)] {
            let info = probe_bytes(bytes, &FormatHint::default());
            assert_eq!(
                info.map(|info| (info.codec, info.n_frames)),
                Ok(("pcm_s16le", 8000)),
                "{what}"
            );
            assert_eq!(playback(bytes), Ok(expected.clone()), "{what}");
        }
        assert!(matches!(
            probe_bytes(&empty, &FormatHint::default()),
            Err(ProbeError::NoAudio { .. })
        ));
        let refused = probe_bytes(&rf64_without_ds64, &FormatHint::default()).expect_err("no ds64");
        assert!(refused.to_string().contains("ds64"), "{refused}");
    }

    #[test]
    fn wav_adpcm_probes_exactly() {
        let dir = dir();
        for (rate, channels) in [(8000, 1), (22_050, 2)] {
            check_exact(
                &audio::wav_ima_adpcm(dir.path(), rate, channels, 1.3),
                "wav",
                "adpcm_ima",
            );
            check_exact(
                &audio::wav_ms_adpcm(dir.path(), rate, channels, 1.3),
                "wav",
                "adpcm_ms",
            );
        }
    }

    #[test]
    fn flac_probes_exactly() {
        let dir = dir();
        check_exact(&audio::flac(dir.path(), 8000, 1, 2.0), "flac", "flac");
        check_exact(&audio::flac(dir.path(), 48_000, 2, 1.1), "flac", "flac");
    }

    #[test]
    fn mp3_with_lame_info_tag_probes_exactly() {
        let dir = dir();
        for (rate, channels) in [(8000, 1), (16_000, 1), (44_100, 2)] {
            let audio = audio::mp3(dir.path(), rate, channels, 2.0, Mp3Tags::LameInfo);
            check_exact(&audio, "mp3", "mp3");
        }
    }

    #[test]
    fn mp3_without_info_tag_is_within_a_frame_of_the_source() {
        // Without the tag nothing says how many decoded samples are encoder delay and padding:
        // every frame less the usual delay, against what sox decodes (every frame but the last)
        // and the source.
        let dir = dir();
        for tags in [Mp3Tags::None, Mp3Tags::Id3v2] {
            for (rate, channels) in [(8000, 1), (16_000, 1), (44_100, 2)] {
                let audio = audio::mp3(dir.path(), rate, channels, 2.0, tags);
                let bytes = audio.bytes();
                assert_eq!(bytes.starts_with(b"ID3"), tags == Mp3Tags::Id3v2);
                let info = probe_bytes(&bytes, &hint_for(&audio)).expect("probe");
                let decoded = audio::sox_decode(&audio.path, &[]);
                let sox_frames = (decoded.len() / usize::from(channels)) as u64;
                assert_eq!((info.sample_rate, info.channels), (rate, channels));
                let frame_len = if rate >= 32_000 { 1152 } else { 576 };
                let delay = u64::from(MP3_UNTAGGED_DELAY);
                // libmad (sox) does not output the last frame: one frame of difference.
                // (With an ID3v2 tag sox trims to the tag's TLEN instead.)
                assert!(
                    tags == Mp3Tags::Id3v2
                        || info.n_frames + delay == sox_frames
                        || info.n_frames + delay == sox_frames + frame_len,
                    "{tags:?} {rate}: probe {} frames, sox decodes {sox_frames}",
                    info.n_frames
                );
                assert!(
                    info.n_frames.abs_diff(audio.n_frames) <= frame_len,
                    "{tags:?} {rate}: probe {} frames, source {}",
                    info.n_frames,
                    audio.n_frames
                );
                assert!(
                    info.duration_ms.abs_diff(2000) < 100,
                    "{}",
                    info.duration_ms
                );
            }
        }
    }

    #[test]
    fn ogg_vorbis_probes_exactly() {
        let dir = dir();
        check_exact(
            &audio::ogg_vorbis(dir.path(), 16_000, 1, 2.0),
            "ogg",
            "vorbis",
        );
        check_exact(
            &audio::ogg_vorbis(dir.path(), 44_100, 2, 1.0),
            "ogg",
            "vorbis",
        );
    }

    #[test]
    fn ogg_opus_probes_from_granule_and_pre_skip() {
        let dir = dir();
        let info = check(&audio::ogg_opus(dir.path(), 8000, 1, 2.0), "ogg", "opus");
        assert!(!info.can_transcode());
        check(&audio::ogg_opus(dir.path(), 48_000, 2, 1.0), "ogg", "opus");
    }

    #[test]
    fn gsm_probes_exactly_in_both_packings() {
        let dir = dir();
        check_exact(&audio::gsm_wav(dir.path(), 2.0), "wav", "gsm");
        check_exact(&audio::gsm_raw(dir.path(), 1.0), "raw", "gsm");
    }

    #[test]
    fn headerless_files_probe_by_extension() {
        let dir = dir();
        check_exact(&audio::ulaw(dir.path(), 1.5), "raw", "pcm_mulaw");
        check_exact(&audio::alaw(dir.path(), 1.5), "raw", "pcm_alaw");
        check_exact(&audio::sln(dir.path(), 1.5), "raw", "pcm_s16le");
        let sln16 = probe_bytes(
            &[0u8; 32_000],
            &FormatHint {
                extension: Some("sln16".into()),
            },
        );
        assert_eq!(
            sln16.map(|info| (info.sample_rate, info.duration_ms)),
            Ok((16_000, 1000))
        );
    }

    #[test]
    fn hint_comes_from_the_file_name() {
        let hint =
            FormatHint::from_file_name("in-0145678900-0612345678-20261122-101500-1700.1.ULAW");
        assert_eq!(hint.extension.as_deref(), Some("ulaw"));
        assert_eq!(FormatHint::from_file_name("noext").extension, None);
        assert_eq!(FormatHint::from_file_name(".hidden").extension, None);
    }

    fn check_error(bytes: &[u8], extension: Option<&str>, expected: &str) {
        let hint = FormatHint {
            extension: extension.map(str::to_owned),
        };
        match probe_bytes(bytes, &hint) {
            Ok(info) => panic!("{extension:?}: accepted as {info:?}, expected error {expected:?}"),
            Err(err) => {
                let message = err.to_string();
                assert!(
                    message.contains(expected),
                    "{extension:?}: error {message:?} does not contain {expected:?}"
                );
                let first = message.chars().next().unwrap_or('x');
                assert!(
                    first.is_lowercase() && !message.ends_with('.'),
                    "style: {message}"
                );
            }
        }
    }

    #[test]
    fn bad_inputs_give_the_documented_errors() {
        let dir = dir();
        let wav = audio::wav_sine(dir.path(), WavEncoding::Pcm16, 8000, 1, 0.5).bytes();
        let ogg = audio::ogg_opus(dir.path(), 8000, 1, 0.5).bytes();
        let gsm = audio::gsm_raw(dir.path(), 0.5).bytes();

        check_error(b"", Some("wav"), "empty file");
        check_error(b"", Some("ulaw"), "empty file");
        check_error(b"", None, "empty file");

        check_error(
            &wav,
            Some("ulaw"),
            "wrong extension: .ulaw file starts with a RIFF header",
        );
        check_error(
            &wav,
            Some("gsm"),
            "wrong extension: .gsm file starts with a RIFF header",
        );
        check_error(
            &ogg,
            Some("sln"),
            "wrong extension: .sln file starts with a Ogg header",
        );
        check_error(
            b"ID3\x04\x00\x00\x00\x00\x00\x00",
            Some("alaw"),
            "starts with a ID3 header",
        );

        // Cut inside the last sample or frame: the whole ones count.
        let sln = probe_bytes(&[7u8; 3001], &FormatHint::from_file_name("x.sln"));
        assert_eq!(sln.map(|info| info.n_frames), Ok(1500));
        let cut = probe_bytes(&gsm[..gsm.len() - 5], &FormatHint::from_file_name("x.gsm"));
        assert_eq!(
            cut.map(|info| info.n_frames),
            Ok((gsm.len() / 33 - 1) as u64 * 160)
        );
        let mut bad_gsm = gsm.clone();
        bad_gsm[33] = 0x20;
        check_error(
            &bad_gsm,
            Some("gsm"),
            "gsm frame 1 does not start with the 0xd signature",
        );

        for cut in [4, 11, 20, 30, 40, 43] {
            check_error(&wav[..cut], Some("wav"), "truncated wav");
        }
        check_error(&ogg[..20], Some("opus"), "truncated ogg");
        let mut bad_crc = ogg.clone();
        bad_crc[40] ^= 0xff;
        check_error(&bad_crc, Some("opus"), "crc");

        let mut no_samples = wav[..44].to_vec();
        no_samples[40..44].fill(0);
        check_error(&no_samples, Some("wav"), "no audio");

        let mut mp3_in_wav = wav.clone();
        mp3_in_wav[20..22].copy_from_slice(&0x0055u16.to_le_bytes());
        check_error(
            &mp3_in_wav,
            Some("wav"),
            "unsupported audio: wav with codec format tag 0x0055",
        );
        check_error(
            b"FORM\x00\x00\x00\x20AIFFCOMM",
            Some("aiff"),
            "unsupported audio: AIFF files",
        );

        // Pseudo-random bytes: no signature, whatever the extension claims.
        let mut state = 0x1234_5678u32;
        let random: Vec<u8> = (0..4096)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 24) as u8 | 0x01 // never 0xff at byte 0 (an mpeg sync)
            })
            .collect();
        for extension in [
            None,
            Some("wav"),
            Some("mp3"),
            Some("flac"),
            Some("ogg"),
            Some("opus"),
        ] {
            check_error(
                &random,
                extension,
                "unsupported audio: no wav, flac, mp3 or ogg signature",
            );
        }
        check_error(
            &random,
            Some("gsm"),
            "does not start with the 0xd signature",
        );
    }

    /// Feeds bytes through a `Prober` in pseudo-random chunk sizes.
    async fn probe_in_chunks(
        bytes: &[u8],
        hint: &FormatHint,
        seed: u32,
    ) -> Result<AudioInfo, ProbeError> {
        let mut prober = Prober::start(hint.clone());
        let mut state = seed;
        let mut at = 0;
        while at < bytes.len() {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let len = 1 + (state >> 16) as usize % 7000;
            let end = (at + len).min(bytes.len());
            if prober
                .feed(Bytes::copy_from_slice(&bytes[at..end]))
                .await
                .is_err()
            {
                break;
            }
            at = end;
        }
        prober.finish().await
    }

    fn one_of_each(dir: &Path) -> Vec<TestAudio> {
        vec![
            audio::wav_sine(dir, WavEncoding::Pcm16, 8000, 1, 1.0),
            audio::wav_sine(dir, WavEncoding::Float32, 16_000, 2, 1.0),
            audio::wav_ima_adpcm(dir, 8000, 1, 1.0),
            audio::wav_ms_adpcm(dir, 8000, 2, 1.0),
            audio::gsm_wav(dir, 1.0),
            audio::flac(dir, 16_000, 1, 1.0),
            audio::mp3(dir, 8000, 1, 1.0, Mp3Tags::LameInfo),
            audio::mp3(dir, 22_050, 2, 1.0, Mp3Tags::Id3v2),
            audio::ogg_vorbis(dir, 16_000, 2, 1.0),
            audio::ogg_opus(dir, 8000, 1, 1.0),
            audio::gsm_raw(dir, 1.0),
            audio::ulaw(dir, 1.0),
            audio::alaw(dir, 1.0),
            audio::sln(dir, 1.0),
        ]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prober_in_random_chunks_agrees_with_probe_bytes() {
        let dir = dir();
        for (idx, audio) in one_of_each(dir.path()).iter().enumerate() {
            let bytes = audio.bytes();
            let hint = hint_for(audio);
            let expected = probe_bytes(&bytes, &hint);
            assert!(expected.is_ok(), "{}: {expected:?}", audio.path.display());
            for seed in 0..3 {
                let actual = probe_in_chunks(&bytes, &hint, seed * 7919 + idx as u32).await;
                assert_eq!(actual, expected, "{} seed {seed}", audio.path.display());
            }
        }
    }

    #[tokio::test]
    async fn prober_rejects_early_and_never_blocks_the_writer() {
        let dir = dir();
        let wav = audio::wav_sine(dir.path(), WavEncoding::Pcm16, 8000, 1, 2.0).bytes();
        let mut prober = Prober::start(FormatHint {
            extension: Some("ulaw".into()),
        });
        let mut refused_at = None;
        // Far more chunks than the channel holds: the worker must keep draining.
        for chunk_idx in 0..200 {
            let chunk = Bytes::copy_from_slice(&wav[..1000]);
            match prober.feed(chunk).await {
                Ok(()) => {}
                Err(err) => {
                    assert!(matches!(err, ProbeError::WrongExtension { .. }), "{err}");
                    refused_at.get_or_insert(chunk_idx);
                }
            }
            tokio::task::yield_now().await;
        }
        assert!(refused_at.is_some(), "feed never reported the refusal");
        assert!(matches!(
            prober.finish().await,
            Err(ProbeError::WrongExtension { .. })
        ));
    }

    #[tokio::test]
    async fn prober_drains_what_follows_the_audio() {
        // The probe has its answer at the end of the data chunk; 2 MiB of trailing chunk must
        // still flow through without the writer blocking on a full channel.
        let dir = dir();
        let wav = audio::wav_sine(dir.path(), WavEncoding::Pcm16, 8000, 1, 1.0).bytes();
        let mut trailer = b"junk".to_vec();
        trailer.extend_from_slice(&(2u32 << 20).to_le_bytes());
        trailer.resize(8 + (2 << 20), 0x55);
        let bytes = splice_wav(&wav, b"", &trailer, None);
        let hint = FormatHint::default();
        let info = probe_in_chunks(&bytes, &hint, 42).await.expect("probed");
        assert_eq!(info.n_frames, 8000);
    }

    #[tokio::test]
    async fn empty_prober_input_is_empty_file() {
        let prober = Prober::start(FormatHint::default());
        assert_eq!(prober.finish().await, Err(ProbeError::Empty));
    }

    #[test]
    fn ogg_crc_matches_the_reference_value() {
        // The CRC-32/POSIX check value 0x765e7680, before its final inversion (Ogg has none).
        assert_eq!(ogg_crc(0, b"123456789"), 0x89a1_897f);
    }

    const HINTS: [Option<&str>; 11] = [
        None,
        Some("wav"),
        Some("mp3"),
        Some("flac"),
        Some("ogg"),
        Some("opus"),
        Some("ulaw"),
        Some("alaw"),
        Some("sln"),
        Some("sln16"),
        Some("gsm"),
    ];

    const PREFIXES: [&[u8]; 8] = [
        b"",
        b"RIFF\x24\x08\x00\x00WAVEfmt ",
        b"RIFF\xff\xff\xff\xffWAVEfmt \x10\x00\x00\x00\x31\x00",
        b"OggS\x00\x02",
        b"fLaC\x00\x00\x00\x22",
        b"ID3\x03\x00\x00\x00\x00\x00\x10",
        b"\xff\xfb\x90\x64",
        b"\xd0",
    ];

    /// `probe_stream` without its guard. Symphonia is known to panic on some hostile inputs
    /// (e.g. an overflow in its Vorbis setup-header parser), which the guard turns into
    /// `Crashed`; a panic in our own code fails the test.
    fn probe_unguarded(bytes: &[u8], hint: &FormatHint) -> Result<AudioInfo, ProbeError> {
        audio::record_panic_backtraces();
        let outcome = panic::catch_unwind(|| {
            let mut reader = bytes;
            probe_stream(&mut reader, hint, &mut Trace::default())
        });
        match outcome {
            Ok(result) => result,
            Err(_) => {
                audio::assert_last_panic_was_symphonias();
                Err(ProbeError::Crashed { container: "audio" })
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn probe_never_panics_on_arbitrary_bytes(
            prefix_idx in 0..PREFIXES.len(),
            tail in proptest::collection::vec(any::<u8>(), 0..3000),
            hint_idx in 0..HINTS.len(),
        ) {
            let mut bytes = PREFIXES[prefix_idx].to_vec();
            bytes.extend(tail);
            let hint = FormatHint { extension: HINTS[hint_idx].map(str::to_owned) };
            let _ = probe_unguarded(&bytes, &hint);
        }
    }

    /// Recomputes the CRC of every complete Ogg page, so damage reaches the codec parsers.
    fn fix_ogg_crcs(bytes: &mut [u8]) {
        let mut at = 0;
        while at + 27 <= bytes.len() && &bytes[at..at + 4] == b"OggS" {
            let n_segments = usize::from(bytes[at + 26]);
            let Some(lacing) = bytes.get(at + 27..at + 27 + n_segments) else {
                break;
            };
            let end =
                at + 27 + n_segments + lacing.iter().map(|&len| usize::from(len)).sum::<usize>();
            if end > bytes.len() {
                break;
            }
            bytes[at + 22..at + 26].fill(0);
            let crc = ogg_crc(0, &bytes[at..end]);
            bytes[at + 22..at + 26].copy_from_slice(&crc.to_le_bytes());
            at = end;
        }
    }

    /// Valid files of every format, made once for the mutation test.
    fn seed_files() -> &'static Vec<(Vec<u8>, FormatHint)> {
        static SEEDS: std::sync::OnceLock<Vec<(Vec<u8>, FormatHint)>> = std::sync::OnceLock::new();
        SEEDS.get_or_init(|| {
            let dir = dir();
            one_of_each(dir.path())
                .iter()
                .map(|audio| {
                    let mut bytes = audio.bytes();
                    bytes.truncate(24 * 1024);
                    (bytes, hint_for(audio))
                })
                .collect()
        })
    }

    /// Seed file `seed_idx` with bytes overwritten at `mutations`, cut to `cut * 4` bytes, its
    /// Ogg CRCs fixed so the damage reaches the codec parsers.
    fn damaged(seed_idx: usize, mutations: &[(u16, u8)], cut: u16) -> (Vec<u8>, FormatHint) {
        let seeds = seed_files();
        let (original, hint) = &seeds[seed_idx % seeds.len()];
        let mut bytes = original.clone();
        for &(position, value) in mutations {
            let idx = usize::from(position) % bytes.len();
            bytes[idx] = value;
        }
        bytes.truncate(usize::from(cut).max(1) * 4);
        fix_ogg_crcs(&mut bytes);
        (bytes, hint.clone())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

        #[test]
        fn probe_never_panics_on_damaged_files(
            seed_idx in 0..14usize,
            mutations in proptest::collection::vec((any::<u16>(), any::<u8>()), 1..12),
            cut in any::<u16>(),
        ) {
            let (bytes, hint) = damaged(seed_idx, &mutations, cut);
            let _ = probe_unguarded(&bytes, &hint);
        }
    }
    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// The in-place probe (tried on a growing prefix, then replayed against the length) and
        /// the worker agree with the one-shot probe on damaged files, whatever the chunking.
        #[test]
        fn prober_in_chunks_agrees_with_probe_bytes_on_damaged_files(
            seed_idx in 0..14usize,
            mutations in proptest::collection::vec((any::<u16>(), any::<u8>()), 0..6),
            cut in any::<u16>(),
            chunking in any::<u32>(),
        ) {
            let (bytes, hint) = damaged(seed_idx, &mutations, cut);
            let expected = probe_bytes(&bytes, &hint);
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let actual = runtime.block_on(probe_in_chunks(&bytes, &hint, chunking));
            match (&expected, &actual) {
                // An early refusal may stop reading before the one-shot probe's verdict.
                (Err(_), Err(_)) => {}
                _ => prop_assert_eq!(expected, actual),
            }
        }
    }
}
