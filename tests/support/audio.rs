//! Test-audio generators: each writes a real, small (1–3 s) recording into a directory the test
//! owns and returns its path with the truth about it (rate, channels, frames, duration). WAV in
//! PCM, float, A-law and µ-law is written in pure Rust; the other formats are made by the same
//! tools a PBX would use (`sox`, `lame`, `opusenc`), and a missing tool fails the test with the
//! name of the Debian package to install. Shared by unit tests (via `#[path]`) and black-box
//! tests; it must not depend on the crate under test, and it never writes outside `dir`.
#![allow(dead_code)]

use std::f64::consts::PI;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A generated recording and what it truly holds.
#[derive(Debug, Clone)]
pub(crate) struct TestAudio {
    pub(crate) path: PathBuf,
    pub(crate) sample_rate: u32,
    pub(crate) channels: u16,
    /// Frames (samples per channel) of the source signal that was encoded.
    pub(crate) n_frames: u64,
}

impl TestAudio {
    /// Duration of the source signal, in milliseconds.
    pub(crate) fn duration_ms(&self) -> u64 {
        self.n_frames * 1000 / u64::from(self.sample_rate)
    }

    /// The file's bytes.
    pub(crate) fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.path)
            .unwrap_or_else(|err| panic!("cannot read {}: {err}", self.path.display()))
    }

    /// The file's extension, lowercased (the probe's format hint).
    pub(crate) fn extension(&self) -> String {
        self.path
            .extension()
            .map(|ext| ext.to_string_lossy().to_lowercase())
            .unwrap_or_default()
    }
}

/// Sample encodings the pure-Rust WAV writer supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WavEncoding {
    Pcm8,
    Pcm16,
    Pcm24,
    Pcm32,
    Float32,
    Alaw,
    Mulaw,
}

/// What `mp3` writes before and inside the first frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mp3Tags {
    /// LAME's default: a Xing/Info frame with the frame count, delay and padding.
    LameInfo,
    /// No Xing/Info frame: the duration can only come from counting frames.
    None,
    /// An ID3v2 tag in front, and no Xing/Info frame.
    Id3v2,
}

/// Interleaved test signal in [-0.5, 0.5]: a 440 Hz sine on channel 0, 660 Hz on channel 1, ...
pub(crate) fn sine(sample_rate: u32, channels: u16, n_frames: u64) -> Vec<f64> {
    let mut samples = Vec::with_capacity(n_frames as usize * usize::from(channels));
    for frame_idx in 0..n_frames {
        let t = frame_idx as f64 / f64::from(sample_rate);
        for channel_idx in 0..channels {
            let freq = 440.0 * (1.0 + 0.5 * f64::from(channel_idx));
            samples.push(0.5 * (2.0 * PI * freq * t).sin());
        }
    }
    samples
}

/// `sine` quantized to 16 bits, as every generator's source.
pub(crate) fn sine_i16(sample_rate: u32, channels: u16, n_frames: u64) -> Vec<i16> {
    sine(sample_rate, channels, n_frames)
        .into_iter()
        .map(to_i16)
        .collect()
}

fn to_i16(sample: f64) -> i16 {
    (sample * 32767.0).round().clamp(-32768.0, 32767.0) as i16
}

fn frames_for(sample_rate: u32, seconds: f64) -> u64 {
    (f64::from(sample_rate) * seconds).round() as u64
}

/// A fresh file name in `dir`, so generators can be called repeatedly.
fn fresh_path(dir: &Path, stem: &str, extension: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{stem}-{}-{n}.{extension}", std::process::id()))
}

/// A WAV file with a sine, written in pure Rust.
pub(crate) fn wav_sine(
    dir: &Path,
    encoding: WavEncoding,
    sample_rate: u32,
    channels: u16,
    seconds: f64,
) -> TestAudio {
    let n_frames = frames_for(sample_rate, seconds);
    let samples = sine(sample_rate, channels, n_frames);
    let path = fresh_path(dir, &format!("{encoding:?}").to_lowercase(), "wav");
    let bytes = wav_bytes(encoding, sample_rate, channels, &samples);
    write(&path, &bytes);
    TestAudio {
        path,
        sample_rate,
        channels,
        n_frames,
    }
}

