//! `format=wav` playback: decodes a stored recording's original bytes into a 16-bit PCM WAV of
//! exactly `wav_len` bytes (the header announces that length; the body is cut or padded with
//! silence to it), keeping the channels and sample rate, in constant memory. GSM goes through
//! `gsm`, header-less files through G.711 tables or as they are, the rest through symphonia.
//! It must not buffer a whole recording, write anything but the WAV to `out`, or decide who may
//! listen (the api audits and authorizes before calling it). Opus is refused as `Unavailable`.

use std::io::{self, Read, Write};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use symphonia::core::codecs::audio::{AudioDecoder, AudioDecoderOptions};
use symphonia::core::errors::Error as SymphoniaError;

use crate::ingest::gsm;
use crate::ingest::probe::{self, AudioInfo, Demuxer, FormatHint, ProbeError, RawKind, Stream};

/// Bytes of the canonical WAV header written before the samples.
pub const WAV_HEADER_LEN: u64 = 44;

/// Why playback transcoding failed. Once output has started, the caller must abort the response
/// (the announced length can no longer be honoured).
#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    /// callguard has no decoder for this codec (`415 transcoding_unavailable`); nothing written.
    #[error("transcoding unavailable: no decoder for {codec}")]
    Unavailable { codec: &'static str },
    /// The output would not fit a WAV file's 32-bit sizes; nothing written.
    #[error(
        "transcoding unavailable: {n_frames} frames of {channels} channels exceed the 4 GiB wav limit"
    )]
    TooLong { n_frames: u64, channels: u16 },
    /// The stored bytes do not parse as the probe said they would; nothing written.
    #[error("cannot open the {container} stream for decoding")]
    Open {
        container: &'static str,
        #[source]
        source: ProbeError,
    },
    /// The decoder reports another rate or channel count than the probe recorded.
    #[error(
        "decoded {container} stream has {channels} channels at {sample_rate} hz, the probe \
         recorded {expected_channels} at {expected_rate} hz"
    )]
    Mismatch {
        container: &'static str,
        channels: usize,
        sample_rate: u32,
        expected_channels: u16,
        expected_rate: u32,
    },
    /// A decoder panicked on the stored bytes; the panic was contained.
    #[error("the {container} decoder failed on malformed input")]
    Crashed { container: &'static str },
    /// Reading the original bytes failed (for instance, the vault refused a chunk).
    #[error("cannot read the original audio")]
    Read(#[source] io::Error),
    /// Writing the WAV failed (the client went away).
    #[error("cannot write the wav output")]
    Write(#[source] io::Error),
}

/// Exact byte length of the WAV `transcode_to_wav` writes for this recording; `None` when it
/// cannot transcode it (Opus, or over the 4 GiB WAV limit).
pub fn wav_len(info: &AudioInfo) -> Option<u64> {
    if !info.can_transcode() {
        return None;
    }
    let data_len = info
        .n_frames
        .checked_mul(u64::from(info.channels))?
        .checked_mul(2)?;
    let total = data_len.checked_add(WAV_HEADER_LEN)?;
    if total - 8 > u64::from(u32::MAX) {
        return None;
    }
    Some(total)
}

/// Decodes `src` (the original bytes of a recording that `probe` described as `info`) and writes
/// a 16-bit PCM WAV of exactly `wav_len(info)` bytes to `out`. Returns the bytes written.
pub fn transcode_to_wav(
    src: Box<dyn Read + Send + Sync>,
    hint: &FormatHint,
    info: &AudioInfo,
    out: &mut dyn Write,
) -> Result<u64, TranscodeError> {
    if !info.can_transcode() {
        return Err(TranscodeError::Unavailable { codec: info.codec });
    }
    if wav_len(info).is_none() {
        return Err(TranscodeError::TooLong {
            n_frames: info.n_frames,
            channels: info.channels,
        });
    }
    let read_error = Arc::new(Mutex::new(None));
    let reader = ErrorTrap {
        inner: src,
        error: Arc::clone(&read_error),
    };
    let mut stream = Stream::new(reader);
    let raw_kind = match RawKind::from_info(info) {
        Some(kind) => Some(kind),
        None if info.container == "raw" => {
            hint.extension.as_deref().and_then(RawKind::from_extension)
        }
        None => None,
    };
    // Symphonia may panic on hostile packets; that ends this transcode, not the process.
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        match (raw_kind, info.container, info.codec) {
            (Some(kind), _, _) => transcode_raw(kind, &mut stream, info, out),
            (None, "wav", "gsm") => transcode_wav49(&mut stream, info, out),
            (None, "wav", _) => transcode_wav(&mut stream, info, out),
            (None, "flac", _) => transcode_symphonia(Demuxer::Flac, &mut stream, info, out),
            (None, "mp3", _) => transcode_symphonia(Demuxer::Mp3, &mut stream, info, out),
            (None, "ogg", _) => transcode_symphonia(Demuxer::Ogg, &mut stream, info, out),
            (None, _, codec) => Err(TranscodeError::Unavailable { codec }),
        }
    }));
    let result = match outcome {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(
                container = info.container,
                "decoder panicked during transcoding"
            );
            Err(TranscodeError::Crashed {
                container: info.container,
            })
        }
    };
    // A failing source must not pass for a short recording padded with silence.
    if let Some(err) = read_error.lock().ok().and_then(|mut slot| slot.take()) {
        return Err(TranscodeError::Read(err));
    }
    result
}