/// The bytes of a WAV file holding `samples` (interleaved, in [-1, 1]) in `encoding`.
pub(crate) fn wav_bytes(
    encoding: WavEncoding,
    sample_rate: u32,
    channels: u16,
    samples: &[f64],
) -> Vec<u8> {
    let (format_tag, bits): (u16, u16) = match encoding {
        WavEncoding::Pcm8 => (1, 8),
        WavEncoding::Pcm16 => (1, 16),
        WavEncoding::Pcm24 => (1, 24),
        WavEncoding::Pcm32 => (1, 32),
        WavEncoding::Float32 => (3, 32),
        WavEncoding::Alaw => (6, 8),
        WavEncoding::Mulaw => (7, 8),
    };
    let mut data = Vec::with_capacity(samples.len() * usize::from(bits / 8));
    for &sample in samples {
        let clamped = sample.clamp(-1.0, 1.0);
        match encoding {
            WavEncoding::Pcm8 => data.push((clamped * 127.0 + 128.0).round() as u8),
            WavEncoding::Pcm16 => data.extend(to_i16(clamped).to_le_bytes()),
            WavEncoding::Pcm24 => {
                let value = (clamped * 8_388_607.0).round() as i32;
                data.extend(&value.to_le_bytes()[..3]);
            }
            WavEncoding::Pcm32 => {
                data.extend(((clamped * 2_147_483_647.0).round() as i32).to_le_bytes())
            }
            WavEncoding::Float32 => data.extend((clamped as f32).to_le_bytes()),
            WavEncoding::Alaw => data.push(linear_to_alaw(to_i16(clamped))),
            WavEncoding::Mulaw => data.push(linear_to_mulaw(to_i16(clamped))),
        }
    }
    let block_align = channels * bits / 8;
    let is_pcm = format_tag == 1;
    let mut fmt = Vec::new();
    fmt.extend(format_tag.to_le_bytes());
    fmt.extend(channels.to_le_bytes());
    fmt.extend(sample_rate.to_le_bytes());
    fmt.extend((sample_rate * u32::from(block_align)).to_le_bytes());
    fmt.extend(block_align.to_le_bytes());
    fmt.extend(bits.to_le_bytes());
    if !is_pcm {
        fmt.extend(0u16.to_le_bytes()); // cbSize
    }
    let mut body = Vec::new();
    body.extend(b"WAVE");
    push_chunk(&mut body, b"fmt ", &fmt);
    if !is_pcm {
        let n_frames = (samples.len() / usize::from(channels.max(1))) as u32;
        push_chunk(&mut body, b"fact", &n_frames.to_le_bytes());
    }
    push_chunk(&mut body, b"data", &data);
    let mut bytes = Vec::with_capacity(body.len() + 8);
    bytes.extend(b"RIFF");
    bytes.extend((body.len() as u32).to_le_bytes());
    bytes.extend(body);
    bytes
}

fn push_chunk(out: &mut Vec<u8>, id: &[u8; 4], body: &[u8]) {
    out.extend(id);
    out.extend((body.len() as u32).to_le_bytes());
    out.extend(body);
    if body.len() % 2 == 1 {
        out.push(0);
    }
}

/// G.711 A-law encoding of one sample (ITU-T G.711, as in the public-domain Sun g711.c).
pub(crate) fn linear_to_alaw(sample: i16) -> u8 {
    const SEG_END: [i32; 8] = [0x1f, 0x3f, 0x7f, 0xff, 0x1ff, 0x3ff, 0x7ff, 0xfff];
    let mut pcm = i32::from(sample) >> 3;
    let mask: u8 = if pcm >= 0 {
        0xd5
    } else {
        pcm = -pcm - 1;
        0x55
    };
    let segment = SEG_END.iter().position(|&end| pcm <= end).unwrap_or(8);
    if segment >= 8 {
        return 0x7f ^ mask;
    }
    let mut value = (segment as i32) << 4;
    value |= if segment < 2 {
        (pcm >> 1) & 0xf
    } else {
        (pcm >> segment) & 0xf
    };
    (value as u8) ^ mask
}

/// G.711 µ-law encoding of one sample.
pub(crate) fn linear_to_mulaw(sample: i16) -> u8 {
    const SEG_END: [i32; 8] = [0x3f, 0x7f, 0xff, 0x1ff, 0x3ff, 0x7ff, 0xfff, 0x1fff];
    let mut pcm = i32::from(sample) >> 2;
    let mask: u8 = if pcm < 0 {
        pcm = -pcm;
        0x7f
    } else {
        0xff
    };
    pcm = pcm.min(8159) + 0x21;
    let segment = SEG_END.iter().position(|&end| pcm <= end).unwrap_or(8);
    if segment >= 8 {
        return 0x7f ^ mask;
    }
    let value = ((segment as i32) << 4) | ((pcm >> (segment + 1)) & 0xf);
    (value as u8) ^ mask
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes)
        .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
}