/// Passes reads through and remembers the first real I/O error, which symphonia would
/// otherwise report as the end of the stream.
struct ErrorTrap {
    inner: Box<dyn Read + Send + Sync>,
    error: Arc<Mutex<Option<io::Error>>>,
}

impl Read for ErrorTrap {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => Ok(n),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => Err(err),
            Err(err) => {
                let kind = err.kind();
                if let Ok(mut slot) = self.error.lock() {
                    slot.get_or_insert(err);
                }
                Err(io::Error::new(kind, "source read failed"))
            }
        }
    }
}

/// Writes the header, then exactly the announced number of samples.
struct WavSink<'a> {
    out: &'a mut dyn Write,
    channels: usize,
    /// Interleaved samples the header announces.
    target_samples: u64,
    written_samples: u64,
    /// Reused byte buffer for one write.
    bytes: Vec<u8>,
}

impl<'a> WavSink<'a> {
    fn start(out: &'a mut dyn Write, info: &AudioInfo) -> Result<WavSink<'a>, TranscodeError> {
        let total = wav_len(info).ok_or(TranscodeError::TooLong {
            n_frames: info.n_frames,
            channels: info.channels,
        })?;
        let data_len = (total - WAV_HEADER_LEN) as u32;
        let block_align =
            u16::try_from(u32::from(info.channels) * 2).map_err(|_| TranscodeError::TooLong {
                n_frames: info.n_frames,
                channels: info.channels,
            })?;
        let mut header = Vec::with_capacity(WAV_HEADER_LEN as usize);
        header.extend_from_slice(b"RIFF");
        header.extend_from_slice(&((total - 8) as u32).to_le_bytes());
        header.extend_from_slice(b"WAVEfmt ");
        header.extend_from_slice(&16u32.to_le_bytes());
        header.extend_from_slice(&1u16.to_le_bytes());
        header.extend_from_slice(&info.channels.to_le_bytes());
        header.extend_from_slice(&info.sample_rate.to_le_bytes());
        header.extend_from_slice(
            &(info.sample_rate.saturating_mul(u32::from(block_align))).to_le_bytes(),
        );
        header.extend_from_slice(&block_align.to_le_bytes());
        header.extend_from_slice(&16u16.to_le_bytes());
        header.extend_from_slice(b"data");
        header.extend_from_slice(&data_len.to_le_bytes());
        out.write_all(&header).map_err(TranscodeError::Write)?;
        Ok(WavSink {
            out,
            channels: usize::from(info.channels),
            target_samples: info.n_frames * u64::from(info.channels),
            written_samples: 0,
            bytes: Vec::new(),
        })
    }

    fn is_full(&self) -> bool {
        self.written_samples >= self.target_samples
    }

    /// Writes interleaved samples, dropping any past the announced length.
    fn push(&mut self, samples: &[i16]) -> Result<(), TranscodeError> {
        let room = self.target_samples - self.written_samples;
        let take = (samples.len() as u64).min(room) as usize;
        self.bytes.clear();
        self.bytes.extend(
            samples[..take]
                .iter()
                .flat_map(|sample| sample.to_le_bytes()),
        );
        self.out
            .write_all(&self.bytes)
            .map_err(TranscodeError::Write)?;
        self.written_samples += take as u64;
        Ok(())
    }

    /// Writes `n_frames` frames of silence (in place of an undecodable packet).
    fn push_silence(&mut self, n_frames: u64) -> Result<(), TranscodeError> {
        let mut remaining = n_frames.saturating_mul(self.channels as u64);
        let zeros = [0i16; 4096];
        while remaining > 0 && !self.is_full() {
            let n = remaining.min(zeros.len() as u64) as usize;
            self.push(&zeros[..n])?;
            remaining -= n as u64;
        }
        Ok(())
    }

    /// Pads to the announced length; returns the bytes written in all.
    fn finish(mut self) -> Result<u64, TranscodeError> {
        let missing = self.target_samples - self.written_samples;
        if missing > 0 {
            tracing::debug!(
                missing,
                "padding transcoded wav with silence to its announced length"
            );
            let frames = missing.div_ceil(self.channels as u64);
            self.push_silence(frames)?;
        }
        self.out.flush().map_err(TranscodeError::Write)?;
        Ok(WAV_HEADER_LEN + self.written_samples * 2)
    }
}

fn read_chunk<R: Read>(stream: &mut Stream<R>, buf: &mut [u8]) -> Result<usize, TranscodeError> {
    stream.read_up_to(buf).map_err(TranscodeError::Read)
}

fn transcode_raw<R: Read>(
    kind: RawKind,
    stream: &mut Stream<R>,
    info: &AudioInfo,
    out: &mut dyn Write,
) -> Result<u64, TranscodeError> {
    let mut sink = WavSink::start(out, info)?;
    let mut samples: Vec<i16> = Vec::new();
    match kind {
        RawKind::Mulaw | RawKind::Alaw => {
            let table = if kind == RawKind::Mulaw {
                &MULAW_TO_LINEAR
            } else {
                &ALAW_TO_LINEAR
            };
            let mut buf = vec![0u8; 16 * 1024];
            while !sink.is_full() {
                let n = read_chunk(stream, &mut buf)?;
                samples.clear();
                samples.extend(buf[..n].iter().map(|&byte| table[usize::from(byte)]));
                sink.push(&samples)?;
                if n < buf.len() {
                    break;
                }
            }
        }
        RawKind::Slin { .. } => {
            let mut buf = vec![0u8; 32 * 1024];
            while !sink.is_full() {
                let n = read_chunk(stream, &mut buf)?;
                samples.clear();
                samples.extend(
                    buf[..n]
                        .chunks_exact(2)
                        .map(|pair| i16::from_le_bytes([pair[0], pair[1]])),
                );
                sink.push(&samples)?;
                if n < buf.len() {
                    break;
                }
            }
        }
        RawKind::Gsm => {
            let mut decoder = gsm::Decoder::new();
            let mut frame = [0u8; gsm::RAW_FRAME_LEN];
            let mut pcm = [0i16; gsm::FRAME_SAMPLES];
            while !sink.is_full() {
                if read_chunk(stream, &mut frame)? < frame.len() {
                    break;
                }
                match decoder.decode_raw(&frame, &mut pcm) {
                    Ok(()) => sink.push(&pcm)?,
                    Err(err) => {
                        tracing::warn!(%err, "undecodable gsm frame replaced by silence");
                        sink.push_silence(gsm::FRAME_SAMPLES as u64)?;
                    }
                }
            }
        }
    }
    sink.finish()
}

fn transcode_wav49<R: Read>(
    stream: &mut Stream<R>,
    info: &AudioInfo,
    out: &mut dyn Write,
) -> Result<u64, TranscodeError> {
    let header = probe::read_wav_header(stream).map_err(|source| TranscodeError::Open {
        container: "wav",
        source,
    })?;
    if header.format_tag != probe::WAVE_FORMAT_GSM610 {
        return Err(TranscodeError::Open {
            container: "wav",
            source: ProbeError::UnsupportedCodec {
                container: "wav",
                codec: format!("format tag {:#06x} where gsm was probed", header.format_tag),
            },
        });
    }
    let mut remaining = header.data_len.map(u64::from).unwrap_or(u64::MAX);
    let mut sink = WavSink::start(out, info)?;
    let mut decoder = gsm::Decoder::new();
    let mut block = [0u8; gsm::WAV49_BLOCK_LEN];
    let mut pcm = [0i16; gsm::WAV49_BLOCK_SAMPLES];
    while !sink.is_full() && remaining >= block.len() as u64 {
        if read_chunk(stream, &mut block)? < block.len() {
            break;
        }
        remaining -= block.len() as u64;
        decoder.decode_wav49(&block, &mut pcm);
        sink.push(&pcm)?;
    }
    sink.finish()
}

/// WAV through symphonia, over a minimal header rebuilt from ours and the data chunk alone.
fn transcode_wav<R: Read + Send + Sync>(
    stream: &mut Stream<R>,
    info: &AudioInfo,
    out: &mut dyn Write,
) -> Result<u64, TranscodeError> {
    let header = probe::read_wav_header(stream).map_err(|source| TranscodeError::Open {
        container: "wav",
        source,
    })?;
    let prefix = probe::minimal_wav_header(&header, header.data_len);
    let data_len = header.data_len.map(u64::from).unwrap_or(u64::MAX);
    let mut rebuilt = Stream::new(io::Cursor::new(prefix).chain(stream.take(data_len)));
    transcode_symphonia(Demuxer::Wav, &mut rebuilt, info, out)
}

fn transcode_symphonia<R: Read + Send + Sync>(
    demuxer: Demuxer,
    stream: &mut Stream<R>,
    info: &AudioInfo,
    out: &mut dyn Write,
) -> Result<u64, TranscodeError> {
    let container = info.container;
    let open_error = |source| TranscodeError::Open { container, source };
    if demuxer == Demuxer::Mp3 {
        probe::skip_id3v2(stream).map_err(open_error)?;
    }
    // Open everything before the first output byte, so a failure leaves the response unsent.
    let mut reader = probe::symphonia_open(demuxer, &mut *stream, container).map_err(open_error)?;
    let (mut track_id, params) =
        probe::audio_track(reader.as_ref(), container).map_err(open_error)?;
    let mut decoder = make_decoder(&params, container)?;
    // Decoded samples to drop before the audio: an untagged MP3's delay, which the probe left
    // out of the duration and symphonia does not trim.
    let mut skip = match demuxer {
        Demuxer::Mp3 => {
            let gap = probe::mp3_gap(reader.as_ref());
            if gap.trimmed {
                0
            } else {
                u64::from(gap.delay) * u64::from(info.channels)
            }
        }
        _ => 0,
    };
    let mut sink = WavSink::start(out, info)?;
    let mut samples: Vec<i16> = Vec::new();
    while !sink.is_full() {
        let packet = match reader.next_packet() {
            Ok(Some(packet)) => packet,
            Ok(None) => break,
            Err(SymphoniaError::ResetRequired) => {
                // A chained Ogg link starts: its own track and decoder.
                let (new_track_id, new_params) =
                    probe::audio_track(reader.as_ref(), container).map_err(open_error)?;
                track_id = new_track_id;
                decoder = make_decoder(&new_params, container)?;
                continue;
            }
            Err(SymphoniaError::IoError(err)) if err.kind() == io::ErrorKind::UnexpectedEof => {
                break;
            }
            Err(err) => {
                // Read errors are reported by the caller through the trap; anything else is
                // damage after a good start: play what decoded, pad the rest.
                tracing::warn!(container, %err, "demuxing stopped early; padding with silence");
                break;
            }
        };
        if packet.track_id != track_id {
            continue;
        }
        match decoder.decode(&packet) {
            Ok(decoded) => {
                if decoded.frames() == 0 {
                    continue;
                }
                let channels = decoded.spec().channels().count();
                let sample_rate = decoded.spec().rate();
                if channels != usize::from(info.channels) || sample_rate != info.sample_rate {
                    return Err(TranscodeError::Mismatch {
                        container,
                        channels,
                        sample_rate,
                        expected_channels: info.channels,
                        expected_rate: info.sample_rate,
                    });
                }
                decoded.copy_to_vec_interleaved::<i16>(&mut samples);
                let dropped = skip.min(samples.len() as u64);
                skip -= dropped;
                sink.push(&samples[dropped as usize..])?;
            }
            Err(err) => {
                tracing::warn!(container, %err, "undecodable packet replaced by silence");
                let frames = packet.dur.get();
                let dropped = (skip / u64::from(info.channels)).min(frames);
                skip -= dropped * u64::from(info.channels);
                sink.push_silence(frames - dropped)?;
            }
        }
    }
    drop(reader);
    sink.finish()
}

fn make_decoder(
    params: &symphonia::core::codecs::audio::AudioCodecParameters,
    container: &'static str,
) -> Result<Box<dyn AudioDecoder>, TranscodeError> {
    symphonia::default::get_codecs()
        .make_audio_decoder(params, &AudioDecoderOptions::default())
        .map_err(|err| TranscodeError::Open {
            container,
            source: probe::rejected(container, &err),
        })
}

/// G.711 µ-law to 16-bit linear (ITU-T G.711).
static MULAW_TO_LINEAR: [i16; 256] = {
    let mut table = [0i16; 256];
    let mut idx = 0;
    while idx < 256 {
        let byte = !(idx as u8);
        let exponent = (byte >> 4) & 7;
        let mantissa = (byte & 0x0f) as i32;
        let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
        table[idx] = if byte & 0x80 != 0 {
            -magnitude as i16
        } else {
            magnitude as i16
        };
        idx += 1;
    }
    table
};

/// G.711 A-law to 16-bit linear (ITU-T G.711).
static ALAW_TO_LINEAR: [i16; 256] = {
    let mut table = [0i16; 256];
    let mut idx = 0;
    while idx < 256 {
        let byte = (idx as u8) ^ 0x55;
        let exponent = (byte >> 4) & 7;
        let mantissa = (byte & 0x0f) as i32;
        let magnitude = if exponent == 0 {
            (mantissa << 4) + 8
        } else {
            ((mantissa << 4) + 0x108) << (exponent - 1)
        };
        table[idx] = if byte & 0x80 != 0 {
            magnitude as i16
        } else {
            -magnitude as i16
        };
        idx += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    // Declared once, in probe.rs (clippy::duplicate_mod).
    use super::*;
    use crate::ingest::probe::audio::{self, Mp3Tags, Pcm16Wav, TestAudio, WavEncoding};
    use crate::ingest::probe::probe_bytes;

    fn hint_for(audio: &TestAudio) -> FormatHint {
        FormatHint {
            extension: Some(audio.extension()),
        }
    }

    /// Probes and transcodes `bytes`, checking the WAV is well formed and exactly `wav_len`.
    fn transcode_bytes(bytes: Vec<u8>, hint: &FormatHint, info: &AudioInfo) -> Pcm16Wav {
        let mut out = Vec::new();
        let written = transcode_to_wav(Box::new(Cursor::new(bytes)), hint, info, &mut out)
            .unwrap_or_else(|err| panic!("{info:?}: {err:?}"));
        assert_eq!(written, out.len() as u64);
        assert_eq!(Some(written), wav_len(info), "{info:?}");
        let wav = audio::parse_pcm16_wav(&out).unwrap_or_else(|err| panic!("{info:?}: {err}"));
        assert_eq!(
            (wav.sample_rate, wav.channels),
            (info.sample_rate, info.channels)
        );
        assert_eq!(
            wav.samples.len() as u64,
            info.n_frames * u64::from(info.channels)
        );
        wav
    }

    fn transcode(audio: &TestAudio) -> (AudioInfo, Pcm16Wav) {
        let hint = hint_for(audio);
        let bytes = audio.bytes();
        let info = probe_bytes(&bytes, &hint).unwrap_or_else(|err| panic!("probe: {err}"));
        let wav = transcode_bytes(bytes, &hint, &info);
        (info, wav)
    }

    /// Transcodes and compares with sox's decoding of the same file.
    fn check_against_sox(audio: &TestAudio, sox_input_args: &[&str], tolerance: i32) {
        let (_, wav) = transcode(audio);
        // (ADPCM decoders round the step differently, so they get a tolerance and a shape check.)
        let reference = audio::sox_decode(&audio.path, sox_input_args);
        let n = wav.samples.len().min(reference.len());
        // sox decodes whole ADPCM/GSM blocks, ignoring the exact count of the fact chunk.
        assert!(wav.samples.len().abs_diff(reference.len()) <= usize::from(audio.channels) * 2048);
        let diff = audio::max_abs_diff(&wav.samples[..n], &reference[..n]);
        assert!(
            diff <= tolerance,
            "{}: differs from sox by up to {diff}",
            audio.path.display()
        );
        let shape = audio::correlation(&wav.samples[..n], &reference[..n]);
        assert!(
            shape > 0.999,
            "{}: correlation with sox {shape}",
            audio.path.display()
        );
        assert!(
            wav.samples.iter().any(|&s| s.unsigned_abs() > 1000),
            "decoded near silence"
        );
    }

    #[test]
    fn wav_sample_formats_match_sox() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cases = [
            (WavEncoding::Pcm8, 0),
            (WavEncoding::Pcm16, 0),
            (WavEncoding::Pcm24, 1),
            (WavEncoding::Pcm32, 1),
            (WavEncoding::Float32, 1),
            (WavEncoding::Alaw, 0),
            (WavEncoding::Mulaw, 0),
        ];
        for (encoding, tolerance) in cases {
            let audio = audio::wav_sine(dir.path(), encoding, 8000, 2, 1.0);
            check_against_sox(&audio, &[], tolerance);
        }
    }

    #[test]
    fn extensible_and_multichannel_wav_match_sox() {
        let dir = tempfile::tempdir().expect("temp dir");
        let source = audio::wav_sine(dir.path(), WavEncoding::Pcm24, 16_000, 3, 1.0);
        let path = dir.path().join("extensible.wav");
        let status = std::process::Command::new("sox")
            .args([source.path.as_os_str(), path.as_os_str()])
            .status()
            .expect("sox");
        assert!(status.success());
        let audio = TestAudio { path, ..source };
        check_against_sox(&audio, &[], 1);
    }

    #[test]
    fn adpcm_matches_sox() {
        let dir = tempfile::tempdir().expect("temp dir");
        // The two decoders round the adaptive step differently and drift apart within a block
        // (up to ~60 here; sox dithers its input, so the files vary): bound it loosely and rely
        // on the correlation check for the shape.
        check_against_sox(&audio::wav_ima_adpcm(dir.path(), 8000, 1, 1.2), &[], 256);
        check_against_sox(&audio::wav_ms_adpcm(dir.path(), 16_000, 2, 1.2), &[], 256);
    }

    #[test]
    fn gsm_is_bit_exact_with_sox_in_both_packings() {
        let dir = tempfile::tempdir().expect("temp dir");
        check_against_sox(&audio::gsm_wav(dir.path(), 2.0), &[], 0);
        check_against_sox(&audio::gsm_raw(dir.path(), 1.0), &[], 0);
    }

    #[test]
    fn headerless_files_match_sox() {
        let dir = tempfile::tempdir().expect("temp dir");
        let raw_args = |kind| ["-t", kind, "-r", "8000", "-c", "1"];
        check_against_sox(&audio::ulaw(dir.path(), 1.0), &raw_args("ul"), 0);
        check_against_sox(&audio::alaw(dir.path(), 1.0), &raw_args("al"), 0);
        check_against_sox(&audio::sln(dir.path(), 1.0), &raw_args("s16"), 0);
    }

    #[test]
    fn flac_is_lossless() {
        let dir = tempfile::tempdir().expect("temp dir");
        let audio = audio::flac(dir.path(), 16_000, 2, 1.3);
        let (_, wav) = transcode(&audio);
        assert_eq!(wav.samples, audio::sine_i16(16_000, 2, audio.n_frames));
    }

    /// The first channel of interleaved samples.
    fn first_channel(samples: &[i16], channels: u16) -> Vec<i16> {
        samples
            .iter()
            .step_by(usize::from(channels))
            .copied()
            .collect()
    }

    #[test]
    fn lossy_formats_resemble_the_source() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cases = [
            audio::mp3(dir.path(), 8000, 1, 2.0, Mp3Tags::LameInfo),
            audio::mp3(dir.path(), 44_100, 2, 1.0, Mp3Tags::None),
            audio::mp3(dir.path(), 8000, 1, 3.0, Mp3Tags::None),
            audio::mp3(dir.path(), 16_000, 1, 1.0, Mp3Tags::Id3v2),
            audio::ogg_vorbis(dir.path(), 16_000, 1, 1.5),
            audio::ogg_vorbis(dir.path(), 44_100, 2, 1.0),
        ];
        for audio in cases {
            let (info, wav) = transcode(&audio);
            let source = audio::sine_i16(audio.sample_rate, audio.channels, audio.n_frames);
            let source = first_channel(&source, audio.channels);
            let decoded = first_channel(&wav.samples, info.channels);
            let window = &source[..source.len().min(8000)];
            let (corr, lag) = audio::best_lag_correlation(window, &decoded, 2400);
            assert!(
                corr > 0.95,
                "{}: correlation {corr} at lag {lag}",
                audio.path.display()
            );
            // Gapless streams (vorbis granules, lame's Info tag) line up with the source: the
            // probe counted exactly the source's frames, and lag 0 correlates. An untagged
            // MP3 starts after the usual delay: it lines up too, and none of the source's end is
            // cut (keeping the delay would cut the call's last 1105 samples).
            let untagged_mp3 = audio.path.extension().is_some_and(|e| e == "mp3")
                && info.n_frames != audio.n_frames;
            if untagged_mp3 {
                assert!(decoded.len() >= source.len(), "{}", audio.path.display());
            }
            if info.n_frames == audio.n_frames || untagged_mp3 {
                let aligned = audio::correlation(&source, &decoded);
                assert!(
                    aligned > 0.95,
                    "{}: not aligned ({aligned})",
                    audio.path.display()
                );
            }
        }
    }

    #[test]
    fn opus_is_unavailable_and_nothing_is_written() {
        let dir = tempfile::tempdir().expect("temp dir");
        let audio = audio::ogg_opus(dir.path(), 8000, 1, 1.0);
        let hint = hint_for(&audio);
        let info = probe_bytes(&audio.bytes(), &hint).expect("opus probes");
        assert_eq!(wav_len(&info), None);
        let mut out = Vec::new();
        let result = transcode_to_wav(Box::new(Cursor::new(audio.bytes())), &hint, &info, &mut out);
        assert!(matches!(
            result,
            Err(TranscodeError::Unavailable { codec: "opus" })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn output_is_padded_or_cut_to_the_announced_length() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cases = [
            audio::wav_sine(dir.path(), WavEncoding::Pcm16, 8000, 1, 1.0),
            audio::gsm_wav(dir.path(), 1.0),
            audio::gsm_raw(dir.path(), 1.0),
            audio::ulaw(dir.path(), 1.0),
            audio::flac(dir.path(), 8000, 1, 1.0),
            audio::mp3(dir.path(), 8000, 1, 1.0, Mp3Tags::LameInfo),
            audio::ogg_vorbis(dir.path(), 44_100, 2, 3.0),
        ];
        for audio in cases {
            let hint = hint_for(&audio);
            let bytes = audio.bytes();
            let info = probe_bytes(&bytes, &hint).expect("probe");
            // The stored bytes end early: silence fills the announced length.
            let short = bytes[..bytes.len() * 7 / 8].to_vec();
            let wav = transcode_bytes(short, &hint, &info);
            assert_eq!(wav.samples.last(), Some(&0), "{}", audio.path.display());
            // The probe announced fewer frames: the output is cut.
            let mut shorter = info.clone();
            shorter.n_frames = info.n_frames / 2;
            let wav = transcode_bytes(bytes, &hint, &shorter);
            assert!(wav.samples.iter().any(|&s| s != 0));
        }
    }

    /// Fails every read after the first `ok_bytes`.
    struct FailingReader {
        inner: Cursor<Vec<u8>>,
        ok_bytes: u64,
    }

    impl Read for FailingReader {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.inner.position() >= self.ok_bytes {
                return Err(io::Error::other("vault chunk 3 failed authentication"));
            }
            let room = (self.ok_bytes - self.inner.position()) as usize;
            let n = buf.len().min(room);
            self.inner.read(&mut buf[..n])
        }
    }

    #[test]
    fn a_failing_source_is_an_error_not_silence() {
        let dir = tempfile::tempdir().expect("temp dir");
        for audio in [
            audio::wav_sine(dir.path(), WavEncoding::Mulaw, 8000, 1, 1.0),
            audio::gsm_raw(dir.path(), 1.0),
            audio::mp3(dir.path(), 8000, 1, 1.0, Mp3Tags::LameInfo),
            audio::flac(dir.path(), 8000, 1, 1.0),
        ] {
            let hint = hint_for(&audio);
            let bytes = audio.bytes();
            let info = probe_bytes(&bytes, &hint).expect("probe");
            let reader = FailingReader {
                ok_bytes: bytes.len() as u64 / 2,
                inner: Cursor::new(bytes),
            };
            let mut out = Vec::new();
            let result = transcode_to_wav(Box::new(reader), &hint, &info, &mut out);
            assert!(
                matches!(result, Err(TranscodeError::Read(_))),
                "{}: {result:?}",
                audio.path.display()
            );
        }
    }

    /// Counts bytes instead of keeping them.
    struct CountingSink(u64);

    impl Write for CountingSink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn damage_seeds() -> &'static Vec<(Vec<u8>, FormatHint)> {
        static SEEDS: std::sync::OnceLock<Vec<(Vec<u8>, FormatHint)>> = std::sync::OnceLock::new();
        SEEDS.get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let dir = dir.path();
            [
                audio::wav_sine(dir, WavEncoding::Alaw, 8000, 1, 0.5),
                audio::wav_ima_adpcm(dir, 8000, 1, 0.5),
                audio::wav_ms_adpcm(dir, 8000, 2, 0.5),
                audio::gsm_wav(dir, 0.5),
                audio::flac(dir, 8000, 1, 0.5),
                audio::mp3(dir, 8000, 1, 0.5, Mp3Tags::LameInfo),
                audio::ogg_vorbis(dir, 16_000, 1, 0.5),
                audio::gsm_raw(dir, 0.5),
            ]
            .iter()
            .map(|audio| (audio.bytes(), hint_for(audio)))
            .collect()
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 256,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// Whatever the probe accepts, playback decodes to exactly `wav_len` bytes or fails
        /// cleanly; a contained panic (`Crashed`) must come from symphonia, not from us.
        #[test]
        fn transcode_of_damaged_accepted_files_is_exact_or_an_error(
            seed_idx in 0..8usize,
            mutations in proptest::collection::vec((0..u16::MAX, 0..=u8::MAX), 1..8),
        ) {
            let (original, hint) = &damage_seeds()[seed_idx];
            let mut bytes = original.clone();
            for (position, value) in mutations {
                // Spare the first 64 bytes: damage to the audio, not to the headers.
                let idx = 64 + usize::from(position) % (bytes.len() - 64);
                bytes[idx] = value;
            }
            let Ok(info) = probe_bytes(&bytes, hint) else { return Ok(()) };
            let Some(expected) = wav_len(&info) else { return Ok(()) };
            proptest::prop_assume!(expected < 64 << 20);
            let mut sink = CountingSink(0);
            audio::record_panic_backtraces();
            match transcode_to_wav(Box::new(Cursor::new(bytes)), hint, &info, &mut sink) {
                Ok(written) => {
                    proptest::prop_assert_eq!(written, expected);
                    proptest::prop_assert_eq!(sink.0, expected);
                }
                Err(TranscodeError::Crashed { .. }) => audio::assert_last_panic_was_symphonias(),
                Err(_) => {}
            }
        }
    }

    #[test]
    fn wav_len_counts_header_and_samples() {
        let info = AudioInfo {
            container: "wav",
            codec: "pcm_s16le",
            sample_rate: 8000,
            channels: 2,
            n_frames: 8000,
            duration_ms: 1000,
        };
        assert_eq!(wav_len(&info), Some(44 + 8000 * 2 * 2));
        let huge = AudioInfo {
            n_frames: 1 << 31,
            ..info
        };
        assert_eq!(wav_len(&huge), None);
    }
}