/// Runs an external encoder, failing with the Debian package to install when it is missing.
fn run_tool(tool: &str, package: &str, args: &[&std::ffi::OsStr]) {
    let output = match Command::new(tool).args(args).output() {
        Ok(output) => output,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            panic!("test audio needs `{tool}`, which is not installed: apt-get install {package}")
        }
        Err(err) => panic!("cannot run {tool}: {err}"),
    };
    assert!(
        output.status.success(),
        "{tool} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

const SOX_PACKAGES: &str = "sox libsox-fmt-all";

fn sox(args: &[&std::ffi::OsStr]) {
    run_tool("sox", SOX_PACKAGES, args);
}

/// A 16-bit PCM WAV source for the external encoders; the caller deletes it.
fn source_wav(dir: &Path, sample_rate: u32, channels: u16, n_frames: u64) -> PathBuf {
    let path = fresh_path(dir, "source", "wav");
    let samples = sine(sample_rate, channels, n_frames);
    write(
        &path,
        &wav_bytes(WavEncoding::Pcm16, sample_rate, channels, &samples),
    );
    path
}

/// Converts a sine with sox: `sox SOURCE.wav [output_args...] OUT.ext`.
fn sox_from_sine(
    dir: &Path,
    stem: &str,
    extension: &str,
    output_args: &[&str],
    sample_rate: u32,
    channels: u16,
    n_frames: u64,
) -> TestAudio {
    let source = source_wav(dir, sample_rate, channels, n_frames);
    let path = fresh_path(dir, stem, extension);
    // -D: no dither, so a generator makes the same file every time.
    let mut args: Vec<&std::ffi::OsStr> = vec!["-D".as_ref(), source.as_os_str()];
    args.extend(output_args.iter().map(std::ffi::OsStr::new));
    args.push(path.as_os_str());
    sox(&args);
    let _ = std::fs::remove_file(&source);
    TestAudio {
        path,
        sample_rate,
        channels,
        n_frames,
    }
}

/// IMA ADPCM WAV (format tag 0x0011), by sox.
pub(crate) fn wav_ima_adpcm(
    dir: &Path,
    sample_rate: u32,
    channels: u16,
    seconds: f64,
) -> TestAudio {
    let n_frames = frames_for(sample_rate, seconds);
    sox_from_sine(
        dir,
        "ima",
        "wav",
        &["-e", "ima-adpcm"],
        sample_rate,
        channels,
        n_frames,
    )
}

/// Microsoft ADPCM WAV (format tag 0x0002), by sox.
pub(crate) fn wav_ms_adpcm(dir: &Path, sample_rate: u32, channels: u16, seconds: f64) -> TestAudio {
    let n_frames = frames_for(sample_rate, seconds);
    sox_from_sine(
        dir,
        "msadpcm",
        "wav",
        &["-e", "ms-adpcm"],
        sample_rate,
        channels,
        n_frames,
    )
}

/// FLAC, by sox.
pub(crate) fn flac(dir: &Path, sample_rate: u32, channels: u16, seconds: f64) -> TestAudio {
    let n_frames = frames_for(sample_rate, seconds);
    sox_from_sine(dir, "flac", "flac", &[], sample_rate, channels, n_frames)
}

/// Ogg Vorbis, by sox.
pub(crate) fn ogg_vorbis(dir: &Path, sample_rate: u32, channels: u16, seconds: f64) -> TestAudio {
    let n_frames = frames_for(sample_rate, seconds);
    sox_from_sine(dir, "vorbis", "ogg", &[], sample_rate, channels, n_frames)
}

/// GSM 06.10 in WAV (format tag 0x0031, 65-byte blocks: Asterisk's `wav49`), 8 kHz mono, by sox.
pub(crate) fn gsm_wav(dir: &Path, seconds: f64) -> TestAudio {
    let n_frames = frames_for(8000, seconds);
    sox_from_sine(
        dir,
        "wav49",
        "wav",
        &["-e", "gsm-full-rate"],
        8000,
        1,
        n_frames,
    )
}

/// Raw GSM 06.10 (33-byte frames: Asterisk's `.gsm`), 8 kHz mono, by sox.
pub(crate) fn gsm_raw(dir: &Path, seconds: f64) -> TestAudio {
    let n_frames = frames_for(8000, seconds);
    sox_from_sine(dir, "raw", "gsm", &[], 8000, 1, n_frames)
}

/// Header-less µ-law (Asterisk `.ulaw`), 8 kHz mono, by sox.
pub(crate) fn ulaw(dir: &Path, seconds: f64) -> TestAudio {
    let n_frames = frames_for(8000, seconds);
    sox_from_sine(dir, "raw", "ulaw", &["-t", "ul"], 8000, 1, n_frames)
}

/// Header-less A-law (Asterisk `.alaw`), 8 kHz mono, by sox.
pub(crate) fn alaw(dir: &Path, seconds: f64) -> TestAudio {
    let n_frames = frames_for(8000, seconds);
    sox_from_sine(dir, "raw", "alaw", &["-t", "al"], 8000, 1, n_frames)
}

/// Header-less signed 16-bit little-endian linear (Asterisk `.sln`), 8 kHz mono, by sox.
pub(crate) fn sln(dir: &Path, seconds: f64) -> TestAudio {
    let n_frames = frames_for(8000, seconds);
    sox_from_sine(dir, "raw", "sln", &["-t", "s16", "-L"], 8000, 1, n_frames)
}

/// MP3 (MPEG-1/2 layer III), by lame.
pub(crate) fn mp3(
    dir: &Path,
    sample_rate: u32,
    channels: u16,
    seconds: f64,
    tags: Mp3Tags,
) -> TestAudio {
    let n_frames = frames_for(sample_rate, seconds);
    let source = source_wav(dir, sample_rate, channels, n_frames);
    let path = fresh_path(dir, "lame", "mp3");
    // A bitrate whose frames can hold the Xing/LAME tag, and no resampling by lame.
    let bitrate = match sample_rate {
        0..=12_000 => "32",
        12_001..=24_000 => "64",
        _ => "128",
    };
    let resample = format!("{}", f64::from(sample_rate) / 1000.0);
    let mut args: Vec<&std::ffi::OsStr> = ["--quiet", "-b", bitrate]
        .map(std::ffi::OsStr::new)
        .to_vec();
    args.extend([
        std::ffi::OsStr::new("--resample"),
        std::ffi::OsStr::new(&resample),
    ]);
    match tags {
        Mp3Tags::LameInfo => {}
        Mp3Tags::None => args.push("-t".as_ref()),
        Mp3Tags::Id3v2 => {
            args.extend(["-t", "--id3v2-only", "--tt", "call recording"].map(std::ffi::OsStr::new))
        }
    }
    args.push(source.as_os_str());
    args.push(path.as_os_str());
    run_tool("lame", "lame", &args);
    let _ = std::fs::remove_file(&source);
    TestAudio {
        path,
        sample_rate,
        channels,
        n_frames,
    }
}

/// Ogg Opus, by opusenc. The truth is given at 48 kHz, Opus's decoding rate.
pub(crate) fn ogg_opus(dir: &Path, sample_rate: u32, channels: u16, seconds: f64) -> TestAudio {
    let n_frames = frames_for(sample_rate, seconds);
    let source = source_wav(dir, sample_rate, channels, n_frames);
    let path = fresh_path(dir, "opus", "opus");
    run_tool(
        "opusenc",
        "opus-tools",
        &["--quiet".as_ref(), source.as_os_str(), path.as_os_str()],
    );
    let _ = std::fs::remove_file(&source);
    let n_frames_48k = n_frames * 48_000 / u64::from(sample_rate);
    TestAudio {
        path,
        sample_rate: 48_000,
        channels,
        n_frames: n_frames_48k,
    }
}

/// Decodes any file sox can read to interleaved 16-bit samples (the reference decoder in
/// tests). Header-less files need their type flags, e.g. `["-t", "ul", "-r", "8000", "-c", "1"]`.
pub(crate) fn sox_decode(path: &Path, input_args: &[&str]) -> Vec<i16> {
    let out = path.with_extension("sox-decoded.raw");
    // -D: no dither, so the reference is deterministic.
    let mut args: Vec<&std::ffi::OsStr> = vec!["-D".as_ref()];
    args.extend(input_args.iter().map(std::ffi::OsStr::new));
    args.push(path.as_os_str());
    args.extend(["-t", "s16", "-L"].map(std::ffi::OsStr::new));
    args.push(out.as_os_str());
    sox(&args);
    let bytes = std::fs::read(&out).unwrap_or_else(|err| panic!("cannot read sox output: {err}"));
    let _ = std::fs::remove_file(&out);
    bytes
        .chunks_exact(2)
        .map(|pair| i16::from_le_bytes([pair[0], pair[1]]))
        .collect()
}

/// A parsed 16-bit PCM WAV file (what `format=wav` playback returns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pcm16Wav {
    pub(crate) sample_rate: u32,
    pub(crate) channels: u16,
    /// Interleaved samples.
    pub(crate) samples: Vec<i16>,
}

/// Parses a canonical 44-byte-header 16-bit PCM WAV, checking every header field against the
/// file's length; `Err` says which field is wrong.
pub(crate) fn parse_pcm16_wav(bytes: &[u8]) -> Result<Pcm16Wav, String> {
    let field_u32 = |at: usize| -> Result<u32, String> {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| format!("file ends before byte {}", at + 4))
    };
    let field_u16 = |at: usize| -> Result<u16, String> {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or_else(|| format!("file ends before byte {}", at + 2))
    };
    if bytes.get(0..4) != Some(b"RIFF") || bytes.get(8..16) != Some(b"WAVEfmt ") {
        return Err("not a RIFF/WAVE file with fmt first".into());
    }
    if field_u32(4)? as usize != bytes.len() - 8 {
        return Err(format!(
            "riff size {} but file is {} bytes",
            field_u32(4)?,
            bytes.len()
        ));
    }
    if field_u32(16)? != 16 || field_u16(20)? != 1 || field_u16(34)? != 16 {
        return Err("fmt is not 16-byte PCM 16-bit".into());
    }
    let channels = field_u16(22)?;
    let sample_rate = field_u32(24)?;
    if field_u32(28)? != sample_rate * u32::from(channels) * 2 || field_u16(32)? != channels * 2 {
        return Err("byte rate or block align inconsistent".into());
    }
    if bytes.get(36..40) != Some(b"data") || field_u32(40)? as usize != bytes.len() - 44 {
        return Err("data chunk size does not match the file".into());
    }
    let samples = bytes[44..]
        .chunks_exact(2)
        .map(|pair| i16::from_le_bytes([pair[0], pair[1]]))
        .collect();
    Ok(Pcm16Wav {
        sample_rate,
        channels,
        samples,
    })
}

/// Pearson correlation of two equally long signals (1.0: same shape).
pub(crate) fn correlation(a: &[i16], b: &[i16]) -> f64 {
    let n = a.len().min(b.len());
    if n == 0 {
        return 0.0;
    }
    let mean = |s: &[i16]| s[..n].iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
    let (mean_a, mean_b) = (mean(a), mean(b));
    let (mut cov, mut var_a, mut var_b) = (0.0, 0.0, 0.0);
    for (&x, &y) in a[..n].iter().zip(&b[..n]) {
        let (dx, dy) = (f64::from(x) - mean_a, f64::from(y) - mean_b);
        cov += dx * dy;
        var_a += dx * dx;
        var_b += dy * dy;
    }
    if var_a == 0.0 || var_b == 0.0 {
        return 0.0;
    }
    cov / (var_a.sqrt() * var_b.sqrt())
}

/// Best correlation of `b` against `a` delayed by 0 to `max_lag` samples (for codecs with
/// encoder delay), with the lag that gives it.
pub(crate) fn best_lag_correlation(a: &[i16], b: &[i16], max_lag: usize) -> (f64, usize) {
    let mut best = (f64::MIN, 0);
    for lag in 0..=max_lag.min(b.len()) {
        let value = correlation(a, &b[lag..]);
        if value > best.0 {
            best = (value, lag);
        }
    }
    best
}

/// Largest absolute sample difference of two signals over their common length.
pub(crate) fn max_abs_diff(a: &[i16], b: &[i16]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (i32::from(x) - i32::from(y)).abs())
        .max()
        .unwrap_or(0)
}

thread_local! {
    /// Backtrace of the last panic on this thread (see `record_panic_backtraces`).
    static PANIC_TRACE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Installs (once per process) a panic hook that keeps each panic's backtrace for the panicking
/// thread, then reports the panic as usual.
pub(crate) fn record_panic_backtraces() {
    static HOOK: OnceLock<()> = OnceLock::new();
    HOOK.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let trace = std::backtrace::Backtrace::force_capture().to_string();
            PANIC_TRACE.with(|slot| *slot.borrow_mut() = Some(trace));
            previous(info);
        }));
    });
}

/// Symphonia is known to panic on some hostile inputs (an overflow in its Vorbis setup-header
/// parser, for one), which callguard contains; fails the test when the last panic on this
/// thread happened in callguard's own `ingest` code instead.
pub(crate) fn assert_last_panic_was_symphonias() {
    let trace = PANIC_TRACE
        .with(|slot| slot.borrow_mut().take())
        .unwrap_or_default();
    // Frames above the unwinding machinery are the hook's own.
    let frames = &trace[trace.find("rust_begin_unwind").unwrap_or(0)..];
    let ours = frames.find("ingest::").unwrap_or(usize::MAX);
    let theirs = frames.find("symphonia_").unwrap_or(usize::MAX);
    assert!(theirs < ours, "panic in callguard's own code:\n{trace}");
}
